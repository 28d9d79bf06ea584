"""8-bit attention for the fused forward's attention calls (issue #23).

One call computes ``softmax(q k^T / sqrt(D)) v`` for a head group, like SDPA, with the two
products in 8 bits on the GPU's matrix units:

* ``q k^T`` in int8 (``qk="int8"``, int32 sums) or fp8 e4m3 (``qk="fp8"``): q and k are cut into
  blocks of tokens (per batch element and head), each block scaled by its own absolute max
  (SageAttention's per-block scheme; ``1 / sqrt(D) * log2(e)`` folded into q's scale);
* ``p v`` in fp8 e4m3: the softmax numerators ``p`` (in [0, 1], times 2^8), v per block of
  tokens with its own scale (stored transposed, the layout Hopper's fp8 products read), the
  sums in float32 (``pv="fp8"``), or in bf16 / fp16 (``pv="16"``).

Backends (``BACKENDS``): ``"off"`` is the exact path (SDPA); ``"triton"`` this module's
kernels (Triton; int8 q k^T and 16-bit p v by default, compute capability 8.0+; fp8 needs
8.9+); ``"sage"`` the ``sageattention`` package's ``sageattn`` (what ComfyUI's
``--use-sage-attention`` loads; version 1: int8 q k^T, fp16 p v, Triton, called on a copy of
k since it smooths k in place; version 2: int8 q k^T, fp8 p v, CUDA kernels per GPU family,
built from source: ``bench/build_sageattention.py``); on Hopper, SageAttention 2 takes only
the calls of :data:`SAGE2_HOPPER_MIN_QUERIES`+ query tokens (:func:`sage_min_queries`);
``"auto"``: ``triton`` (else ``sage``) on GeForce-class GPUs (compute capability 8.9 and 12.x,
whose 8-bit products run at 2-4x their bf16 products with float32 sums), ``sage`` on Hopper
with SageAttention 2 installed, ``off`` elsewhere:
on an H200 cuDNN's bf16 attention ran at 480-615 TFLOP/s at our shapes, these kernels at
300-550, sageattention 1 at 255-426 and sageattention 2 at 280-390 on 480p chunks and
590-740 on 720p / 1080p ones (``bench/bench_attention.py``, bench/RESULTS.md).
:func:`resolve` turns a choice into a runnable backend and says once, in one log line, why
it falls back to ``off`` (CPU, an older GPU, no Triton, the package missing): never an error
in the middle of a video.

Accuracy (H200, random inputs with 4 biased k channels, vs float32 SDPA; bf16 SDPA: 0.2 %):
int8 q k^T + 16-bit p v 2.5 % (sageattention 1: 2.5 %), + fp8 p v 4 % (sageattention 2: 3.7-4.0 %),
fp8 q k^T + fp8 p v 8 %.

Shapes: q ``[B, Lq, H, D]`` (any strides, last dim contiguous: a slice of the fused QKV
product), k / v ``[B, H, Lk, D]`` (the cache group's ``[context | chunk]``); the result goes
into ``out`` ``[B, Lq, H, D]`` (any strides), as the fused forward's ``out[:, :, a:b]``.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import math

import torch
import torch.nn.functional as F

from .fast_kernels import HAVE_TRITON, copy_rows, triton, tl

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "resolve", "attention_8bit", "sdpa_into", "quantize_blocks"]

BACKENDS = ("off", "auto", "triton", "sage")
_LOG2E = 1.4426950408889634
_FP8_MAX = 448.0
_BLOCK_M = 128   # query tokens per block (one program)
_BLOCK_N = 128   # key tokens per block
_said: set[str] = set()
SMOOTH_K = True   # subtract k's mean before quantizing (see _quant_kernel)
QK, PV = "int8", "16"  # the products' precisions (module docstring)
# launch settings per p v precision, from the sweep of bench/bench_attention.py on an H200
KERNEL_CONFIGS = {"16": {"num_warps": 8, "num_stages": 4}, "fp8": {"num_warps": 8, "num_stages": 3}}


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.warning(msg)


def _cuda_capability(device) -> tuple[int, int] | None:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def sage_available() -> bool:
    return importlib.util.find_spec("sageattention") is not None


def sage_version() -> str:
    """The installed ``sageattention``'s version ("" when it has no metadata)."""
    try:
        return importlib.metadata.version("sageattention")
    except importlib.metadata.PackageNotFoundError:
        return ""


_sage_checked: dict[str, str | None] = {}


