"""ComfyUI plumbing shared by the nodes: MODEL / LATENT / CONDITIONING in, the core's types out.

Everything that touches ComfyUI's own modules (model management, progress bars, latent
formats, model sampling) lives here or in ``core_ar_loop.py`` (ComfyUI's own AR loop), so
the node files stay thin and the core never imports comfy. Functions raise the core's
:class:`~dummy_forcing_core.errors.SettingError` naming the input; ``node_errors`` adds
the node that shows it.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import comfy.model_management
import comfy.utils

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.errors import SettingError, check_finite
from dummy_forcing_core.geometry import ModelGeometry, check_latent
from dummy_forcing_core.kv_cache import FULL, Retention
from dummy_forcing_core.prompt_schedule import PromptSchedule, latent_frame_of
from dummy_forcing_core.sampler import RunPlan, SamplerSettings, plan_run

from . import core_ar_loop, model_loading
from .core_ar_loop import CACHE_SPEC_KEY, PROMPT_START_KEY

log = logging.getLogger("dummy_forcing")



# ------------------------------------------------------------------------------------ MODEL
def wan_geometry(model, name: str = "model") -> ModelGeometry:
    """The Wan transformer's geometry, or a SettingError naming the input."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if dm is None or not hasattr(base, "latent_format"):
        raise SettingError("input", name, f"the '{name}' input is not a ComfyUI diffusion model (got "
                           f"{type(model).__name__}); connect a MODEL from Load Diffusion Model (UNETLoader) with a "
                           "Wan2.1 text-to-video checkpoint")
    try:
        geom = ModelGeometry.of(dm)
    except TypeError as e:
        raise SettingError("input", name, f"the '{name}' input is a {type(base).__name__} model ({type(dm).__name__}), "
                           "not a Wan2.1 video transformer. Load a Wan2.1 diffusion model (e.g. a Self Forcing / "
                           f"CausVid / LongLive checkpoint) with Load Diffusion Model. ({e})") from e
    channels = getattr(base.latent_format, "latent_channels", geom.in_dim)
    if geom.in_dim != channels:
        raise SettingError("input", name, f"the '{name}' input takes {geom.in_dim} input channels but its latents have "
                           f"{channels}: image-to-video / control Wan models that concatenate extra channels are not "
                           "supported; load a Wan2.1 text-to-video model (Self Forcing, CausVid, LongLive)")
    return geom


def cache_spec_of(model) -> CacheSpec | None:
    """The CacheSpec that AR Cache Policy / Apply Dummy Forcing attached to this MODEL, if any."""
    opts = getattr(model, "model_options", None) or {}
    spec = (opts.get("transformer_options") or {}).get(CACHE_SPEC_KEY)
    if spec is not None and not isinstance(spec, CacheSpec):
        raise SettingError("input", "model", f"model_options['transformer_options']['{CACHE_SPEC_KEY}'] holds a "
                           f"{type(spec).__name__}, not the pack's cache settings; re-create the Apply Dummy Forcing "
                           "node")
    return spec


def with_cache_spec(model, spec: CacheSpec):
    """A clone of ``model`` carrying ``spec``, with ComfyUI's own AR loop routed through the
    pack where the model has it; the input patcher and its dicts are never touched. Under
    ComfyUI's dynamic VRAM the clone is one whose weights the fused forward can read
    (``model_loading.runnable_clone``)."""
    m = model_loading.runnable_clone(model)
    opts = dict(m.model_options or {})
    to = dict(opts.get("transformer_options") or {})
    to[CACHE_SPEC_KEY] = spec
    opts["transformer_options"] = to
    m.model_options = opts
    core_ar_loop.install(m)
    return m


def model_shift(model) -> tuple[float, str]:
    """(shift, where it came from) of the MODEL's flow sampling: ModelSamplingSD3 / the
    checkpoint's own setting when the model has one that is meant for causal checkpoints
    (ComfyUI's causal AR model: 5), else 5.0, the causal checkpoints' value (a plain Wan2.1
    model says 8, the bidirectional model's default)."""
    ms = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else None
    shift = getattr(ms, "shift", None)
    if "model_sampling" in (getattr(model, "object_patches", None) or {}) and shift is not None:
        return float(shift), "ModelSamplingSD3"
    if shift is not None and core_ar_loop.is_causal_ar(model):
        return float(shift), "the checkpoint (causal AR)"
    return 5.0, "the causal checkpoints' default (the model's own is for bidirectional Wan)"


