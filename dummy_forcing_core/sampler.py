"""The autoregressive sampling loop: flow matching, chunk by chunk, with a KV cache.

For each chunk (``chunk_frames`` latent frames at absolute frame ``f0``)::

    x = noise
    for sigma_k in sigmas:                       # e.g. [1000, 750, 500, 250] warped by shift
        v  = model(x, t = 1000 * sigma_k)         # keys: cached context + this chunk
        x0 = x - sigma_k * v
        x  = (1 - sigma_next) * x0 + sigma_next * fresh_noise   (if a step follows)
    chunk output = x0
    model(x0 at t = context_timestep, commit)     # the clean pass writes the chunk's K/V

The last chunk's cache pass is skipped (nothing reads it). A last chunk shorter than
``chunk_frames`` (frame count not a multiple of the chunk) is generated as a shorter chunk.
Given start frames (image-to-video / continuation) are encoded into the cache first, in
chunks, and copied to the output unchanged. Noise comes from one CPU generator seeded with
``seed`` and is drawn in a fixed order, so a seed gives the same video on any device.
Latents here are in the model's space (ComfyUI's ``process_in`` space).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .kv_cache import FULL, Retention, _capacity
from .stats import GenerationStats
from .transformer import ChunkRunner

__all__ = ["SamplerSettings", "ProgressEvent", "GenerationResult", "flow_sigmas", "plan_chunks", "generate"]


@dataclass(frozen=True)
class SamplerSettings:
    """chunk_frames: latent frames per chunk (3 chunk-wise, 1 frame-wise).
    timesteps: denoising list (0..1000) before the shift warp, or None to use ``steps``
    evenly spaced ones. shift: flow shift (Self Forcing 5, CausVid 8).
    context_timestep: timestep of the cache-writing pass (0 = clean, Self Forcing's default).
    retention: what the cache keeps (full, or sink + rolling window)."""

    chunk_frames: int = 3
    timesteps: tuple[float, ...] | None = (1000.0, 750.0, 500.0, 250.0)
    steps: int = 4
    shift: float = 5.0
    context_timestep: float = 0.0
    retention: Retention = FULL
    seed: int = 0


@dataclass
class ProgressEvent:
    chunk: int          # 0-based chunk being generated
    num_chunks: int
    step: int           # denoising step within the chunk (0-based)
    num_steps: int
    done: int           # model passes done so far in the video
    total: int          # model passes for the whole video
    x0: torch.Tensor    # current estimate of the chunk [B, C, F_chunk, H, W] (model space)
    frame_start: int    # absolute frame index of the chunk's first frame


@dataclass
class GenerationResult:
    latent: torch.Tensor          # [B, C, F, H, W] model space, float32 (float64 runners: float64)
    stats: GenerationStats


def flow_sigmas(settings: SamplerSettings) -> list[float]:
    """Denoising sigmas after the shift warp sigma' = shift * s / (1 + (shift - 1) * s)."""
    if settings.timesteps is not None:
        raw = [float(t) / 1000.0 for t in settings.timesteps]
        if not raw:
            raise ValueError("the denoising list is empty: give at least one timestep, e.g. 1000,750,500,250")
    else:
        if settings.steps < 1:
            raise ValueError(f"steps must be >= 1, got {settings.steps}")
        raw = [1.0 - i / settings.steps for i in range(settings.steps)]
    if any(not 0.0 < s <= 1.0 for s in raw):
        raise ValueError(f"denoising timesteps must be in (0, 1000], got {[s * 1000 for s in raw]}")
    if settings.shift <= 0:
        raise ValueError(f"shift must be > 0, got {settings.shift}")
    sh = settings.shift
    return [sh * s / (1.0 + (sh - 1.0) * s) for s in raw]


def plan_chunks(total_frames: int, chunk_frames: int, start_frames: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(given, generated): lists of (first frame, frame count). Given start frames are
    encoded in chunks of ``chunk_frames``; generation continues after them."""
    if chunk_frames < 1:
        raise ValueError(f"frames per chunk must be >= 1, got {chunk_frames}")
    if total_frames < 1:
        raise ValueError("the latent has no frames")
    if not 0 <= start_frames < total_frames:
        raise ValueError(f"start frames must be in [0, {total_frames - 1}] for a {total_frames}-frame latent "
                         f"(at least one frame must be left to generate), got {start_frames}")
    given = [(f, min(chunk_frames, start_frames - f)) for f in range(0, start_frames, chunk_frames)]
    gen = [(f, min(chunk_frames, total_frames - f)) for f in range(start_frames, total_frames, chunk_frames)]
    return given, gen


class _Noise:
    def __init__(self, seed: int, dtype, device):
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.dtype, self.device = dtype, device

    def __call__(self, shape) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        if torch.device(self.device).type == "cuda":  # pinned + async: no host sync in the chunk loop
            return x.pin_memory().to(device=self.device, dtype=self.dtype, non_blocking=True)
        return x.to(device=self.device, dtype=self.dtype)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(runner: ChunkRunner, context: torch.Tensor, shape: tuple[int, int, int, int, int],
             settings: SamplerSettings = SamplerSettings(), dummy_forcing=None,
             start_latent: torch.Tensor | None = None, start_frames: int = 0,
             callback=None, time_chunks: bool = True, observer=None,
             stop_after_chunk: int | None = None) -> GenerationResult:
    """Generate a video latent of ``shape`` = (B, C, F, H, W) for the text ``context``
    [B or 1, L_text, text_dim]. ``dummy_forcing``: a DummyForcingConfig or None.
    ``start_latent`` [B, C, >= start_frames, H, W]: its first ``start_frames`` frames are given.
    ``callback(ProgressEvent)`` runs after every denoising step; raising from it cancels the
    run (nothing is kept). ``observer`` (instead of ``dummy_forcing``) may watch the cache
    passes: ``observer.probe_for(chunk)`` returns a probe or None and
    ``observer.after_commit(chunk, cache, stats)`` runs after each. ``stop_after_chunk``
    ends the run after that chunk's cache pass (offline profiling); later frames stay
    unset. Returns the latent and the run's statistics."""
    from .dummy_forcing import DummyForcingController

    B, C, Fr, Hh, Ww = shape
    probe_latent = torch.empty((B, C, 1, Hh, Ww))
    from .transformer import check_latent

    check_latent(probe_latent, runner.geometry, "latent")
    given, chunks = plan_chunks(Fr, settings.chunk_frames, start_frames)
    if start_frames:
        if start_latent is None or start_latent.shape[2] < start_frames or tuple(start_latent.shape[:2]) != (B, C) \
                or tuple(start_latent.shape[3:]) != (Hh, Ww):
            raise ValueError(f"start_latent must be [{B}, {C}, >= {start_frames}, {Hh}, {Ww}] to give {start_frames} "
                             f"start frames, got {None if start_latent is None else tuple(start_latent.shape)}")
    if context.ndim != 3 or context.shape[0] not in (1, B):
        raise ValueError(f"text context must be [1 or {B}, tokens, dim], got {tuple(context.shape)}")
    sigmas = flow_sigmas(settings)
    work = torch.float64 if runner.dtype == torch.float64 else torch.float32
    device = runner.device

    controller = observer
    if dummy_forcing is not None:
        if observer is not None:
            raise ValueError("give dummy_forcing or an observer, not both")
        controller = DummyForcingController(dummy_forcing, runner.geometry, settings.chunk_frames, chunks,
                                            settings.retention)
    context = context.expand(B, -1, -1) if context.shape[0] == 1 else context
    text = runner.encode_text(context)
    base_capacity = None
    if dummy_forcing is not None and chunks:
        # the base layout only lives until the regroup after chunk ar_start's cache pass:
        # size it for that (the regrouped groups are sized for the whole video)
        a = min(max(dummy_forcing.ar_start, 0), len(chunks) - 1)
        base_capacity = _capacity(settings.retention, chunks[a][0] + 1, settings.chunk_frames)
    cache = runner.new_cache(B, Hh, Ww, Fr, settings.chunk_frames, settings.retention, capacity_frames=base_capacity)
    stats = GenerationStats.start(runner.geometry, settings, (Hh, Ww), Fr, runner.tokens_per_frame(Hh, Ww),
                                  dummy_forcing)
    noise = _Noise(settings.seed, work, device)
    out = torch.zeros((B, C, Fr, Hh, Ww), dtype=work, device=device)
    ctx_sigma = float(settings.context_timestep) / 1000.0
    total_passes = len(chunks) * len(sigmas)
    done = 0

    try:
        for f0, n in given:
            x = start_latent[:, :, f0:f0 + n].to(device=device, dtype=work)
            out[:, :, f0:f0 + n] = x
            runner.forward(x, torch.zeros(B, device=device), f0, text, cache, commit=True)

        for ci, (f0, n) in enumerate(chunks):
            t_start = time.perf_counter()
            x = noise((B, C, n, Hh, Ww))
            x0 = x
            for k, s in enumerate(sigmas):
                v = runner.forward(x, torch.full((B,), s * 1000.0, device=device, dtype=work), f0, text, cache)
                x0 = x - s * v.to(work)
                done += 1
                if callback is not None:
                    callback(ProgressEvent(ci, len(chunks), k, len(sigmas), done, total_passes, x0, f0))
                if k + 1 < len(sigmas):
                    s_next = sigmas[k + 1]
                    x = (1.0 - s_next) * x0 + s_next * noise(x0.shape)
            out[:, :, f0:f0 + n] = x0
            if ci + 1 < len(chunks) and (stop_after_chunk is None or ci <= stop_after_chunk):
                xc = x0 if ctx_sigma == 0 else (1.0 - ctx_sigma) * x0 + ctx_sigma * noise(x0.shape)
                probe = controller.probe_for(ci) if controller else None
                runner.forward(xc, torch.full((B,), settings.context_timestep, device=device, dtype=work), f0, text,
                               cache, commit=True, probe=probe)
                if controller:
                    controller.after_commit(ci, cache, stats)
            if time_chunks:
                _sync(device)
            stats.chunk_seconds.append(time.perf_counter() - t_start)
            if stop_after_chunk is not None and ci >= stop_after_chunk:
                break

        stats.finish(cache)
    finally:
        runner.end_video()  # a finished or cancelled video: free the graphs that hold its cache
    return GenerationResult(out, stats)
