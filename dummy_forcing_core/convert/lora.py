"""LoRA files (LongLive ``generator_lora``, PEFT, kohya): reading them, checking them against the base
weights' shapes, and merging ``W += (alpha / rank) * B @ A`` in float32 (float64 for float64 weights)."""
from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Mapping

import torch

from .common import (FP8, ConversionError, UsageError, _all_finite, _describe_keys, _finite_positive,
                     _is_tensor_dict, _not_finite)
from .names import WRAPPER_SEGMENTS, _strip_name
from .reading import _check_zip_crc, _read_input, _resolve_input


_LORA_RE = re.compile(r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_RE = re.compile(r"^(?P<mod>.+?)\.(?:alpha|lora_alpha)$")
_ALPHA_NAMES = ("lora_alpha", "alpha", "network_alpha")
_RANK_NAMES = ("lora_rank", "rank", "r", "network_dim")
_CONFIG_DICTS = ("adapter", "lora_config", "peft_config", "adapter_config", "config", "lora")


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.item())
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _find_number(d: Mapping, names: tuple[str, ...]) -> float | None:
    for n in names:
        if n in d and _number(d[n]) is not None:
            return _number(d[n])
    for c in _CONFIG_DICTS:
        sub = d.get(c)
        if isinstance(sub, Mapping):
            for n in names:
                if n in sub and _number(sub[n]) is not None:
                    return _number(sub[n])
    return None


def load_lora_state_dict(path: str) -> tuple[dict, dict]:
    """Read a LoRA file: LongLive ``{"generator_lora": sd, ...}``, a bare PEFT/kohya state dict
    (pickle or safetensors). Returns (lora state dict, info with ``alpha`` / ``rank`` when the
    file states them; both checked to be finite and positive)."""
    path = os.fspath(path)
    inp = _resolve_input(path)
    if inp.kind == "pickle" and zipfile.is_zipfile(inp.path):
        _check_zip_crc(inp.path)
    obj, st_meta = _read_input(inp)
    info: dict[str, Any] = {"path": path, "alpha": None, "rank": None, "source_key": None}
    if inp.kind != "pickle":
        sd = obj
        info["alpha"] = _find_number(st_meta, _ALPHA_NAMES + ("ss_network_alpha",))
        info["rank"] = _find_number(st_meta, _RANK_NAMES + ("ss_network_dim",))
    else:
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{path}: expected a LoRA dict, got {type(obj).__name__}")
        if "generator_lora" in obj:
            sd = obj["generator_lora"]
            info["source_key"] = "generator_lora"
        elif _is_tensor_dict(obj):
            sd = obj
        elif any(k in obj for k in ("generator", "generator_ema")):
            raise UsageError(f"{path}: is a full model checkpoint, not a LoRA; pass it as INPUT instead")
        else:
            raise ConversionError(f"{path}: expected a LongLive LoRA file with a 'generator_lora' entry (PEFT "
                                  f"lora_A / lora_B weights); top-level keys are: {_describe_keys(obj)}")
        info["alpha"] = _find_number(obj, _ALPHA_NAMES)
        info["rank"] = _find_number(obj, _RANK_NAMES)
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{path}: the LoRA entry is a {type(sd).__name__}, not a state dict")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not any(_LORA_RE.match(k) for k in sd):
        raise ConversionError(f"{path}: no LoRA weights (names ending in .lora_A.weight / .lora_B.weight) found; "
                              f"keys: {_describe_keys(sd)}")
    for name in ("alpha", "rank"):
        v = info[name]
        if v is not None and (not _finite_positive(v) or (name == "rank" and v != int(v))):
            raise ConversionError(f"{path}: the file states LoRA {name} = {v:g}; it must be a finite positive "
                                  f"{'integer' if name == 'rank' else 'number'}")
    return sd, info


