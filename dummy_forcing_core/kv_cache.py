"""KV cache for chunk-by-chunk causal video generation, built for per-head policies.

Layout
------
A :class:`KVCache` holds one :class:`LayerCache` per transformer block. A layer's heads are
split into :class:`HeadGroup` s; all heads of a group attend to the same number of key
tokens, so one attention call serves the whole group. A group stores::

    k, v: [B, H_g, capacity_frames * tokens_per_frame, D]   (preallocated, written in place)
    tokens [0, frames * tpf)                 the cached context (already RoPE-rotated)
    tokens [frames * tpf, + chunk tokens)    scratch: the current chunk's K/V

Rows of a group may follow different :class:`Retention` rules (``segments``) as long as
they always hold the same number of frames; this is how Dummy Forcing packs dummy heads
(rolling last frame) with sink heads (first frame) into one call.

Phases
------
1. ``LayerCache.attend`` (every forward pass of a chunk): writes the chunk's K/V into the
   scratch of every group and attends over ``[context | chunk]``. Denoising passes do this
   only: the next pass overwrites the scratch.
2. ``KVCache.commit`` (after the clean t = 0 pass): the scratch becomes context. Each
   segment keeps its first ``sink`` frames forever and its last ``window`` frames; older
   window frames are dropped by shifting the kept ones left in place (block copies that
   never overlap). Nothing is reallocated.
3. ``KVCache.regroup`` (once, e.g. at Dummy Forcing's ``ar_start``): builds new groups
   sized to what they keep, copying the kept frames from the old groups, and frees the old.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Retention", "FULL", "HeadGroup", "GroupSpec", "LayerCache", "KVCache"]


@dataclass(frozen=True)
class Retention:
    """What cached heads keep of the past: the video's first ``sink`` frames forever plus
    its most recent ``window`` frames (``None``: every frame, a full cache)."""

    sink: int = 0
    window: int | None = None

    def __post_init__(self):
        if self.sink < 0 or (self.window is not None and self.window < 0):
            raise ValueError(f"sink and window frames must be >= 0, got {self}")

    def kept_frame_ids(self, history: int) -> list[int]:
        """Absolute frame indices held after ``history`` frames were committed, in storage order."""
        static = min(self.sink, history)
        rest = history - static
        win = rest if self.window is None else min(self.window, rest)
        return list(range(static)) + list(range(history - win, history))

    def kept(self, history: int) -> int:
        return len(self.kept_frame_ids(history))

    def capacity(self, max_history: int) -> int:
        return max((self.kept(h) for h in range(max_history + 1)), default=0)


FULL = Retention()


@dataclass
class GroupSpec:
    """A group to build: original head indices in storage order and, per consecutive run of
    rows, its retention, as ``[(n_rows, Retention), ...]`` summing to ``len(heads)``."""

    heads: list[int]
    segments: list[tuple[int, Retention]]
    name: str = ""


class HeadGroup:
    """K/V buffers of heads that share one attention call (see the module docstring)."""

    def __init__(self, spec: GroupSpec, batch: int, head_dim: int, tokens_per_frame: int,
                 capacity_frames: int, dtype, device, history: int = 0):
        if sum(n for n, _ in spec.segments) != len(spec.heads):
            raise ValueError("group segments must cover its heads exactly")
        self.name = spec.name
        self.uid = next(_GROUP_IDS)  # unique per group ever built (keys of captured CUDA graphs)
        self.head_list = list(spec.heads)
        self._heads: torch.Tensor | None = None
        self._device = device
        self.segments: list[tuple[int, int, Retention]] = []
        row = 0
        for n, ret in spec.segments:
            self.segments.append((row, row + n, ret))
            row += n
        self.tpf = tokens_per_frame
        self.capacity_frames = capacity_frames
        shape = (batch, len(spec.heads), capacity_frames * tokens_per_frame, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.history = history
        kept = {ret.kept(history) for _, _, ret in self.segments}
        if len(kept) > 1:
            raise ValueError(f"rows of one group must hold equal frame counts, got {sorted(kept)}")
        self.frames = kept.pop() if kept else 0
        self.chunk_tokens = 0

    @property
    def heads(self) -> torch.Tensor:
        """Original head indices as a device tensor (built on first use: no host sync at build)."""
        if self._heads is None:
            self._heads = torch.tensor(self.head_list, dtype=torch.long, device=self._device)
        return self._heads

    @property
    def num_heads(self) -> int:
        return len(self.head_list)

    def frame_ids(self, row: int) -> list[int]:
        for a, b, ret in self.segments:
            if a <= row < b:
                return ret.kept_frame_ids(self.history)
        raise IndexError(row)

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the chunk (k, v: [B, H_g, Lc, D]) into the scratch; return the keys and values
        to attend over, views [B, H_g, context + Lc, D]."""
        start = self.frames * self.tpf
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache group '{self.name}' overflow: {end} > {self.k.shape[2]} tokens; "
                               "a chunk is longer than the cache was built for")
        self.k[:, :, start:end].copy_(k)
        self.v[:, :, start:end].copy_(v)
        self.chunk_tokens = k.shape[2]
        return self.k[:, :, :end], self.v[:, :, :end]

    def commit(self):
        """Make the scratch chunk part of the context and apply each segment's retention."""
        if self.chunk_tokens % self.tpf:
            raise RuntimeError("chunk is not a whole number of frames")
        c = self.chunk_tokens // self.tpf
        new_history = self.history + c
        kept_after = set()
        for a, b, ret in self.segments:
            static_before = min(ret.sink, self.history)
            static_after = min(ret.sink, new_history)
            window_before = self.frames - static_before
            candidates = window_before + c - (static_after - static_before)
            window_after = candidates if ret.window is None else min(ret.window, candidates)
            drop = candidates - window_after
            if drop and window_after:
                for buf in (self.k, self.v):
                    _shift_left(buf[:, a:b], static_after * self.tpf, drop * self.tpf, window_after * self.tpf)
            kept_after.add(static_after + window_after)
        if len(kept_after) > 1:
            raise RuntimeError(f"group '{self.name}' rows diverged in frame count: {sorted(kept_after)}")
        self.history = new_history
        self.frames = kept_after.pop()
        self.chunk_tokens = 0

    def allocated_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def held_bytes(self) -> int:
        per_token = self.k.shape[0] * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return 2 * per_token * self.frames * self.tpf


