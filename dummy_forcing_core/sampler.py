"""The pack's autoregressive sampling loop: flow matching, chunk by chunk, over a VideoSession.

For each chunk (``chunk_frames`` latent frames at absolute frame ``f0``)::

    x = noise
    for sigma_k in sigmas:                       # e.g. [1000, 750, 500, 250] warped by shift
        v  = model(x, t = 1000 * sigma_k)         # keys: cached context + this chunk
        x0 = x - sigma_k * v
        x  = (1 - sigma_next) * x0 + sigma_next * fresh_noise   (if a step follows)
    chunk output = x0
    model(x0 at t = context_timestep, commit)     # the cache pass writes the chunk's K/V

A last chunk shorter than ``chunk_frames`` is generated as a shorter chunk. Given start frames
(image-to-video / continuation) are encoded into the cache first and copied to the output
unchanged. Latents here are in the model's space (ComfyUI's ``process_in`` space).

Noise layouts (``SamplerSettings.noise``):

* ``"pack"``: one CPU generator seeded with ``seed``, drawn in a fixed order (per chunk: the
  start noise, then one fresh draw per step that follows), so a seed gives the same video on
  any device;
* ``"comfy"``: ComfyUI's ``sample_ar_video`` with a RandomNoise of the same seed: the start
  noise of every chunk is a slice of one draw over the whole latent (CPU generator seeded
  with ``seed``), fresh noise of chunk ``i``, step ``k`` is drawn on the device from a
  generator seeded with ``seed + 1000 i + k`` (a context re-noise, which core never does, uses
  ``k`` = the number of steps). Same seed, same video in both samplers (on one device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cache_policy import CachePolicy, CacheSpec
from .chunk_plan import ChunkPlan, plan_chunks
from .chunk_runner import ChunkRunner
from .errors import SettingError, model_not_finite
from .geometry import ModelGeometry, check_latent
from .kv_cache import kv_bytes
from .prompt_schedule import PromptSchedule, PromptSwitch
from .stats import GenerationStats
from .video_session import VideoSession, _runs_in

__all__ = ["SamplerSettings", "NOISE_LAYOUTS", "ProgressEvent", "GenerationResult", "RunPlan", "flow_sigmas",
           "plan_run", "generate", "check_output"]

NOISE_LAYOUTS = ("pack", "comfy")


@dataclass(frozen=True)
class SamplerSettings:
    """chunk_frames: latent frames per chunk (3 chunk-wise, 1 frame-wise).
    timesteps: denoising list (0..1000) before the shift warp, or None to use ``steps``
    evenly spaced ones. shift: flow shift (Self Forcing 5, CausVid 8).
    sigmas: explicit denoising sigmas in (0, 1] (a SIGMAS input, shift already applied);
    when set, timesteps / steps / shift are not used.
    context_timestep: timestep of the cache-writing pass (0 = clean, Self Forcing's default).
    seed, noise: see the module docstring.
    recache: at a prompt switch, re-encode the frames the cache holds under the new prompt."""

    chunk_frames: int = 3
    timesteps: tuple[float, ...] | None = (1000.0, 750.0, 500.0, 250.0)
    steps: int = 4
    shift: float = 5.0
    sigmas: tuple[float, ...] | None = None
    context_timestep: float = 0.0
    seed: int = 0
    noise: str = "pack"
    recache: bool = True


@dataclass
class ProgressEvent:
    chunk: int          # 0-based chunk being generated
    num_chunks: int
    step: int           # denoising step within the chunk (0-based)
    num_steps: int
    done: int           # denoising passes done so far in the video
    total: int          # denoising passes of the whole video
    x0: torch.Tensor | None  # current estimate of the chunk [B, C, F_chunk, H, W] (model space); None: re-cache
    frame_start: int    # absolute frame index of the chunk's first frame
    kind: str = "denoise"  # "denoise", or "recache" (a prompt switch's re-cache pass)


@dataclass
class GenerationResult:
    latent: torch.Tensor          # [B, C, F, H, W] model space, float32 (float64 runners: float64)
    stats: GenerationStats


def _err(name: str, message: str) -> SettingError:
    return SettingError("sampler", name, message)


def flow_sigmas(settings: SamplerSettings) -> list[float]:
    """Denoising sigmas: ``settings.sigmas`` as given, else the timesteps warped by the shift,
    sigma' = shift * s / (1 + (shift - 1) * s)."""
    if settings.sigmas is not None:
        s = [float(v) for v in settings.sigmas]
        if not s or any(not math.isfinite(v) or not 0.0 < v <= 1.0 for v in s):
            raise _err("sigmas", f"'sigmas' must be one or more values in (0, 1] (a final 0 is dropped), got {s}")
        if any(b >= a for a, b in zip(s, s[1:])):
            raise _err("sigmas", f"'sigmas' must decrease step by step, got {s}")
        return s
    if settings.timesteps is not None:
        raw = [float(t) / 1000.0 for t in settings.timesteps]
        if not raw:
            raise _err("denoise_timesteps", "'denoise_timesteps' is empty: give at least one timestep, e.g. "
                       "1000,750,500,250 (or empty the widget to use 'steps')")
        if any(not math.isfinite(s) or not 0.0 < s <= 1.0 for s in raw):
            raise _err("denoise_timesteps", f"'denoise_timesteps' values must be in (0, 1000], got "
                       f"{[s * 1000 for s in raw]}")
    else:
        if settings.steps < 1:
            raise _err("steps", f"'steps' must be >= 1, got {settings.steps}")
        raw = [1.0 - i / settings.steps for i in range(settings.steps)]
    if not math.isfinite(settings.shift) or settings.shift <= 0:
        raise _err("shift", f"'shift' must be a number > 0, got {settings.shift}")
    sh = settings.shift
    return [sh * s / (1.0 + (sh - 1.0) * s) for s in raw]


@dataclass
class RunPlan:
    """What a video will do, known before any pass: its pieces, sigmas, the started cache
    policy (fresh per video), its prompt switches, the passes that move the progress bar
    (denoising passes, and re-cache passes planned at each switch: an upper bound that the
    loop tops up to) and a bound of the KV bytes it allocates (memory to ask for)."""

    chunks: ChunkPlan
    sigmas: list[float]
    policy: CachePolicy
    passes: int
    kv_bytes: int
    switches: list[PromptSwitch]
    recache_passes: dict[int, int]  # switch chunk -> planned re-cache passes


def plan_run(geometry: ModelGeometry, shape, settings: SamplerSettings, cache=CacheSpec(), start_frames: int = 0,
             dtype=torch.bfloat16, given_in_one_piece: bool = False, prompts: PromptSchedule | None = None) -> RunPlan:
    """Check the settings against the model and the video and plan it (SettingError first).
    ``cache``: a spec with ``start(geometry, plan)`` (CacheSpec, ProfilingSpec); ``prompts``:
    a prompt schedule (its switches are checked against the video)."""
    check_latent(shape, geometry)
    if settings.noise not in NOISE_LAYOUTS:
        raise _err("noise", f"'noise' must be one of {', '.join(NOISE_LAYOUTS)}, got {settings.noise!r}")
    if not isinstance(settings.seed, int) or settings.seed < 0:
        raise _err("seed", f"'seed' must be a whole number >= 0, got {settings.seed!r}")
    if not math.isfinite(settings.context_timestep) or not 0 <= settings.context_timestep < 1000:
        raise _err("context_timestep", f"'context_timestep' must be in [0, 1000), got {settings.context_timestep}")
    sigmas = flow_sigmas(settings)
    chunks = plan_chunks(shape, settings.chunk_frames, start_frames, given_in_one_piece)
    policy = cache.start(geometry, chunks)
    n = len(chunks.chunks) if policy.last_chunk is None else min(policy.last_chunk + 1, len(chunks.chunks))
    Hh, Ww = chunks.latent_hw
    bound = kv_bytes(policy.head_frames_bound(), chunks.batch, geometry.head_dim, geometry.tokens_per_frame(Hh, Ww),
                     dtype)
    switches = [] if prompts is None else prompts.switches(chunks)
    if switches and not settings.recache and policy.needs_recache_on_switch():
        raise SettingError("dummy_forcing", "reprofile_on_prompt_switch",
                           "'reprofile_on_prompt_switch' profiles the first chunk after a prompt switch over the "
                           "re-cached frames: turn the sampler's 'recache_on_switch' on, or this off")
    recache = {s.chunk: _recache_passes(chunks, policy, s.chunk) if settings.recache else 0 for s in switches}
    return RunPlan(chunks, sigmas, policy, n * len(sigmas) + sum(recache.values()), bound, switches, recache)


def _recache_passes(plan: ChunkPlan, policy: CachePolicy, chunk: int) -> int:
    """Passes a re-cache before ``chunk`` makes at most: runs of kept frames per written piece."""
    history = plan.history_before(chunk)
    kept = policy.kept_frames_bound(history)
    pieces = list(plan.given) + [c for c in plan.chunks if c[0] + c[1] <= history]
    return sum(len(_runs_in(kept, f0, f0 + n)) for f0, n in pieces)


class _PackNoise:
    def __init__(self, settings: SamplerSettings, shape, dtype, device):
        self.gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
        self.dtype, self.device = dtype, torch.device(device)

    def _draw(self, shape) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        if self.device.type == "cuda":  # pinned + async: no host sync in the chunk loop
            return x.pin_memory().to(device=self.device, dtype=self.dtype, non_blocking=True)
        return x.to(device=self.device, dtype=self.dtype)

    def start(self, chunk: int, f0: int, shape) -> torch.Tensor:
        return self._draw(shape)

    def fresh(self, chunk: int, step: int, like: torch.Tensor) -> torch.Tensor:
        return self._draw(like.shape)


class _ComfyNoise:
    def __init__(self, settings: SamplerSettings, shape, dtype, device, initial: torch.Tensor | None):
        self.seed, self.dtype, self.device = int(settings.seed), dtype, torch.device(device)
        if initial is None:  # what RandomNoise(seed) draws (comfy.sample.prepare_noise)
            initial = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(self.seed), dtype=torch.float32)
        if tuple(initial.shape) != tuple(shape):
            raise SettingError("input", "noise", f"the 'noise' input made noise of shape {list(initial.shape)} for a "
                               f"latent of shape {list(shape)}")
        self.initial = initial

    def start(self, chunk: int, f0: int, shape) -> torch.Tensor:
        return self.initial[:, :, f0:f0 + shape[2]].to(device=self.device, dtype=self.dtype)

    def fresh(self, chunk: int, step: int, like: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=like.device).manual_seed(self.seed + chunk * 1000 + step)
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


