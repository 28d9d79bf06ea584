"""Fused elementwise kernels of the inference fast path: Triton on CUDA, plain torch elsewhere.

Two kernels replace the chains of small passes around every matrix product of a Wan block
(see ``docs/performance.md``):

* :func:`residual_norm_modulate` ``x <- x + y * gate;  h = LayerNorm(x) * mul + add``, one
  read of ``x`` and ``y`` and one write of ``x`` and ``h`` per token. It serves the gated
  residuals of self-attention and the FFN, the plain residual of cross-attention, and the
  LayerNorms that follow them (``norm1`` / ``norm2`` with ``1 + scale`` and ``shift`` of the
  token's frame, ``norm3`` with its affine weight and bias, the head's norm).
* :func:`rms_norm_rope` ``RMSNorm`` over the whole row (all heads, as Wan's ``norm_q`` /
  ``norm_k``) followed by the 3-axis RoPE rotation of each head, one read and one write.
* :func:`copy_rows` ``dst[...] = src`` for 4-d tensors whose last dim (a head's channels) is
  contiguous on both sides, any other strides: the head-major <-> token-major copies around
  attention (K/V into a cache group's scratch, a group's output into the layer's). Torch's
  copy runs these through its generic strided kernel, one element at a time (~3x the time of
  the bytes moved on an H200); here each program moves whole rows.
* :func:`quantize_e4m3` the input of an fp8 matrix product: (optionally GELU(tanh),) clamp to
  e4m3's range and cast, one read of the bf16 activation and one write of its fp8 bytes, where
  torch runs a clamp and a cast (and the FFN a GELU) as separate passes.

Math is float32 inside the kernels (float64 in the torch fallback for float64 tensors); each
result is rounded once to the output dtype, where the reference path rounds after every
step. Results therefore agree with the reference to bf16 rounding. No autograd: inference
only (the reference ``block_forward`` stays the training path).
"""
from __future__ import annotations

import os

import torch

__all__ = ["HAVE_TRITON", "triton_usable", "residual_norm_modulate", "rms_norm_rope", "quantize_e4m3", "copy_rows"]

try:  # pragma: no cover - depends on the host
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover
    triton = tl = None
    HAVE_TRITON = False

_INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def triton_usable(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on tensors like ``t`` (CUDA, or the interpreter)."""
    return HAVE_TRITON and t.dtype in _KERNEL_DTYPES and (t.is_cuda or (_INTERPRET and t.device.type == "cpu"))


if HAVE_TRITON:

    @triton.jit
    def _res_norm_mod_kernel(X, Y, G, XO, H, MUL, ADD,
                             C, rows_per_batch, rows_per_frame,
                             g_sb, g_sf, m_sb, m_sf, a_sb, a_sf, eps,
                             HAS_Y: tl.constexpr, HAS_G: tl.constexpr, WRITE_X: tl.constexpr,
                             HAS_MUL: tl.constexpr, HAS_ADD: tl.constexpr, CLAMP: tl.constexpr,
                             BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        b = row // rows_per_batch
        f = (row % rows_per_batch) // rows_per_frame
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(X + row * C + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_Y:
            y = tl.load(Y + row * C + cols, mask=m, other=0.0).to(tl.float32)
            if HAS_G:
                y = y * tl.load(G + b * g_sb + f * g_sf + cols, mask=m, other=0.0).to(tl.float32)
            x = (x + y).to(XO.dtype.element_ty)
            if WRITE_X:
                tl.store(XO + row * C + cols, x, mask=m)
            x = x.to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        xc = tl.where(m, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / C
        h = xc * (1.0 / tl.sqrt(var + eps))
        if HAS_MUL:
            h = h * tl.load(MUL + b * m_sb + f * m_sf + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_ADD:
            h = h + tl.load(ADD + b * a_sb + f * a_sf + cols, mask=m, other=0.0).to(tl.float32)
        if CLAMP:  # an e4m3 h (an fp8 product's input): e4m3's range
            h = tl.minimum(tl.maximum(h, -448.0), 448.0)
        tl.store(H + row * C + cols, h.to(H.dtype.element_ty), mask=m)

    @triton.jit
    def _rms_rope_kernel(X, W, COS, SIN, Y, x_rs, y_rs, L, C, HALF_C, HALF_D, eps,
                         ROPE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, BLOCK)
        m = i < HALF_C
        xe = tl.load(X + row * x_rs + 2 * i, mask=m, other=0.0).to(tl.float32)
        xo = tl.load(X + row * x_rs + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(xe * xe + xo * xo, axis=0) / C + eps)
        a = xe * r * tl.load(W + 2 * i, mask=m, other=0.0).to(tl.float32)
        b = xo * r * tl.load(W + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
        if ROPE:
            t = (row % L) * HALF_D + i % HALF_D
            c = tl.load(COS + t, mask=m, other=0.0)
            s = tl.load(SIN + t, mask=m, other=0.0)
            ye = a * c - b * s
            yo = a * s + b * c
        else:
            ye = a
            yo = b
        tl.store(Y + row * y_rs + 2 * i, ye.to(Y.dtype.element_ty), mask=m)
        tl.store(Y + row * y_rs + 2 * i + 1, yo.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _copy_rows_kernel(S, Dst, n_rows, N1, N2, s0, s1, s2, d0, d1, d2,
                          D: tl.constexpr, BLOCK_R: tl.constexpr, CLAMP: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = r < n_rows
        i2 = r % N2
        t = r // N2
        i1 = t % N1
        i0 = t // N1
        cols = tl.arange(0, D)
        x = tl.load(S + (i0 * s0 + i1 * s1 + i2 * s2)[:, None] + cols[None, :], mask=m[:, None])
        if CLAMP:  # into e4m3 (an fp8 product's input): e4m3's range
            x = tl.minimum(tl.maximum(x.to(tl.float32), -448.0), 448.0)
        tl.store(Dst + (i0 * d0 + i1 * d1 + i2 * d2)[:, None] + cols[None, :], x.to(Dst.dtype.element_ty),
                 mask=m[:, None])

    @triton.jit
    def _e4m3_kernel(X, Y, n, top, GELU: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        x = tl.load(X + i, mask=m, other=0.0).to(tl.float32)
        if GELU:  # tanh approximation, as the FFN's nn.GELU(approximate="tanh")
            u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            x = x * tl.sigmoid(2.0 * u)  # 0.5 * x * (1 + tanh(u))
        x = tl.minimum(tl.maximum(x, -top), top)
        tl.store(Y + i, x.to(Y.dtype.element_ty), mask=m)


def _vec_strides(v: torch.Tensor | None, B: int, Fr: int, C: int) -> tuple[torch.Tensor | None, int, int]:
    """A per-(batch, frame) vector given as [C], [F, C] or [B, F, C] -> (tensor, batch stride,
    frame stride) with unit stride over C."""
    if v is None:
        return None, 0, 0
    if v.shape[-1] != C or v.stride(-1) != 1:
        raise ValueError(f"modulation vector must end in a contiguous dim of {C}, got {tuple(v.shape)}")
    if v.ndim == 1:
        return v, 0, 0
    if v.ndim == 2:
        if v.shape[0] not in (1, Fr):
            raise ValueError(f"per-frame vector {tuple(v.shape)} does not match {Fr} frames")
        return v, 0, (v.stride(0) if v.shape[0] == Fr else 0)
    if v.ndim == 3:
        if v.shape[0] not in (1, B) or v.shape[1] not in (1, Fr):
            raise ValueError(f"per-frame vector {tuple(v.shape)} does not match batch {B} x {Fr} frames")
        return v, (v.stride(0) if v.shape[0] == B else 0), (v.stride(1) if v.shape[1] == Fr else 0)
    raise ValueError(f"modulation vector must be [C], [F, C] or [B, F, C], got {tuple(v.shape)}")


def _expand(v: torch.Tensor | None, B: int, Fr: int, C: int, work) -> torch.Tensor | None:
    """[C] / [F, C] / [B, F, C] -> [B, F, 1, C] in ``work`` (torch fallback)."""
    if v is None:
        return None
    if v.ndim == 1:
        v = v[None, None]
    elif v.ndim == 2:
        v = v[None]
    return v.to(work).expand(B, Fr, C).unsqueeze(2)


def residual_norm_modulate(x: torch.Tensor, frames: int, eps: float, y: torch.Tensor | None = None,
                           gate: torch.Tensor | None = None, mul: torch.Tensor | None = None,
                           add: torch.Tensor | None = None, write_x: bool = True,
                           out: torch.Tensor | None = None, use_triton: bool | None = None,
                           e4m3: bool = False) -> torch.Tensor:
    """``x <- x + y * gate`` (in place, when ``y`` is given and ``write_x``), then return
    ``h = LayerNorm(x) * mul + add`` (LayerNorm without affine, over the last dim); ``e4m3``:
    h clamped to e4m3's range and stored as float8_e4m3fn (the input of fp8 products, rounded
    once from float32, where a separate :func:`quantize_e4m3` rounds x's dtype again).

    x, y: [B, L, C] contiguous, L = frames * tokens per frame; gate, mul, add: [C], [F, C] or
    [B, F, C] (any float dtype; unit stride over C), each row uses its frame's vector.
    The residual sum is rounded to x's dtype before the norm, as the reference stores it.
    use_triton: None picks Triton where usable; False forces the torch ops."""
    if x.ndim != 3 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous [B, L, C] tensor, got {tuple(x.shape)}")
    B, L, C = x.shape
    if L % frames:
        raise ValueError(f"{L} tokens are not {frames} whole frames")
    if y is not None and (y.shape != x.shape or not y.is_contiguous()):
        raise ValueError(f"y must be contiguous and shaped like x {tuple(x.shape)}, got {tuple(y.shape)}")
    h = torch.empty_like(x, dtype=torch.float8_e4m3fn if e4m3 else x.dtype) if out is None else out
    if use_triton is not False and triton_usable(x) and (y is None or y.dtype == x.dtype):
        g, g_sb, g_sf = _vec_strides(gate, B, frames, C)
        m, m_sb, m_sf = _vec_strides(mul, B, frames, C)
        a, a_sb, a_sf = _vec_strides(add, B, frames, C)
        block = triton.next_power_of_2(C)
        _res_norm_mod_kernel[(B * L,)](
            x, y if y is not None else x, g if g is not None else x, x, h,
            m if m is not None else x, a if a is not None else x,
            C, L, L // frames, g_sb, g_sf, m_sb, m_sf, a_sb, a_sf, float(eps),
            HAS_Y=y is not None, HAS_G=gate is not None, WRITE_X=bool(write_x and y is not None),
            HAS_MUL=mul is not None, HAS_ADD=add is not None, CLAMP=h.dtype == torch.float8_e4m3fn, BLOCK=block,
            num_warps=8 if block >= 2048 else 4)
        return h
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.view(B, frames, L // frames, C)
    if y is not None:
        r = y.view_as(xs).to(work)
        if gate is not None:
            r = r * _expand(gate, B, frames, C, work)
        xn = (xs.to(work) + r).to(x.dtype)
        if write_x:
            xs.copy_(xn)
        xs = xn
    hw = torch.nn.functional.layer_norm(xs.to(work), (C,), eps=eps)
    if mul is not None:
        hw = hw * _expand(mul, B, frames, C, work)
    if add is not None:
        hw = hw + _expand(add, B, frames, C, work)
    if h.dtype == torch.float8_e4m3fn:
        hw = hw.clamp(-448.0, 448.0)
    h.view(B, frames, L // frames, C).copy_(hw)
    return h


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor | None,
                  sin: torch.Tensor | None, tokens: int, out: torch.Tensor | None = None,
                  use_triton: bool | None = None) -> torch.Tensor:
    """RMSNorm over each row's C channels (times ``weight``), then the RoPE rotation of each
    consecutive channel pair of every head by the row's angles.

    x: [N, C] rows with unit stride over C (e.g. a column block of a fused QKV product);
    rows are tokens of ``N / tokens`` batch items, row r uses angles ``cos/sin[r % tokens]``
    ([tokens, D / 2] float32, or float64 for float64 x); ``cos=None``: no rotation.
    Returns [N, C] contiguous in x's dtype (or writes ``out``)."""
    if x.ndim != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [N, C] with unit stride over C, got {tuple(x.shape)}")
    N, C = x.shape
    y = torch.empty((N, C), dtype=x.dtype, device=x.device) if out is None else out
    rope = cos is not None
    half_d = cos.shape[1] if rope else 1
    if rope and (C % (2 * half_d) or N % tokens or cos.shape[0] != tokens):
        raise ValueError(f"rope table {tuple(cos.shape)} does not fit rows of {C} channels / {tokens} tokens")
    if use_triton is not False and triton_usable(x):
        c = cos.to(device=x.device, dtype=torch.float32).contiguous() if rope else x
        s = sin.to(device=x.device, dtype=torch.float32).contiguous() if rope else x
        block = triton.next_power_of_2(C // 2)
        _rms_rope_kernel[(N,)](x, weight, c, s, y, x.stride(0), y.stride(0), tokens, C, C // 2, half_d, float(eps),
                               ROPE=rope, BLOCK=block, num_warps=4)
        return y
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(work)
    r = torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + eps)
    n = xw * r * weight.to(work)
    if rope:
        pairs = n.view(N // tokens, tokens, C // (2 * half_d), half_d, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        cw = cos.to(device=x.device, dtype=work)[None, :, None, :]
        sw = sin.to(device=x.device, dtype=work)[None, :, None, :]
        n = torch.stack((a * cw - b * sw, a * sw + b * cw), dim=-1).view(N, C)
    y.copy_(n)
    return y


def quantize_e4m3(x: torch.Tensor, gelu: bool = False, use_triton: bool | None = None) -> torch.Tensor:
    """``clamp(x, -448, 448)`` (of ``GELU_tanh(x)`` with ``gelu``) as float8_e4m3fn, same shape.

    x: contiguous, bf16 / fp16 / fp32. The Triton kernel computes in float32 and rounds once
    to e4m3; the torch ops (CPU, or ``use_triton=False``) round GELU's output to x's dtype
    first, as the unfused layers do."""
    top = 448.0
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous, got strides {x.stride()}")
    if use_triton is not False and triton_usable(x) and x.is_cuda:
        y = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        n = x.numel()
        block = 2048
        _e4m3_kernel[(triton.cdiv(n, block),)](x, y, n, top, GELU=bool(gelu), BLOCK=block, num_warps=8)
        return y
    if gelu:
        x = torch.nn.functional.gelu(x, approximate="tanh")
    return x.clamp(-top, top).to(torch.float8_e4m3fn)


def copy_rows(dst: torch.Tensor, src: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """``dst.copy_(src)`` for 4-d tensors of one shape whose last dim is contiguous on both sides
    (any other strides) and a power of two from 16 to 256; dst of src's dtype or float8_e4m3fn
    (clamped to its range: an fp8 product's input); other cases, the CPU or
    ``use_triton=False``: ``Tensor.copy_`` (clamped into e4m3). Returns dst."""
    D = src.shape[-1]
    e4m3 = dst.dtype == torch.float8_e4m3fn and src.dtype != dst.dtype
    if (use_triton is False or src.dim() != 4 or dst.shape != src.shape or (dst.dtype != src.dtype and not e4m3)
            or src.stride(-1) != 1 or dst.stride(-1) != 1 or D < 16 or D > 256 or D & (D - 1)
            or not triton_usable(src) or src.device != dst.device or src.numel() == 0):
        return dst.copy_(src.clamp(-448.0, 448.0) if e4m3 else src)
    n0, n1, n2 = src.shape[:3]
    rows = n0 * n1 * n2
    block = max(1, 4096 // D)
    _copy_rows_kernel[(triton.cdiv(rows, block),)](src, dst, rows, n1, n2, *src.stride()[:3], *dst.stride()[:3],
                                                   D=D, BLOCK_R=block, CLAMP=e4m3, num_warps=4)
    return dst
