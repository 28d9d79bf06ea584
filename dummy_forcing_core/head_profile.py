"""A head profile: the frame attention scores of every head of a model, what model they belong
to, its file format, and the offline run that measures one (Profile Heads).

Not to be confused with the *attention profiler* (``attention_profiler.py``), the probe that
measures attention mass inside a pass: a head profile is what such measurements add up to.

File format (``.safetensors``): one tensor ``scores`` [L, H, 3] float32 (a_sink,
a_neighbor, a_current; each row sums to 1) and string metadata ``format`` =
``dummy_forcing.head_profile``, ``version``, ``fingerprint`` (JSON: num_layers, num_heads,
head_dim, dim), ``settings`` (JSON object: how it was measured) and ``num_samples``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .attention_profiler import AttentionProfiler
from .bounded_json import loads_bounded
from .cache_policy import UniformPolicy
from .chunk_plan import ChunkPlan
from .errors import SettingError
from .geometry import ModelGeometry
from .head_program import TypeCount, program_heads, resolve_dummy_count, type_counts
from .kv_cache import FULL, Retention
from .sampler import generate

__all__ = ["HeadProfile", "FORMAT", "VERSION", "ProfilingSpec", "profile_heads", "write_file_atomically"]

FORMAT = "dummy_forcing.head_profile"
VERSION = 1
FINGERPRINT_KEYS = ("num_layers", "num_heads", "head_dim", "dim")
MOSTLY_CURRENT = 0.8  # a head "mostly looks at the current chunk" above this a_current
MASS_TOLERANCE = 1e-3  # scores are attention mass: each in [0, 1], each row summing to 1


def _fingerprint_of(x) -> dict:
    """A fingerprint dict from a ModelGeometry, a fingerprint dict, or a Wan module."""
    if isinstance(x, ModelGeometry):
        fp = x.fingerprint()
    elif isinstance(x, dict):
        fp = x
    elif isinstance(x, torch.nn.Module):
        fp = ModelGeometry.of(x).fingerprint()
    else:
        raise TypeError(f"expected a ModelGeometry, a fingerprint dict or a Wan model, got {type(x).__name__}")
    missing = [k for k in FINGERPRINT_KEYS if k not in fp]
    if missing:
        raise ValueError(f"model fingerprint lacks {missing}")
    bad = [k for k in FINGERPRINT_KEYS if isinstance(fp[k], bool) or not isinstance(fp[k], int) or fp[k] < 1]
    if bad:
        raise ValueError(f"model fingerprint entries {bad} are not positive whole numbers")
    return {k: int(fp[k]) for k in FINGERPRINT_KEYS}


def _describe(fp: dict) -> str:
    return f"{fp['num_layers']} layers x {fp['num_heads']} heads (head dim {fp['head_dim']})"


def write_file_atomically(path: str, write, prefix: str = ".partial.") -> str:
    """``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over ``path``:
    a crash or error never leaves a half-written file. The file gets the mode a plain
    ``open()`` would give it (the user's umask), not mkstemp's 0600."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


@dataclass
class HeadProfile:
    """Frame attention scores [L, H, 3] of a model, with its fingerprint and the settings used.

    ``num_samples``: how many probe calls were averaged per (layer, head).
    """

    scores: torch.Tensor
    fingerprint: dict
    settings: dict = field(default_factory=dict)
    num_samples: int = 1

    def __post_init__(self):
        self.fingerprint = _fingerprint_of(self.fingerprint)
        s = torch.as_tensor(self.scores).detach().to(device="cpu", dtype=torch.float32).contiguous()
        L, H = self.fingerprint["num_layers"], self.fingerprint["num_heads"]
        if tuple(s.shape) != (L, H, 3):
            raise ValueError(f"head profile scores have shape {tuple(s.shape)} but its model has {L} layers x "
                             f"{H} heads: expected ({L}, {H}, 3)")
        if not torch.isfinite(s).all():
            raise ValueError("head profile scores contain NaN or inf")
        if (s < -MASS_TOLERANCE).any() or (s > 1 + MASS_TOLERANCE).any() \
                or ((s.double().sum(-1) - 1).abs() > MASS_TOLERANCE).any():
            raise ValueError("head profile scores are not attention mass (each in [0, 1], each head's three summing "
                             "to 1)")
        if not isinstance(self.settings, dict):
            raise ValueError(f"head profile settings must be a JSON object, got {type(self.settings).__name__}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"head profile num_samples must be a positive whole number, got {self.num_samples!r}")
        self.scores = s
        self.settings = dict(self.settings)

    @property
    def num_layers(self) -> int:
        return self.fingerprint["num_layers"]

    @property
    def num_heads(self) -> int:
        return self.fingerprint["num_heads"]

    @classmethod
    def from_profiler(cls, profiler: AttentionProfiler, geometry, settings: dict | None = None) -> "HeadProfile":
        """From a finished profiler; ``settings`` (e.g. ar_start, chunk_frames, prompts) are
        merged over the profiler's own."""
        fp = _fingerprint_of(geometry)
        if (profiler.num_layers, profiler.num_heads) != (fp["num_layers"], fp["num_heads"]):
            raise ValueError(f"profiler measured {profiler.num_layers} layers x {profiler.num_heads} heads but the "
                             f"model has {_describe(fp)}")
        base = {"sink_frames": profiler.sink_frames, "profile_sink_frames": profiler.sink_positions,
                "sample_fraction": profiler.sample_fraction,
                "seed": profiler.seed, "probe_calls": profiler.calls, "profile_seconds": round(profiler.elapsed_s, 6)}
        base.update(settings or {})
        return cls(profiler.scores(), fp, base, int(profiler.layer_calls.min()))

    def is_compatible(self, geometry_or_fingerprint) -> bool:
        return _fingerprint_of(geometry_or_fingerprint) == self.fingerprint

    def check_compatible(self, geometry_or_fingerprint) -> None:
        fp = _fingerprint_of(geometry_or_fingerprint)
        if fp != self.fingerprint:
            raise ValueError(f"head profile was made for a model with {_describe(self.fingerprint)} but this model has "
                             f"{_describe(fp)}; profile it again on this model")

    def assign(self, dummy_heads: float = 0.5, scope: str = "global", normalised_cost: bool = True,
               dummy_head_count: int = 0) -> torch.Tensor:
        """Head types [L, H] with ``dummy_head_count`` dummy heads, or (0) the fraction
        ``dummy_heads`` of all heads, as Apply Dummy Forcing would pick them (e.g. a preview)."""
        n = resolve_dummy_count(dummy_heads, dummy_head_count, self.num_layers, self.num_heads, scope)
        return program_heads(self.scores, n, scope, normalised_cost)

    def summary(self, assign: torch.Tensor | None = None) -> str:
        """A few lines of text: overall means and, per layer, how many heads mostly look at the
        current chunk (a_current > 0.8) and how many lean to sink / neighbor frames."""
        s = self.scores.double()
        L, H = self.num_layers, self.num_heads
        cur = s[..., 2] > MOSTLY_CURRENT
        sink_lean = (s[..., 0] >= s[..., 1]) & ~cur
        nb_lean = ~cur & ~sink_lean
        m = s.mean(dim=(0, 1))
        st = self.settings
        bits = [f"{k}={st[k]}" for k in ("sink_frames", "ar_start", "chunk_frames", "sample_fraction", "runs")
                if k in st]
        if st.get("profile_sink_frames"):  # 0 / absent: the sink region was frames with index < sink_frames
            bits.insert(1, f"sink region=first {st['profile_sink_frames']} cached frames")
        lines = [f"head profile: {_describe(self.fingerprint)}, {self.num_samples} sample(s)"
                 + (f"; {', '.join(bits)}" if bits else ""),
                 f"mean attention: sink {m[0]:.3f}, neighbor {m[1]:.3f}, current {m[2]:.3f}; "
                 f"heads with > {MOSTLY_CURRENT:.0%} on the current chunk: {int(cur.sum())}/{L * H} "
                 f"({cur.float().mean():.0%})"]
        counts: list[TypeCount] | None = type_counts(assign) if assign is not None else None
        for i in range(L):
            line = (f"layer {i:>{len(str(L - 1))}}: mostly-current {int(cur[i].sum()):>2}, sink-leaning "
                    f"{int(sink_lean[i].sum()):>2}, neighbor-leaning {int(nb_lean[i].sum()):>2}, "
                    f"mean current {s[i, :, 2].mean():.2f}")
            if counts is not None:
                c = counts[i]
                line += f" | types: {c.sink} sink, {c.neighbor} neighbor, {c.dummy} dummy"
            lines.append(line)
        return "\n".join(lines)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path) -> str:
        """Write to ``path`` (.safetensors) atomically; returns the path."""
        meta = {"format": FORMAT, "version": str(VERSION),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "settings": json.dumps(self.settings, sort_keys=True, default=str),
                "num_samples": str(self.num_samples)}
        return write_file_atomically(path, lambda tmp: save_file({"scores": self.scores.contiguous()}, tmp,
                                                                 metadata=meta), ".head_profile.")

    @classmethod
    def load(cls, path) -> "HeadProfile":
        """Read a file written by :meth:`save`; anything else is refused with a ValueError that
        names the file ("not a head profile" or "damaged head profile")."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"head profile not found: {path}")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                scores = f.get_tensor("scores") if "scores" in names else None
        except Exception as e:  # safetensors raises its own error types for non-safetensors data
            raise ValueError(f"{path} is not a head profile: it cannot be read as a .safetensors file ({e})") from e
        if meta.get("format") != FORMAT:
            tag = meta.get("format")
            raise ValueError(f"{path} is not a Dummy Forcing head profile (format tag {tag!r}, expected {FORMAT!r}); "
                             "it may be a model or LoRA file. Pick a file saved by the Profile Heads node.")
        try:
            version = int(meta.get("version", "0"))
        except ValueError:
            version = -1
        if not 1 <= version <= VERSION:
            raise ValueError(f"{path}: head profile format version {meta.get('version')!r} is not supported "
                             f"(this code reads versions 1..{VERSION}); update the node pack or profile again")
        damaged = f"damaged head profile {path}"
        if scores is None:
            raise ValueError(f"{damaged}: it has no 'scores' tensor")
        if not scores.is_floating_point():
            raise ValueError(f"{damaged}: 'scores' is {scores.dtype}, not a float tensor")
        if "fingerprint" not in meta:
            raise ValueError(f"{damaged}: its metadata has no 'fingerprint'")
        decoded = {}
        for key, default in (("fingerprint", None), ("settings", "{}"), ("num_samples", "1")):
            try:
                decoded[key] = loads_bounded(meta.get(key, default))
            except (ValueError, TypeError) as e:  # not JSON, or nested absurdly deep
                raise ValueError(f"{damaged}: bad metadata entry '{key}' ({e})") from None
        fp, settings, num_samples = decoded["fingerprint"], decoded["settings"], decoded["num_samples"]
        if not isinstance(fp, dict):
            raise ValueError(f"{damaged}: its fingerprint is a {type(fp).__name__}, not a JSON object")
        try:
            return cls(scores, fp, settings, num_samples)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{damaged}: {e}") from e


# -- offline profiling (Profile Heads) -------------------------------------------------------------
@dataclass(frozen=True)
class ProfilingSpec:
    """A cache-policy spec for offline profiling: a full cache; the cache passes of chunks
    ``ar_start .. ar_start + chunks - 1`` are probed by ``profiler``; the video ends after them.
    One spec (one profiler) serves every run whose measurements it averages.

    The profiled sink region is the frames with index ``< sink_frames`` or, with
    ``profile_sink_frames`` > 0, the first ``profile_sink_frames`` cached frames (Apply Dummy
    Forcing's setting of the same name; the authors' LongLive setting: 3, one chunk, at
    ar_start 2). The cache here is full, so those are frames 0 .. profile_sink_frames - 1."""

    profiler: AttentionProfiler
    ar_start: int
    chunks: int

    @classmethod
    def create(cls, geometry: ModelGeometry, ar_start: int = 1, chunks: int = 1, sink_frames: int = 1,
               sample_fraction: float = 0.25, seed: int = 0, profile_sink_frames: int = 0) -> "ProfilingSpec":
        if not 0.0 < float(sample_fraction) <= 1.0:
            raise SettingError("profiling", "sample_fraction", f"'sample_fraction' must be in (0, 1], got "
                               f"{sample_fraction}")
        if sink_frames < 1:
            raise SettingError("profiling", "sink_frames", f"'sink_frames' must be >= 1, got {sink_frames}")
        if profile_sink_frames < 0:
            raise SettingError("profiling", "profile_sink_frames", f"'profile_sink_frames' must be >= 0 (0 = the "
                               f"first sink_frames frames), got {profile_sink_frames}")
        profiler = AttentionProfiler(geometry.num_layers, geometry.num_heads, sink_frames, sample_fraction, seed,
                                     sink_positions=int(profile_sink_frames))
        return cls(profiler, int(ar_start), int(chunks))

    @property
    def last_chunk(self) -> int:
        return self.ar_start + self.chunks - 1

    def start(self, geometry: ModelGeometry, plan: ChunkPlan) -> "_ProfilingPolicy":
        a, last = self.ar_start, self.last_chunk
        if a < 1:
            raise SettingError("profiling", "ar_start", f"'ar_start' must be >= 1, got {a}")
        if self.chunks < 1:
            raise SettingError("profiling", "chunks_to_profile", f"'chunks_to_profile' must be >= 1, got {self.chunks}")
        if last > len(plan.chunks) - 2:
            frames = (last + 2) * plan.chunk_frames
            raise SettingError("profiling", "latent",
                               f"profiling chunks {a}..{last} needs a latent of at least {last + 2} chunks ({frames} "
                               f"latent frames, length {4 * (frames - 1) + 1} video frames); the latent has "
                               f"{len(plan.chunks)} chunks: make it longer or lower 'ar_start' / 'chunks_to_profile'")
        cached = plan.history_before(a)
        if self.profiler.sink_frames > cached:
            raise SettingError("profiling", "sink_frames",
                               f"'sink_frames' = {self.profiler.sink_frames} is more than the {cached} frames cached "
                               f"before chunk 'ar_start' = {a}; lower it or raise 'ar_start'")
        if self.profiler.sink_positions >= cached:  # no neighbor frame would be left to measure
            raise SettingError("profiling", "profile_sink_frames",
                               f"'profile_sink_frames' = {self.profiler.sink_positions} leaves no neighbor frame: "
                               f"{cached} frames are cached before chunk 'ar_start' = {a}; lower it below {cached} "
                               "(0 = the first sink_frames frames) or raise 'ar_start'")
        return _ProfilingPolicy(FULL, geometry, plan, last, profiler=self.profiler, probed=range(a, last + 1))


@dataclass(kw_only=True)
class _ProfilingPolicy(UniformPolicy):
    """A full cache that probes the chunks ``probed`` and ends the run after ``last_chunk``."""

    profiler: AttentionProfiler
    probed: range

    def base_capacity(self) -> int | None:
        return self.base.capacity_for(self.plan.history_before(self.last_chunk) + 1, self.plan.max_piece)

    def head_frames_bound(self) -> int:
        return self.geometry.total_heads * self.base_capacity()

    def probe_for(self, chunk: int):
        return self.profiler if chunk in self.probed else None


def profile_heads(runner, contexts: list[torch.Tensor], shape, settings, seeds: list[int], spec: ProfilingSpec,
                  callback=None) -> HeadProfile:
    """Offline profiling: generate with a full cache for every prompt context x seed, profile
    the cache passes of the spec's chunks and average them into a reusable
    :class:`HeadProfile`. ``shape`` = (B, C, F, H, W) of the videos to run; ``settings``: the
    SamplerSettings of those runs (their seed is replaced by each of ``seeds``)."""
    if not contexts:
        raise SettingError("profiling", "conditioning", "give at least one prompt to profile with")
    if not seeds:
        raise SettingError("profiling", "runs_per_prompt", "give at least one seed to profile with")
    for ctx in contexts:
        for seed in seeds:
            generate(runner, ctx, shape, dataclasses.replace(settings, seed=int(seed)), spec, callback=callback)
    return HeadProfile.from_profiler(spec.profiler, runner.geometry, {
        "ar_start": spec.ar_start, "chunks_profiled": spec.chunks, "chunk_frames": settings.chunk_frames,
        "prompts": len(contexts), "seeds": [int(s) for s in seeds], "latent_shape": list(shape),
    })
