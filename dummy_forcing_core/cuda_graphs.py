"""CUDA graphs of the fused forward's repeated passes.

A pass is captured when its layout repeats: the same input shapes, text and cache layout
(:meth:`KVCache.layout_key`) as in an earlier chunk (the cache committed in between), or as
earlier in this chunk when the next commits cannot change it (:meth:`KVCache.is_steady`).
From then on it is replayed: the host no longer launches ~700 kernels per pass. Steady-state
chunks (Dummy Forcing after the switch, a full rolling window) repeat their layout and
replay; a growing cache never repeats and stays eager (no capture is wasted on it).

A replay does not run Python, so the host-side bookkeeping of the captured pass is redone by
hand: the scratch state the pass left (:meth:`KVCache.restore_scratch`), the FLOPs it did
(layout-dependent, recorded at capture) and the full-cache FLOPs at the current history
(:func:`attention.count_full_pass`).

Graphs read the video's cache buffers and keep them alive: :meth:`PassGraphs.release` drops
them (the runner does at the end of every video, unless it is warm). A warm runner's next
video of the same shape runs on the same cache object, reset (``KVCache.reset``: same
buffers, and a regroup to the same layout reuses its groups), and the same text buffers
(``TextCache.refill``): the graphs are kept and their keys (cache layout, ``TextCache.uid``)
match again; :meth:`new_video` forgets only which passes were seen (when to capture). A
growing cache's first chunks never repeat within a video but do in the next one, so a warm
runner (``warm``) also captures them: a pass the first time it repeats within its chunk (the
denoising steps share a layout), and a pass the last video ran once (a chunk's cache pass)
at its first run; never evicting a kept graph (at most ``max_graphs``). Every graph is
captured into one memory pool: passes run one after another and a pass's output is valid
until the next pass (``FusedForward.run``), so their activations can share memory. Any
capture failure turns graphs off for good (``error``) and the pass runs eagerly.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from .attention import count_full_pass
from .rope import RopeTable

__all__ = ["PassGraphs", "CAPTURE_LOCK"]

# Held while a graph is captured. Other threads that use CUDA in this process (the overlapped
# decode of pixel_stream) hold it around each step: a stray sync or allocation from another thread
# (cudnn.benchmark, a host copy) during a capture invalidates it.
CAPTURE_LOCK = threading.Lock()


@dataclass
class _GraphEntry:
    graph: object
    x: torch.Tensor        # static inputs, copied into before each replay
    t: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    out: torch.Tensor      # static output
    grid: tuple
    flops_done: int        # attention FLOPs the captured pass did (depends on the layout only)
    scratch: list          # KVCache.scratch_state() after the pass
    keep: tuple            # text K/V and weights the graph reads: kept alive with it
    fn: object = None      # the captured pass as a function (what a replay recomputes; tests)


def _release_if_owner(graphs_ref, owner_ref):
    graphs = graphs_ref()
    if graphs is not None and graphs._owner is owner_ref:
        graphs.release()


class PassGraphs:
    """Captured passes of one runner, for the video whose cache they write (see module doc)."""

    def __init__(self, device: torch.device, max_graphs: int):
        self.device = torch.device(device)
        self.max_graphs = int(max_graphs)
        self._graphs: dict[tuple, _GraphEntry] = {}
        self._uses: dict[tuple, list] = {}
        self._owner = None  # weakref to the KVCache the graphs write into
        self._stream = None
        self._pool = None   # one memory pool for every graph: passes never run at once
        self._last_video: set = set()  # keys the last video ran (a warm start captures them at once)
        self.warm = False  # a warm runner's: capture the passes that repeat in the next video too
        self.error: str | None = None
        self.stats = {"captures": 0, "replays": 0, "eager": 0}

    def release(self):
        """Drop captured graphs (and their memory pool)."""
        self._graphs.clear()
        self._uses.clear()
        self._last_video = set()
        self._owner = None
        self._pool = None

    def new_video(self):
        """A new video starts: forget which passes were seen (graphs stay; see the module doc);
        the passes the last video ran repeat now, so they are captured at their first run while
        there is room for them (never evicting a kept graph)."""
        self._last_video = set(self._uses)
        self._uses.clear()

    def held_bytes(self) -> int:
        """Device memory in the kept graphs' private pools: the allocator's segments of those
        pools (a capture empties the allocator's cache first, so counting reserved memory around
        it undercounts)."""
        if not self._graphs or self.device.type != "cuda" or not torch.cuda.is_available():
            return 0
        pools = set()
        for e in self._graphs.values():
            pool = getattr(e.graph, "pool", None)
            if callable(pool):
                pools.add(tuple(pool()))
        return sum(seg.get("total_size", 0) for seg in torch.cuda.memory_snapshot()
                   if tuple(seg.get("segment_pool_id", ())) in pools)

    def run(self, x, timesteps, rope, cache, text, eager, keep=()):
        """The pass ``eager(x, timesteps, rope, cache, text)`` -> (out, grid), replayed, captured
        or run eagerly on the capture stream; ``keep``: objects a captured graph must outlive."""
        owner = self._owner() if self._owner is not None else None
        if owner is not cache:  # a new video: graphs of the last one are stale
            self.release()
            self._owner = weakref.ref(cache)
            weakref.finalize(cache, _release_if_owner, weakref.ref(self), self._owner)
        key = (tuple(x.shape), x.dtype, tuple(timesteps.shape), timesteps.dtype, tuple(rope.cos.shape), text.uid,
               cache.layout_key())
        entry = self._graphs.get(key)
        if entry is not None:
            return self._replay(entry, x, timesteps, rope, cache, first=False)
        seen = self._uses.setdefault(key, [cache.history, 0])
        seen[1] += 1
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream, main = self._stream, torch.cuda.current_stream(self.device)
        room = len(self._graphs) < self.max_graphs
        repeat = seen[0] != cache.history or (seen[1] > 1 and cache.is_steady(x.shape[2])) or (
            self.warm and room and (seen[1] > 1 or key in self._last_video))
        if not repeat:
            # eager, on the capture stream: the first runs warm up its library handles
            self.stats["eager"] += 1
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                out = eager(x, timesteps, rope, cache, text)
            main.wait_stream(stream)
            out[0].record_stream(main)
            return out
        flops0 = (cache.flops.done, cache.flops.full)
        try:
            entry = self._capture(key, x, timesteps, rope, cache, text, eager, keep)
        except Exception as err:  # noqa: BLE001 - any capture failure: stay eager from now on
            self.error = f"{type(err).__name__}: {err}"
            self.release()
            cache.flops.done, cache.flops.full = flops0
            torch.cuda.synchronize(self.device)
            self.stats["eager"] += 1
            return eager(x, timesteps, rope, cache, text)
        entry.flops_done = cache.flops.done - flops0[0]
        while len(self._graphs) >= self.max_graphs:  # oldest first
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = entry
        return self._replay(entry, x, timesteps, rope, cache, first=True)

    def _capture(self, key, x, timesteps, rope, cache, text, eager, keep) -> _GraphEntry:
        sx, st = x.clone(), timesteps.clone()
        scos, ssin = rope.cos.clone(), rope.sin.clone()

        def fn():
            return eager(sx, st, RopeTable(scos, ssin), cache, text)

        graph = torch.cuda.CUDAGraph()
        with CAPTURE_LOCK, torch.cuda.graph(graph, pool=self._pool, stream=self._stream,
                                            capture_error_mode="thread_local"):
            out, grid = fn()
        if self._pool is None and callable(getattr(graph, "pool", None)):
            self._pool = graph.pool()
        self.stats["captures"] += 1
        return _GraphEntry(graph, sx, st, scos, ssin, out, grid, 0, cache.scratch_state(), (text, keep), fn)

    def _replay(self, entry: _GraphEntry, x, timesteps, rope, cache, first: bool):
        entry.x.copy_(x)
        entry.t.copy_(timesteps)
        entry.cos.copy_(rope.cos)
        entry.sin.copy_(rope.sin)
        entry.graph.replay()
        self.stats["replays"] += 1
        if not first:  # the host-side bookkeeping the captured pass did once
            cache.flops.done += entry.flops_done
            count_full_pass(cache, entry.x.shape[0], entry.out.shape[1])
            cache.restore_scratch(entry.scratch)
        return entry.out, entry.grid
