"""Frame attention scores: how much attention each head puts on sink / neighbor / current frames.

An :class:`AttentionProfiler` is a probe (see ``docs/DESIGN.md``): the runtime calls
``profiler(layer, q, keys, group)`` from inside self-attention with

* ``q``    [B, H, Lq, D]: the current chunk's queries, RoPE applied;
* ``keys`` [B, H, Lk, D]: ``[cached context | current chunk]``, the last ``Lq`` keys being the chunk;
* ``group``: the layer's (single) :class:`~dummy_forcing_core.kv_cache.HeadGroup`;
  ``group.frame_ids(0)`` is the absolute frame index of each cached frame in storage
  order, each frame being ``group.tpf`` consecutive key tokens.

Per head it takes a random sample of the query rows, computes their full softmax over all
``Lk`` keys (scale ``1/sqrt(D)``, float32, or float64 for float64 inputs) and sums the
probability that falls on

* **sink**: cached frames with absolute index ``< sink_frames`` (or, with ``sink_positions``
  > 0, the first ``sink_positions`` cached frames in storage order: the authors' LongLive
  setting profiles the first chunk of the cached context as "sink" while sink heads keep one frame);
* **neighbor**: the other cached frames (recent history);
* **current**: the chunk's own keys.

Each call contributes, per (layer, head), the mean of those three masses over the batch
and the sampled rows; several calls (chunks, prompts, seeds) are averaged with equal
weight. Sampled rows are processed ``query_slice`` rows at a time, so the attention matrix
of all queries is never held at once (peak extra memory about
``B * H * query_slice * Lk`` floats, further capped by ``max_slice_elements``); on CUDA in
bf16/fp16 the fused SDPA kernels never build that matrix, so all sampled rows go in one call.

Cost on CUDA: nothing in a call waits for the GPU. Rows are drawn on the CPU (reproducible
on any device) and copied from pinned memory without blocking; the time is measured with
CUDA events around each call, read only when :attr:`elapsed_s` is asked for.
"""
from __future__ import annotations

import math
import time

import torch

__all__ = ["AttentionProfiler", "REGIONS"]

REGIONS = ("sink", "neighbor", "current")


