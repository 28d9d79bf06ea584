"""The pack's cache policies inside ComfyUI's own AR loop (ComfyUI 0.21+: SamplerARVideo).

Core's ``sample_ar_video`` runs, per block of ``num_frame_per_block`` frames, one model call
per sigma (the block's K/V written at ``end``, then rolled back) and one call at sigma 0 that
writes the finished block; an ARVideoI2V start image is written first by a sigma-0 call.
:func:`install` puts three ModelPatcher mechanisms on a MODEL clone from AR Cache Policy /
Apply Dummy Forcing whose diffusion model is core's ``CausalWanModel`` (nothing is patched
globally; ComfyUI removes the object patches when it unpatches the model):

* wrapper ``SAMPLER_SAMPLE`` (key ``dummy_forcing``): when the sampler is ``ar_video``, plans
  the video (the latent, ``num_frame_per_block``, the start image, the sigmas), checks the
  pack's settings against it (errors name the node and widget, before any pass) and opens a
  :class:`~dummy_forcing_core.video_session.VideoSession` in the run's transformer_options;
  closes it when sampling ends, finished, cancelled or failed, and keeps its statistics for
  Cache Stats (:func:`last_stats`).
* object patch ``diffusion_model.init_kv_caches``: per-layer ``{"end": 0}`` placeholders, so
  core's dense full-length cache is never allocated.
* object patch ``diffusion_model.forward``: a call carrying ``ar_state`` goes to the session:
  the first ``len(sigmas) - 1`` calls of a block are its denoising passes, the next one its
  cache pass, as core's loop makes them. That the cache passes came at sigma 0 (and only
  they) is checked once when the video ends, so no pass waits for the GPU. Other calls go to
  the model's own forward.

A MODEL whose diffusion model is not causal (a plain Wan2.1 checkpoint, without ComfyUI's
``causal_ar`` flag) gets only a ``SAMPLER_SAMPLE`` wrapper that, in core's AR loop, says how to
run it (convert it, or use AR Video Sampler) instead of core's error about missing methods.
What the run needs (the session) lives in the run's transformer_options only while it samples.

The warm start (issue 23) is on in this loop: the runner comes from ``model_loading``'s warm
slot, so re-queuing the same shapes reuses the last video's cache, graphs and weights (a
cancelled or failed run empties the slot). It has no widget here (the loop's nodes are
ComfyUI's); ``DUMMY_FORCING_WARM_START=0`` turns it off for both samplers.
"""
from __future__ import annotations

import types

import torch

import comfy.patcher_extension

from dummy_forcing_core.errors import SettingError, check_finite
from dummy_forcing_core.geometry import ModelGeometry, check_latent
from dummy_forcing_core.sampler import SamplerSettings, check_output, plan_run
from dummy_forcing_core.stats import WAN_FRAMES_PER_LATENT
from dummy_forcing_core.video_session import VideoSession

from . import model_loading
from .node_errors import node_errors

__all__ = ["CACHE_SPEC_KEY", "PROMPT_START_KEY", "is_causal_ar", "install", "last_stats", "frames_per_latent"]

CACHE_SPEC_KEY = "dummy_forcing"           # transformer_options[...] -> CacheSpec (the model's settings)
SESSION_KEY = "dummy_forcing_session"      # transformer_options[...] -> the running video's driver
PROMPT_START_KEY = "dummy_forcing_start"   # a CONDITIONING entry's dict: the latent frame its prompt starts at
HOOK_KEY = "dummy_forcing"
CORE_SAMPLER = "Sampler AR Video"
# who shows a setting in core's loop: owner, or (owner, name) -> node ("guider": CFGGuider's
# inputs and widgets; "i2v": ARVideoI2V's)
OWNERS = {"dummy_forcing": "Apply Dummy Forcing", "cache": "AR Cache Policy", "sampler": CORE_SAMPLER,
          "input": "SamplerCustomAdvanced", ("input", "positive"): "CFGGuider", "guider": "CFGGuider",
          "i2v": "ARVideoI2V"}


def is_causal_ar(model) -> bool:
    """Whether the MODEL's diffusion model is core's causal AR model (CausalWanModel)."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    return callable(getattr(type(dm), "init_kv_caches", None)) and callable(getattr(type(dm), "forward_block", None))


def _wrappers_of(model) -> list:
    get = getattr(model, "get_wrappers", None)
    return get(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, HOOK_KEY) if get is not None else []


def _hooks_of(model) -> "CoreARHooks | None":
    found = _wrappers_of(model)
    return getattr(found[0], "__self__", None) if found else None


def install(model) -> None:
    """Route core's AR loop through the pack on this (cloned) MODEL; once per lineage. A
    non-causal MODEL gets only the wrapper that refuses core's AR loop with the fixes."""
    if _wrappers_of(model):
        return
    if not is_causal_ar(model):
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, HOOK_KEY, _refuse_non_causal)
        return
    dm = model.model.diffusion_model
    hooks = CoreARHooks(types.MethodType(type(dm).forward, dm), ModelGeometry.of(dm).num_layers)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, HOOK_KEY, hooks.sampler_sample)
    model.add_object_patch("diffusion_model.init_kv_caches", hooks.init_kv_caches)
    model.add_object_patch("diffusion_model.forward", hooks.forward)


