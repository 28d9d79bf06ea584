"""ComfyUI fp8 weights: the old "scaled fp8" format and the newer per-layer ``comfy_quant`` one, split
into fp8 weights plus float32 scales, and dequantized as ``weight.float() * scale``."""
from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

from ..bounded_json import loads_bounded
from .common import ConversionError, _all_finite
from .names import _strip_name


class _Quant(NamedTuple):
    scale: torch.Tensor  # float32, numel 1 or broadcastable to the weight
    kind: str            # 'comfy_scaled_fp8' | 'comfy_quant'


def _comfy_quant_format(v: torch.Tensor, key: str, source: str) -> str | None:
    try:
        parsed = loads_bounded(bytes(v.to(torch.uint8).tolist()).decode("utf-8"))
    except ValueError as exc:  # not JSON, not UTF-8, nested absurdly deep
        raise ConversionError(f"{source}: tensor {key!r} is not a readable comfy_quant JSON entry ({exc}); "
                              f"the file is damaged") from None
    return parsed.get("format") if isinstance(parsed, dict) else None


def _split_quantization(sd: dict, meta: Mapping[str, str], source: str) -> tuple[dict, dict[str, _Quant]]:
    """Take ComfyUI's fp8 scale entries out of ``sd``. Returns (weights, {weight name: _Quant}).

    Old format: ``scaled_fp8`` marker + ``<layer>.scale_weight`` [+ ``.scale_input``]. New format:
    ``<layer>.comfy_quant`` (JSON bytes) or metadata ``_quantization_metadata`` + ``<layer>.weight_scale``
    [+ ``.input_scale``]; its fp8 weights may be stored as uint8 (viewed as the format's dtype)."""
    formats: dict[str, str] = {}
    if "_quantization_metadata" in meta:
        try:
            layers = loads_bounded(meta["_quantization_metadata"]).get("layers", {})
            formats.update({_strip_name(k): v.get("format") for k, v in layers.items() if isinstance(v, dict)})
        except (ValueError, AttributeError) as exc:
            raise ConversionError(f"{source}: unreadable _quantization_metadata entry ({exc})") from None
    out, scales = {}, {}
    for k, v in sd.items():
        layer, _, leaf = k.rpartition(".")
        if k == "scaled_fp8" or leaf in ("scale_input", "input_scale"):
            continue  # a marker / activation scales: not needed to rebuild the weights
        if leaf == "comfy_quant":
            formats[layer] = _comfy_quant_format(v, k, source)
        elif leaf in ("scale_weight", "weight_scale"):
            kind = "comfy_scaled_fp8" if leaf == "scale_weight" else "comfy_quant"
            scales[f"{layer}.weight"] = (v, kind, k)
        else:
            out[k] = v
    quant: dict[str, _Quant] = {}
    for layer, fmt in formats.items():
        if fmt not in ("float8_e4m3fn", "float8_e5m2"):
            raise ConversionError(f"{source}: layer {layer!r} uses ComfyUI quantization format {fmt!r}, which this "
                                  f"converter cannot dequantize (supported: float8_e4m3fn, float8_e5m2 with a "
                                  f"weight_scale); convert from a bf16 / fp16 / fp32 or fp8 checkpoint")
        w = out.get(f"{layer}.weight")
        if w is not None and w.dtype == torch.uint8:
            out[f"{layer}.weight"] = w.view(getattr(torch, fmt))
    for wkey, (s, kind, skey) in scales.items():
        w = out.get(wkey)
        if w is None:
            raise ConversionError(f"{source}: scale {skey!r} for {wkey!r} but no such weight")
        if not s.is_floating_point() or s.layout != torch.strided or not _all_finite(s):
            raise ConversionError(f"{source}: the fp8 scale {skey!r} of {wkey!r} is not a finite float tensor "
                                  f"(NaN / inf, or not floating point); the file is damaged")
        s = s.float()
        if s.numel() and float(s.min()) <= 0:  # a zero scale zeroes the layer, a negative one flips its sign
            bad = int((s <= 0).sum())
            raise ConversionError(f"{source}: the fp8 scale {skey!r} of {wkey!r} has {bad} of {s.numel()} value(s) "
                                  f"<= 0 (min {float(s.min()):g}); it would zero or sign-flip the layer: the file is "
                                  f"damaged, get it again")
        if s.numel() != 1 and (s.ndim != w.ndim or any(a not in (1, b) for a, b in zip(s.shape, w.shape))):
            raise ConversionError(f"{source}: the fp8 scale of {wkey!r} has shape {tuple(s.shape)}, which does not "
                                  f"broadcast to the weight {tuple(w.shape)}")
        quant[wkey] = _Quant(s.reshape(()) if s.numel() == 1 else s, kind)
    return out, quant


def _dequantize(t: torch.Tensor, q: _Quant | None) -> torch.Tensor:
    """fp8 * scale in float32 (what ComfyUI's scaled ops compute); unscaled tensors unchanged."""
    return t if q is None else t.float() * q.scale
