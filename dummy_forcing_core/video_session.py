"""One video's state, driven by any AR loop: the pack's sampler or ComfyUI's ``sample_ar_video``.

A :class:`VideoSession` owns what lives for exactly one video: the text K/V, the KV cache,
the cache policy (``cache_policy.py``) and the statistics. Phases, per piece of the
:class:`~dummy_forcing_core.chunk_plan.ChunkPlan`:

* given pieces (start frames, a start image): :meth:`write` once;
* each generated chunk: :meth:`predict` once per denoising pass (reads the cache, writes
  only its scratch), then :meth:`write` once (the cache pass: the policy's probe, the
  commit, the policy's ``after_commit``). The last chunk's cache pass is skipped: nothing
  reads it;
* :meth:`switch_prompt` between two chunks (a prompt schedule): the text K/V are swapped
  and, with ``recache``, the frames the cache still holds are re-encoded under the new prompt:
  one pass per run of consecutive kept frames of a written piece, block-causal among them, at
  their absolute positions, into a temporary full cache that then refills the cache's layout
  (``KVCache.regroup(..., source=...)``). That temporary cache stays until the next chunk's
  write: a policy that re-profiles after the switch (Dummy Forcing) probes that chunk over it;
* :meth:`close` when the video ends, finished, cancelled or failed: the statistics are
  filled and the cache, and the runner's CUDA graphs that read it, are freed; a warm runner
  (``ChunkRunner(warm=True)``) keeps them for its next video when this one *finished* (its last
  chunk written, or the policy's last chunk) and drops everything it kept otherwise.

A chunk's time runs from its first :meth:`predict` to its :meth:`write`. To re-cache, the
session keeps what each piece's cache pass was given (its latent and timesteps) while any of
its frames is still cached (``keep_written``).
"""
from __future__ import annotations

import time

import torch

from .cache_policy import CachePolicy
from .chunk_plan import ChunkPlan
from .chunk_runner import ChunkRunner
from .errors import SettingError
from .geometry import check_latent
from .kv_cache import FULL, KVCache
from .stats import GenerationStats
from .wan_blocks import TextCache

__all__ = ["VideoSession"]


