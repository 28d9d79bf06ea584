"""Statistics of one generation: what the cache held, what attention cost, how long it took.

Carried between ComfyUI nodes as ``DF_STATS`` and shown by the Cache Stats node.
Times are wall-clock seconds of the DiT only (VAE decode is not part of a generation).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .head_program import TypeCount, type_counts

__all__ = ["GenerationStats", "format_bytes", "WAN_FRAMES_PER_LATENT"]

WAN_FRAMES_PER_LATENT = 4  # Wan2.1's VAE: 4 video frames per latent frame, the first one alone


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


@dataclass
class GenerationStats:
    """``policy``: the base cache in words; ``dummy_forcing``: Dummy Forcing's settings (None:
    off; ``["preset"]`` names the preset they are, or "custom"); ``loop``: which AR loop ran the
    video (the pack's sampler or ComfyUI's); ``frames_per_latent``: video frames per latent
    frame, the latent format's (the node that runs the model sets it: 4 for Wan's VAE, 1 for
    the tiny model's codec), which FPS counts in."""

    fingerprint: dict
    latent_hw: tuple[int, int]
    frames: int
    chunk_frames: int
    tokens_per_frame: int
    policy: str
    dummy_forcing: dict | None = None
    batch: int = 1
    loop: str = "AR Video Sampler"
    chunk_seconds: list[float] = field(default_factory=list)
    profile_seconds: float = 0.0
    regroup_seconds: float = 0.0
    switch_chunk: int | None = None            # first chunk generated with the per-head cache
    head_types: list[list[int]] | None = None  # [layer][head] 0 sink, 1 neighbor, 2 dummy
    head_scores: list[list[list[float]]] | None = None  # [layer][head] (a_sink, a_neighbor, a_current)
    kv_bytes_layers: list[int] = field(default_factory=list)       # held at the end, per layer
    kv_full_bytes_layers: list[int] = field(default_factory=list)  # a full cache of the same frames
    kv_allocated_bytes: int = 0
    attn_flops: int = 0
    attn_flops_full: int = 0
    prompt_switches: list[dict] = field(default_factory=list)  # chunk, frame, recache, passes, seconds, ...
    ranks: list[dict] = field(default_factory=list)  # head-parallel: per rank heads_per_layer, kv_bytes, attn_flops
    frames_per_latent: int = WAN_FRAMES_PER_LATENT

    @classmethod
    def start(cls, geometry, plan, base, dummy_forcing: dict | None, loop: str = "AR Video Sampler") -> "GenerationStats":
        """For a video of ChunkPlan ``plan`` with base retention ``base``."""
        Hh, Ww = plan.latent_hw
        return cls(geometry.fingerprint(), (Hh, Ww), plan.total_frames, plan.chunk_frames,
                   geometry.tokens_per_frame(Hh, Ww), base.describe(), dummy_forcing, plan.batch, loop)

    def finish(self, cache) -> None:
        self.kv_bytes_layers = cache.layer_held_bytes()
        per_layer_full = cache.full_cache_bytes() // max(len(cache.layers), 1)
        self.kv_full_bytes_layers = [per_layer_full] * len(cache.layers)
        self.kv_allocated_bytes = cache.allocated_bytes()
        self.attn_flops = cache.flops.done
        self.attn_flops_full = cache.flops.full

    # ---- derived figures -------------------------------------------------------------
    @property
    def kv_bytes(self) -> int:
        return sum(self.kv_bytes_layers)

    @property
    def kv_full_bytes(self) -> int:
        return sum(self.kv_full_bytes_layers)

    def steady_chunk_seconds(self) -> list[float]:
        """Chunks after the switch to the per-head cache (or after the first chunk without it)."""
        start = (self.switch_chunk if self.switch_chunk is not None else 1)
        tail = self.chunk_seconds[start:]
        return tail or self.chunk_seconds

    def fps(self) -> tuple[float, float]:
        """(steady-state FPS, whole-clip FPS) in video frames, :attr:`frames_per_latent` per
        latent frame but the first, which decodes to one (Wan's causal VAE; 1:1 codecs alike)."""
        steady = self.steady_chunk_seconds()
        if not steady or not self.chunk_seconds:
            return 0.0, 0.0
        r = self.frames_per_latent
        med = sorted(steady)[len(steady) // 2]
        video_frames = r * (self.frames - 1) + 1
        total = sum(self.chunk_seconds)
        return (r * self.chunk_frames / med if med > 0 else 0.0,
                video_frames / total if total > 0 else 0.0)

    def type_counts(self) -> list[TypeCount]:
        return [] if self.head_types is None else type_counts(self.head_types)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kv_bytes"] = self.kv_bytes
        d["kv_full_bytes"] = self.kv_full_bytes
        d["fps_steady"], d["fps_clip"] = self.fps()
        return d

    def to_text(self) -> str:
        fp = self.fingerprint
        lines = [
            f"model: {fp['num_layers']} layers x {fp['num_heads']} heads (head dim {fp['head_dim']})",
            f"video: {self.frames} latent frames, {self.latent_hw[0]}x{self.latent_hw[1]} latent, "
            f"{self.tokens_per_frame} tokens/frame, chunks of {self.chunk_frames}",
            f"base cache: {self.policy}; loop: {self.loop}",
        ]
        if self.dummy_forcing:
            df = self.dummy_forcing
            heads = df['dummy_head_count'] or df['dummy_heads']
            lines.append(f"dummy forcing: dummy heads {heads} scope={df['scope']} ar_start={df['ar_start']} "
                         f"L={df['neighbor_chunks']} sink={df['sink_frames']} "
                         f"packing={'on' if df['context_packing'] else 'off'} "
                         f"long_context={df['long_context_frames']} head profile={df['head_profile']} "
                         f"preset={df.get('preset', 'custom')}")
        else:
            lines.append("dummy forcing: off")
        ratio = self.kv_full_bytes / self.kv_bytes if self.kv_bytes else float("inf")
        lines.append(f"KV cache at end: {format_bytes(self.kv_bytes)} vs full {format_bytes(self.kv_full_bytes)} "
                     f"({ratio:.2f}x smaller); allocated {format_bytes(self.kv_allocated_bytes)}")
        if self.attn_flops_full:
            lines.append(f"self-attention FLOPs: {self.attn_flops / 1e9:.3f} G vs full {self.attn_flops_full / 1e9:.3f} G "
                         f"({100 * self.attn_flops / self.attn_flops_full:.1f}%)")
        steady, clip = self.fps()
        secs = ", ".join(f"{s:.3f}" for s in self.chunk_seconds)
        lines.append(f"seconds per chunk (DiT only, VAE excluded): {secs}")
        lines.append(f"FPS (video frames, {self.frames_per_latent} per latent frame; DiT only): steady {steady:.2f}, "
                     f"whole clip {clip:.2f}")
        if self.dummy_forcing:
            lines.append(f"profiling: {1000 * self.profile_seconds:.1f} ms, cache regroup {1000 * self.regroup_seconds:.1f} ms"
                         + (f", per-head cache from chunk {self.switch_chunk}" if self.switch_chunk is not None else ""))
        for sw in self.prompt_switches:
            how = (f"re-cache {sw['recache_passes']} pass(es), {1000 * sw['seconds']:.1f} ms" if sw["recache"]
                   else "no re-cache")
            if sw.get("reprofiled"):
                how += f"; heads re-profiled (dummy heads kept: {sw['dummy_overlap']:.0%})"
            lines.append(f"prompt switch at chunk {sw['chunk']} (latent frame {sw['frame']}): {how}")
        for r in self.ranks:
            lines.append(f"rank {r['rank']}: heads per layer {r['heads_per_layer']}, KV held {format_bytes(r['kv_bytes'])} "
                         f"(allocated {format_bytes(r['kv_allocated_bytes'])}), self-attention FLOPs "
                         f"{r['attn_flops'] / 1e9:.3f} G")
        counts = self.type_counts()
        if counts:
            lines.append("layer  sink  neighbor  dummy  KV held      KV full")
            for i, (s, n, d) in enumerate(counts):
                lines.append(f"{i:5d} {s:5d} {n:9d} {d:6d}  {format_bytes(self.kv_bytes_layers[i]):>11s}  "
                             f"{format_bytes(self.kv_full_bytes_layers[i]):>11s}")
            tot = [sum(c[k] for c in counts) for k in range(3)]
            lines.append(f"total {tot[0]:5d} {tot[1]:9d} {tot[2]:6d}")
        return "\n".join(lines)
