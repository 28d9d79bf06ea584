"""KV cache for chunk-by-chunk causal video generation, built for per-head policies.

Layout
------
A :class:`KVCache` holds one :class:`LayerCache` per transformer block. A layer's heads are
split into :class:`HeadGroup` s; all heads of a group attend to the same number of key
tokens, so one attention call serves the whole group. A group stores::

    k, v: [B, H_g, capacity_frames * tokens_per_frame, D]   (preallocated, written in place)
    tokens [0, frames * tpf)                 the cached context (already RoPE-rotated)
    tokens [frames * tpf, + chunk tokens)    scratch: the current chunk's K/V

Rows of a group may follow different :class:`Retention` rules (its :class:`Segment` s) as
long as they always hold the same number of frames; this is how Dummy Forcing packs dummy
heads (a rolling window of recent frames) with sink heads (the first frames) into one call.
A layer's *storage order* is the heads of every group, group after group.

Phases
------
1. ``HeadGroup.write`` (every forward pass of a chunk, from :mod:`~dummy_forcing_core.attention`):
   the chunk's K/V go into the scratch of every group; attention runs over ``[context | chunk]``.
   Denoising passes do this only: the next pass overwrites the scratch.
2. ``KVCache.commit`` (after the cache pass): the scratch becomes context. Each segment keeps
   its first ``sink`` frames forever and its last ``window`` frames (none below ``window_from``);
   older window frames are dropped by shifting the kept ones left in place (block copies that
   never overlap).
   Nothing is reallocated.
3. ``KVCache.regroup`` (once, e.g. at Dummy Forcing's ``ar_start``): builds new groups sized
   to what they keep, copying the kept frames from the old groups, and frees the old.
4. ``KVCache.reset`` (a cache made with ``recycle=True``, between videos of one shape: the warm
   start): back to the state ``create`` left (history 0, the base layout, no flops). A layer
   never regrouped restarts its base groups in place (same buffers and ``uid``: a rolling
   window's CUDA graphs stay valid). A regrouped layer puts the groups it holds aside (*the
   pool*) and gets new base groups (the base lives only until the regroup, as in a first video,
   and its passes cannot be replayed in the next video), unless the cache keeps its base
   (``keep_base``: held through the video, restarted in place, so the first chunks' CUDA
   graphs stay valid); a later ``regroup`` that asks the layer for a group of a pooled spec
   (heads, runs, name, capacity) reuses that group, buffers and ``uid`` included, so CUDA
   graphs that read them stay valid; pooled groups it does not reuse are freed by that regroup.
   Held between videos: the layout the last video ended with (``reserved_bytes``).

This module only stores; attention over it and its FLOP counting live in ``attention.py``.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from .fast_kernels import copy_rows

__all__ = ["Retention", "FULL", "Segment", "GroupSpec", "HeadGroup", "LayerCache", "FlopCounter", "KVCache",
           "kv_bytes"]


@dataclass(frozen=True)
class Retention:
    """What cached heads keep of the past: the video's first ``sink`` frames forever plus
    its most recent ``window`` frames (``None``: every frame, a full cache), the window never
    holding a frame below ``window_from`` (Dummy Forcing's neighbor heads leave the sink
    frames to the sink heads, as the authors' code does)."""

    sink: int = 0
    window: int | None = None
    window_from: int = 0

    def __post_init__(self):
        if self.sink < 0 or (self.window is not None and self.window < 0) or self.window_from < 0:
            raise ValueError(f"sink, window and window_from frames must be >= 0, got sink {self.sink}, window "
                             f"{self.window}, window_from {self.window_from}")

    def describe(self) -> str:
        """Words for a user: 'full', 'sink 3 + window 12', 'last 1 frame', 'nothing'
        (+ ' from frame N' when the window skips the first frames)."""
        if self.window is None:
            return "full" + (f" from frame {self.window_from}" if self.window_from > self.sink else "")
        after = f" from frame {self.window_from}" if self.window and self.window_from > self.sink else ""
        if self.sink and self.window:
            return f"sink {self.sink} + window {self.window}{after}"
        if self.sink:
            return f"first {self.sink} frame{'s' if self.sink > 1 else ''}"
        if self.window:
            return f"last {self.window} frame{'s' if self.window > 1 else ''}{after}"
        return "nothing"

    def kept_frame_ids(self, history: int) -> list[int]:
        """Absolute frame indices held after ``history`` frames were committed, in storage order."""
        return list(_kept_ids(self, history))

    def kept(self, history: int) -> int:
        return len(_kept_ids(self, history))

    def most_kept(self, max_history: int) -> int:
        """The most frames held at any history up to ``max_history``."""
        return _most_kept(self, max_history)

    def capacity_for(self, total_frames: int, chunk_frames: int) -> int:
        """Frames a group must hold over a video of ``total_frames``: the most it keeps plus
        one chunk of scratch (the history before a chunk is at most ``total_frames - 1``)."""
        h = max(total_frames - 1, 0)
        return min(self.most_kept(h), h) + chunk_frames


FULL = Retention()


# memoized (a regroup asks per head row and per layer; Retention is frozen, so hashable)
@functools.lru_cache(maxsize=4096)
def _kept_ids(ret: Retention, history: int) -> tuple[int, ...]:
    static = min(ret.sink, history)
    rest = max(0, history - max(static, ret.window_from))
    win = rest if ret.window is None else min(ret.window, rest)
    return tuple(range(static)) + tuple(range(history - win, history))


@functools.lru_cache(maxsize=1024)
def _most_kept(ret: Retention, max_history: int) -> int:
    return max((len(_kept_ids(ret, h)) for h in range(max_history + 1)), default=0)


class Segment(NamedTuple):
    """Rows [start, stop) of a group and the retention they follow."""

    start: int
    stop: int
    retention: Retention


@dataclass
class GroupSpec:
    """A group to build: original head indices in storage order and its consecutive runs of
    rows with their retention, ``[(row count, Retention), ...]`` summing to ``len(heads)``."""

    heads: list[int]
    runs: list[tuple[int, Retention]]
    name: str = ""

    def capacity_for(self, total_frames: int, chunk_frames: int) -> int:
        return max(ret.capacity_for(total_frames, chunk_frames) for _, ret in self.runs)


def restrict_spec(spec: GroupSpec, keep: set[int]) -> GroupSpec | None:
    """The part of ``spec`` whose heads are in ``keep`` (runs keep their retentions), or None."""
    heads, runs, row = [], [], 0
    for n, ret in spec.runs:
        kept = [h for h in spec.heads[row:row + n] if h in keep]
        row += n
        if kept:
            heads += kept
            runs.append((len(kept), ret))
    return GroupSpec(heads, runs, spec.name) if heads else None


_GROUP_IDS = itertools.count()


class HeadGroup:
    """K/V buffers of heads that share one attention call (see the module docstring)."""

    def __init__(self, spec: GroupSpec, batch: int, head_dim: int, tokens_per_frame: int,
                 capacity_frames: int, dtype, device, history: int = 0):
        if sum(n for n, _ in spec.runs) != len(spec.heads):
            raise ValueError("group runs must cover its heads exactly")
        self.name = spec.name
        self.uid = next(_GROUP_IDS)  # unique per group ever built (part of a layout key)
        self.head_list = list(spec.heads)
        self._heads: torch.Tensor | None = None
        self._device = device
        self.segments: list[Segment] = []
        row = 0
        for n, ret in spec.runs:
            self.segments.append(Segment(row, row + n, ret))
            row += n
        self.tpf = tokens_per_frame
        self.capacity_frames = capacity_frames
        shape = (batch, len(spec.heads), capacity_frames * tokens_per_frame, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.history = history
        kept = {s.retention.kept(history) for s in self.segments}
        if len(kept) > 1:
            raise ValueError(f"rows of one group must hold equal frame counts, got {sorted(kept)}")
        self.frames = kept.pop() if kept else 0
        self.chunk_tokens = 0

    def restart(self, history: int) -> None:
        """Reuse the buffers at ``history`` committed frames (frames by the retentions; nothing
        in the scratch); the caller writes the context it holds."""
        self.history = history
        self.frames = self.segments[0].retention.kept(history) if self.segments else 0
        self.chunk_tokens = 0

    def spec_key(self) -> tuple:
        """What a group built from a spec is: heads, runs, name and capacity (buffers alike)."""
        return _spec_key(self.spec, self.capacity_frames)

    @property
    def heads(self) -> torch.Tensor:
        """Original head indices as a device tensor (built on first use: no host sync at build)."""
        if self._heads is None:
            self._heads = torch.tensor(self.head_list, dtype=torch.long, device=self._device)
        return self._heads

    @property
    def num_heads(self) -> int:
        return len(self.head_list)

    @property
    def spec(self) -> GroupSpec:
        """The spec this group was built from (heads, runs, name)."""
        return GroupSpec(list(self.head_list), [(s.stop - s.start, s.retention) for s in self.segments], self.name)

    def kept_frames(self) -> set[int]:
        """Absolute frames any row of the group holds now."""
        return {f for s in self.segments for f in s.retention.kept_frame_ids(self.history)}

    def frame_ids(self, row: int) -> list[int]:
        for seg in self.segments:
            if seg.start <= row < seg.stop:
                return seg.retention.kept_frame_ids(self.history)
        raise IndexError(row)

    def is_steady(self, chunk_frames: int) -> bool:
        """Whether committing a chunk of ``chunk_frames`` leaves the frame count as it is."""
        return all(s.retention.kept(self.history) == s.retention.kept(self.history + chunk_frames)
                   for s in self.segments)

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the chunk (k, v: [B, H_g, Lc, D]) into the scratch; return the keys and values
        to attend over, views [B, H_g, context + Lc, D]."""
        start = self.frames * self.tpf
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache group '{self.name}' overflow: {end} > {self.k.shape[2]} tokens; "
                               "a chunk is longer than the cache was built for")
        copy_rows(self.k[:, :, start:end], k)
        copy_rows(self.v[:, :, start:end], v)
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
            window_after = ret.kept(new_history) - static_after  # the newest candidates (window_from drops the oldest)
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


def _spec_key(spec: GroupSpec, capacity_frames: int) -> tuple:
    return tuple(spec.heads), tuple((n, ret) for n, ret in spec.runs), spec.name, capacity_frames


def _shift_left(buf: torch.Tensor, start: int, drop: int, keep: int):
    """Move tokens [start + drop, start + drop + keep) to [start, start + keep) along dim 2,
    in blocks of at most ``drop`` tokens so source and destination never overlap."""
    done = 0
    while done < keep:
        n = min(drop, keep - done)
        buf[:, :, start + done:start + done + n].copy_(buf[:, :, start + drop + done:start + drop + done + n])
        done += n


class LayerCache:
    """The head groups of one transformer block and their storage order."""

    def __init__(self, groups: list[HeadGroup], num_heads: int, heads: list[int] | None = None):
        """``heads``: the heads this process holds when the layer's heads are split across
        processes (``head_parallel.py``; default all ``num_heads``)."""
        self.groups = groups
        self.num_heads = num_heads
        covered = sorted(h for g in groups for h in g.head_list)
        want = list(range(num_heads)) if heads is None else sorted(heads)
        if covered != want:
            raise ValueError(f"head groups must cover heads {want} once each, got {covered}")
        self.partial = want != list(range(num_heads))  # the other heads live in other processes
        self.identity = not self.partial and len(groups) == 1 and groups[0].head_list == list(range(num_heads))
        self.order: list[int] = [h for g in groups for h in g.head_list]
        self._order_index: torch.Tensor | None = None
        self.ranges: list[tuple[int, int]] = []
        a = 0
        for g in groups:
            self.ranges.append((a, a + g.num_heads))
            a += g.num_heads

    def order_index(self, device) -> torch.Tensor:
        """``order`` as a device tensor (made on first use)."""
        if self._order_index is None or self._order_index.device != torch.device(device):
            self._order_index = torch.tensor(self.order, dtype=torch.long, device=device)
        return self._order_index

    @property
    def history(self) -> int:
        return self.groups[0].history

    def commit(self):
        for g in self.groups:
            g.commit()


@dataclass
class FlopCounter:
    """Self-attention FLOPs (QK^T and PV) actually done over a cache, and what a full cache
    would have done; counted by :mod:`~dummy_forcing_core.attention`."""

    done: int = 0
    full: int = 0


def kv_bytes(head_frames: int, batch: int, head_dim: int, tokens_per_frame: int, dtype) -> int:
    """Bytes of K and V for ``head_frames`` = sum over (layer, head) of the frames each holds."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * head_frames * batch * head_dim * tokens_per_frame * elem


@dataclass
class KVCache:
    """Self-attention K/V of every layer for one video (see the module docstring).

    Fields: ``layers`` (one LayerCache per block), ``batch``, ``num_heads``, ``head_dim``,
    ``tokens_per_frame``, ``max_chunk_frames`` (the longest piece a pass writes),
    ``total_frames`` (the video's length: what regrouped groups are sized for), ``dtype``,
    ``device``, ``flops`` (attention cost so far). ``history`` counts committed frames.
    Built by :meth:`create` with one group per layer (every head, one retention); possibly
    regrouped once per video.

    Head-parallel (``head_parallel.py``): ``shard_heads(specs)`` -> heads per layer this process
    keeps, asked at the first regroup that names every head; ``local_heads`` is its answer, and
    from then on every layer holds only those heads (``LayerCache.partial``); ``all_specs`` is
    the layout of all processes together.

    Warm start (``recycle``, phase 4 of the module docstring): ``base`` per layer the base
    LayerCache while it is in use (None once regrouped), ``base_spec`` the spec and capacity it
    is built from (what :meth:`reset` returns to), ``pool`` per layer the groups of the layout
    the last video ended with, by :meth:`HeadGroup.spec_key`; ``keep_base``: hold the base
    through a regroup (:meth:`base_bytes` more, for CUDA graphs of the first chunks that stay
    valid in the next video). Not recycling: all empty.
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
    shard_heads: Callable[[list[list[GroupSpec]]], list[list[int]]] | None = None
    local_heads: list[list[int]] | None = None
    all_specs: list[list[GroupSpec]] | None = None
    recycle: bool = False
    base: list[LayerCache | None] = field(default_factory=list)
    base_spec: tuple[GroupSpec, int] | None = None
    pool: list[dict[tuple, HeadGroup]] = field(default_factory=list)
    keep_base: bool = False

    @classmethod
    def create(cls, num_layers: int, num_heads: int, head_dim: int, tokens_per_frame: int,
               max_chunk_frames: int, total_frames: int, retention: Retention = FULL,
               batch: int = 1, dtype=torch.float32, device="cpu", capacity_frames: int | None = None,
               recycle: bool = False) -> "KVCache":
        """``capacity_frames``: frames the initial groups hold (context + scratch); default
        enough for the whole video. A cache regrouped early (Dummy Forcing at ``ar_start``)
        needs the base layout only until then; the regrouped groups are sized for the whole
        video (``total_frames``). ``recycle``: a cache for several videos of this shape
        (:meth:`reset`; module docstring, phase 4)."""
        if max_chunk_frames < 1:
            raise ValueError("chunk size must be >= 1 frame")
        cap = retention.capacity_for(total_frames, max_chunk_frames)
        if capacity_frames is not None:
            if capacity_frames < max_chunk_frames:
                raise ValueError(f"capacity_frames={capacity_frames} cannot hold a chunk of {max_chunk_frames} frames")
            cap = min(cap, int(capacity_frames))
        spec = GroupSpec(list(range(num_heads)), [(num_heads, retention)], name="all")
        layers = [LayerCache([HeadGroup(spec, batch, head_dim, tokens_per_frame, cap, dtype, device)], num_heads)
                  for _ in range(num_layers)]
        cache = cls(layers, batch, num_heads, head_dim, tokens_per_frame, max_chunk_frames, total_frames,
                    dtype, torch.device(device), recycle=recycle)
        if recycle:
            cache.base = list(layers)
            cache.base_spec = (spec, cap)
            cache.pool = [{} for _ in layers]
        return cache

    def reset(self) -> None:
        """Back to the state :meth:`create` left, for the next video of this shape: history 0,
        the base layout, no scratch, FLOPs 0. A layer never regrouped restarts in place; a
        regrouped one pools its groups (a later regroup to the same specs reuses them) and gets
        new base groups, or its kept ones restarted in place (``keep_base``)."""
        if not self.recycle:
            raise RuntimeError("only a cache made with recycle=True can be reset")
        spec, cap = self.base_spec
        for i, layer in enumerate(self.layers):
            if layer is not self.base[i]:
                self.pool[i] = {g.spec_key(): g for g in layer.groups}
            if self.base[i] is None:
                g = HeadGroup(spec, self.batch, self.head_dim, self.tokens_per_frame, cap, self.dtype, self.device)
                self.base[i] = LayerCache([g], self.num_heads)
            self.layers[i] = self.base[i]
            for g in self.base[i].groups:
                g.restart(0)
        self.flops = FlopCounter()
        self.local_heads = self.all_specs = None

    @property
    def history(self) -> int:
        return self.layers[0].history

    # -- what a fused or graphed forward needs to know -------------------------------------
    def layout_key(self) -> tuple:
        """Identifies the buffers and frame counts every pass reads: equal keys, equal shapes
        and addresses (a captured CUDA graph of one key can be replayed for the other)."""
        return tuple(tuple((g.uid, g.frames) for g in layer.groups) for layer in self.layers)

    def is_steady(self, chunk_frames: int) -> bool:
        """Whether committing chunks of ``chunk_frames`` leaves every group's frame count as it is."""
        return all(g.is_steady(chunk_frames) for layer in self.layers for g in layer.groups)

    def scratch_state(self) -> list[int]:
        """Chunk tokens each group's scratch holds (what a pass leaves for commit)."""
        return [g.chunk_tokens for layer in self.layers for g in layer.groups]

    def restore_scratch(self, state: list[int]) -> None:
        """Set the scratch bookkeeping a pass did, for a pass replayed without running Python."""
        groups = [g for layer in self.layers for g in layer.groups]
        if len(groups) != len(state):
            raise ValueError("scratch state of another layout")
        for g, n in zip(groups, state):
            g.chunk_tokens = n

    # -- phases ------------------------------------------------------------------------------
    def commit(self):
        for layer in self.layers:
            layer.commit()

    def layout_specs(self) -> list[list[GroupSpec]]:
        """Per layer, the specs of its groups now (what ``regroup`` would rebuild)."""
        return [[g.spec for g in layer.groups] for layer in self.layers]

    def kept_frames(self) -> list[int]:
        """Every absolute frame some head holds now, in order (head-parallel: some head of
        any process, from the layout every process shares)."""
        if self.all_specs is not None:
            return sorted({f for layer in self.all_specs for sp in layer for _, ret in sp.runs
                           for f in ret.kept_frame_ids(self.history)})
        return sorted(set().union(*(g.kept_frames() for layer in self.layers for g in layer.groups)))

    def regroup(self, specs: list[list[GroupSpec]], source: "KVCache | None" = None,
                source_frames: list[int] | None = None):
        """Replace every layer's groups by new ones built from ``specs[layer]``, copying each
        head's kept frames from where it is now. All frames a new segment keeps must be held
        by the head's current group (e.g. a full or sink + window cache before Dummy Forcing).

        ``source``: copy from another cache instead, one group per layer in head order whose
        context holds the absolute frames ``source_frames`` in order (a re-cache pass over a
        prompt switch's retained frames); this cache keeps its history."""
        if len(specs) != len(self.layers):
            raise ValueError(f"need group specs for {len(self.layers)} layers, got {len(specs)}")
        if self.shard_heads is not None and all(sorted(h for sp in ls for h in sp.heads) == list(range(layer.num_heads))
                                                for ls, layer in zip(specs, self.layers)):
            if self.local_heads is not None and source is None:
                raise ValueError("head-parallel cache: heads cannot move to other processes without a full source")
            self.local_heads = self.shard_heads(specs)
            self.all_specs = specs  # every process's layout: what kept_frames() answers from
        if self.local_heads is not None:  # keep this process's heads only
            specs = [[r for r in (restrict_spec(sp, set(self.local_heads[i])) for sp in ls) if r is not None]
                     for i, ls in enumerate(specs)]

        def where_of(i: int) -> dict:
            if source is None:
                return {h: (g, row) for g in self.layers[i].groups for row, h in enumerate(g.head_list)}
            mapped = _FrameMapped(source.layers[i].groups[0], source_frames)
            return {h: (mapped, h) for h in range(self.layers[i].num_heads)}

        for i, layer_specs in enumerate(specs):  # every check first: a bad spec leaves the cache as it was
            self._check_layer(layer_specs, where_of(i))
        # then layer by layer, each old layer dropped once its copy exists: both layouts are
        # held for one layer at a time, not for the whole model (a 14B model at 480p: ~6 GiB)
        for i, layer_specs in enumerate(specs):
            heads = None if self.local_heads is None else self.local_heads[i]
            self.layers[i] = self._build_layer(i, layer_specs, where_of(i), heads=heads, from_source=source is not None)

    def _check_layer(self, specs: list[GroupSpec], where: dict):
        for spec in specs:
            if sum(n for n, _ in spec.runs) != len(spec.heads):
                raise ValueError("group runs must cover its heads exactly")
            if len({ret.kept(self.history) for _, ret in spec.runs}) > 1:
                raise ValueError(f"rows of one group must hold equal frame counts, got "
                                 f"{sorted({ret.kept(self.history) for _, ret in spec.runs})}")
            rets = [ret for n, ret in spec.runs for _ in range(n)]
            for h, ret in zip(spec.heads, rets):
                src, src_row = where[h]
                missing = sorted(set(ret.kept_frame_ids(self.history)) - set(src.frame_ids(src_row)))
                if missing:
                    raise ValueError(f"cannot regroup: head {h} needs frames {missing} that the cache no longer holds")

    def _build_layer(self, i: int, specs: list[GroupSpec], where: dict, heads: list[int] | None = None,
                     from_source: bool = False) -> LayerCache:
        """``where[head] = (source group, row)``: where each head's kept frames are read from.
        Recycling: a group of the pool (or, copying from another cache, of this layer) with
        the spec's key is reused; the pool's other groups are freed first."""
        history = self.history
        tpf = self.tokens_per_frame
        caps = [spec.capacity_for(self.total_frames, self.max_chunk_frames) for spec in specs]
        layer = self.layers[i]
        reuse: dict[tuple, HeadGroup] = {}
        if self.recycle:
            candidates = dict(self.pool[i])
            if from_source and layer is not self.base[i]:  # the data comes from the other cache: in place
                candidates.update({g.spec_key(): g for g in layer.groups})
            keys = [_spec_key(spec, cap) for spec, cap in zip(specs, caps)]
            reuse = {k: candidates[k] for k in keys if k in candidates}
            self.pool[i] = {}  # what is not reused is freed before anything is allocated
        groups = []
        for spec, cap in zip(specs, caps):
            g = reuse.pop(_spec_key(spec, cap), None) if reuse else None
            if g is None:
                g = HeadGroup(spec, self.batch, self.head_dim, tpf, cap, self.dtype, self.device, history)
            else:
                g.restart(history)
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
                entry = buckets.setdefault((id(src), src_ids, want), [src, [], []])
                entry[1].append(row)
                entry[2].append(src_row)
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
        if self.recycle and not self.keep_base:
            self.base[i] = None  # the base lives until the regroup (reset builds it again)
        return LayerCache(groups, layer.num_heads, heads)

    # -- bytes -----------------------------------------------------------------------------------
    def base_bytes(self) -> int:
        """Bytes of the base layout's buffers held now (recycling; all of them until a regroup)."""
        return sum(g.allocated_bytes() for layer in self.base if layer is not None for g in layer.groups)

    def allocated_bytes(self) -> int:
        """Bytes of the groups in use now."""
        return sum(g.allocated_bytes() for layer in self.layers for g in layer.groups)

    def reserved_bytes(self) -> int:
        """Bytes of every buffer this cache holds: in use and (recycling) in the pool and a kept base."""
        groups = {id(g): g for layer in self.layers for g in layer.groups}
        groups.update({id(g): g for pool in self.pool for g in pool.values()})
        groups.update({id(g): g for layer in self.base if layer is not None for g in layer.groups})
        return sum(g.allocated_bytes() for g in groups.values())

    def held_bytes(self) -> int:
        return sum(g.held_bytes() for layer in self.layers for g in layer.groups)

    def layer_held_bytes(self) -> list[int]:
        return [sum(g.held_bytes() for g in layer.groups) for layer in self.layers]

    def full_cache_bytes(self, frames: int | None = None) -> int:
        """Bytes a full cache of every head would hold for ``frames`` (default: history) frames."""
        frames = self.history if frames is None else frames
        return kv_bytes(len(self.layers) * self.num_heads * frames, self.batch, self.head_dim,
                        self.tokens_per_frame, self.dtype)


class _FrameMapped:
    """A group read as if its frames had the absolute ids ``frames`` (its context is compact)."""

    def __init__(self, group: HeadGroup, frames: list[int]):
        if group.frames != len(frames):
            raise ValueError(f"source holds {group.frames} frames, {len(frames)} named")
        self.group, self.frames = group, list(frames)
        self.k, self.v = group.k, group.v

    def frame_ids(self, row: int) -> list[int]:
        return [self.frames[i] for i in self.group.frame_ids(row)]


def _rows(rows: list[int], device):
    """A slice when the rows are consecutive, else an index tensor on ``device``."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    t = torch.tensor(rows, dtype=torch.long)
    if torch.device(device).type == "cuda":  # from pinned memory: no host sync per index list
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
