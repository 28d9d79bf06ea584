"""The fused inference forward of :class:`~dummy_forcing_core.chunk_runner.ChunkRunner`.

Same function as the reference loop (``wan_blocks.wan_forward``), computed with fewer
passes over memory (measurements in ``docs/performance.md``):

* heads come out of the projections already in the cache's storage order: per layer and
  per head layout (once per video, when Dummy Forcing regroups the cache) the q / k / v
  weights are copied with their output channels permuted head-wise (fp8 per-row scales
  with them) and concatenated into one QKV product (three when their storage dtypes
  differ), ``norm_q`` / ``norm_k`` weights permuted alike (the RMSNorm runs over
  the whole dim, so a permutation commutes with it; RoPE is the same for every head), and
  the ``o`` weight with its input channels permuted. No gathers of head groups per call;
* RMSNorm + RoPE in one kernel; residual + gate + LayerNorm + modulation in one kernel
  (``fast_kernels``); GELU in the FFN's first product (cuBLASLt epilogue); the patch
  embedding as one product;
* a chosen SDPA backend (cuDNN on Hopper by default, else flash);
* CUDA graphs of repeated passes (``cuda_graphs.py``).

Every submodule must be a plain ``nn.Linear`` / ``nn.LayerNorm`` / RMSNorm whose weights can
be read directly (no host casting or weight patches at call time, see :func:`plain_linear`);
otherwise :attr:`FusedForward.supported` is False and the runner keeps the reference loop.
Weights are read at each forward, and derived copies are rebuilt when a source weight
changes (data pointer or in-place version), so patches applied between videos are seen.
"""
from __future__ import annotations

import logging

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_8bit
from .attention import ATTENTION_CHOICES, attend_ordered, attention_backends
from .cuda_graphs import PassGraphs
from .fast_kernels import copy_rows, residual_norm_modulate, rms_norm_rope
from .fp8 import fp8_linear, fp8_matmul_available, fp8_products, fp8_scale, is_fp8
from .wan_blocks import embed_patches, time_embed

log = logging.getLogger(__name__)

__all__ = ["FastOptions", "FusedForward", "plain_linear"]


@dataclass(frozen=True)
class FastOptions:
    """Switches of the fast path (all on by default; each can be turned off to measure it).

    fused_kernels: Triton RMSNorm+RoPE and residual+LayerNorm+modulation kernels (off: the
        same math as torch ops). fuse_qkv: one QKV product. group_heads: permute weights
        so head groups are contiguous (off: gather heads every call). gelu_epilogue: GELU
        fused into the FFN product (CUDA). linear_patch_embed: patch embedding as a product.
    attention: SDPA backend preference: auto (cuDNN first on Hopper, else flash), cudnn,
        flash, efficient, math, or default (torch's own choice).
    weight_budget_bytes: most bytes of derived weight copies (permuted / fused) to keep;
        above it the path gathers heads and runs separate products instead.
    overlap_groups: (CUDA) run the attention of a layer's second and later head groups on a
        side stream, overlapping the first group's (fills the tail waves of small groups).
    cuda_graphs: (CUDA) replay repeated passes as CUDA graphs (``cuda_graphs.py``); at most
        ``max_graphs`` graphs (sharing one memory pool) are kept. A capture failure turns
        graphs off for the runner (``FusedForward.graphs.error``).
    fp8_matmul: fp8 weights (``fp8.py``) multiply in fp8 where the GPU can (ComfyUI's
        fp8_e4m3fn_fast); off: they are cast to the compute dtype one layer at a time.
    attention_8bit: the self-attention calls in 8 bits (``attention_8bit.py``): off (exact,
        SDPA), auto (the fastest backend that runs here), triton, sage; one that cannot run
        here falls back to off with one log line. Cross-attention (text) stays SDPA."""

    fused_kernels: bool = True
    fuse_qkv: bool = True
    group_heads: bool = True
    gelu_epilogue: bool = True
    linear_patch_embed: bool = True
    attention: str = "auto"
    weight_budget_bytes: int = 2 << 30
    overlap_groups: bool = True
    cuda_graphs: bool = True
    max_graphs: int = 8
    fp8_matmul: bool = False
    attention_8bit: str = "off"

    def __post_init__(self):
        if self.attention_8bit not in attention_8bit.BACKENDS:
            raise ValueError(f"attention_8bit must be one of {attention_8bit.BACKENDS}, got {self.attention_8bit!r}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}")
        if self.max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {self.max_graphs}")