def _shift_left(buf: torch.Tensor, start: int, drop: int, keep: int):
    """Move tokens [start + drop, start + drop + keep) to [start, start + keep) along dim 2,
    in blocks of at most ``drop`` tokens so source and destination never overlap."""
    done = 0
    while done < keep:
        n = min(drop, keep - done)
        buf[:, :, start + done:start + done + n].copy_(buf[:, :, start + drop + done:start + drop + done + n])
        done += n


_NULL = contextlib.nullcontext()
_GROUP_IDS = itertools.count()


@dataclass
class FlopCounter:
    """Self-attention FLOPs (QK^T and PV) actually done, and what a full cache would have done."""

    done: int = 0
    full: int = 0


class LayerCache:
    """The head groups of one transformer block."""

    def __init__(self, groups: list[HeadGroup], num_heads: int, flops: FlopCounter):
        self.groups = groups
        self.num_heads = num_heads
        self.flops = flops
        covered = sorted(h for g in groups for h in g.head_list)
        if covered != list(range(num_heads)):
            raise ValueError(f"head groups must cover heads 0..{num_heads - 1} once each, got {covered}")
        self._identity = len(groups) == 1 and groups[0].head_list == list(range(num_heads))
        # storage order: the heads of every group, group after group (see attend_ordered)
        self.order: list[int] = [h for g in groups for h in g.head_list]
        self._order_index: torch.Tensor | None = None  # self.order on the device, made on first use
        self.ranges: list[tuple[int, int]] = []
        a = 0
        for g in groups:
            self.ranges.append((a, a + g.num_heads))
            a += g.num_heads

    def count_full(self, batch: int, tokens: int, heads: int, head_dim: int) -> None:
        """Add what one pass of ``tokens`` queries would cost with a full cache."""
        full_keys = self.groups[0].history * self.groups[0].tpf + tokens
        self.flops.full += 4 * batch * heads * tokens * full_keys * head_dim

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probe=None) -> torch.Tensor:
        """Self-attention of the chunk's queries over [cached context | chunk].

        q, k, v: [B, Lc, H, D], RoPE applied. Returns [B, Lc, H, D] in the original head order.
        ``probe(q, keys, group)`` sees the single group's queries [B, H, Lc, D] and keys; it is
        only available while the layer is one group in head order (before Dummy Forcing).
        """
        if self._identity:
            return self.attend_ordered(q, k, v, probe)
        if probe is not None:
            raise RuntimeError("attention profiling needs the undivided cache (profile before regrouping)")
        if self._order_index is None or self._order_index.device != q.device:
            self._order_index = torch.tensor(self.order, dtype=torch.long, device=q.device)
        order = self._order_index
        grouped = self.attend_ordered(q.index_select(2, order), k.index_select(2, order), v.index_select(2, order))
        return torch.empty_like(grouped).index_copy_(2, order, grouped)

    def attend_ordered(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probe=None,
                       side_stream=None) -> torch.Tensor:
        """Like :meth:`attend`, with q, k, v [B, Lc, H, D] and the result in *storage order*
        (``self.order``: group after group), so each group is a contiguous slice of heads and
        nothing is gathered or scattered. The fast path gets them so by permuting the
        projection weights once per layout. ``probe`` as in :meth:`attend` (identity order).
        ``side_stream`` (CUDA): groups after the first run on it, overlapping the first
        group's attention (the calling stream waits for it before returning)."""
        B, L, H, D = q.shape
        self.count_full(B, L, H, D)
        if probe is not None and not self._identity:
            raise RuntimeError("attention profiling needs the undivided cache (profile before regrouping)")
        if len(self.groups) == 1:
            g = self.groups[0]
            qt = q.transpose(1, 2)
            keys, values = g.write(k.transpose(1, 2), v.transpose(1, 2))
            if probe is not None:
                probe(qt, keys, g)
            self.flops.done += 4 * B * H * L * keys.shape[2] * D
            return F.scaled_dot_product_attention(qt, keys, values).transpose(1, 2)
        out = torch.empty((B, L, H, D), dtype=q.dtype, device=q.device)
        main = None
        if side_stream is not None and q.is_cuda:
            main = torch.cuda.current_stream(q.device)
            side_stream.wait_stream(main)
        for j, (g, (a, b)) in enumerate(zip(self.groups, self.ranges)):
            ctx = torch.cuda.stream(side_stream) if (main is not None and j > 0) else _NULL
            with ctx:
                keys, values = g.write(k[:, :, a:b].transpose(1, 2), v[:, :, a:b].transpose(1, 2))
                self.flops.done += 4 * B * (b - a) * L * keys.shape[2] * D
                out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b].transpose(1, 2), keys,
                                                                values).transpose(1, 2)
        if main is not None:
            main.wait_stream(side_stream)
        return out

    def commit(self):
        for g in self.groups:
            g.commit()


