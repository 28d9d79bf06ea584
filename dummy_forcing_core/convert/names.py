"""Tensor names: checkpoint keys (wrapper segments, ``model.`` / ``module.`` / ComfyUI prefixes,
diffusers ``WanTransformer3DModel`` names) normalised to plain Wan names (``blocks.N.self_attn.q.weight``)."""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .common import ConversionError

WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
LEADING_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "model.", "module.")
COMFY_PREFIX = "model.diffusion_model."
DROPPED_BUFFERS = ("freqs",)  # RoPE table some Wan forks register as a buffer; recomputed at run time


def _strip_name(name: str, removed: set | None = None) -> str:
    """Remove wrapper segments anywhere and known leading prefixes (repeatedly); Wan names
    never start with any of them. ``removed`` collects what was taken out."""
    for seg in WRAPPER_SEGMENTS:
        if seg in name:
            name = name.replace(seg, "")
            if removed is not None:
                removed.add(seg)
    changed = True
    while changed:
        changed = False
        for p in LEADING_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
                changed = True
                if removed is not None:
                    removed.add(p)
    return name


# diffusers WanTransformer3DModel module -> Wan module (inverse of diffusers' convert_wan_to_diffusers.py)
_DIFFUSERS_TOP = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
                  "condition_embedder.time_embedder.linear_2": "time_embedding.2",
                  "condition_embedder.text_embedder.linear_1": "text_embedding.0",
                  "condition_embedder.text_embedder.linear_2": "text_embedding.2",
                  "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head"}
_DIFFUSERS_BLOCK = {"attn1.to_out.0": "self_attn.o", "attn2.to_out.0": "cross_attn.o",
                    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
                    **{f"attn{i}.{a}": f"{n}.{b}" for i, n in ((1, "self_attn"), (2, "cross_attn"))
                       for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("norm_q", "norm_q"),
                                    ("norm_k", "norm_k"))}}


def _is_diffusers_naming(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k or k.endswith("scale_shift_table")
               for k in keys)


def _diffusers_to_wan(name: str) -> str:
    """``blocks.3.attn1.to_q.weight`` -> ``blocks.3.self_attn.q.weight`` etc.; unknown names unchanged."""
    if name == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m:
        if m.group(2) == "scale_shift_table":
            return f"blocks.{m.group(1)}.modulation"
        mod, _, leaf = m.group(2).rpartition(".")
        return f"blocks.{m.group(1)}.{_DIFFUSERS_BLOCK[mod]}.{leaf}" if mod in _DIFFUSERS_BLOCK else name
    mod, _, leaf = name.rpartition(".")
    return f"{_DIFFUSERS_TOP[mod]}.{leaf}" if mod in _DIFFUSERS_TOP else name


def _normalize_wan_keys(sd: Mapping[str, torch.Tensor], path: str) -> tuple[dict, dict]:
    """Strip wrappers / prefixes (and map diffusers names) so names become plain Wan names.
    Returns (sd, notes)."""
    notes: dict[str, Any] = {}
    keys = list(sd.keys())
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        dropped = [k for k in keys if not k.startswith(COMFY_PREFIX)]
        if dropped:
            notes["dropped_non_diffusion_keys"] = len(dropped)
        keys = [k for k in keys if k.startswith(COMFY_PREFIX)]
    removed: set[str] = set()
    stripped = {k: _strip_name(k, removed) for k in keys}
    diffusers = _is_diffusers_naming(stripped.values())
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, new in stripped.items():
        new = _diffusers_to_wan(new) if diffusers else new
        if new in DROPPED_BUFFERS:
            notes.setdefault("dropped_buffers", []).append(k)
            continue
        if new in out:
            raise ConversionError(f"{path}: keys {origin[new]!r} and {k!r} both map to the Wan name {new!r}; "
                                  "the file holds two copies of the model")
        out[new] = sd[k]
        origin[new] = k
    notes["stripped"] = sorted(removed)
    notes["naming"] = "diffusers" if diffusers else "wan"
    return out, notes