@torch.no_grad()
def generate(runner: ChunkRunner, context: torch.Tensor | PromptSchedule, shape: tuple[int, int, int, int, int],
             settings: SamplerSettings = SamplerSettings(), cache=CacheSpec(),
             start_latent: torch.Tensor | None = None, start_frames: int = 0, callback=None,
             time_chunks: bool = True, initial_noise: torch.Tensor | None = None,
             given_in_one_piece: bool = False, chunk_done=None) -> GenerationResult:
    """Generate a video latent of ``shape`` = (B, C, F, H, W) for the text ``context``
    [B or 1, L_text, text_dim] (or a PromptSchedule: the prompt switches at the chunks holding
    its start frames, re-caching when ``settings.recache``) with the cache policy ``cache`` (a CacheSpec, or any spec with
    ``start(geometry, plan)``). ``start_latent`` [B, C, >= start_frames, H, W]: its first
    ``start_frames`` frames are given (in chunks, or in one piece with ``given_in_one_piece``,
    as ComfyUI's ARVideoI2V). ``callback(ProgressEvent)`` runs after every denoising step;
    and re-cache pass; raising from it cancels the run (nothing is kept). ``initial_noise``: the whole latent's
    start noise (a NOISE input) for the ``"comfy"`` noise layout. ``chunk_done(f0, x)``
    receives every piece of the video once it is final (given frames, then each chunk, in frame
    order; x [B, C, n, H, W] in model space, never written again): pixels can be decoded while
    later chunks are made. Returns the latent and the run's statistics; later frames stay zero
    when the policy ends the video early."""
    prompts = PromptSchedule.of(context)
    run = plan_run(runner.geometry, shape, settings, cache, start_frames, runner.dtype, given_in_one_piece, prompts)
    plan = run.chunks
    B, C, Fr, Hh, Ww = plan.shape
    if start_frames:
        if start_latent is None or start_latent.shape[2] < start_frames or tuple(start_latent.shape[:2]) != (B, C) \
                or tuple(start_latent.shape[3:]) != (Hh, Ww):
            raise SettingError("sampler", "start_frames",
                               f"giving {start_frames} start frames needs a start latent [{B}, {C}, >= {start_frames}, "
                               f"{Hh}, {Ww}], got {None if start_latent is None else list(start_latent.shape)}")
    if settings.noise == "comfy":
        noise = _ComfyNoise(settings, plan.shape, runner.out_dtype, runner.device, initial_noise)
    else:
        noise = _PackNoise(settings, plan.shape, runner.out_dtype, runner.device)
    work, device = runner.out_dtype, runner.device
    ctx_sigma = float(settings.context_timestep) / 1000.0
    sigmas = run.sigmas
    session = VideoSession(runner, plan, run.policy, time_chunks=time_chunks,
                           keep_written=bool(run.switches) and settings.recache)
    out = torch.zeros(plan.shape, dtype=work, device=device)
    switch_at = {s.chunk: s for s in run.switches}
    done = 0

    def progress(ci, k, steps, x0, f0, kind="denoise"):
        nonlocal done
        done += 1
        if callback is not None:
            callback(ProgressEvent(ci, len(plan.chunks), k, steps, done, run.passes, x0, f0, kind))

    try:
        session.set_prompt(prompts.first)
        for f0, n in plan.given:
            x = start_latent[:, :, f0:f0 + n].to(device=device, dtype=work)
            out[:, :, f0:f0 + n] = x
            session.write(x, torch.zeros(B, device=device, dtype=work), f0)
            if chunk_done is not None:
                chunk_done(f0, x)
        for ci, (f0, n) in enumerate(plan.chunks):
            if ci in switch_at:
                planned = run.recache_passes[ci]
                ran = session.switch_prompt(switch_at[ci].context, ci, settings.recache,
                                            on_pass=lambda: progress(ci, 0, planned, None, f0, "recache"))
                for _ in range(planned - ran):  # fewer frames kept than planned: the bar still ends full
                    progress(ci, 0, planned, None, f0, "recache")
            x = sigmas[0] * noise.start(ci, f0, (B, C, n, Hh, Ww))  # x_s = (1 - s) x0 + s eps, nothing known of x0
            x0 = x
            for k, s in enumerate(sigmas):
                v = session.predict(x, torch.full((B,), s * 1000.0, device=device, dtype=work), f0)
                x0 = x - s * v.to(work)
                progress(ci, k, len(sigmas), x0, f0)
                if k + 1 < len(sigmas):
                    s_next = sigmas[k + 1]
                    x = (1.0 - s_next) * x0 + s_next * noise.fresh(ci, k, x0)
            out[:, :, f0:f0 + n] = x0
            if chunk_done is not None:
                chunk_done(f0, x0)
            xc = x0 if ctx_sigma == 0 else (1.0 - ctx_sigma) * x0 + ctx_sigma * noise.fresh(ci, len(sigmas), x0)
            session.write(xc, torch.full((B,), float(settings.context_timestep), device=device, dtype=work), f0)
            if session.done:
                break
    finally:
        stats = session.close()  # finished or cancelled: the cache and its graphs are freed here
    check_output(out)
    return GenerationResult(out, stats)


def check_output(latent: torch.Tensor) -> None:
    """A video with NaN / inf (one host sync per video): the inputs were checked finite, so the
    model made them; say so rather than hand on a black video."""
    if not bool(torch.isfinite(latent).all()):
        raise model_not_finite()