def _sage_problem(device) -> str | None:
    """Why ``sageattn`` cannot run on ``device`` (None: it ran), tried once per device on a small
    input: a build without this GPU's kernels (SageAttention 2 asserts) is found before a video."""
    key = str(torch.device(device))
    if key not in _sage_checked:
        try:
            q = torch.randn(1, 128, 1, 128, device=device, dtype=torch.bfloat16)
            kv = torch.randn(1, 1, 128, 128, device=device, dtype=torch.bfloat16)
            out = torch.empty_like(q)
            _sage_into(out, q, kv, kv)
            torch.cuda.synchronize(device)
            _sage_checked[key] = None if bool(torch.isfinite(out).all()) else "its output was not finite"
        except Exception as err:  # noqa: BLE001 - any failure: the exact path, said once
            _sage_checked[key] = f"{type(err).__name__}: {str(err)[:200]}"
    return _sage_checked[key]


SAGE2_HOPPER_MIN_QUERIES = 8192
_sage_min: dict[str, int] = {}


def sage_min_queries(device) -> int:
    """Fewest query tokens a call needs to go to ``sageattn``; shorter calls run exact (SDPA).
    SageAttention 2 on Hopper (compute capability 9.0) beat cuDNN's bf16 attention at 10800+
    query tokens (720p / 1080p chunks: 1.06-1.33x) and lost below (480p chunks, 4680: 0.58-0.83x;
    bench/RESULTS.md); elsewhere every call goes to it (0)."""
    key = str(device)
    if key not in _sage_min:
        cap = _cuda_capability(device)
        _sage_min[key] = SAGE2_HOPPER_MIN_QUERIES if cap == (9, 0) and sage_major() >= 2 else 0
    return _sage_min[key]


@functools.lru_cache(maxsize=None)
def sage_major() -> int:
    """The installed sageattention's major version (1 when unknown)."""
    head = sage_version().split(".")[0]
    return int(head) if head.isdigit() else 1


def resolve(choice: str, device, head_dim: int, dtype: torch.dtype) -> str:
    """The backend that will run for ``choice`` on ``device``: ``off``, ``triton`` or ``sage``.
    A backend that cannot run here becomes ``off`` with one log line (said once per reason)."""
    if choice not in BACKENDS:
        raise ValueError(f"8-bit attention must be one of {BACKENDS}, got {choice!r}")
    if choice == "off":
        return "off"
    cap = _cuda_capability(device)
    why = None
    if cap is None:
        why = f"it runs on CUDA GPUs only (this model runs on {torch.device(device).type})"
    elif dtype not in (torch.bfloat16, torch.float16):
        why = f"it needs a bf16 / fp16 model (this one computes in {str(dtype).replace('torch.', '')})"
    elif head_dim not in (64, 128):
        why = f"it needs a head dim of 64 or 128 (this model's is {head_dim})"
    if why is None and choice == "auto" and cap == (9, 0) and sage_available() and sage_major() >= 2:
        choice = "sage"  # Hopper: SageAttention 2 beat cuDNN on 720p / 1080p chunks (sage_min_queries)
    if why is None and choice == "auto" and not _geforce_class(cap):
        _say_once(f"Dummy Forcing: 8-bit attention (auto) stays off on this GPU (compute capability "
                  f"{cap[0]}.{cap[1]}): cuDNN's bf16 attention is faster there than the 8-bit kernels "
                  f"installed (measured on an H200; SageAttention 2 would be used on Hopper)")
        return "off"
    if why is None and choice in ("auto", "triton"):
        need = (8, 9) if "fp8" in (QK, PV) else (8, 0)
        if HAVE_TRITON and cap >= need:
            return "triton"
        if choice == "triton":
            why = ("Triton is not installed" if not HAVE_TRITON
                   else f"its products need compute capability {need[0]}.{need[1]}+; this GPU is {cap[0]}.{cap[1]}")
    if why is None and choice in ("auto", "sage"):
        if not sage_available():
            why = "the sageattention package is not installed (pip install sageattention)"
        else:
            problem = _sage_problem(device)
            if problem is None:
                return "sage"
            why = f"sageattention {sage_version()} did not run on this GPU ({problem})"
    _say_once(f"Dummy Forcing: 8-bit attention ({choice}) is off: {why}; attention runs in "
              f"{str(dtype).replace('torch.', '')} (exact path)")
    return "off"


def _geforce_class(cap: tuple[int, int]) -> bool:
    """Ada (8.9) and consumer Blackwell (12.x): 8-bit products with float32 sums at 2-4x bf16."""
    return cap == (8, 9) or cap[0] == 12