def frames_per_latent(model) -> int:
    """Video frames per latent frame of the MODEL's latent format (its ``temporal_downscale_ratio``:
    Wan's 4, the tiny model's codec 1); Wan's 4 where the host's formats do not say (0.3.x)."""
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    r = getattr(fmt, "temporal_downscale_ratio", None)
    return r if isinstance(r, int) and not isinstance(r, bool) and r >= 1 else WAN_FRAMES_PER_LATENT


def last_stats(model):
    """The statistics of the last video core's AR loop made with this MODEL (or a clone of it)."""
    hooks = _hooks_of(model)
    return None if hooks is None else hooks.last_stats


def _is_ar_video(sampler) -> bool:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", "") == "sample_ar_video"


def _refuse_non_causal(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper of a non-causal MODEL: core's AR loop cannot run it."""
    if _is_ar_video(executor.class_obj):
        dm = getattr(getattr(guider.model_patcher, "model", None), "diffusion_model", None)
        with node_errors(CORE_SAMPLER, OWNERS):
            raise SettingError("sampler", "model", f"the model ({type(dm).__name__}) is not a causal checkpoint: "
                               "ComfyUI builds its causal model only from a file whose metadata carries the "
                               "'causal_ar' flag. Convert the checkpoint with python -m dummy_forcing_core.convert "
                               "(it writes the flag), or run this model with the pack's AR Video Sampler instead of "
                               "SamplerCustomAdvanced (it runs any Wan2.1 text-to-video checkpoint)")
    return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)


class _CoreLoopDriver:
    """Maps core's model calls onto a VideoSession (see the module docstring)."""

    def __init__(self, session: VideoSession, steps: int):
        self.session, self.steps = session, steps
        self.calls: dict[int, int] = {}
        self.write_t: list[torch.Tensor] = []
        self.predict_t: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, start_frame: int):
        s = self.session
        if s.text is None:
            s.set_prompt(context)
        f0 = int(start_frame)
        chunk = s.plan.chunk_at(f0)
        n = self.calls.get(f0, 0)
        self.calls[f0] = n + 1
        if (chunk is None and n == 0) or (chunk is not None and n == self.steps):
            discarded = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # core drops a cache pass's output
            if x.shape[0] == 1 and s.plan.batch > 1:  # ARVideoI2V encodes one start image for the whole batch
                x, timestep = x.expand(s.plan.batch, *x.shape[1:]), timestep.expand(s.plan.batch)
            self.write_t.append(timestep.detach().reshape(-1)[:1])
            s.write(x, timestep, f0)
            return discarded
        if chunk is None or n > self.steps:
            raise RuntimeError(f"ComfyUI's AR loop called the model in an order this node pack does not know "
                               f"(call {n + 1} at frame {f0}); update the pack or remove Apply Dummy Forcing")
        self.predict_t.append(timestep.detach().reshape(-1)[:1])
        return s.predict(x, timestep, f0)

    def verify(self) -> None:
        """One host sync per video: the cache passes ran at sigma 0, the denoising ones above."""
        bad = (self.write_t and bool(torch.cat(self.write_t).abs().max() != 0)) or \
              (self.predict_t and bool(torch.cat(self.predict_t).min() <= 0))
        if bad:
            raise RuntimeError("ComfyUI's AR loop called the model at other sigmas than this node pack expects "
                               "(cache passes at sigma 0); its output may be wrong: update the pack")