def _layer_seed(seed: int, layer: int) -> int:
    """A 63-bit generator seed from the user seed and the layer index (splitmix64 mix)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(layer) + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class AttentionProfiler:
    """Accumulates frame attention scores per (layer, head); use an instance as a probe.

    Args:
        num_layers, num_heads: the model's geometry.
        sink_frames: cached frames with absolute index below this count as sink frames.
        sink_positions: > 0: the first this many cached frames (storage order) are the sink
            region instead, whatever their index.
        sample_fraction: fraction of the chunk's query rows sampled per call (at least 1 row);
            1.0 takes every row.
        seed: sampling seed. Each layer has its own generator seeded from ``seed`` and the
            layer index, created at the layer's first call; successive calls of a layer draw
            fresh rows from it, so a whole profiling run is reproducible.
        query_slice: sampled query rows processed per attention block (memory bound).
        max_slice_elements: also caps a block at this many attention probabilities
            (``B * H * rows * Lk``); ``None``: no cap. Results do not depend on slicing.

    After profiling: :meth:`scores` ([num_layers, num_heads, 3] float32), :attr:`calls`,
    :attr:`layer_calls`, :attr:`elapsed_s`; :attr:`last_rows` holds, per layer, the query
    rows sampled by its latest call.
    """

    def __init__(self, num_layers: int, num_heads: int, sink_frames: int, sample_fraction: float = 0.25,
                 seed: int = 0, query_slice: int = 1024, max_slice_elements: int | None = 1 << 27,
                 sink_positions: int = 0):
        if num_layers < 1 or num_heads < 1:
            raise ValueError(f"profiler needs >= 1 layer and head, got {num_layers} layers x {num_heads} heads")
        if sink_frames < 0 or sink_positions < 0:
            raise ValueError(f"sink_frames and sink_positions must be >= 0, got {sink_frames}, {sink_positions}")
        if not (0.0 < float(sample_fraction) <= 1.0):
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
        if query_slice < 1:
            raise ValueError(f"query_slice must be >= 1, got {query_slice}")
        if max_slice_elements is not None and max_slice_elements < 1:
            raise ValueError(f"max_slice_elements must be >= 1 or None, got {max_slice_elements}")
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.sink_frames = int(sink_frames)
        self.sink_positions = int(sink_positions)
        self.sample_fraction = float(sample_fraction)
        self.seed = int(seed)
        self.query_slice = int(query_slice)
        self.max_slice_elements = max_slice_elements
        self.reset()

    def reset(self):
        """Forget everything measured (and restart the sampling generators)."""
        self._sums = torch.zeros(self.num_layers, self.num_heads, 3, dtype=torch.float64)
        self._finite = None  # device bool: every probed q and k was finite (no sync per call)
        self.layer_calls = torch.zeros(self.num_layers, dtype=torch.long)
        self.calls = 0
        self._cpu_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._values_cache = None
        self.last_rows: dict[int, torch.Tensor] = {}
        self._generators: dict[int, torch.Generator] = {}

    # -- sampling -------------------------------------------------------------------------
    def rows_per_call(self, num_queries: int) -> int:
        return max(1, min(num_queries, int(round(self.sample_fraction * num_queries))))

    def _sample_rows(self, layer: int, num_queries: int) -> torch.Tensor:
        n = self.rows_per_call(num_queries)
        if n >= num_queries:
            return torch.arange(num_queries)
        gen = self._generators.get(layer)
        if gen is None:
            gen = self._generators[layer] = torch.Generator().manual_seed(_layer_seed(self.seed, layer))
        return torch.randperm(num_queries, generator=gen)[:n].sort().values

    # -- the probe --------------------------------------------------------------------------
    def __call__(self, layer: int, q: torch.Tensor, keys: torch.Tensor, group) -> None:
        if q.is_cuda:  # GPU time between two events: no host sync inside the chunk loop
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                with torch.no_grad():
                    self._measure(int(layer), q, keys, group)
            finally:
                end.record()
                self._events.append((start, end))
            return
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                self._measure(int(layer), q, keys, group)
        finally:
            self._cpu_seconds += time.perf_counter() - t0

    @property
    def elapsed_s(self) -> float:
        """Seconds spent profiling: wall time on CPU, GPU time between CUDA events on CUDA
        (reading it waits for the last recorded call to finish)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._cpu_seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events = []
        return self._cpu_seconds

    def _measure(self, layer: int, q: torch.Tensor, keys: torch.Tensor, group) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"profiler was built for {self.num_layers} layers, got layer {layer}")
        if q.ndim != 4 or keys.ndim != 4:
            raise ValueError(f"probe expects q [B, H, Lq, D] and keys [B, H, Lk, D], got {tuple(q.shape)} and "
                             f"{tuple(keys.shape)}")
        B, H, Lq, D = q.shape
        if H != self.num_heads:
            raise ValueError(f"profiler was built for {self.num_heads} heads, the layer has {H}")
        if keys.shape[0] != B or keys.shape[1] != H or keys.shape[3] != D:
            raise ValueError(f"keys {tuple(keys.shape)} do not match queries {tuple(q.shape)}")
        Lk = keys.shape[2]
        ctx = Lk - Lq
        frame_ids = list(group.frame_ids(0)) if ctx else []
        tpf = int(group.tpf)
        if ctx < 0 or len(frame_ids) * tpf != ctx:
            raise ValueError(f"probe: {Lk} keys for {Lq} queries do not match {len(frame_ids)} cached frames of "
                             f"{tpf} tokens")
        device = q.device
        # Region masses = softmax(q k^T / sqrt(D)) @ onehot(region): an attention call whose
        # values are region indicators, so the fused kernel never materialises the
        # [rows, Lk] probabilities. Float64 inputs stay float64; bf16/fp16 accumulate in fp32.
        work = q.dtype if q.dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16) else torch.float32
        values = self._region_values(tuple(frame_ids), tpf, Lq, max(D, 8), (B, H), device, work)

        rows = self._sample_rows(layer, Lq)
        self.last_rows[layer] = rows
        k = keys.to(work)
        fused = q.is_cuda and work in (torch.bfloat16, torch.float16)
        step = rows.numel() if fused else self.query_slice
        if self.max_slice_elements is not None and not fused:
            step = max(1, min(step, self.max_slice_elements // max(1, B * H * Lk)))
        acc = torch.zeros(H, 3, dtype=torch.float64 if work == torch.float64 else torch.float32, device=device)
        rows_dev = rows.pin_memory().to(device, non_blocking=True) if q.is_cuda else rows
        for s in range(0, rows_dev.numel(), step):
            qs = q.index_select(2, rows_dev[s:s + step]).to(work)              # [B, H, s, D]
            mass = torch.nn.functional.scaled_dot_product_attention(qs, k, values)[..., :3]  # [B, H, s, 3]
            acc += mass.to(acc.dtype).sum(dim=(0, 2))
        if self._sums.device != device:
            self._sums = self._sums.to(device)
        self._sums[layer] += (acc / (B * rows.numel())).to(torch.float64)
        # NaN queries can come out of SDPA as 0 masses (seen with torch 2.13's CPU kernel): the
        # scores then look finite, so the inputs' finiteness is kept apart
        finite = torch.isfinite(q).all() & torch.isfinite(keys).all()
        self._finite = finite if self._finite is None else self._finite & finite
        self.layer_calls[layer] += 1
        self.calls += 1

    def _region_values(self, frame_ids: tuple, tpf: int, num_queries: int, vdim: int, batch_heads: tuple,
                       device, dtype) -> torch.Tensor:
        """[B, H, Lk, vdim] one-hot region of every key (0 sink, 1 neighbor, 2 current), built on
        the device once per key layout and reused by every layer of the chunk. Materialised
        (not an ``expand``ed view): fused SDPA kernels reject zero batch/head strides and torch
        would fall back to the math kernel, which builds the whole probability matrix."""
        key = (frame_ids, tpf, num_queries, vdim, batch_heads, str(device), dtype)
        cached = self._values_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        if self.sink_positions > 0:  # by place in the cached context, not by frame index
            fid, bound = torch.arange(len(frame_ids), device=device).repeat_interleave(tpf), self.sink_positions
        else:
            fid, bound = torch.tensor(frame_ids, dtype=torch.long).to(device).repeat_interleave(tpf), self.sink_frames
        region = torch.cat([torch.where(fid < bound, 0, 1),
                            torch.full((num_queries,), 2, dtype=torch.long, device=device)])
        values = torch.nn.functional.one_hot(region, vdim).to(dtype).expand(*batch_heads, -1, -1).contiguous()
        self._values_cache = (key, values)
        return values

    # -- results ----------------------------------------------------------------------------
    @property
    def probed_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self.layer_calls[i] > 0]

    def scores(self) -> torch.Tensor:
        """[num_layers, num_heads, 3] float32: (a_sink, a_neighbor, a_current) averaged over calls;
        NaN where a probed q or k was not finite (the model made NaN / inf)."""
        missing = [i for i in range(self.num_layers) if self.layer_calls[i] == 0]
        if missing:
            what = "no layer was" if len(missing) == self.num_layers else f"layers {missing} were"
            raise RuntimeError(f"attention profiler: {what} probed ({self.calls} calls so far); run at least one "
                               "chunk through the whole model with the profiler as the probe, on an undivided cache")
        self._values_cache = None  # profiling is over: free the device buffer
        s = self._sums.cpu() / self.layer_calls[:, None, None].to(torch.float64)
        s = s / s.sum(dim=-1, keepdim=True).clamp_min(1e-300)
        if self._finite is not None and not bool(self._finite):  # what was measured is not finite
            s = torch.full_like(s, float("nan"))
        return s.to(torch.float32)

    def __repr__(self):
        return (f"AttentionProfiler({self.num_layers}x{self.num_heads}, sink_frames={self.sink_frames}, "
                f"sink_positions={self.sink_positions}, "
                f"sample_fraction={self.sample_fraction}, seed={self.seed}, calls={self.calls}, "
                f"elapsed_s={self.elapsed_s:.3f})")