# ------------------------------------------------------------------------------------ LATENT
def latent_samples(latent, geom: ModelGeometry, name: str = "latent") -> torch.Tensor:
    """The VAE-space samples of a LATENT, checked to be a Wan video latent for this model."""
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise SettingError("input", name, f"the '{name}' input is not a LATENT (a dict with 'samples')")
    x = latent["samples"]
    if x.ndim == 4:
        raise SettingError("input", name, f"the '{name}' input is an image latent {list(x.shape)} [B, C, H, W]; this "
                           "node generates video chunk by chunk and needs a video latent [B, 16, frames, H/8, W/8]: "
                           "use EmptyHunyuanLatentVideo (or a Wan video latent) instead of Empty Latent Image")
    if latent.get("noise_mask") is not None:
        log.warning("the latent's noise_mask is ignored (the whole video is generated)")
    check_latent(x.shape, geom, name)
    return x


def to_model_space(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.latent_format.process_in(x.float())


def to_latent_output(model, x: torch.Tensor, like: dict) -> dict:
    """A LATENT (VAE space, on the intermediate device) from model-space samples."""
    out = {k: v for k, v in like.items() if k not in ("samples", "noise_mask")}
    y = model.model.latent_format.process_out(x.float())
    out["samples"] = y.to(comfy.model_management.intermediate_device())
    return out


def initial_latent_of(model) -> torch.Tensor | None:
    """ARVideoI2V's start image latent (VAE space, [B, C, F, H, W]) carried by the MODEL."""
    opts = getattr(model, "model_options", None) or {}
    return ((opts.get("transformer_options") or {}).get("ar_config") or {}).get("initial_latent")


# ------------------------------------------------------------------------------------ CONDITIONING
def text_dim_of(model) -> int | None:
    te = getattr(model.model.diffusion_model, "text_embedding", None)
    first = te[0] if isinstance(te, torch.nn.Sequential) and len(te) else te
    if getattr(first, "in_features", None):
        return int(first.in_features)
    w = getattr(first, "weight", None)
    return int(w.shape[1]) if torch.is_tensor(w) and w.ndim == 2 else None


def conditioning_contexts(cond, name: str, text_dim: int | None, batch: int) -> list[torch.Tensor]:
    """The text context tensor [1 or batch, L, dim] of every CONDITIONING entry."""
    if not isinstance(cond, (list, tuple)) or not cond:
        raise SettingError("input", name, f"the '{name}' input is empty; connect a CONDITIONING from CLIP Text Encode")
    out = []
    for i, entry in enumerate(cond):
        t = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if not torch.is_tensor(t) or t.ndim != 3:
            raise SettingError("input", name, f"entry {i} of the '{name}' input is not a text conditioning [batch, "
                               f"tokens, dim] (got {type(t).__name__}"
                               f"{'' if not torch.is_tensor(t) else ' of shape ' + str(list(t.shape))})")
        if text_dim is not None and t.shape[-1] != text_dim:
            raise SettingError("input", name, f"the '{name}' conditioning has {t.shape[-1]}-dim tokens but the model's "
                               f"text embedding takes {text_dim} (umT5-XXL for Wan2.1); encode the prompt with a CLIP "
                               "loaded as type 'wan' (umt5_xxl)")
        if t.shape[0] not in (1, batch):
            raise SettingError("input", name, f"the '{name}' conditioning has batch {t.shape[0]} but the latent has "
                               f"batch {batch}; give one prompt (batch 1, used for every video) or one per video "
                               f"({batch})")
        check_finite(t, "input", name)
        out.append(t)
    return out


def tag_prompt_start(cond, start: float, unit: str) -> list:
    """A copy of ``cond`` whose entries say their prompt starts at ``start`` (seconds or latent frames)."""
    check_finite(start, "input", "start")
    if unit == "seconds":
        frame = latent_frame_of(start)
    elif unit == "latent frames":
        if start != int(start):
            raise SettingError("input", "start", f"'start' = {start} latent frames is not a whole frame")
        if start < 0:  # a linked value skips the widget's min
            raise SettingError("input", "start", f"'start' = {start} latent frames is before the video: use 0 (its "
                               "first frame) or later")
        frame = int(start)
    else:
        raise SettingError("input", "unit", f"'unit' must be 'seconds' or 'latent frames', got {unit!r}")
    conditioning_contexts(cond, "conditioning", None, 10 ** 9)  # the same checks as the sampler's
    return [[entry[0], {**entry[1], PROMPT_START_KEY: frame}] for entry in cond]


def prompt_schedule(cond, contexts: list[torch.Tensor], name: str) -> PromptSchedule:
    """The prompts of a CONDITIONING: entries tagged by AR Prompt Start switch in at their frame,
    the one untagged entry starts at 0. Untagged only: the first entry for the whole video."""
    starts = [(entry[1] or {}).get(PROMPT_START_KEY) for entry in cond]
    if all(s is None for s in starts):
        if len(contexts) > 1:
            log.warning("'%s' holds %d conditionings without AR Prompt Start; only the first is used", name,
                        len(contexts))
        return PromptSchedule([(0, contexts[0])], name)
    untagged = [i for i, s in enumerate(starts) if s is None]
    if len(untagged) > 1:
        raise SettingError("input", name, f"'{name}' holds {len(untagged)} prompts without a start: only the first "
                           "prompt may go without AR Prompt Start")
    first = [(0, c) for s, c in zip(starts, contexts) if s is None]  # the untagged prompt plays first
    return PromptSchedule(first + [(int(s), c) for s, c in zip(starts, contexts) if s is not None], name)


# ------------------------------------------------------------------------------------ widgets
def check_float_widgets(owner: str = "sampler", **widgets) -> None:
    """NaN / inf float widgets pass ComfyUI's min/max validation (every comparison with NaN is
    false) and arrive through the API: refuse them by name."""
    for name, value in widgets.items():
        check_finite(float(value), owner, name)


def parse_timesteps(text: str, name: str = "denoise_timesteps") -> tuple[float, ...] | None:
    """"1000,750,500,250" -> (1000.0, 750.0, 500.0, 250.0); empty -> None (use steps)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in re.split(r"[,;]", text)]
    parts = [q for p in parts for q in (p.split() or [""])]
    usage = (f"'{name}' must be a comma-separated list of timesteps in (0, 1000] such as 1000,750,500,250 (or empty "
             f"to use 'steps'), got {text!r}")
    if any(p == "" for p in parts):
        raise SettingError("sampler", name, usage + ": it has an empty item")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise SettingError("sampler", name, usage) from None
    bad = [v for v in vals if not math.isfinite(v) or not 0.0 < v <= 1000.0]
    if bad:
        raise SettingError("sampler", name, f"'{name}' values must be in (0, 1000], got {bad} in {text!r}")
    return vals


def retention_of(cache: str, sink_frames: int, window_frames: int) -> Retention:
    if cache == "full":
        return FULL
    if cache == "sink + window":
        return Retention(int(sink_frames), int(window_frames))
    raise SettingError("cache", "cache", f"'cache' must be 'full' or 'sink + window', got {cache!r}")


def sigmas_of(sigmas) -> tuple[float, ...]:
    """A SIGMAS input [s0, ..., 0] -> the denoising sigmas (the final zeros dropped)."""
    s = [float(v) for v in torch.as_tensor(sigmas).detach().flatten().cpu().tolist()]
    while s and s[-1] == 0.0:
        s.pop()
    if not s:
        raise SettingError("sampler", "sigmas", "the 'sigmas' input has no step above 0; connect BasicScheduler "
                           "(e.g. simple, 4 steps)")
    return tuple(s)


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> IMAGE [1, h, w, 3] float 0..1."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div(255.0).unsqueeze(0)


# ------------------------------------------------------------------------------------ progress
def _preview_settings() -> tuple[bool, int]:
    """(enabled, max size) from ComfyUI's --preview-method / --preview-size (on when unknown)."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args  # noqa: PLC0415 - absent in some hosts
    except Exception:
        return True, 512
    return args.preview_method != LatentPreviewMethod.NoPreviews, int(getattr(args, "preview_size", 512))


def make_previewer(model):
    """x0 [B, C, F, H, W] (model space) -> ("JPEG", PIL.Image, max size) of its last frame through
    the latent format's latent_rgb_factors, or None when previews are off or impossible."""
    enabled, max_size = _preview_settings()
    fmt = getattr(model.model, "latent_format", None)
    factors = getattr(fmt, "latent_rgb_factors", None)
    if not enabled or factors is None:
        return None
    try:
        w = torch.tensor(factors, dtype=torch.float32)                 # [C, 3]
        bias = getattr(fmt, "latent_rgb_factors_bias", None)
        b = torch.tensor(bias, dtype=torch.float32) if bias is not None else torch.zeros(3)
    except Exception:
        return None

    def preview(x0: torch.Tensor):
        try:
            frame = x0[0, :, -1].detach().to(device="cpu", dtype=torch.float32)  # [C, H, W]
            if frame.shape[0] != w.shape[0]:
                return None
            rgb = torch.einsum("chw,cd->hwd", frame, w) + b
            img = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8).numpy()
            return ("JPEG", Image.fromarray(img), max_size)
        except Exception:  # a preview must never break a generation
            return None

    return preview