def _flags_plain(m: nn.Module) -> bool:
    """No weight patches applied at call time (ComfyUI's ``weight_function`` / ``bias_function``
    and its dynamic-VRAM ``*_lowvram_function`` LoRA patches) and no hooks. A ComfyUI layer that
    casts its parameters at call time (``comfy_cast_weights``) qualifies: the fast path casts
    them too, once (the device and dtype checks catch weights that are not loaded)."""
    return (not getattr(m, "weight_function", None) and not getattr(m, "bias_function", None)
            and getattr(m, "weight_lowvram_function", None) is None and getattr(m, "bias_lowvram_function", None) is None
            and not m._forward_hooks and not m._forward_pre_hooks)


def _castable(t: torch.Tensor | None, device) -> bool:
    """A small parameter (bias, norm weight) the fast path casts to the compute dtype: any
    float dtype (fp8 included, as ComfyUI's fp8 weight dtypes store them), on ``device``."""
    return t is None or (_plain_tensor(t) and t.dtype.is_floating_point and _same_device(t.device, device))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """'cuda' and 'cuda:0' are the same device when 0 is the current one."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda" or (a.index is not None and b.index is not None):
        return a.index == b.index or a.type == "cpu"
    cur = torch.cuda.current_device()
    return (cur if a.index is None else a.index) == (cur if b.index is None else b.index)


def _on(t: torch.Tensor | None, dtype, device) -> bool:
    return t is None or (_plain_tensor(t) and t.dtype == dtype and _same_device(t.device, device))


def _plain_tensor(t: torch.Tensor) -> bool:
    """A dense tensor, not a subclass (ComfyUI's QuantizedTensor reports its original dtype but
    holds packed data: only the module's own call multiplies it right)."""
    return type(t) in (torch.Tensor, nn.Parameter) and type(t.data) is torch.Tensor


def plain_linear(m, dtype, device) -> bool:
    """An ``nn.Linear`` whose call is exactly ``F.linear(x, m.weight, m.bias)`` in ``dtype``."""
    return isinstance(m, nn.Linear) and _flags_plain(m) and _on(m.weight, dtype, device) and _on(m.bias, dtype, device)


def fp8_linear_layer(m, dtype, device) -> bool:
    """A linear layer with an fp8 weight on ``device`` (ComfyUI's cast-on-call layers included,
    but no weight patches: those need the host's own call), bias in any float dtype or none."""
    w = getattr(m, "weight", None)
    return (is_fp8(w) and _plain_tensor(w) and w.ndim == 2 and _same_device(w.device, device)
            and _castable(getattr(m, "bias", None), device) and _flags_plain(m))


class Lin(NamedTuple):
    """One product's weight [out, in] (compute dtype, or fp8 with ``scale``) and bias."""

    w: torch.Tensor
    b: torch.Tensor | None
    scale: torch.Tensor | None = None


def _plain_layernorm(m, dim, affine: bool, dtype, device) -> bool:
    if not isinstance(m, nn.LayerNorm) or tuple(m.normalized_shape) != (dim,) or not _flags_plain(m):
        return False
    if affine:
        return m.weight is not None and m.bias is not None and _castable(m.weight, device) and _castable(m.bias, device)
    return m.weight is None and m.bias is None


def _plain_rmsnorm(m, dim, device) -> bool:
    w = getattr(m, "weight", None)
    return ("RMSNorm" in type(m).__name__ and isinstance(w, torch.Tensor) and tuple(w.shape) == (dim,)
            and _same_device(w.device, device) and w.dtype.is_floating_point and hasattr(m, "eps") and _flags_plain(m))


def _eps(m, dtype) -> float:
    e = getattr(m, "eps", None)
    return float(torch.finfo(dtype).eps if e is None else e)


def _version(t: torch.Tensor | None):
    """What tells a changed weight: its storage, in-place version and dtype (inference tensors,
    as ComfyUI can load weights, have no version counter: their storage has to tell)."""
    if t is None:
        return None
    return t.data_ptr(), None if t.is_inference() else t._version, t.dtype


@dataclass
class _LayerWeights:
    key: tuple
    qkv: Lin | None                     # [3C, C] (storage order), or None: separate products
    q: Lin | None                       # the separate products
    k: Lin | None
    v: Lin | None
    nq: torch.Tensor                    # norm_q / norm_k weights in storage order
    nk: torch.Tensor
    o: Lin
    gather: torch.Tensor | None         # storage order -> heads, when weights are not permuted
    scatter: torch.Tensor | None


class FusedForward:
    """Runs the blocks of one model the fused way (see the module docstring)."""

    def __init__(self, model: nn.Module, geometry, dtype: torch.dtype, device: torch.device,
                 options: FastOptions):
        self.model, self.g, self.dtype, self.device, self.opts = model, geometry, dtype, torch.device(device), options
        self._weights: dict[int, _LayerWeights] = {}  # layer -> the weights its last pass read
        self._kept: dict[int, dict[tuple, _LayerWeights]] = {}  # layer -> head order -> weights
        # head orders whose weights a layer keeps: 1, or 2 (a warm runner): the base order's and the
        # last per-head order's, the base's dropped once another order runs (a QKV concat: cheap to redo)
        self.orders_kept = 1
        self._casts: dict[int, tuple] = {}  # id(param) -> (its version, the param in the compute dtype)
        self._mod_stack: tuple | None = None  # (versions, the blocks' modulation tables stacked in float32)
        self._gelu_checked: bool | None = None
        self._consts: dict = {}
        self._side = None
        # head-parallel (head_parallel.py): sums a partial layer's output projection over the
        # processes that hold the layer's other heads (in place); None: layers are never partial
        self.reduce = None
        self.graphs = PassGraphs(self.device, options.max_graphs)
        self.reason = self._check()

    # -- capability ---------------------------------------------------------------------------
    def _check(self) -> str | None:
        m, g, dt, dev = self.model, self.g, self.dtype, self.device
        if dt not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            return f"compute dtype {dt}"
        try:
            for i, b in enumerate(m.blocks):
                sa, ca = b.self_attn, b.cross_attn
                lin = [sa.q, sa.k, sa.v, sa.o, ca.q, ca.o, b.ffn[0], b.ffn[2]]
                if not all(plain_linear(x, dt, dev) or fp8_linear_layer(x, dt, dev) for x in lin):
                    return f"block {i}: a projection is not a plain Linear in {dt} (or fp8) on {dev}"
                if not (_plain_layernorm(b.norm1, g.dim, False, dt, dev) and _plain_layernorm(b.norm2, g.dim, False, dt, dev)
                        and _plain_layernorm(b.norm3, g.dim, True, dt, dev)):
                    return f"block {i}: unexpected norm1/norm2/norm3"
                if not all(_plain_rmsnorm(x, g.dim, dev) for x in (sa.norm_q, sa.norm_k, ca.norm_q)):
                    return f"block {i}: unexpected q/k RMSNorm"
                if len(b.ffn) != 3 or getattr(b.ffn[1], "approximate", None) != "tanh":
                    return f"block {i}: FFN is not Linear-GELU(tanh)-Linear"
                if not _same_device(b.modulation.device, dev):
                    return f"block {i}: modulation on {b.modulation.device}"
            if not ((plain_linear(m.head.head, dt, dev) or fp8_linear_layer(m.head.head, dt, dev))
                    and _plain_layernorm(m.head.norm, g.dim, False, dt, dev)):
                return "head is not LayerNorm + plain Linear"
        except (AttributeError, TypeError, IndexError) as err:
            return f"unexpected module structure ({err})"
        return None

    @property
    def supported(self) -> bool:
        return self.reason is None

    # -- derived weights ------------------------------------------------------------------------
    def _copy_budget_ok(self) -> bool:
        g = self.g
        elem = self.model.blocks[0].self_attn.q.weight.element_size()  # copies keep the weights' storage dtype
        return g.num_layers * 4 * g.dim * g.dim * elem <= self.opts.weight_budget_bytes

    def _fp8_matmul(self) -> bool:
        if not hasattr(self, "_fp8_mm"):
            self._fp8_mm = self.opts.fp8_matmul and fp8_matmul_available(self.device)
            if self.opts.fp8_matmul and not self._fp8_mm:  # said once per runner
                log.warning("fp8 matrix products need a GPU of compute capability 8.9+ (Ada, Hopper); on %s the "
                            "fp8 weights are cast to %s one layer at a time instead", self.device,
                            str(self.dtype).replace("torch.", ""))
        return self._fp8_mm

    def _mm(self, x: torch.Tensor, lin: Lin) -> torch.Tensor:
        if is_fp8(lin.w):
            return fp8_linear(x, lin.w, lin.b, lin.scale, self._fp8_matmul(), out_dtype=self.dtype)
        return F.linear(x, lin.w, lin.b)

    def _e4m3_input(self, m) -> bool:
        """Whether the linear layer ``m`` multiplies in fp8, so the norm before it writes its
        input as e4m3 at once (``residual_norm_modulate(e4m3=True)``: no separate cast)."""
        return is_fp8(m.weight) and fp8_products(m.weight, self._fp8_matmul())

    def _cast(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A small parameter in the compute dtype (kept until the parameter changes)."""
        if t is None or t.dtype == self.dtype:
            return t
        ver = _version(t)
        hit = self._casts.get(id(t))
        if hit is None or hit[0] != ver:
            hit = self._casts[id(t)] = (ver, t.detach().to(self.dtype))
        return hit[1]

    def _lin(self, m) -> Lin:
        scale = fp8_scale(m) if is_fp8(m.weight) else None
        if scale is not None and scale.numel() > 1:  # one per output row: [N], as fp8_linear takes them
            scale = scale.reshape(-1)
        return Lin(m.weight, self._cast(m.bias), scale)

    def layer_weights(self, i: int, order: list[int]) -> _LayerWeights:
        sa = self.model.blocks[i].self_attn
        srcs = (sa.q.weight, sa.q.bias, sa.k.weight, sa.k.bias, sa.v.weight, sa.v.bias, sa.o.weight, sa.o.bias,
                sa.norm_q.weight, sa.norm_k.weight, fp8_scale(sa.q), fp8_scale(sa.k), fp8_scale(sa.v), fp8_scale(sa.o))
        key = (tuple(order),) + tuple(_version(t) for t in srcs)
        kept = self._kept.setdefault(i, {})
        if self.orders_kept > 1 and key[0] != tuple(range(self.g.num_heads)):
            for other in [o for o in kept if o != key[0]]:
                del kept[other]
        w = kept.pop(key[0], None)
        if w is not None and w.key == key:
            kept[key[0]] = self._weights[i] = w  # most recently used last
            return w
        while len(kept) >= self.orders_kept:  # oldest first
            kept.pop(next(iter(kept)))
        H, D, C = self.g.num_heads, self.g.head_dim, self.g.dim
        # a partial layer (head-parallel) lists only this process's heads; q / k / v are still
        # made for every head (the RMSNorm spans the whole row), this process's heads first
        full_order = list(order) + [h for h in range(H) if h not in set(order)]
        identity = full_order == list(range(H)) and len(order) == H
        copies = self._copy_budget_ok()
        permute = not identity and self.opts.group_heads and copies
        # one product needs one storage dtype (fp8 and float32 do not concatenate): a block whose
        # q / k / v are stored apart keeps three products
        fuse = self.opts.fuse_qkv and copies and len({m.weight.dtype for m in (sa.q, sa.k, sa.v)}) == 1

        def channels(heads):
            return (torch.tensor(heads, device=self.device)[:, None] * D
                    + torch.arange(D, device=self.device)[None]).flatten()

        with torch.no_grad():
            chan = channels(full_order) if permute else None
            pick = (lambda t: t) if chan is None else (lambda t: None if t is None else t.index_select(0, chan))

            def pick_scale(t):  # a per-output-row scale follows its rows; a per-layer one stays
                return t if t is None or t.numel() == 1 else pick(t)

            q, k, v = (Lin(pick(m.weight), pick(self._cast(m.bias)), pick_scale(self._lin(m).scale))
                       for m in (sa.q, sa.k, sa.v))
            nq, nk = pick(self._cast(sa.norm_q.weight)), pick(self._cast(sa.norm_k.weight))
            o = self._lin(sa.o)
            if permute:  # the output projection reads this process's heads only
                o = Lin(o.w.index_select(1, channels(list(order))), o.b, o.scale)
            qkv = None
            if fuse:
                qkv = _concat(q, k, v, C, self.dtype, self.device)
                q = k = v = None
            gather = scatter = None
            if not identity and not permute:
                gather = torch.tensor(order, dtype=torch.long, device=self.device)
                scatter = torch.argsort(gather)
        w = _LayerWeights(key, qkv, q, k, v, nq, nk, o, gather, scatter)
        kept[key[0]] = self._weights[i] = w
        return w

    def clear(self):
        """Drop derived weight copies (they are rebuilt on demand)."""
        self._weights.clear()
        self._kept.clear()
        self._casts.clear()
        self._mod_stack = None

    def _modulation_stack(self, work: torch.dtype) -> torch.Tensor:
        """[layers, 6, C] every block's modulation table in ``work`` (rebuilt when one changes)."""
        tables = [b.modulation for b in self.model.blocks]
        key = (work, tuple(_version(t) for t in tables))
        hit = self._mod_stack
        if hit is None or hit[0] != key:
            C = self.g.dim
            hit = self._mod_stack = (key, torch.stack([t.detach().to(device=self.device, dtype=work).reshape(6, C)
                                                       for t in tables]))
        return hit[1]

    def derived_bytes(self) -> int:
        """Bytes of the derived weight copies kept (permuted / fused / cast), not the model's own."""
        own = {p.data_ptr() for p in self.model.parameters()}
        seen, total = set(), 0
        kept = [w for per in self._kept.values() for w in per.values()]
        tensors = [t for w in kept for lin in (w.qkv, w.q, w.k, w.v, w.o) if lin is not None for t in lin]
        tensors += [t for w in kept for t in (w.nq, w.nk, w.gather, w.scatter)]
        tensors += [c for _, c in self._casts.values()]
        if self._mod_stack is not None:
            tensors.append(self._mod_stack[1])
        for t in tensors:
            if torch.is_tensor(t) and t.data_ptr() not in own and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    # -- pieces -----------------------------------------------------------------------------
    def _gelu_ok(self) -> bool:
        """cuBLASLt's GELU epilogue is the tanh approximation; check it once on this device."""
        if self._gelu_checked is None:
            ok = False
            if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16, torch.float32):
                try:
                    gen = torch.Generator(device="cpu").manual_seed(0)
                    a = torch.randn(64, 32, generator=gen).to(self.device, self.dtype)
                    w = torch.randn(48, 32, generator=gen).to(self.device, self.dtype)
                    b = torch.randn(48, generator=gen).to(self.device, self.dtype)
                    got = torch._addmm_activation(b, a, w.t(), use_gelu=True).float()
                    lin = F.linear(a.float(), w.float(), b.float())
                    tanh = F.gelu(lin, approximate="tanh")
                    exact = F.gelu(lin)
                    err_t = (got - tanh).abs().max().item()
                    err_e = (got - exact).abs().max().item()
                    ok = err_t <= err_e and err_t < 0.1
                except Exception:
                    ok = False
            self._gelu_checked = ok
        return self._gelu_checked

    def _ffn_in(self, h2: torch.Tensor, lin: Lin) -> torch.Tensor:
        if self.opts.gelu_epilogue and lin.b is not None and not is_fp8(lin.w) and self._gelu_ok():
            B, L, C = h2.shape
            return torch._addmm_activation(lin.b, h2.view(B * L, C), lin.w.t(), use_gelu=True).view(B, L, -1)
        return F.gelu(self._mm(h2, lin), approximate="tanh")

    def _ffn(self, h2: torch.Tensor, lin0: Lin, lin2: Lin) -> torch.Tensor:
        """Linear-GELU-Linear; with fp8 products both ways the GELU goes into the second
        product's fp8 cast."""
        if is_fp8(lin0.w) and fp8_products(lin2.w, self._fp8_matmul()):
            pre = self._mm(h2, lin0)
            return fp8_linear(pre, lin2.w, lin2.b, lin2.scale, True, gelu_input=True)
        return self._mm(self._ffn_in(h2, lin0), lin2)

    def _partial_out(self, att: torch.Tensor, lw: _LayerWeights, H: int) -> torch.Tensor:
        """The output projection of a partial layer: this process's heads' share, summed over
        the processes by ``reduce``, the bias added once."""
        if self.reduce is None:
            raise RuntimeError("a head-parallel cache (heads split across processes) needs the runner's reduce")
        B, L, n, D = att.shape
        if lw.gather is not None:  # unpermuted weights: the other heads' inputs are 0
            full = att.new_zeros((B, L, H, D))
            att = full.index_copy_(2, lw.gather, att)
        y = self._mm(att.reshape(B, L, -1), Lin(lw.o.w, None, lw.o.scale))
        self.reduce(y)
        return y if lw.o.b is None else y + lw.o.b

    def _norm_mod(self, *args, **kw):
        return residual_norm_modulate(*args, use_triton=None if self.opts.fused_kernels else False, **kw)

    def _rms(self, *args, **kw):
        return rms_norm_rope(*args, use_triton=None if self.opts.fused_kernels else False, **kw)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        pe = self.model.patch_embedding
        pt, ph, pw = self.g.patch_size
        if (self.opts.linear_patch_embed and isinstance(pe, nn.Conv3d) and _flags_plain(pe) and pt == 1 and tuple(pe.kernel_size) == (pt, ph, pw)
                and tuple(pe.stride) == (pt, ph, pw) and tuple(pe.padding) == (0, 0, 0) and pe.groups == 1
                and tuple(pe.dilation) == (1, 1, 1) and pe.weight.dtype == self.dtype and _same_device(pe.weight.device, self.device)):
            B, Cin, Fr, Hh, Ww = x.shape
            h, w = Hh // ph, Ww // pw
            p = x.to(self.dtype).view(B, Cin, Fr, h, ph, w, pw).permute(0, 2, 3, 5, 1, 4, 6).reshape(B, Fr * h * w, -1)
            return F.linear(p, pe.weight.view(pe.weight.shape[0], -1), pe.bias), (Fr, h, w)
        y, grid = embed_patches(self.model, x, self.dtype)
        return y.contiguous(), grid

    # -- the forward --------------------------------------------------------------------------
    @property
    def attention_backend(self) -> str:
        """The 8-bit attention backend that runs (``attention_8bit.resolve``): off, triton, sage."""
        if not hasattr(self, "_att8"):
            self._att8 = attention_8bit.resolve(self.opts.attention_8bit, self.device, self.g.head_dim, self.dtype)
        return self._att8

    def _attention_kernel(self):
        """The self-attention kernel ``attend_ordered`` takes (None: SDPA), made once."""
        if not hasattr(self, "_att8_kernel"):
            backend = self.attention_backend
            self._att8_kernel = None if backend == "off" else (
                lambda out, q, k, v: attention_8bit.attention_8bit(backend, out, q, k, v))
        return self._att8_kernel

    def _use_graphs(self) -> bool:
        return self.opts.cuda_graphs and self.graphs.error is None and self.device.type == "cuda"

    @torch.no_grad()
    def run(self, x: torch.Tensor, timesteps: torch.Tensor, rope, cache, text, probe=None) -> tuple[torch.Tensor, tuple]:
        """x [B, C_in, F, H, W] on the device; timesteps [B, F]. Returns the head output
        [B, L, out * prod(patch)] (valid until the next call) and the token grid."""
        if probe is None and self._use_graphs():
            keep = [self._weights.get(i) for i in range(len(cache.layers))]
            return self.graphs.run(x, timesteps, rope, cache, text, self._run_eager, keep)
        self.graphs.stats["eager"] += 1
        return self._run_eager(x, timesteps, rope, cache, text, probe)

    def _const(self, name, values, work):
        key = (name, work)
        c = self._consts.get(key)
        if c is None:
            c = self._consts[key] = torch.tensor(values, dtype=work, device=self.device)[:, None]
        return c

    def _run_eager(self, x: torch.Tensor, timesteps: torch.Tensor, rope, cache, text, probe=None):
        m, g = self.model, self.g
        dt = self.dtype
        tokens, grid = self.embed(x)
        x_ = tokens.contiguous()
        B, L, C = x_.shape
        Fr = grid[0]
        H, D = g.num_heads, g.head_dim
        e, e0 = time_embed(m, timesteps, dt)
        work = torch.float64 if dt == torch.float64 else torch.float32
        one = self._const("mod", [0.0, 1.0, 0.0, 0.0, 1.0, 0.0], work)
        cos = rope.cos.to(device=self.device, dtype=work)
        sin = rope.sin.to(device=self.device, dtype=work)
        blocks = m.blocks
        nl = len(blocks)

        # [B, F, layers, 6, C] in work, one add for every layer: shift1, 1 + scale1, gate1,
        # shift2, 1 + scale2, gate2 (the blocks' modulation tables are stacked once)
        all_mods = self._modulation_stack(work).unsqueeze(0).unsqueeze(0) + e0.to(work).unsqueeze(2)
        all_mods += one  # [6, 1]: the same sums, in the same order, as one layer at a time

        def mods(i):  # [B, F, 6, C]
            return all_mods[:, :, i]

        head_mod = m.head.modulation.to(work).view(1, 1, 2, C) + e.to(work).unsqueeze(2)
        head_mod = head_mod + self._const("head", [0.0, 1.0], work)
        side = None
        if self.opts.overlap_groups and self.device.type == "cuda":
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)
            side = self._side
        mod = mods(0)
        h = self._norm_mod(x_, Fr, _eps(blocks[0].norm1, dt), mul=mod[:, :, 1], add=mod[:, :, 0],
                           e4m3=self._e4m3_input(blocks[0].self_attn.q))
        with attention_backends(self.opts.attention, self.device):
            for i, block in enumerate(blocks):
                sa, ca = block.self_attn, block.cross_attn
                lw = self.layer_weights(i, cache.layers[i].order)
                if lw.qkv is not None:
                    qkv = self._mm(h, lw.qkv).view(B * L, 3 * C)
                    qs, ks, vs = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
                    v = vs.view(B, L, H, D)
                else:
                    qs = self._mm(h, lw.q).view(B * L, C)
                    ks = self._mm(h, lw.k).view(B * L, C)
                    v = self._mm(h, lw.v).view(B, L, H, D)
                q = self._rms(qs, lw.nq, _eps(sa.norm_q, dt), cos, sin, L).view(B, L, H, D)
                k = self._rms(ks, lw.nk, _eps(sa.norm_k, dt), cos, sin, L).view(B, L, H, D)
                layer = cache.layers[i]
                n = len(layer.order)
                if lw.gather is not None:
                    q, k, v = (t.index_select(2, lw.gather) for t in (q, k, v))
                elif n < H:  # partial, permuted: this process's heads come first
                    q, k, v = q[:, :, :n], k[:, :, :n], v[:, :, :n]
                att = attend_ordered(cache, i, q, k, v, None if probe is None else
                                     (lambda qq, kk, grp, i=i: _probe_default_sdpa(probe, i, qq, kk, grp, self.device)),
                                     side_stream=side, kernel=self._attention_kernel())
                if layer.partial:
                    y = self._partial_out(att, lw, H)
                else:
                    if lw.scatter is not None:
                        att = att.index_select(2, lw.scatter)
                    y = self._mm(att.reshape(B, L, C), lw.o)
                # x += y * gate1; h = norm3(x)
                h = self._norm_mod(x_, Fr, _eps(block.norm3, dt), y=y, gate=mod[:, :, 2],
                                   mul=self._cast(block.norm3.weight), add=self._cast(block.norm3.bias),
                                   e4m3=self._e4m3_input(ca.q))
                cq = self._mm(h, self._lin(ca.q)).view(B * L, C)
                cq = self._rms(cq, self._cast(ca.norm_q.weight), _eps(ca.norm_q, dt), None, None, L).view(B, L, H, D)
                ck, cv = text.kv[i]
                # token-major for the output product, written as e4m3 when that product is fp8
                cy = torch.empty((B, L, H, D), device=self.device,
                                 dtype=torch.float8_e4m3fn if self._e4m3_input(ca.o) else dt)
                copy_rows(cy, F.scaled_dot_product_attention(cq.transpose(1, 2), ck, cv).transpose(1, 2))
                y = self._mm(cy.view(B, L, C), self._lin(ca.o))
                # x += cross; h = norm2(x) * (1 + scale2) + shift2
                h = self._norm_mod(x_, Fr, _eps(block.norm2, dt), y=y, mul=mod[:, :, 4], add=mod[:, :, 3],
                                   e4m3=self._e4m3_input(block.ffn[0]))
                y = self._ffn(h, self._lin(block.ffn[0]), self._lin(block.ffn[2]))
                gate2 = mod[:, :, 5]
                if i + 1 < nl:  # x += ffn * gate2; h = next norm1(x) * (1 + scale1) + shift1
                    mod = mods(i + 1)
                    h = self._norm_mod(x_, Fr, _eps(blocks[i + 1].norm1, dt), y=y, gate=gate2,
                                       mul=mod[:, :, 1], add=mod[:, :, 0],
                                       e4m3=self._e4m3_input(blocks[i + 1].self_attn.q))
                else:  # x += ffn * gate2; h = head norm(x) * (1 + scale) + shift
                    h = self._norm_mod(x_, Fr, _eps(m.head.norm, dt), y=y, gate=gate2,
                                       mul=head_mod[:, :, 1], add=head_mod[:, :, 0], write_x=False,
                                       e4m3=self._e4m3_input(m.head.head))
        return self._mm(h, self._lin(m.head.head)), grid


def _concat(q: Lin, k: Lin, v: Lin, C: int, dtype, device) -> Lin:
    """One [3C, C] QKV product from three; fp8 weights keep their values, their scales become
    one per output row (exactly the three products)."""
    bs = [t.b for t in (q, k, v)]
    b = None
    if any(x is not None for x in bs):
        zero = torch.zeros(C, dtype=dtype, device=device)
        b = torch.cat([x if x is not None else zero for x in bs], 0)
    w = torch.cat([t.w for t in (q, k, v)], 0)
    scales = [t.scale for t in (q, k, v)]
    if all(s is None for s in scales):
        return Lin(w, b)
    one = torch.ones((), dtype=torch.float32, device=device)
    rows = [(one if s is None else s.float()).expand(C) for s in scales]
    return Lin(w, b, torch.cat(rows))


def _probe_default_sdpa(probe, layer, q, keys, group, device):
    """Run a probe (profiler) with torch's own SDPA backend order, not the fast path's."""
    with attention_backends("flash", device):
        return probe(layer, q, keys, group)
