"""Cache policies: what a video's KV cache keeps, told to any AR loop through one protocol.

A *spec* holds settings (:class:`CacheSpec`: the base retention and, optionally, Dummy
Forcing; ``head_profile.ProfilingSpec`` for offline profiling). It is started once per video,
``spec.start(geometry, plan)``, which checks the settings against the model and the video
(a :class:`~dummy_forcing_core.errors.SettingError` before any pass) and returns the video's
:class:`CachePolicy`. A loop (``video_session.VideoSession``, driven by the pack's sampler or
by ComfyUI's ``sample_ar_video``) asks the policy:

======================  ======================================================================
``base``                the retention the cache is created with (every head alike)
``base_capacity()``     frames that first layout must hold (None: enough for the whole video)
``head_frames_bound()`` at most how many (head, frame) slots the video's cache allocates
``last_chunk``          generation may end after this chunk's cache pass (None: run them all)
``probe_for(chunk)``    an attention probe for that chunk's cache pass, or None
``after_commit(...)``   what to do once a chunk's cache pass committed (e.g. regroup); ``source``
                        is a full view (cache, frames) when the probe ran over one
``on_prompt_switch(c)`` a prompt schedule switched prompt before chunk ``c`` (e.g. re-profile);
                        ``needs_recache_on_switch()``: whether that needs the re-cache
``kept_frames_bound(h)``the frames some head may hold after ``h`` committed frames (re-cache
                        passes to plan)
``describe()``          the per-head settings for the run's statistics (None: uniform cache)
======================  ======================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from .chunk_plan import ChunkPlan
from .geometry import ModelGeometry
from .kv_cache import FULL, Retention

__all__ = ["CachePolicy", "UniformPolicy", "CacheSpec"]


class CachePolicy(Protocol):
    base: Retention
    last_chunk: int | None

    def base_capacity(self) -> int | None: ...

    def head_frames_bound(self) -> int: ...

    def probe_for(self, chunk: int): ...

    def after_commit(self, chunk: int, cache, stats, source=None) -> None: ...

    def needs_recache_on_switch(self) -> bool: ...

    def kept_frames_bound(self, history: int) -> set[int]: ...

    def on_prompt_switch(self, chunk: int) -> None: ...

    def describe(self) -> dict | None: ...


@dataclass
class UniformPolicy:
    """Every head keeps the same frames: a full cache, or sink + rolling window."""

    base: Retention
    geometry: ModelGeometry
    plan: ChunkPlan
    last_chunk: int | None = None

    def base_capacity(self) -> int | None:
        return None

    def head_frames_bound(self) -> int:
        return self.geometry.total_heads * self.base.capacity_for(self.plan.total_frames, self.plan.max_piece)

    def probe_for(self, chunk: int):
        return None

    def after_commit(self, chunk: int, cache, stats, source=None) -> None:
        pass

    def needs_recache_on_switch(self) -> bool:
        return False

    def kept_frames_bound(self, history: int) -> set[int]:
        return set(self.base.kept_frame_ids(history))

    def on_prompt_switch(self, chunk: int) -> None:
        pass

    def describe(self) -> dict | None:
        return None


@dataclass(frozen=True)
class CacheSpec:
    """What a model carries (AR Cache Policy, Apply Dummy Forcing) or a sampler is given:
    ``base``, what every head keeps until Dummy Forcing regroups the cache (None: not set,
    a full cache), and
    ``dummy_forcing``, a ``dummy_forcing.DummyForcingConfig`` or None (it imports this module,
    so the field is duck-typed: ``check_model(geometry)``, ``start(geometry, plan, base)``), and
    ``attention_8bit``, Apply Dummy Forcing's choice of 8-bit self-attention
    (``attention_8bit.BACKENDS``; None: not set, the host decides)."""

    base: Retention | None = None
    dummy_forcing: Any = None
    attention_8bit: str | None = None

    @property
    def base_retention(self) -> Retention:
        return FULL if self.base is None else self.base

    def check_model(self, geometry: ModelGeometry) -> None:
        """Settings checks that need only the model (node time, before any video)."""
        if self.dummy_forcing is not None:
            self.dummy_forcing.check_model(geometry)

    def start(self, geometry: ModelGeometry, plan: ChunkPlan) -> CachePolicy:
        if self.dummy_forcing is None:
            return UniformPolicy(self.base_retention, geometry, plan)
        return self.dummy_forcing.start(geometry, plan, self.base_retention)

    def with_base(self, base: Retention) -> "CacheSpec":
        return replace(self, base=base)

    def with_dummy_forcing(self, cfg: Any) -> "CacheSpec":
        return replace(self, dummy_forcing=cfg)

    def with_attention_8bit(self, choice: str | None) -> "CacheSpec":
        return replace(self, attention_8bit=choice)