@dataclass
class KVCache:
    """Self-attention K/V of every layer for one video (see the module docstring).

    Built by :meth:`create` with one group per layer (every head, one retention), and
    possibly regrouped once per video. ``history`` counts committed frames.
    """

    layers: list[LayerCache]
    batch: int
    num_heads: int
    head_dim: int
    tokens_per_frame: int
    max_chunk_frames: int
    total_frames: int
    dtype: torch.dtype
    device: torch.device
    flops: FlopCounter = field(default_factory=FlopCounter)

    @classmethod
    def create(cls, num_layers: int, num_heads: int, head_dim: int, tokens_per_frame: int,
               max_chunk_frames: int, total_frames: int, retention: Retention = FULL,
               batch: int = 1, dtype=torch.float32, device="cpu", capacity_frames: int | None = None) -> "KVCache":
        """``capacity_frames``: frames the initial groups hold (context + scratch); default
        enough for the whole video. A cache regrouped early (Dummy Forcing at ``ar_start``)
        needs the base layout only until then; the regrouped groups are sized for the whole
        video (``total_frames``)."""
        if max_chunk_frames < 1:
            raise ValueError("chunk size must be >= 1 frame")
        flops = FlopCounter()
        cap = _capacity(retention, total_frames, max_chunk_frames)
        if capacity_frames is not None:
            if capacity_frames < max_chunk_frames:
                raise ValueError(f"capacity_frames={capacity_frames} cannot hold a chunk of {max_chunk_frames} frames")
            cap = min(cap, int(capacity_frames))
        spec = GroupSpec(list(range(num_heads)), [(num_heads, retention)], name="all")
        layers = [LayerCache([HeadGroup(spec, batch, head_dim, tokens_per_frame, cap, dtype, device)], num_heads, flops)
                  for _ in range(num_layers)]
        return cls(layers, batch, num_heads, head_dim, tokens_per_frame, max_chunk_frames, total_frames,
                   dtype, torch.device(device), flops)

    @staticmethod
    def estimate_bytes(num_layers: int, num_heads: int, head_dim: int, tokens_per_frame: int, max_chunk_frames: int,
                       total_frames: int, retention: Retention = FULL, batch: int = 1, dtype=torch.bfloat16) -> int:
        """Bytes :meth:`create` allocates for these settings (an upper bound of the whole
        video's KV memory: regrouping only ever allocates less)."""
        cap = _capacity(retention, total_frames, max_chunk_frames)
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * batch * num_heads * head_dim * cap * tokens_per_frame * elem

    @property
    def history(self) -> int:
        return self.layers[0].groups[0].history

    def commit(self):
        for layer in self.layers:
            layer.commit()

    def regroup(self, specs: list[list[GroupSpec]]):
        """Replace every layer's groups by new ones built from ``specs[layer]``, copying each
        head's kept frames from where it is now. All frames a new segment keeps must be held
        by the head's current group (e.g. a full or sink + window cache before Dummy Forcing)."""
        if len(specs) != len(self.layers):
            raise ValueError(f"need group specs for {len(self.layers)} layers, got {len(specs)}")
        new_layers = [self._build_layer(layer, layer_specs) for layer, layer_specs in zip(self.layers, specs)]
        self.layers = new_layers  # only now: a failure above leaves the cache as it was

    def _build_layer(self, layer: LayerCache, specs: list[GroupSpec]) -> LayerCache:
        history = self.history
        tpf = self.tokens_per_frame
        where = {h: (g, row) for g in layer.groups for row, h in enumerate(g.head_list)}
        groups = []
        for spec in specs:
            cap = max(_capacity(ret, self.total_frames, self.max_chunk_frames) for _, ret in spec.segments)
            g = HeadGroup(spec, self.batch, self.head_dim, self.tokens_per_frame, cap, self.dtype, self.device, history)
            # rows that keep the same frames and read them from the same source segment are
            # copied together: one gather per run of consecutive frames
            buckets: dict[tuple, list] = {}
            for row, h in enumerate(spec.heads):
                src, src_row = where[h]
                src_ids = tuple(src.frame_ids(src_row))
                want = tuple(g.frame_ids(row))
                missing = sorted(set(want) - set(src_ids))
                if missing:
                    raise ValueError(f"cannot regroup: head {h} needs frames {missing} that the cache no longer holds")
                buckets.setdefault((id(src), src_ids, want), [src, [], []])
                buckets[(id(src), src_ids, want)][1].append(row)
                buckets[(id(src), src_ids, want)][2].append(src_row)
            for (_, src_ids, want), (src, rows, src_rows) in buckets.items():
                pos = {f: i for i, f in enumerate(src_ids)}
                dst_rows = _rows(rows, self.device)
                src_sel = _rows(src_rows, self.device)
                for dst, srcpos, n in _runs([pos[f] for f in want]):  # block copies of consecutive frames
                    d0, d1, s0, s1 = dst * tpf, (dst + n) * tpf, srcpos * tpf, (srcpos + n) * tpf
                    for a, b in ((g.k, src.k), (g.v, src.v)):
                        part = b[:, src_sel, s0:s1] if isinstance(src_sel, slice) else b[:, :, s0:s1].index_select(1, src_sel)
                        if isinstance(dst_rows, slice):
                            a[:, dst_rows, d0:d1].copy_(part)
                        else:
                            a[:, :, d0:d1].index_copy_(1, dst_rows, part)
            groups.append(g)
        return LayerCache(groups, layer.num_heads, self.flops)

    def allocated_bytes(self) -> int:
        return sum(g.allocated_bytes() for layer in self.layers for g in layer.groups)

    def held_bytes(self) -> int:
        return sum(g.held_bytes() for layer in self.layers for g in layer.groups)

    def layer_held_bytes(self) -> list[int]:
        return [sum(g.held_bytes() for g in layer.groups) for layer in self.layers]

    def full_cache_bytes(self, frames: int | None = None) -> int:
        """Bytes a full cache of every head would hold for ``frames`` (default: history) frames."""
        frames = self.history if frames is None else frames
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.batch * self.num_heads * frames * self.tokens_per_frame * self.head_dim * elem


def _rows(rows: list[int], device):
    """A slice when the rows are consecutive, else an index tensor on ``device``."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, dtype=torch.long).to(device)


def _runs(src_positions: list[int]) -> list[tuple[int, int, int]]:
    """[(destination index, source index, length)] of maximal runs where consecutive
    destinations read consecutive sources."""
    runs = []
    for j, p in enumerate(src_positions):
        if runs and runs[-1][1] + runs[-1][2] == p:
            d, s, n = runs[-1]
            runs[-1] = (d, s, n + 1)
        else:
            runs.append((j, p, 1))
    return runs


def _capacity(ret: Retention, total_frames: int, chunk: int) -> int:
    """Frames a group must hold: the most it keeps over the video plus one chunk of scratch."""
    return min(ret.capacity(max(total_frames - 1, 0)), max(total_frames - 1, 0)) + chunk
