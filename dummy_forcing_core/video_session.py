"""One video's state, driven by any AR loop: the pack's sampler or ComfyUI's ``sample_ar_video``.

A :class:`VideoSession` owns what lives for exactly one video: the text K/V, the KV cache,
the cache policy (``cache_policy.py``) and the statistics. Phases, per piece of the
:class:`~dummy_forcing_core.chunk_plan.ChunkPlan`:

* given pieces (start frames, a start image): :meth:`write` once;
* each generated chunk: :meth:`predict` once per denoising pass (reads the cache, writes
  only its scratch), then :meth:`write` once (the cache pass: the policy's probe, the
  commit, the policy's ``after_commit``). The last chunk's cache pass is skipped: nothing
  reads it;
* :meth:`close` when the video ends, finished, cancelled or failed: the statistics are
  filled and the cache, and the runner's CUDA graphs that read it, are freed.

A chunk's time runs from its first :meth:`predict` to its :meth:`write`.
"""
from __future__ import annotations

import time

import torch

from .cache_policy import CachePolicy
from .chunk_plan import ChunkPlan
from .chunk_runner import ChunkRunner
from .errors import SettingError
from .geometry import check_latent
from .stats import GenerationStats
from .wan_blocks import TextCache

__all__ = ["VideoSession"]


class VideoSession:
    def __init__(self, runner: ChunkRunner, plan: ChunkPlan, policy: CachePolicy, loop: str = "AR Video Sampler",
                 time_chunks: bool = True):
        check_latent(plan.shape, runner.geometry)
        B, _, Fr, Hh, Ww = plan.shape
        self.runner, self.plan, self.policy = runner, plan, policy
        self.time_chunks = time_chunks
        self.cache = runner.new_cache(B, Hh, Ww, Fr, plan.max_piece, policy.base, capacity_frames=policy.base_capacity())
        self.stats = GenerationStats.start(runner.geometry, plan, policy.base, policy.describe(), loop)
        self.text: TextCache | None = None
        self.last_written: int | None = None  # the last generated chunk whose write() ran
        self._chunk_t0: float | None = None
        self._closed = False

    @property
    def done(self) -> bool:
        """The policy wants no more chunks (e.g. offline profiling after its last chunk)."""
        last = self.policy.last_chunk
        return last is not None and self.last_written is not None and self.last_written >= last

    def set_prompt(self, context: torch.Tensor) -> None:
        """The text context [1 or B, L_text, text_dim] every following pass attends to."""
        B = self.plan.batch
        if context.ndim != 3 or context.shape[0] not in (1, B):
            raise SettingError("input", "positive", f"the text conditioning must be [1 or {B}, tokens, dim], got "
                               f"{list(context.shape)}")
        self.text = self.runner.encode_text(context.expand(B, -1, -1) if context.shape[0] == 1 else context)

    def _check(self, x: torch.Tensor) -> None:
        if self.text is None:
            raise RuntimeError("set_prompt() must come before the first pass")
        if self._closed:
            raise RuntimeError("the video session is closed")
        if x.shape[0] != self.plan.batch:
            raise ValueError(f"a pass of batch {x.shape[0]} in a video of batch {self.plan.batch} (classifier-free "
                             "guidance batches two; distilled causal models run with CFG 1)")

    def predict(self, x: torch.Tensor, timesteps: torch.Tensor, start_frame: int) -> torch.Tensor:
        """A denoising pass: flow prediction of the chunk ``x`` at ``start_frame``."""
        self._check(x)
        if self._chunk_t0 is None:
            self._chunk_t0 = time.perf_counter()
        return self.runner.forward(x, timesteps, start_frame, self.text, self.cache)

    def write(self, x: torch.Tensor, timesteps: torch.Tensor, start_frame: int) -> None:
        """The cache pass of a given piece or of a finished chunk (its clean or re-noised x0)."""
        self._check(x)
        chunk = self.plan.chunk_at(start_frame)
        if chunk is None or chunk + 1 < len(self.plan.chunks):
            probe = None if chunk is None else self.policy.probe_for(chunk)
            self.runner.forward(x, timesteps, start_frame, self.text, self.cache, commit=True, probe=probe)
            if chunk is not None:
                self.policy.after_commit(chunk, self.cache, self.stats)
        if chunk is not None:
            self.last_written = chunk
            if self.time_chunks and self.cache.device.type == "cuda":
                torch.cuda.synchronize(self.cache.device)
            t0 = self._chunk_t0 if self._chunk_t0 is not None else time.perf_counter()
            self.stats.chunk_seconds.append(time.perf_counter() - t0)
            self._chunk_t0 = None

    def close(self) -> GenerationStats:
        """End the video (idempotent): fill the statistics, free the cache and the graphs."""
        if not self._closed:
            self._closed = True
            try:
                self.stats.finish(self.cache)
            finally:
                self.runner.end_video()
                self.cache = None
                self.text = None
        return self.stats