class VideoSession:
    def __init__(self, runner: ChunkRunner, plan: ChunkPlan, policy: CachePolicy, loop: str = "AR Video Sampler",
                 time_chunks: bool = True, keep_written: bool = False):
        check_latent(plan.shape, runner.geometry)
        B, _, Fr, Hh, Ww = plan.shape
        self.runner, self.plan, self.policy = runner, plan, policy
        self.time_chunks = time_chunks
        self.cache = runner.start_video(B, Hh, Ww, Fr, plan.max_piece, policy.base,
                                        capacity_frames=policy.base_capacity())
        self.stats = GenerationStats.start(runner.geometry, plan, policy.base, policy.describe(), loop)
        self.text: TextCache | None = None
        self.last_written: int | None = None  # the last generated chunk whose write() ran
        self.keep_written = keep_written
        self._written: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # first frame -> (x, timesteps)
        self._full_view: tuple[KVCache, list[int]] | None = None  # a re-cache's full cache and its frames
        self._chunk_t0: float | None = None
        self._closed = False

    @property
    def finished(self) -> bool:
        """Every chunk was written (or the policy's last): the video ran to its end."""
        last = len(self.plan.chunks) - 1
        return self.done or (self.last_written is not None and self.last_written >= last)

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
            source = None
            if probe is not None and not self.cache.layers[0].identity:  # per-head cache: probe the full view
                source = self._probe_full_view(x, timesteps, start_frame, probe)
                probe = None
            self.runner.forward(x, timesteps, start_frame, self.text, self.cache, commit=True, probe=probe)
            if self.keep_written:
                self._keep(x, timesteps, start_frame)
            if chunk is not None:
                self.policy.after_commit(chunk, self.cache, self.stats, source)
        self._full_view = None
        if chunk is not None:
            self.last_written = chunk
            self._sync()
            t0 = self._chunk_t0 if self._chunk_t0 is not None else time.perf_counter()
            self.stats.chunk_seconds.append(time.perf_counter() - t0)
            self._chunk_t0 = None

    def _sync(self) -> None:
        if self.time_chunks and self.cache.device.type == "cuda":
            torch.cuda.synchronize(self.cache.device)

    # -- prompt switches ---------------------------------------------------------------------
    def switch_prompt(self, context: torch.Tensor, chunk: int, recache: bool = True, on_pass=None) -> int:
        """Use ``context`` from generated chunk ``chunk`` on; returns the re-cache passes run
        (``on_pass()`` after each: progress and cancel). Its ``seconds`` in the statistics are
        GPU time too when chunks are timed (``time_chunks``)."""
        self._sync()
        t0 = time.perf_counter()
        self.set_prompt(context)
        passes = self._recache(on_pass) if recache and self.cache.history else 0
        self._sync()
        self.stats.prompt_switches.append({"chunk": chunk, "frame": self.plan.chunks[chunk][0], "recache": recache,
                                           "recache_passes": passes, "seconds": time.perf_counter() - t0})
        self.policy.on_prompt_switch(chunk)
        return passes

    def _keep(self, x, timesteps, start_frame) -> None:
        self._written[start_frame] = (x, timesteps)
        kept = set(self.cache.kept_frames())
        for f0 in [f for f, (w, _) in self._written.items() if not kept & set(range(f, f + w.shape[2]))]:
            del self._written[f0]

    def _recache(self, on_pass) -> int:
        if not self.keep_written:
            raise RuntimeError("a re-cache needs the session made with keep_written=True")
        frames = self.cache.kept_frames()
        B, _, _, Hh, Ww = self.plan.shape
        full = self.runner.new_cache(B, Hh, Ww, len(frames) + 1, self.plan.max_piece, FULL)
        kept, passes = set(frames), 0
        for f0 in sorted(self._written):
            x, t = self._written[f0]
            for a, b in _runs_in(kept, f0, f0 + x.shape[2]):
                tt = t[:, a - f0:b - f0] if t.ndim == 2 else t
                self.runner.forward(x[:, :, a - f0:b - f0], tt, full.history, self.text, full, commit=True, position=a)
                passes += 1
                if on_pass is not None:
                    on_pass()
        if full.history != len(frames):
            raise RuntimeError(f"re-cache: {full.history} of the {len(frames)} kept frames were re-encoded")
        self.cache.regroup(self.cache.layout_specs(), source=full, source_frames=frames)
        self._full_view = (full, frames)
        return passes

    def _probe_full_view(self, x, timesteps, start_frame, probe):
        """The chunk's cache pass over the re-cache's full view, probed (absolute frame ids);
        returns (that cache, its frames) for the policy to regroup from."""
        if self._full_view is None:
            raise RuntimeError("profiling a per-head cache needs the full view a prompt switch's re-cache leaves")
        full, frames = self._full_view

        def absolute(layer, q, keys, group):
            return probe(layer, q, keys, _Absolute(group, frames))

        self.runner.forward(x, timesteps, full.history, self.text, full, commit=True, probe=absolute,
                            position=start_frame)
        return full, frames + list(range(start_frame, start_frame + x.shape[2]))

    def close(self) -> GenerationStats:
        """End the video (idempotent): fill the statistics, free the cache and the graphs."""
        if not self._closed:
            self._closed = True
            finished = False
            try:
                self.stats.finish(self.cache)
                finished = self.finished
            finally:
                self.runner.end_video(self.cache, finished)
                self.cache = None
                self.text = None
                self._written.clear()
                self._full_view = None
        return self.stats


def _runs_in(kept: set[int], a: int, b: int) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive frames of [a, b) that are in ``kept``."""
    runs, start = [], None
    for f in range(a, b + 1):
        if f < b and f in kept:
            start = f if start is None else start
        elif start is not None:
            runs.append((start, f))
            start = None
    return runs


class _Absolute:
    """A one-group layer of a full view read with absolute frame ids (what a probe needs)."""

    def __init__(self, group, frames: list[int]):
        self.tpf = group.tpf
        self._ids = [frames[i] for i in group.frame_ids(0)]

    def frame_ids(self, row: int) -> list[int]:
        return self._ids