def _group_lora(lora_sd: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """{module: {"A": t, "B": t, "alpha": float|None}} keyed by plain Wan module name."""
    groups: dict[str, dict[str, Any]] = {}
    adapters: set[str] = set()
    unknown: list[str] = []
    for k, v in lora_sd.items():
        name = k
        for seg in WRAPPER_SEGMENTS:
            name = name.replace(seg, "")
        m = _LORA_RE.match(name)
        if m:
            mod = _strip_name(m.group("mod"))
            part = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
            if m.group("adapter"):
                adapters.add(m.group("adapter"))
            g = groups.setdefault(mod, {"A": None, "B": None, "alpha": None, "keys": []})
            if g[part] is not None:
                raise ConversionError(f"LoRA has two {part} matrices for {mod!r} (several adapters in one file?)")
            g[part] = v
            g["keys"].append(k)
            continue
        m = _ALPHA_RE.match(name)
        if m and v.numel() == 1:
            mod = _strip_name(m.group("mod"))
            groups.setdefault(mod, {"A": None, "B": None, "alpha": None, "keys": []})["alpha"] = float(v.item())
            continue
        unknown.append(k)
    if len(adapters) > 1:
        raise ConversionError(f"LoRA holds several adapters ({', '.join(sorted(adapters))}); save one adapter per file")
    return groups, unknown


def _check_factor(mod: str, part: str, t: torch.Tensor) -> None:
    if t.layout != torch.strided or not t.is_floating_point() or t.dtype in FP8:
        raise ConversionError(f"LoRA {mod}: lora_{part} must be a dense float32 / float16 / bfloat16 tensor, got "
                              f"{str(t.dtype).replace('torch.', '')} ({str(t.layout).replace('torch.', '')})")
    if not _all_finite(t):
        raise _not_finite("LoRA", f"{mod} lora_{part}", t)


def _lora_plan(shapes: Mapping[str, torch.Size], lora_sd: Mapping[str, torch.Tensor], alpha: float | None = None,
               rank: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Check a LoRA against base weight shapes. Returns {weight name: (A [r, in], B [out, r], scale)}."""
    groups, unknown = _group_lora(lora_sd)
    if unknown:
        raise ConversionError(f"LoRA has {len(unknown)} entries that are not LoRA matrices: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    incomplete = [m for m, g in groups.items() if g["A"] is None or g["B"] is None]
    if incomplete:
        raise ConversionError(f"LoRA modules without both lora_A and lora_B: {', '.join(incomplete[:5])}")
    unmatched = [m for m in groups if f"{m}.weight" not in shapes]
    if unmatched:
        raise ConversionError(
            f"{len(unmatched)} of {len(groups)} LoRA modules match no weight of the base model, e.g. "
            f"{', '.join(repr(m + '.weight') for m in unmatched[:5])} (from keys like "
            f"{groups[unmatched[0]]['keys'][0]!r}); is this LoRA for this model?")
    plan = {}
    for mod, g in sorted(groups.items()):
        shape = tuple(shapes[f"{mod}.weight"])
        A, B = g["A"], g["B"]
        if A.ndim != 2 or B.ndim != 2:
            raise ConversionError(f"LoRA {mod}: only Linear LoRA (2-D lora_A / lora_B) is supported, "
                                  f"got shapes {tuple(A.shape)} / {tuple(B.shape)}")
        r = A.shape[0]
        if r == 0:
            raise ConversionError(f"LoRA {mod}: rank 0 (lora_A has no rows)")
        if B.shape[1] != r or (B.shape[0], A.shape[1]) != shape:
            raise ConversionError(f"LoRA {mod}: lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} does not fit "
                                  f"the base weight {shape}")
        if rank is not None and int(rank) != r:
            raise ConversionError(f"LoRA {mod}: rank given as {rank} but lora_A has {r} rows")
        a = g["alpha"] if g["alpha"] is not None else (alpha if alpha is not None else r)
        if not _finite_positive(a):
            raise ConversionError(f"LoRA {mod}: alpha = {a} must be a finite positive number")
        _check_factor(mod, "A", A)
        _check_factor(mod, "B", B)
        plan[f"{mod}.weight"] = (A, B, float(a) / r)
    return plan


def _apply_lora(w: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in float32 (float64 for float64 weights); returns the compute dtype."""
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    return w.to(cdt) + (B.to(cdt) @ A.to(cdt)) * scale


def merge_lora(sd: dict, lora_sd: Mapping[str, torch.Tensor], alpha: float | None = None,
               rank: int | None = None) -> dict:
    """Merge a LoRA into Wan state dict ``sd`` in place (and return it): W += (alpha/rank) * B @ A.

    ``lora_sd`` may use PEFT names (``base_model.model.blocks.0.self_attn.q.lora_A.weight``,
    optionally with the ``.default`` adapter segment), LongLive/Self-Forcing wrapper prefixes, or
    kohya ``lora_down`` / ``lora_up`` (+ ``.alpha``). ``rank`` defaults to each module's
    ``lora_A`` row count (an explicit value must agree with it); ``alpha`` defaults to a per-module
    ``.alpha`` entry, else to the rank. Any LoRA entry that matches no base weight is an error, and
    so are rank 0, non-finite factors and an alpha that is not a finite positive number."""
    for key, (A, B, scale) in _lora_plan({k: v.shape for k, v in sd.items()}, lora_sd, alpha, rank).items():
        sd[key] = _apply_lora(sd[key], A, B, scale).to(sd[key].dtype)
    return sd
