"""Checking that a state dict with plain Wan names is a supported Wan2.1 T2V transformer: names,
variant (I2V, Wan2.2 5B, VACE), tensor kinds, heads and shapes, from metadata only."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from ..wan_model import WanConfig, WanModel
from .common import FP8, ConversionError, UsageError, _describe_keys, _is_tensor_dict
from .reading import _SHARD_RE

WEIGHT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16) + FP8
SUPPORTED = "Wan2.1 text-to-video transformers with 16 latent channels and patch (1, 2, 2) (1.3B, 14B)"


_EXPECTED_CACHE: dict[str, Any] = {}


def _expected_names() -> tuple[list[str], list[str]]:
    """(top-level names, per-block suffixes) of our standalone WanModel (same as ComfyUI's)."""
    if "names" not in _EXPECTED_CACHE:
        with torch.device("meta"):
            m = WanModel(WanConfig(dim=64, ffn_dim=128, num_heads=1, num_layers=1, text_dim=8, freq_dim=8))
        top, block = [], []
        for k in m.state_dict().keys():
            if k.startswith("blocks.0."):
                block.append(k[len("blocks.0."):])
            else:
                top.append(k)
        _EXPECTED_CACHE["names"] = (top, block)
    return _EXPECTED_CACHE["names"]


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _check_variant(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse, by name, Wan variants whose parameters look like T2V's but mean something else."""
    pe = sd.get("patch_embedding.weight")
    i2v = "img_emb.proj.0.weight" in sd or any(".k_img." in k or ".add_k_proj." in k for k in sd)
    in_dim = int(pe.shape[1]) if pe is not None and pe.ndim == 5 else None
    if i2v or in_dim == 36:
        raise ConversionError(f"{source}: an image-to-video (I2V / FLF2V) Wan model is not supported (it has "
                              f"img_emb / k_img parameters or 36 input channels: latent + mask + image; this one "
                              f"has {in_dim}); supported: {SUPPORTED}")
    if any(k.startswith(("vace_blocks.", "vace_patch_embedding")) for k in sd):
        raise ConversionError(f"{source}: a VACE Wan model is not supported; supported: {SUPPORTED}")
    if pe is None or "head.head.weight" not in sd:
        return  # the name check reports it
    patch = tuple(int(s) for s in pe.shape[2:])
    out_dim = int(sd["head.head.weight"].shape[0]) // max(1, math.prod(patch))
    if pe.ndim != 5 or patch != (1, 2, 2) or in_dim != 16 or out_dim != 16:
        hint = " (Wan2.2 TI2V-5B, which uses the 48-channel Wan2.2 VAE)" if in_dim == 48 else ""
        raise ConversionError(f"{source}: a Wan model with {in_dim} input / {out_dim} output latent channels and "
                              f"patch {patch}{hint} is not supported; supported: {SUPPORTED}")


def _check_tensor_kinds(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Dense floating-point tensors of a dtype we can convert; names the first offender."""
    for k, v in sd.items():
        if v.layout != torch.strided or v.is_quantized:
            kind = "a quantized" if v.is_quantized else f"a {str(v.layout).replace('torch.', '')}"
            raise ConversionError(f"{source}: {k} is {kind} tensor; Wan weights must be dense (strided) tensors")
        if v.dtype not in WEIGHT_DTYPES:
            raise ConversionError(f"{source}: {k} has dtype {str(v.dtype).replace('torch.', '')}; supported weight "
                                  f"dtypes: float32, float16, bfloat16, float64, float8_e4m3fn, float8_e5m2 (also "
                                  f"ComfyUI scaled fp8)")


def _config_from(sd: Mapping[str, torch.Tensor], source: str, num_heads: int | None) -> WanConfig:
    dim = int(sd["head.modulation"].shape[-1])
    if num_heads is not None and (dim % num_heads or (dim // num_heads) % 2):
        raise UsageError(f"{source}: --num-heads {num_heads} does not split dim {dim} into heads of an even "
                         f"size (Wan uses head size 128: {dim // 128 or 'no'} heads for dim {dim})")
    try:
        return WanConfig.from_state_dict(sd, num_heads=num_heads)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConversionError(f"{source}: Wan geometry could not be derived: {exc}") from None


def validate_wan_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                            num_heads: int | None = None) -> WanConfig:
    """Check ``sd`` holds exactly a supported Wan2.1 T2V transformer with plain names. Returns its config.

    Checks names, variant (I2V, Wan2.2 5B, VACE), tensor kinds (dense, floating dtypes), heads and
    shapes, from metadata only (no tensor data is read). Raises :class:`ConversionError` naming
    ``source``, what was expected and what is missing, unexpected or of the wrong shape."""
    expected_hint = ("a Wan2.1 text-to-video diffusion transformer (parameters patch_embedding.weight, "
                     "text_embedding.0.weight, time_embedding.0.weight, blocks.N.self_attn.q.weight, ..., "
                     "head.head.weight, head.modulation)")
    shard_hint = (" (this looks like one shard of a sharded checkpoint: pass its .index.json or its folder)"
                  if _SHARD_RE.search(source) else "")
    if not _is_tensor_dict(sd):
        raise ConversionError(f"{source}: expected a state dict of tensors holding {expected_hint}; "
                              f"got {_describe_keys(sd)}")
    _check_variant(sd, source)
    if "head.modulation" not in sd or "patch_embedding.weight" not in sd:
        raise ConversionError(f"{source}: not a Wan model{shard_hint}: expected {expected_hint}, but "
                              f"'head.modulation' / 'patch_embedding.weight' are missing. Keys found: "
                              f"{_describe_keys(sd)}")
    top, block = _expected_names()
    layer_ids = sorted({int(m.group(1)) for k in sd for m in [_BLOCK_RE.match(k)] if m})
    if not layer_ids:
        raise ConversionError(f"{source}: not a Wan model: no 'blocks.N.*' parameters (expected {expected_hint})")
    num_layers = layer_ids[-1] + 1
    missing = [k for k in top if k not in sd]
    for i in range(num_layers):
        missing += [f"blocks.{i}.{s}" for s in block if f"blocks.{i}.{s}" not in sd]
    expected = set(top) | {f"blocks.{i}.{s}" for i in range(num_layers) for s in block}
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        per_block: dict[str, list[int]] = {}
        for k in missing:
            m = _BLOCK_RE.match(k)
            per_block.setdefault(m.group(2) if m else k, []).append(int(m.group(1)) if m else -1)
        detail = "; ".join(
            f"{name}" + (f" (blocks {_ranges(ids)})" if ids[0] >= 0 else "")
            for name, ids in list(per_block.items())[:12])
        problems.append(f"{len(missing)} Wan parameters missing{shard_hint}: {detail}")
    if unexpected:
        problems.append(f"{len(unexpected)} parameters a Wan2.1 T2V transformer does not have "
                        f"(image-to-video, VACE, camera and other variants are not supported): "
                        f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise ConversionError(f"{source}: not a complete Wan2.1 T2V model: " + ". ".join(problems))
    _check_tensor_kinds(sd, source)
    cfg = _config_from(sd, source, num_heads)
    with torch.device("meta"):
        ref = WanModel(cfg).state_dict()
    bad = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in ref.items() if sd[k].shape != v.shape]
    if bad:
        raise ConversionError(f"{source}: Wan parameter shapes are inconsistent: {'; '.join(bad[:6])}")
    return cfg


def _ranges(ids: list[int]) -> str:
    ids = sorted(set(ids))
    out, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)