def sdpa_into(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The exact path: ``out[...] = SDPA(q, k, v)`` with q / out ``[B, Lq, H, D]``, k / v
    ``[B, H, Lk, D]``."""
    return copy_rows(out, F.scaled_dot_product_attention(q.transpose(1, 2), k, v).transpose(1, 2))


def attention_8bit(backend: str, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   qk: str | None = None, pv: str | None = None) -> torch.Tensor:
    """``out[...] = attention(q, k, v)`` through ``backend`` (from :func:`resolve`); shapes in
    the module docstring."""
    if backend == "off":
        return sdpa_into(out, q, k, v)
    if backend == "sage":
        if q.shape[1] < sage_min_queries(q.device):
            return sdpa_into(out, q, k, v)
        return _sage_into(out, q, k, v)
    if backend != "triton":
        raise ValueError(f"unknown 8-bit attention backend {backend!r}")
    return _triton_attention(out, q, k, v, qk or QK, pv or PV)


def _sage_into(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn  # optional package, present when resolve() chose it

    # version 1 smooths k in place; version 2 subtracts k's mean into its own int8 copy
    kk = k if sage_major() >= 2 else k.clone()
    o = sageattn(q.transpose(1, 2), kk, v, tensor_layout="HND", is_causal=False)
    return copy_rows(out, o.transpose(1, 2))


# ------------------------------------------------------------------------------- quantization
def quantize_blocks(x: torch.Tensor, block: int, kind: str, scale_mul: float = 1.0,
                    transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, H, L, D]`` (any strides) -> (x8, scales): per (batch, head, block of ``block``
    tokens) one scale = absmax / top (int8: 127, fp8: 448), times ``scale_mul``.
    x8: ``[B*H, Lp, D]`` (``transpose``: ``[B*H, D, Lp]``) int8 or float8_e4m3fn, ``Lp`` = L
    rounded up to ``block`` (the padding is 0); scales ``[B*H, Lp // block]`` float32.
    Torch reference of the Triton quantizer (CPU, tests)."""
    B, H, L, D = x.shape
    nb = -(-L // block)
    xp = torch.zeros((B * H, nb * block, D), dtype=torch.float32, device=x.device)
    xp[:, :L] = x.reshape(B * H, L, D).float()
    blocks = xp.view(B * H, nb, block, D)
    top = 127.0 if kind == "int8" else _FP8_MAX
    amax = blocks.abs().amax(dim=(2, 3)).clamp_min(1e-12)
    scale = amax / top
    y = blocks / scale[:, :, None, None]
    y = y.round().clamp(-127, 127).to(torch.int8) if kind == "int8" else y.clamp(-top, top).to(torch.float8_e4m3fn)
    y = y.view(B * H, nb * block, D)
    if transpose:
        y = y.transpose(1, 2).contiguous()
    return y, scale * scale_mul


if HAVE_TRITON:

    # lengths vary from call to call: not specialised, so a CUDA graph capture never compiles
    @triton.jit(do_not_specialize=["L"])
    def _quant_kernel(X, Y, S, MEAN, sb, sh, sl, H, L, y_sbh, y_sl, y_sd, scale_mul,
                      INT8: tl.constexpr, HAS_MEAN: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        # one program: one block of tokens of one (batch, head)
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        m = rows[:, None] < L
        x = tl.load(X + b.to(tl.int64) * sb + h.to(tl.int64) * sh + rows[:, None].to(tl.int64) * sl + cols[None, :],
                    mask=m, other=0.0).to(tl.float32)
        if HAS_MEAN:  # k minus its mean over the tokens: the same softmax, a smaller range to quantize
            x = tl.where(m, x - tl.load(MEAN + bh * D + cols)[None, :], 0.0)
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
        if INT8:
            scale = amax / 127.0
            y = x / scale
            y = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)  # round half away from zero
        else:
            scale = amax / 448.0
            y = tl.clamp(x / scale, -448.0, 448.0).to(tl.float8e4nv)
        tl.store(Y + bh.to(tl.int64) * y_sbh + rows[:, None] * y_sl + cols[None, :] * y_sd, y)
        tl.store(S + bh * tl.num_programs(0) + blk, scale * scale_mul)

    @triton.jit(do_not_specialize=["Lq", "Lk", "n_qblocks", "n_kblocks"])
    def _attn_kernel(Q8, QS, K8, KS, V, VS, O, H, Lq, Lk,
                     q_sbh, q_sl, k_sbh, k_sl, v_sbh, v_s1, v_s2, o_sb, o_sl, o_sh,
                     n_qblocks, n_kblocks,
                     PV8: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # one program: BLOCK_M queries of one (batch, head) over every key block
        mb = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, D)
        keys = tl.arange(0, BLOCK_N)
        q = tl.load(Q8 + bh.to(tl.int64) * q_sbh + rows[:, None] * q_sl + cols[None, :])
        qs = tl.load(QS + bh * n_qblocks + mb)  # includes 1/sqrt(D) * log2(e)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        k_base = K8 + bh.to(tl.int64) * k_sbh
        v_base = V + bh.to(tl.int64) * v_sbh
        for nb in range(0, n_kblocks):
            n0 = nb * BLOCK_N
            k = tl.load(k_base + (n0 + keys)[:, None] * k_sl + cols[None, :])
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * (qs * tl.load(KS + bh * n_kblocks + nb))
            s = tl.where((n0 + keys)[None, :] < Lk, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None]
            if PV8:  # v stored transposed [D, Lp]: the fp8 product reads it K-major
                vt = tl.load(v_base + cols[:, None] * v_s1 + (n0 + keys)[None, :] * v_s2)
                # p in [0, 1] times 2^8: small weights stay above e4m3's smallest subnormal (2^-9)
                acc += tl.dot((p * 256.0).to(tl.float8e4nv), tl.trans(vt)) * (tl.load(VS + bh * n_kblocks + nb) / 256.0)
            else:
                vv = tl.load(v_base + (n0 + keys)[:, None] * v_s1 + cols[None, :] * v_s2,
                             mask=(n0 + keys)[:, None] < Lk, other=0.0)
                acc += tl.dot(p.to(vv.dtype), vv)
            m_i = m_new
        acc = acc / l_i[:, None]
        optr = O + b.to(tl.int64) * o_sb + rows[:, None].to(tl.int64) * o_sl + h.to(tl.int64) * o_sh + cols[None, :]
        tl.store(optr, acc.to(O.dtype.element_ty), mask=rows[:, None] < Lq)


def _quantize_triton(x: torch.Tensor, block: int, int8: bool, scale_mul: float, transpose: bool,
                     mean: torch.Tensor | None = None):
    B, H, L, D = x.shape
    nb = triton.cdiv(L, block)
    if transpose:
        y = torch.empty((B * H, D, nb * block), dtype=torch.float8_e4m3fn, device=x.device)
        ys = (y.stride(0), 1, y.stride(1))
    else:
        y = torch.empty((B * H, nb * block, D), dtype=torch.int8 if int8 else torch.float8_e4m3fn, device=x.device)
        ys = (y.stride(0), y.stride(1), 1)
    s = torch.empty((B * H, nb), dtype=torch.float32, device=x.device)
    _quant_kernel[(nb, B * H)](x, y, s, s if mean is None else mean, x.stride(0), x.stride(1), x.stride(2), H, L,
                               ys[0], ys[1], ys[2], scale_mul, INT8=int8, HAS_MEAN=mean is not None, D=D,
                               BLOCK=block, num_warps=4)
    return y, s


def _triton_attention(out, q, k, v, qk: str, pv: str):
    B, Lq, H, D = q.shape
    Lk = k.shape[2]
    int8 = qk == "int8"
    pv8 = pv == "fp8"
    q8, qs = _quantize_triton(q.transpose(1, 2), _BLOCK_M, int8, _LOG2E / math.sqrt(D), False)
    mean = torch.mean(k, dim=2, dtype=torch.float32).reshape(B * H, D).contiguous() if SMOOTH_K else None
    k8, ks = _quantize_triton(k, _BLOCK_N, int8, 1.0, False, mean)
    if pv8:
        v8, vs = _quantize_triton(v, _BLOCK_N, False, 1.0, True)
        vstr = (v8.stride(0), v8.stride(1), v8.stride(2))
    else:
        v8, vs = v, ks  # vs unused
        vstr = (v.stride(1), v.stride(2), v.stride(3))
        if v.shape[0] != 1:
            v8 = v.reshape(B * H, Lk, D)
            vstr = (v8.stride(0), v8.stride(1), v8.stride(2))
    nq, nk = q8.shape[1] // _BLOCK_M, k8.shape[1] // _BLOCK_N
    _attn_kernel[(nq, B * H)](q8, qs, k8, ks, v8, vs, out, H, Lq, Lk,
                              q8.stride(0), q8.stride(1), k8.stride(0), k8.stride(1), vstr[0], vstr[1], vstr[2],
                              out.stride(0), out.stride(1), out.stride(2), nq, nk,
                              PV8=pv8, D=D, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, **KERNEL_CONFIGS[pv])
    return out
