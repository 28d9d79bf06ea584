"""A saved head profile: frame attention scores of every head plus what model they belong to.

File format (``.safetensors``): one tensor ``scores`` [L, H, 3] float32 (a_sink,
a_neighbor, a_current) and string metadata ``format`` = ``dummy_forcing.head_profile``,
``version``, ``fingerprint`` (JSON: num_layers, num_heads, head_dim, dim), ``settings``
(JSON: how it was measured) and ``num_samples``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import torch

from .head_program import program_heads, resolve_dummy_count, type_counts

__all__ = ["HeadProfile", "FORMAT", "VERSION"]

FORMAT = "dummy_forcing.head_profile"
VERSION = 1
FINGERPRINT_KEYS = ("num_layers", "num_heads", "head_dim", "dim")
MOSTLY_CURRENT = 0.8  # a head "mostly looks at the current chunk" above this a_current


def _fingerprint_of(x) -> dict:
    """A fingerprint dict from a ModelGeometry, a fingerprint dict, or a Wan module."""
    if isinstance(x, dict):
        fp = x
    elif hasattr(x, "fingerprint"):
        fp = x.fingerprint()
    elif isinstance(x, torch.nn.Module):
        from .transformer import ModelGeometry
        fp = ModelGeometry.of(x).fingerprint()
    else:
        raise TypeError(f"expected a ModelGeometry, a fingerprint dict or a Wan model, got {type(x).__name__}")
    missing = [k for k in FINGERPRINT_KEYS if k not in fp]
    if missing:
        raise ValueError(f"model fingerprint lacks {missing}: {fp}")
    return {k: int(fp[k]) for k in FINGERPRINT_KEYS}


def _describe(fp: dict) -> str:
    return f"{fp['num_layers']} layers x {fp['num_heads']} heads (head dim {fp['head_dim']})"


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
        self.scores = s
        self.settings = dict(self.settings)
        self.num_samples = int(self.num_samples)

    # -- shape ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.fingerprint["num_layers"]

    @property
    def num_heads(self) -> int:
        return self.fingerprint["num_heads"]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_profiler(cls, profiler, geometry, settings: dict | None = None) -> "HeadProfile":
        """From a finished :class:`~dummy_forcing_core.profiler.AttentionProfiler`; ``settings``
        (e.g. ar_start, chunk_frames, prompts) are merged over the profiler's own."""
        fp = _fingerprint_of(geometry)
        if (profiler.num_layers, profiler.num_heads) != (fp["num_layers"], fp["num_heads"]):
            raise ValueError(f"profiler measured {profiler.num_layers} layers x {profiler.num_heads} heads but the "
                             f"model has {_describe(fp)}")
        base = {"sink_frames": profiler.sink_frames, "sample_fraction": profiler.sample_fraction,
                "seed": profiler.seed, "probe_calls": profiler.calls, "profile_seconds": round(profiler.elapsed_s, 6)}
        base.update(settings or {})
        return cls(profiler.scores(), fp, base, int(profiler.layer_calls.min()))

    # -- compatibility ------------------------------------------------------------------------
    def is_compatible(self, geometry_or_fingerprint) -> bool:
        return _fingerprint_of(geometry_or_fingerprint) == self.fingerprint

    def check_compatible(self, geometry_or_fingerprint) -> None:
        fp = _fingerprint_of(geometry_or_fingerprint)
        if fp != self.fingerprint:
            raise ValueError(f"head profile was made for a model with {_describe(self.fingerprint)} but this model has "
                             f"{_describe(fp)}; profile it again on this model")

    # -- use ------------------------------------------------------------------------------------
    def assign(self, num_dummy, scope: str = "global", normalise: bool = False) -> torch.Tensor:
        """Head types [L, H] (see :func:`~dummy_forcing_core.head_program.program_heads`);
        ``num_dummy`` is a count or a fraction of all heads."""
        n = resolve_dummy_count(num_dummy, self.num_layers, self.num_heads)
        return program_heads(self.scores, n, scope, normalise)

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
        lines = [f"head profile: {_describe(self.fingerprint)}, {self.num_samples} sample(s)"
                 + (f"; {', '.join(bits)}" if bits else ""),
                 f"mean attention: sink {m[0]:.3f}, neighbor {m[1]:.3f}, current {m[2]:.3f}; "
                 f"heads with > {MOSTLY_CURRENT:.0%} on the current chunk: {int(cur.sum())}/{L * H} "
                 f"({cur.float().mean():.0%})"]
        counts = type_counts(assign) if assign is not None else None
        for i in range(L):
            line = (f"layer {i:>{len(str(L - 1))}}: mostly-current {int(cur[i].sum()):>2}, sink-leaning "
                    f"{int(sink_lean[i].sum()):>2}, neighbor-leaning {int(nb_lean[i].sum()):>2}, "
                    f"mean current {s[i, :, 2].mean():.2f}")
            if counts is not None:
                c = counts[i]
                line += f" | types: {c['sink']} sink, {c['neighbor']} neighbor, {c['dummy']} dummy"
            lines.append(line)
        return "\n".join(lines)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path) -> str:
        """Write to ``path`` (.safetensors) atomically (temp file + os.replace); returns the path."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        meta = {"format": FORMAT, "version": str(VERSION),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "settings": json.dumps(self.settings, sort_keys=True, default=str),
                "num_samples": str(self.num_samples)}
        fd, tmp = tempfile.mkstemp(prefix=".head_profile.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            save_file({"scores": self.scores.contiguous()}, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path) -> "HeadProfile":
        from safetensors import safe_open

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
                             "it may be a model or LoRA file. Pick a file saved by the head profiling node.")
        try:
            version = int(meta.get("version", "0"))
        except ValueError:
            version = -1
        if not 1 <= version <= VERSION:
            raise ValueError(f"{path}: head profile format version {meta.get('version')!r} is not supported "
                             f"(this code reads versions 1..{VERSION}); update the node pack or profile again")
        if scores is None:
            raise ValueError(f"{path} is a damaged head profile: it has no 'scores' tensor")
        try:
            fp = json.loads(meta["fingerprint"])
            settings = json.loads(meta.get("settings", "{}"))
            num_samples = int(meta.get("num_samples", "1"))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is a damaged head profile: bad metadata ({e})") from e
        try:
            return cls(scores, fp, settings, num_samples)
        except ValueError as e:
            raise ValueError(f"{path} is a damaged head profile: {e}") from e

