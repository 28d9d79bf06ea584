"""Dummy Forcing inside a video: profile at ``ar_start``, program heads, regroup the cache.

Until chunk ``ar_start`` the model runs with the base cache (full, or sink + window). The
cache pass of chunk ``ar_start`` is profiled (unless a :class:`HeadProfile` is given); the
heads are then programmed and every layer's cache is regrouped so that, from the next chunk
on, each head keeps what its type keeps (:meth:`DummyForcingConfig.head_retentions`, the
one table of it):

| type     | attends to                           | keeps                                        |
| sink     | first ``sink_frames`` + chunk        | the sink frames                              |
| neighbor | last ``neighbor_chunks`` chunks      | a rolling window of L chunks (or             |
|          | + chunk                              | ``long_context_frames`` frames); with        |
|          |                                      | ``neighbor_skips_sink`` never the sink frames|
| dummy    | packing on: the *dummy window* (last | those frames; packing off: nothing           |
|          | ``sink_frames`` frames) + chunk      |                                              |

With packing, sink and dummy heads hold the same number of frames and share one attention
call (one head group, two row segments); neighbor heads are the second call. With
``sink_frames`` = 1 (the paper's setting) a dummy head sees the most recent frame.

The defaults are the authors' method (csguoh/DummyForcing): normalised cost, global choice,
neighbor windows without the sink frames. :data:`PRESETS` hold their settings per model
family (:meth:`DummyForcingConfig.with_preset`); LongLive's also sets the authors' cache
before ``ar_start`` (``warmup_cache``: sink frames + the last L chunks) and their profiled
sink region (``profile_sink_frames`` = 3: the first chunk of the cached context).

Setting names are Apply Dummy Forcing's widget names; errors are
:class:`~dummy_forcing_core.errors.SettingError` s of owner ``"dummy_forcing"``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from .attention_profiler import AttentionProfiler
from .chunk_plan import ChunkPlan
from .errors import SettingError, model_not_finite
from .geometry import ModelGeometry
from .head_profile import HeadProfile
from .head_program import HeadType, program_heads, resolve_dummy_count
from .kv_cache import GroupSpec, Retention

__all__ = ["DummyForcingConfig", "DummyForcingPolicy", "layer_group_specs", "PRESETS", "CUSTOM", "WARMUP_CACHES"]

OWNER = "dummy_forcing"
WARMUP_CACHES = ("base", "sink + L chunks")
CUSTOM = "custom"
_AUTHORS = dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=True, neighbor_chunks=1,
                sink_frames=1, context_packing=True, neighbor_skips_sink=True, warmup_cache="sink + L chunks")
# The settings each preset sets (the others stay as given). From the authors' configs
# (configs/self_forcing_*.yaml, causal_forcing_*.yaml, longlive_*.yaml: ar_start, local_context_length
# = L, num_dummy = 180 of 360 heads) and code (dummyforcing.py, causal_model.py). CausVid and Krea
# Realtime 14B were not published by them: our choice, Self Forcing's settings (Krea: the same half
# of its 40 x 40 heads).
PRESETS: dict[str, dict] = {
    CUSTOM: {},
    "Self Forcing / Causal Forcing / CausVid": dict(_AUTHORS, ar_start=1, profile_sink_frames=0),
    "LongLive": dict(_AUTHORS, ar_start=2, profile_sink_frames=3),
    "Krea Realtime 14B": dict(_AUTHORS, ar_start=1, profile_sink_frames=0),
}


def _err(name: str, message: str) -> SettingError:
    return SettingError(OWNER, name, message)


@dataclass(frozen=True)
class DummyForcingConfig:
    """Apply Dummy Forcing's settings (same names as its widgets).

    dummy_heads: fraction of all heads made dummy (used when dummy_head_count is 0).
    dummy_head_count: exact number of dummy heads (0: use the fraction).
    scope: pick dummy heads over all layers ("global", the authors') or "per_layer".
    normalised_cost: the authors' cost (default): a_sink, a_neighbor divided by their sums over
    all heads before the max; off: the raw max.
    ar_start: the generated chunk whose cache pass is profiled; per-head caching from the next.
    neighbor_chunks: L, chunks a neighbor head keeps. sink_frames: frames a sink head keeps
    (and, with packing, the length of the dummy window).
    context_packing: dummy heads see the dummy window and share the sink heads' call.
    profile_sample_fraction / profile_seed: query rows sampled when profiling online.
    long_context_frames: > 0 gives neighbor heads this many frames instead of L chunks.
    neighbor_skips_sink: neighbor windows never hold the first sink_frames frames (the authors':
    only sink heads keep them); off: a window holds frame 0 while it falls inside it.
    warmup_cache: the cache until ar_start: "base" (the sampler's / AR Cache Policy's) or
    "sink + L chunks" (the authors': the first sink_frames frames + the neighbor window).
    profile_sink_frames: 0: the profiled sink region is the frames a sink head keeps (index <
    sink_frames); > 0: the first this many frames of the cached context (authors' LongLive: 3).
    head_profile: a HeadProfile used instead of profiling online.
    reprofile_on_prompt_switch: after a prompt switch (with re-cache), profile the first chunk
    again over the re-cached frames and re-program the heads; off: keep the first head types.
    preset: the :data:`PRESETS` name :meth:`with_preset` applied, a label for the run's
    statistics only (not compared: equal settings are equal configs)."""

    dummy_heads: float = 0.5
    dummy_head_count: int = 0
    scope: str = "global"
    normalised_cost: bool = True
    ar_start: int = 1
    neighbor_chunks: int = 1
    sink_frames: int = 1
    context_packing: bool = True
    profile_sample_fraction: float = 0.25
    profile_seed: int = 0
    long_context_frames: int = 0
    head_profile: HeadProfile | None = None
    reprofile_on_prompt_switch: bool = False
    neighbor_skips_sink: bool = True
    warmup_cache: str = "base"
    profile_sink_frames: int = 0
    preset: str = dataclasses.field(default=CUSTOM, compare=False)

    def with_preset(self, preset: str) -> "DummyForcingConfig":
        """This config with the settings ``preset`` (a :data:`PRESETS` name) defines."""
        if preset not in PRESETS:
            raise _err("preset", f"'preset' must be one of {', '.join(PRESETS)}, got {preset!r}")
        return dataclasses.replace(self, preset=preset, **PRESETS[preset])

    @property
    def preset_in_effect(self) -> str:
        """The preset these settings are: :attr:`preset` while every setting it defines still
        has its value, else "custom"."""
        defined = PRESETS.get(self.preset)
        if defined is None or any(getattr(self, k) != v for k, v in defined.items()):
            return CUSTOM
        return self.preset

    # -- the rules ------------------------------------------------------------------------------
    def neighbor_frames(self, chunk_frames: int) -> int:
        return self.long_context_frames if self.long_context_frames > 0 else self.neighbor_chunks * chunk_frames

    @property
    def dummy_window_frames(self) -> int:
        """The packed dummy window: recent frames a dummy head keeps (0 without packing)."""
        return self.sink_frames if self.context_packing else 0

    def head_retentions(self, chunk_frames: int) -> dict[HeadType, Retention]:
        """What each head type keeps once the cache is per-head."""
        skip = self.sink_frames if self.neighbor_skips_sink else 0
        return {HeadType.SINK: Retention(self.sink_frames, 0),
                HeadType.NEIGHBOR: Retention(0, self.neighbor_frames(chunk_frames), window_from=skip),
                HeadType.DUMMY: Retention(0, self.dummy_window_frames)}

    # -- checks ---------------------------------------------------------------------------------
    def warmup_retention(self, base: Retention, chunk_frames: int) -> Retention:
        """The cache every head has until the regroup after ``ar_start``."""
        if self.warmup_cache == "base":
            return base
        return Retention(self.sink_frames, self.neighbor_frames(chunk_frames))

    def check_model(self, geometry: ModelGeometry) -> int:
        """Everything that depends on the model only; returns the dummy head count."""
        for name in ("dummy_heads", "profile_sample_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _err(name, f"'{name}' = {v!r} is not a finite number")
        n = resolve_dummy_count(self.dummy_heads, self.dummy_head_count, geometry.num_layers, geometry.num_heads,
                                self.scope)
        if self.neighbor_chunks < 1:
            raise _err("neighbor_chunks", f"'neighbor_chunks' (L) must be >= 1, got {self.neighbor_chunks}: a neighbor "
                       "head with no history is a dummy head; raise 'dummy_heads' instead")
        if self.long_context_frames < 0:
            raise _err("long_context_frames", f"'long_context_frames' must be >= 0 (0 = off), got "
                       f"{self.long_context_frames}")
        if self.sink_frames < 1:
            raise _err("sink_frames", f"'sink_frames' must be >= 1, got {self.sink_frames}")
        if not 0.0 < self.profile_sample_fraction <= 1.0:
            raise _err("profile_sample_fraction", f"'profile_sample_fraction' must be in (0, 1], got "
                       f"{self.profile_sample_fraction}")
        if self.warmup_cache not in WARMUP_CACHES:
            raise _err("warmup_cache", f"'warmup_cache' must be one of {', '.join(WARMUP_CACHES)}, got "
                       f"{self.warmup_cache!r}")
        if self.profile_sink_frames < 0:
            raise _err("profile_sink_frames", f"'profile_sink_frames' must be >= 0 (0 = sink_frames), got "
                       f"{self.profile_sink_frames}")
        if self.ar_start < 1:
            raise _err("ar_start", f"'ar_start' must be >= 1 (profiling needs at least one cached chunk), got "
                       f"{self.ar_start}")
        if self.head_profile is not None:
            if not isinstance(self.head_profile, HeadProfile):
                raise _err("head_profile", f"the 'head_profile' input is a {type(self.head_profile).__name__}, not a "
                           "head profile; connect Profile Heads or Load Head Profile")
            try:
                self.head_profile.check_compatible(geometry)
            except ValueError as e:
                raise _err("head_profile", f"the 'head_profile' input does not fit this model: {e}") from e
        return n

    def check_video(self, geometry: ModelGeometry, plan: ChunkPlan, base: Retention) -> int:
        """Everything that depends on the video as well; returns the dummy head count."""
        n = self.check_model(geometry)
        a, chunk = self.ar_start, plan.chunk_frames
        base = self.warmup_retention(base, chunk)
        if a > len(plan.chunks) - 2:
            need = a + 2
            frames = plan.start_frames + (need - 1) * chunk + 1
            fix = "make the video longer" if a == 1 else "lower 'ar_start' or make the video longer"
            raise _err("ar_start",
                       f"this video generates {len(plan.chunks)} chunk(s) of {chunk} latent frames, but Dummy Forcing "
                       f"with 'ar_start' = {a} profiles chunk {a} and switches to per-head caching from chunk {a + 1}, "
                       f"so it needs at least {need} chunks: {frames} latent frames (length {4 * (frames - 1) + 1} "
                       f"video frames) or more. {fix[0].upper() + fix[1:]}, or leave Apply Dummy Forcing out for "
                       "videos this short")
        history = plan.chunks[a][0] + plan.chunks[a][1]  # cached frames when the cache is regrouped
        if self.sink_frames > history:
            raise _err("sink_frames", f"'sink_frames' = {self.sink_frames} but only {history} frames are cached at "
                       f"'ar_start' = {a}; lower 'sink_frames' or raise 'ar_start'")
        types = set(HeadType)
        if self.head_profile is not None:
            types = {HeadType(int(t)) for t in self.assign(self.head_profile.scores, n).flatten().tolist()}
        kept = set(base.kept_frame_ids(history))
        blame = {HeadType.SINK: "sink_frames", HeadType.NEIGHBOR: "long_context_frames" if self.long_context_frames
                 else "neighbor_chunks", HeadType.DUMMY: "sink_frames"}
        lost = {t: sorted(set(ret.kept_frame_ids(history)) - kept)
                for t, ret in sorted(self.head_retentions(chunk).items()) if t in types}
        lost = {t: frames for t, frames in lost.items() if frames}
        if lost:
            # the base cache's own widgets (AR Video Sampler's or AR Cache Policy's) that would keep them all
            every = sorted({f for frames in lost.values() for f in frames})
            first = next(iter(lost))
            what = " and ".join(f"frames {frames} that {t.label} heads keep ({{t{int(t)}}})"
                                for t, frames in lost.items())
            lower = ", or lower {setting}" if len(lost) == 1 and getattr(self, blame[first]) > 1 else ""
            refs = {f"t{int(t)}": (OWNER, blame[t]) for t in lost}
            refs.update(cache=("cache", "cache"), base_sink=("cache", "sink_frames"),
                        base_window=("cache", "window_frames"))
            raise SettingError(OWNER, blame[first], f"at 'ar_start' = {a} the base cache ({base.describe()}) no longer "
                               f"holds {what}: set {{cache}} to 'full', raise {{base_sink}} to {every[-1] + 1} or "
                               f"{{base_window}} to {history - every[0]}{lower}", refs=refs)
        return n

    # -- use --------------------------------------------------------------------------------------
    def assign(self, scores: torch.Tensor, num_dummy: int) -> torch.Tensor:
        """Head types [L, H] from scores [L, H, 3]."""
        return program_heads(scores, num_dummy, self.scope, self.normalised_cost)

    def describe(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "head_profile"}
        d["head_profile"] = "given" if self.head_profile is not None else "online"
        d["preset"] = self.preset_in_effect
        return d

    def start(self, geometry: ModelGeometry, plan: ChunkPlan, base: Retention) -> "DummyForcingPolicy":
        return DummyForcingPolicy(self, geometry, plan, base, self.check_video(geometry, plan, base))


def layer_group_specs(types: list[int], retentions: dict[HeadType, Retention], packing: bool) -> list[GroupSpec]:
    """Head groups of one layer from its head types: with packing sink + dummy heads share
    one group (two row segments of equal length), neighbor heads are another."""
    heads = {t: [h for h, x in enumerate(types) if x == t] for t in HeadType}
    sink, dummy, neigh = heads[HeadType.SINK], heads[HeadType.DUMMY], heads[HeadType.NEIGHBOR]
    r = retentions
    if packing:
        specs = [GroupSpec(sink + dummy, [(len(sink), r[HeadType.SINK]), (len(dummy), r[HeadType.DUMMY])],
                           "sink+dummy")]
    else:
        specs = [GroupSpec(sink, [(len(sink), r[HeadType.SINK])], "sink"),
                 GroupSpec(dummy, [(len(dummy), r[HeadType.DUMMY])], "dummy")]
    specs.append(GroupSpec(neigh, [(len(neigh), r[HeadType.NEIGHBOR])], "neighbor"))
    return [s for s in specs if s.heads]


class DummyForcingPolicy:
    """Dummy Forcing's once-per-video steps (the cache-policy protocol of ``cache_policy.py``)."""

    last_chunk = None

    def __init__(self, cfg: DummyForcingConfig, geometry: ModelGeometry, plan: ChunkPlan, base: Retention,
                 num_dummy: int):
        self.cfg, self.geometry, self.plan, self.num_dummy = cfg, geometry, plan, num_dummy
        self.base = cfg.warmup_retention(base, plan.chunk_frames)  # the cache the video is created with
        self.retentions = cfg.head_retentions(plan.chunk_frames)
        self.profiler: AttentionProfiler | None = None
        self.assignment: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self._reprofile_chunk: int | None = None  # the first chunk after a prompt switch, when re-profiling

    def base_capacity(self) -> int | None:
        # the base layout only lives until the regroup after chunk ar_start's cache pass
        return self.base.capacity_for(self.plan.history_before(self.cfg.ar_start) + 1, self.plan.max_piece)

    def head_frames_bound(self) -> int:
        total, piece = self.plan.total_frames, self.plan.max_piece
        cap = {t: r.capacity_for(total, piece) for t, r in self.retentions.items()}
        heads = self.geometry.total_heads
        kept = self.num_dummy * cap[HeadType.DUMMY] + (heads - self.num_dummy) * max(cap[HeadType.SINK],
                                                                                      cap[HeadType.NEIGHBOR])
        base, per_layer = heads * self.base_capacity(), self.geometry.num_heads * self.base_capacity()
        return max(base, kept + per_layer)  # regrouping holds both layouts for one layer at a time

    def probe_for(self, chunk: int):
        first = chunk == self.cfg.ar_start and self.cfg.head_profile is None
        if not first and chunk != self._reprofile_chunk:
            return None
        g = self.geometry
        self.profiler = AttentionProfiler(g.num_layers, g.num_heads, self.cfg.sink_frames,
                                          self.cfg.profile_sample_fraction, self.cfg.profile_seed,
                                          sink_positions=self.cfg.profile_sink_frames)
        return self.profiler

    def needs_recache_on_switch(self) -> bool:
        return self.cfg.reprofile_on_prompt_switch

    def kept_frames_bound(self, history: int) -> set[int]:
        a = self.cfg.ar_start
        if history < self.plan.chunks[a][0] + self.plan.chunks[a][1]:  # not regrouped yet
            return set(self.base.kept_frame_ids(history))
        return {f for r in self.retentions.values() for f in r.kept_frame_ids(history)}

    def on_prompt_switch(self, chunk: int) -> None:
        # before ar_start the heads are not programmed yet: the switch needs nothing
        if self.cfg.reprofile_on_prompt_switch and self.assignment is not None:
            self._reprofile_chunk = chunk

    def after_commit(self, chunk: int, cache, stats, source=None) -> None:
        if chunk == self.cfg.ar_start:
            self._program(chunk, cache, stats,
                          self.cfg.head_profile.scores if self.cfg.head_profile is not None else None)
            stats.switch_chunk = chunk + 1
        elif chunk == self._reprofile_chunk:
            before = self.assignment
            self._program(chunk, cache, stats, None, source)
            self._reprofile_chunk = None
            dummy = int(HeadType.DUMMY)
            was, now = before == dummy, self.assignment == dummy
            stats.prompt_switches[-1].update(reprofiled=True, profile_seconds=self.profiler.elapsed_s,
                                             dummy_overlap=float((was & now).sum()) / max(int(was.sum()), 1))

    def _program(self, chunk: int, cache, stats, scores=None, source=None) -> None:
        """Program the heads from ``scores`` (None: the profiler's, measured on ``chunk``'s cache
        pass) and regroup the cache (from ``source`` = (full view, its frames) after a prompt switch)."""
        if cache.device.type == "cuda":  # once per video: the profiled pass finishes outside the regroup timer
            torch.cuda.synchronize(cache.device)
        t0 = time.perf_counter()
        if scores is None:
            scores = self.profiler.scores()
            if not bool(torch.isfinite(scores).all()):  # the inputs were checked finite: the model made them
                raise model_not_finite(f" in the attention Dummy Forcing profiled (chunk {chunk})")
            if source is None:
                stats.profile_seconds = self.profiler.elapsed_s
        self.scores = scores
        self.assignment = self.cfg.assign(self.scores, self.num_dummy)
        types = self.assignment.tolist()
        specs = [layer_group_specs(t, self.retentions, self.cfg.context_packing) for t in types]
        if source is None:
            cache.regroup(specs)
        else:
            cache.regroup(specs, source=source[0], source_frames=source[1])
        if cache.device.type == "cuda":
            torch.cuda.synchronize(cache.device)
        stats.regroup_seconds += time.perf_counter() - t0
        stats.head_types = types
        stats.head_scores = self.scores.tolist()

    def describe(self) -> dict | None:
        return self.cfg.describe()