class CoreARHooks:
    """The hooks of one patched MODEL lineage; holds the last video's statistics."""

    def __init__(self, original_forward, num_layers: int):
        self.original_forward = original_forward
        self.num_layers = num_layers
        self.last_stats = None

    def init_kv_caches(self, batch_size, max_seq_len, device, dtype):
        return [{"end": 0} for _ in range(self.num_layers)]

    def forward(self, x, timestep, context=None, *args, transformer_options=None, **kwargs):
        to = transformer_options if transformer_options is not None else {}
        ar_state = to.get("ar_state")
        if ar_state is None:
            return self.original_forward(x, timestep, context, *args, transformer_options=to, **kwargs)
        driver = to.get(SESSION_KEY)
        if driver is None:
            raise RuntimeError("a model from Apply Dummy Forcing / AR Cache Policy was called by an AR loop the node "
                               "pack does not drive; use SamplerCustomAdvanced with Sampler AR Video")
        return driver(x, timestep, context, ar_state["start_frame"])

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        if not _is_ar_video(executor.class_obj):
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        to = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        driver = self._open(executor.class_obj, guider, sigmas, to, tuple(noise.shape))
        to[SESSION_KEY] = driver
        with node_errors(CORE_SAMPLER, OWNERS):  # e.g. the model made NaN while Dummy Forcing profiled it
            try:
                out = executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
            except BaseException:
                model_loading.drop_warm()  # cancelled or failed: nothing is kept for the next run
                raise
            finally:
                to.pop(SESSION_KEY, None)
                stats = driver.session.close()
            model_loading.report_warm(driver.session.runner)
            driver.verify()
            check_output(out)
        stats.frames_per_latent = frames_per_latent(guider.model_patcher)
        self.last_stats = stats
        return out

    def _open(self, sampler, guider, sigmas, to: dict, shape) -> _CoreLoopDriver:
        with node_errors(CORE_SAMPLER, OWNERS):
            spec = to.get(CACHE_SPEC_KEY)
            if spec is None:
                raise SettingError("guider", "model", "the model lost the pack's cache settings; re-create Apply "
                                   "Dummy Forcing")
            cfg = float(getattr(guider, "cfg", 1.0))
            if cfg != 1.0:
                raise SettingError("guider", "cfg", f"'cfg' is {cfg}: the pack's cache runs core's AR loop without "
                                   "CFG, as distilled causal checkpoints are made for; set 'cfg' to 1.0")
            _check_prompt(guider)
            s = [float(v) for v in sigmas.detach().flatten().cpu().tolist()]  # once per video
            if len(s) < 2 or s[-1] != 0.0 or any(v <= 0.0 for v in s[:-1]):
                raise SettingError("input", "sigmas", f"the 'sigmas' {s} must be positive steps ending in one 0 "
                                   "(BasicScheduler, e.g. simple 4 steps)")
            initial = (to.get("ar_config") or {}).get("initial_latent")
            n_init = 0 if initial is None else int(initial.shape[2])
            if initial is not None:
                check_finite(initial, "i2v", "start_image")
            chunk = int(getattr(sampler, "extra_options", {}).get("num_frame_per_block", 1))
            if chunk < 1:
                raise SettingError("sampler", "num_frame_per_block", f"'num_frame_per_block' must be >= 1, got "
                                   f"{chunk}")
            runner = model_loading.make_runner(guider.model_patcher, spec.attention_8bit, True)  # warm
            _check_video_latent(shape, runner.geometry, n_init, spec)
            spec.check_model(runner.geometry)
            settings = SamplerSettings(chunk_frames=chunk, sigmas=tuple(s[:-1]))
            run = plan_run(runner.geometry, shape, settings, spec, n_init, runner.dtype, given_in_one_piece=True)
        session = VideoSession(runner, run.chunks, run.policy, loop="ComfyUI Sampler AR Video")
        return _CoreLoopDriver(session, len(s) - 1)


def _check_prompt(guider) -> None:
    """One positive prompt, untagged (core's loop plays one prompt from frame 0), finite."""
    positive = (getattr(guider, "conds", None) or {}).get("positive") or []
    if len(positive) > 1:
        raise SettingError("guider", "positive", f"the positive conditioning has {len(positive)} entries (combined "
                           "or timestep-ranged prompts); the pack's AR cache runs one prompt per video: give one, or "
                           "use AR Video Sampler for prompts that switch (AR Prompt Start)")
    entry = positive[0] if positive else {}
    start = entry.get(PROMPT_START_KEY)
    if start:
        raise SettingError("guider", "positive", f"the positive prompt is tagged by AR Prompt Start to start at latent "
                           f"frame {start}, but ComfyUI's Sampler AR Video plays one prompt from frame 0 (it has no "
                           "prompt schedule): remove AR Prompt Start, or use AR Video Sampler, which switches prompts")
    context = entry.get("cross_attn")
    if torch.is_tensor(context):
        check_finite(context, "input", "positive")


def _check_video_latent(shape, geometry: ModelGeometry, n_init: int, spec) -> None:
    """The latent SamplerCustomAdvanced samples is a video this model can make with the pack."""
    check_latent(shape, geometry, "latent_image")
    frames = int(shape[2])
    if n_init == 0 and frames == 1 and getattr(spec, "dummy_forcing", None) is not None:
        raise SettingError("input", "latent_image", "the 'latent_image' input is an image latent (one latent frame, "
                           "e.g. Empty Latent Image); Apply Dummy Forcing works on video: connect a video latent, "
                           "EmptyARVideoLatent or EmptyHunyuanLatentVideo (length 81 = 21 latent frames)")
    if n_init >= frames:
        raise SettingError("input", "latent_image", f"the 'latent_image' input has {frames} latent frame(s) and the "
                           f"ARVideoI2V start image fills {n_init}: nothing is left to generate; connect ARVideoI2V's "
                           "LATENT output (or a longer video latent)")