class Progress:
    """The core's step callback: cancel point, ComfyUI progress bar and latent preview.

    Counts its own calls, so one bar can span several core runs (Profile Heads)."""

    def __init__(self, model, total: int):
        self.total = max(int(total), 1)
        self.done = 0
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.previewer = make_previewer(model)

    def check(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    def __call__(self, event) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.done += 1
        preview = self.previewer(event.x0) if self.previewer is not None and event.x0 is not None else None
        self.pbar.update_absolute(min(self.done, self.total), self.total, preview)


# ------------------------------------------------------------------------------------ a run
@dataclass
class PreparedRun:
    """What a running node needs once its inputs are checked and the model is loaded."""

    runner: ChunkRunner
    samples: torch.Tensor          # the LATENT's samples (VAE space)
    contexts: list[torch.Tensor]   # text contexts [1 or B, L, dim], one per conditioning entry
    plan: RunPlan                  # one video's plan (pieces, passes, KV bytes, prompt switches)
    progress: Progress
    prompts: PromptSchedule | None  # with ``schedule``: the conditioning's prompts and starts


def prepare_run(model, latent, conditioning, conditioning_name: str, settings: SamplerSettings, spec,
                start_frames: int = 0, videos: int = 1, given_in_one_piece: bool = False,
                schedule: bool = False, warm: bool = False) -> PreparedRun:
    """Check every input and setting, plan the video (nothing loaded yet, so a bad setting
    costs nothing), then load the model with room for a chunk and the KV cache. ``videos``:
    how many videos of this plan the node runs (the progress bar spans them all);
    ``schedule``: read the conditioning as a prompt schedule (AR Prompt Start tags); ``warm``:
    the warm start's runner (``model_loading.make_runner``)."""
    geom = wan_geometry(model)
    samples = latent_samples(latent, geom)
    if start_frames and not given_in_one_piece:
        check_finite(samples[:, :, :start_frames], "input", "latent")
    contexts = conditioning_contexts(conditioning, conditioning_name, text_dim_of(model), samples.shape[0])
    prompts = prompt_schedule(conditioning, contexts, conditioning_name) if schedule else None
    plan = plan_run(geom, samples.shape, settings, spec, start_frames, model_loading.compute_dtype(model),
                    given_in_one_piece, prompts)
    progress = Progress(model, plan.passes * videos)
    progress.check()
    B, C, _, Hh, Ww = samples.shape
    runner = model_loading.load_runner(model_loading.runnable(model), (B, C, settings.chunk_frames, Hh, Ww),
                                       plan.kv_bytes, getattr(spec, "attention_8bit", None), warm=warm)
    return PreparedRun(runner, samples, contexts, plan, progress, prompts)
