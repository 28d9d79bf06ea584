"""Dummy Forcing inside a generation: profile at ``ar_start``, program heads, regroup the cache.

Until chunk ``ar_start`` the model runs with the base cache (full, or sink + window). The
clean pass of chunk ``ar_start`` is profiled (unless a :class:`HeadProfile` is given); the
heads are then programmed and every layer's cache is regrouped so that, from the next
chunk on:

| type     | attends to                         | keeps                                |
| sink     | first ``sink_frames`` + chunk      | the sink frames                      |
| neighbor | last ``neighbor_chunks`` chunks    | a rolling window of L chunks (or     |
|          | + chunk                            | ``long_context_frames`` frames)      |
| dummy    | packing on: last ``sink_frames``   | those frames (a rolling window)      |
|          | frames + chunk; off: chunk only    | nothing                              |

With packing, sink and dummy heads hold the same number of frames and share one
attention call (one head group, two row segments); neighbor heads are the second call.
With ``sink_frames`` = 1 (the paper's setting) a dummy head sees the most recent frame.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from .head_program import HeadType, program_heads, resolve_dummy_count
from .kv_cache import GroupSpec, Retention
from .profile import HeadProfile
from .profiler import AttentionProfiler

__all__ = ["DummyForcingConfig", "DummyForcingController", "layer_group_specs", "profile_heads"]

SCOPES = ("global", "per_layer")


@dataclass(frozen=True)
class DummyForcingConfig:
    """dummy_heads: a fraction of all heads (float in [0, 1]) or a count (int).
    scope: pick dummy heads over all layers ("global", the authors' choice) or "per_layer".
    normalise: the authors' normalised cost (a_sink, a_neighbor divided by their sums).
    ar_start: the generated chunk whose clean pass is profiled; the per-head cache starts after it.
    neighbor_chunks: L, chunks a neighbor head keeps. sink_frames: frames a sink head keeps.
    packing: dummy heads see the last ``sink_frames`` frames and share the sink heads' call.
    sample_fraction / profile_seed: query rows sampled when profiling.
    long_context_frames: > 0 gives neighbor heads this many frames instead of L chunks.
    profile: a HeadProfile to use instead of profiling online."""

    dummy_heads: float | int = 0.5
    scope: str = "global"
    normalise: bool = False
    ar_start: int = 1
    neighbor_chunks: int = 1
    sink_frames: int = 1
    packing: bool = True
    sample_fraction: float = 0.25
    profile_seed: int = 0
    long_context_frames: int = 0
    profile: HeadProfile | None = None

    def neighbor_frames(self, chunk_frames: int) -> int:
        return self.long_context_frames if self.long_context_frames > 0 else self.neighbor_chunks * chunk_frames

    def validate(self, geometry, chunk_frames: int, generated_chunks: int, base: Retention,
                 history_at_switch: int) -> int:
        """Check every setting against the model and the video; return the dummy head count."""
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        n = resolve_dummy_count(self.dummy_heads, geometry.num_layers, geometry.num_heads)
        if self.scope == "per_layer" and -(-n // geometry.num_layers) > geometry.num_heads:
            raise ValueError(f"dummy_heads={self.dummy_heads} needs more than {geometry.num_heads} dummy heads in a layer")
        if self.neighbor_chunks < 1:
            raise ValueError(f"neighbor_chunks (L) must be >= 1, got {self.neighbor_chunks}: a neighbor head with no "
                             "history is a dummy head; raise dummy_heads instead")
        if self.long_context_frames < 0:
            raise ValueError(f"long_context_frames must be >= 0 (0 = off), got {self.long_context_frames}")
        if self.sink_frames < 1:
            raise ValueError(f"sink_frames must be >= 1, got {self.sink_frames}")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"profile sample fraction must be in (0, 1], got {self.sample_fraction}")
        if self.ar_start < 1:
            raise ValueError(f"ar_start must be >= 1 (profiling needs at least one cached chunk), got {self.ar_start}")
        if self.ar_start > generated_chunks - 2:
            raise ValueError(f"ar_start={self.ar_start} is beyond the video: it generates {generated_chunks} chunks, so "
                             f"ar_start must be <= {generated_chunks - 2} for any chunk to use Dummy Forcing; "
                             "lower ar_start or make the video longer")
        if self.sink_frames > history_at_switch:
            raise ValueError(f"sink_frames={self.sink_frames} but only {history_at_switch} frames are cached at "
                             f"ar_start={self.ar_start}; lower sink_frames or raise ar_start")
        types = {HeadType.SINK, HeadType.NEIGHBOR, HeadType.DUMMY}
        if self.profile is not None:
            self.profile.check_compatible(geometry)
            types = set(self.profile.assign(n, self.scope, self.normalise).flatten().tolist())
        kept = set(base.kept_frame_ids(history_at_switch))
        needs = {HeadType.SINK: (self.sink_frames, 0), HeadType.NEIGHBOR: (0, self.neighbor_frames(chunk_frames)),
                 HeadType.DUMMY: (0, self.sink_frames if self.packing else 0)}
        for t in sorted(types):
            want = set(Retention(*needs[t]).kept_frame_ids(history_at_switch))
            if not want <= kept:
                raise ValueError(f"at ar_start={self.ar_start} the base cache ({base}) no longer holds frames "
                                 f"{sorted(want - kept)} that {HeadType(t).name.lower()} heads keep; use a full base "
                                 "cache, a larger base sink/window, or smaller sink_frames / neighbor window")
        return n


def layer_group_specs(types: list[int], cfg: DummyForcingConfig, chunk_frames: int) -> list[GroupSpec]:
    """Head groups of one layer from its head types."""
    sink = [h for h, t in enumerate(types) if t == HeadType.SINK]
    dummy = [h for h, t in enumerate(types) if t == HeadType.DUMMY]
    neigh = [h for h, t in enumerate(types) if t == HeadType.NEIGHBOR]
    S = cfg.sink_frames
    specs = []
    if cfg.packing:
        if sink or dummy:
            specs.append(GroupSpec(sink + dummy, [(len(sink), Retention(S, 0)), (len(dummy), Retention(0, S))],
                                   "sink+dummy"))
    else:
        if sink:
            specs.append(GroupSpec(sink, [(len(sink), Retention(S, 0))], "sink"))
        if dummy:
            specs.append(GroupSpec(dummy, [(len(dummy), Retention(0, 0))], "dummy"))
    if neigh:
        specs.append(GroupSpec(neigh, [(len(neigh), Retention(0, cfg.neighbor_frames(chunk_frames)))], "neighbor"))
    return [s for s in specs if s.heads]


class DummyForcingController:
    """Runs Dummy Forcing's once-per-video steps for the sampler."""

    def __init__(self, cfg: DummyForcingConfig, geometry, chunk_frames: int, chunks: list[tuple[int, int]],
                 base: Retention):
        """chunks: the generated chunks as (first frame, frames); validates everything up front."""
        self.cfg = cfg
        self.geometry = geometry
        self.chunk_frames = chunk_frames
        a = min(max(cfg.ar_start, 0), len(chunks) - 1)
        history_at_switch = chunks[a][0] + chunks[a][1]
        self.num_dummy = cfg.validate(geometry, chunk_frames, len(chunks), base, history_at_switch)
        self.profiler: AttentionProfiler | None = None
        self.assignment: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def probe_for(self, chunk: int):
        if chunk != self.cfg.ar_start or self.cfg.profile is not None:
            return None
        g = self.geometry
        self.profiler = AttentionProfiler(g.num_layers, g.num_heads, self.cfg.sink_frames,
                                          self.cfg.sample_fraction, self.cfg.profile_seed)
        return self.profiler

    def after_commit(self, chunk: int, cache, stats) -> None:
        if chunk != self.cfg.ar_start:
            return
        if cache.device.type == "cuda":  # once per video: the profiled pass finishes outside the regroup timer
            torch.cuda.synchronize(cache.device)
        t0 = time.perf_counter()
        if self.cfg.profile is not None:
            self.scores = self.cfg.profile.scores
        else:
            self.scores = self.profiler.scores()
            stats.profile_seconds = self.profiler.elapsed_s
        self.assignment = program_heads(self.scores, self.num_dummy, self.cfg.scope, self.cfg.normalise)
        types = self.assignment.tolist()
        cache.regroup([layer_group_specs(t, self.cfg, self.chunk_frames) for t in types])
        if cache.device.type == "cuda":
            torch.cuda.synchronize(cache.device)
        stats.regroup_seconds = time.perf_counter() - t0
        stats.switch_chunk = chunk + 1
        stats.head_types = types
        stats.head_scores = self.scores.tolist()


class _ProfileChunks:
    """Observer for :func:`generate`: hands the profiler to the cache passes of ``chunks``."""

    def __init__(self, profiler: AttentionProfiler, chunks: range):
        self.profiler, self.chunks = profiler, chunks

    def probe_for(self, chunk: int):
        return self.profiler if chunk in self.chunks else None

    def after_commit(self, chunk, cache, stats):
        pass


def profile_heads(runner, contexts: list[torch.Tensor], shape, settings, seeds: list[int], ar_start: int = 1,
                  num_chunks: int = 1, sink_frames: int = 1, sample_fraction: float = 0.25, profile_seed: int = 0,
                  callback=None) -> HeadProfile:
    """Offline profiling: generate with the base cache for every prompt context x seed, profile
    the clean passes of chunks ``ar_start .. ar_start + num_chunks - 1`` and average them into a
    reusable :class:`HeadProfile`. ``shape`` = (B, C, F, H, W) of the videos to run."""
    from .sampler import generate, plan_chunks

    if not contexts:
        raise ValueError("give at least one prompt to profile with")
    if not seeds:
        raise ValueError("give at least one seed to profile with")
    _, chunks = plan_chunks(shape[2], settings.chunk_frames)
    last = ar_start + num_chunks - 1
    if ar_start < 1 or num_chunks < 1:
        raise ValueError(f"ar_start must be >= 1 and chunks to profile >= 1, got {ar_start} and {num_chunks}")
    if last > len(chunks) - 2:
        raise ValueError(f"profiling chunks {ar_start}..{last} needs a latent of at least {last + 2} chunks "
                         f"({(last + 2) * settings.chunk_frames} frames); the latent has {len(chunks)} chunks")
    if sink_frames > ar_start * settings.chunk_frames:
        raise ValueError(f"sink_frames={sink_frames} is more than the {ar_start * settings.chunk_frames} frames cached "
                         f"before chunk ar_start={ar_start}")
    g = runner.geometry
    profiler = AttentionProfiler(g.num_layers, g.num_heads, sink_frames, sample_fraction, profile_seed)
    observer = _ProfileChunks(profiler, range(ar_start, last + 1))
    for ctx in contexts:
        for seed in seeds:
            run = dataclasses.replace(settings, seed=int(seed))
            generate(runner, ctx, shape, run, observer=observer, stop_after_chunk=last, callback=callback)
    return HeadProfile.from_profiler(profiler, g, {
        "ar_start": ar_start, "chunks_profiled": num_chunks, "chunk_frames": settings.chunk_frames,
        "prompts": len(contexts), "seeds": [int(s) for s in seeds], "latent_shape": list(shape),
    })
