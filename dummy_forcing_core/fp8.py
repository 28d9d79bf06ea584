"""fp8 weights: storage in float8 (e4m3fn / e5m2), compute in bf16 or, on GPUs that have it,
fp8 matrix products.

A linear layer counts as fp8 when its ``weight`` is a float8 tensor; an optional ``scale_weight``
(a float32 scalar, ComfyUI's "fp8 scaled" convention, or one per output row [out]) multiplies it
back. ComfyUI's own fp8 layers (UNETLoader ``weight_dtype`` fp8_e4m3fn, or scaled-fp8
checkpoints) look like that;
:class:`Fp8Linear` and :func:`quantize_fp8` make such layers outside ComfyUI (bench, tests).

Two ways to compute (``fp8_linear``):

* bf16 compute: the weight of one layer is cast to the compute dtype when it is used and
  dropped after, so no bf16 copy of all weights is kept;
* fp8 matmul (``torch._scaled_mm``, compute capability 8.9+: Ada, Hopper): the activation is
  clamped to e4m3's range and cast to fp8 with scale 1 (as ComfyUI's fp8_e4m3fn_fast does; one
  fused pass, ``fast_kernels.quantize_e4m3``, which also takes the FFN's GELU), the product
  accumulates in fp32 and comes out in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_kernels import quantize_e4m3

__all__ = ["FP8_DTYPES", "E4M3_MAX", "is_fp8", "fp8_scale", "fp8_matmul_available", "fp8_products", "fp8_linear",
           "Fp8Linear", "quantize_fp8"]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
E4M3_MAX = 448.0


def is_fp8(t: torch.Tensor | None) -> bool:
    return t is not None and t.dtype in FP8_DTYPES


def fp8_scale(m: nn.Module) -> torch.Tensor | None:
    """The layer's weight scale (ComfyUI's ``scale_weight``), or None for scale 1."""
    s = getattr(m, "scale_weight", None)
    return s if torch.is_tensor(s) else None


def fp8_matmul_available(device) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9)


_ONE: dict = {}


def _one(device) -> torch.Tensor:
    t = _ONE.get(device)
    if t is None:
        t = _ONE[device] = torch.ones((), dtype=torch.float32, device=device)
    return t


def fp8_products(weight: torch.Tensor, fp8_matmul: bool) -> bool:
    """Whether :func:`fp8_linear` multiplies this weight in fp8 (e4m3, N and K multiples of 16)."""
    return fp8_matmul and weight.dtype == torch.float8_e4m3fn and weight.shape[1] % 16 == 0 \
        and weight.shape[0] % 16 == 0


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
               fp8_matmul: bool = False, gelu_input: bool = False, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ (weight * scale).T + bias`` for an fp8 ``weight`` [N, K]; x [..., K] in the compute
    dtype, or already float8_e4m3fn (clamped: e.g. ``residual_norm_modulate(e4m3=True)``; then
    ``out_dtype`` names the compute dtype and the product must be fp8); ``scale``: None, a
    scalar, or one per output row [N]. ``fp8_matmul``: an fp8 product where
    :func:`fp8_products` says so, else a cast. ``gelu_input``: multiply GELU_tanh(x) instead
    (fused into the fp8 cast of x)."""
    pre = x.dtype == torch.float8_e4m3fn
    if pre and (out_dtype is None or gelu_input or not fp8_products(weight, fp8_matmul)):
        raise ValueError("an e4m3 input needs out_dtype, no GELU, and an fp8 product")
    out_dtype = out_dtype or x.dtype
    if fp8_products(weight, fp8_matmul):
        shape = x.shape
        a = x.reshape(-1, shape[-1]) if pre else quantize_e4m3(x.reshape(-1, shape[-1]).contiguous(), gelu=gelu_input)
        if scale is not None and scale.ndim == 1:  # row-wise scales need row-wise ones for the input
            sa = torch.ones((a.shape[0], 1), dtype=torch.float32, device=x.device)
            sw = scale.to(device=x.device, dtype=torch.float32).reshape(1, -1).contiguous()
        else:
            sa = _one(x.device)
            sw = scale.to(device=x.device, dtype=torch.float32) if scale is not None else _one(x.device)
        out = torch._scaled_mm(a, weight.t(), scale_a=sa, scale_b=sw, bias=bias, out_dtype=out_dtype,
                               use_fast_accum=True)
        return out.view(*shape[:-1], weight.shape[0])
    if gelu_input:
        x = F.gelu(x, approximate="tanh")
    w = weight.to(x.dtype)
    if scale is not None:
        w = w * (scale.to(x.dtype)[:, None] if scale.ndim == 1 else scale.to(x.dtype))
    return F.linear(x, w, bias)


class Fp8Linear(nn.Module):
    """A linear layer stored in fp8: ``weight`` [out, in] float8, ``scale_weight`` float32 scalar,
    ``bias`` in the compute dtype. Its forward casts (bf16 compute)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("scale_weight", scale)

    def forward(self, x):
        return fp8_linear(x, self.weight, self.bias, self.scale_weight)


@torch.no_grad()
def quantize_fp8(model: nn.Module, dtype=torch.float8_e4m3fn, scaled: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``model.blocks`` by an :class:`Fp8Linear` (in place):
    per-tensor scale amax / 448 when ``scaled`` (ComfyUI's scaled fp8), else a plain cast
    (ComfyUI's fp8_e4m3fn weight dtype). Embeddings and the head stay as they are (1% of the
    weights)."""
    top = E4M3_MAX if dtype == torch.float8_e4m3fn else 57344.0
    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            if not isinstance(mod, nn.Linear):
                continue
            w = mod.weight.detach()
            scale = (w.abs().max().float() / top).clamp_min(1e-12) if scaled else None
            q = (w.float() / scale if scaled else w.float()).clamp(-top, top).to(dtype)
            parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            setattr(parent, name.rsplit(".", 1)[-1], Fp8Linear(q, None if mod.bias is None else mod.bias.detach(),
                                                               scale))
    return model
