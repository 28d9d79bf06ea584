"""Self-attention over a :class:`~dummy_forcing_core.kv_cache.LayerCache`, the SDPA backend
choice, and the FLOP counting of both.

Every pass of a chunk calls :func:`attend` (queries in the model's head order) or
:func:`attend_ordered` (queries already in the layer's storage order, as the fused path
makes them by permuting the projection weights). Each head group writes the chunk's K/V into
its scratch and runs one SDPA call over ``[context | chunk]``.

A *probe* ``probe(q, keys, group)`` (profiling) sees the single group's queries
[B, H, Lq, D] and keys [B, H, Lk, D]; it exists only while the layer is one group in head
order, i.e. before Dummy Forcing regroups it.

FLOPs: ``4 * B * H * Lq * Lk * D`` per call (QK^T and PV) go to ``cache.flops.done``; what
the same pass would cost over a full cache (every committed frame) to ``cache.flops.full``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .fast_kernels import copy_rows
from .kv_cache import KVCache, LayerCache

__all__ = ["ATTENTION_CHOICES", "attention_backends", "attend", "attend_ordered", "count_full_pass"]

ATTENTION_CHOICES = ("auto", "cudnn", "flash", "efficient", "math", "default")
_NULL = contextlib.nullcontext()


def attention_backends(choice: str, device: torch.device):
    """A context manager that makes SDPA prefer the chosen backend (falls back in order):
    ``auto`` = cuDNN first on Hopper, else flash; ``default`` = torch's own choice."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {choice!r}")
    if torch.device(device).type != "cuda" or choice == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel  # CUDA only; optional on old torch

    cudnn, flash, eff, math = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                               SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    if choice == "auto":
        hopper = torch.cuda.get_device_capability(device)[0] >= 9
        order = [cudnn, flash, eff, math] if hopper else [flash, eff, cudnn, math]
    else:
        first = {"cudnn": cudnn, "flash": flash, "efficient": eff, "math": math}[choice]
        order = [first] + [b for b in (flash, eff, cudnn, math) if b != first]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # older torch: no priorities
        return sdpa_kernel(order)


def _count_full(cache: KVCache, layer: LayerCache, batch: int, tokens: int, heads: int, head_dim: int) -> None:
    full_keys = layer.history * layer.groups[0].tpf + tokens
    cache.flops.full += 4 * batch * heads * tokens * full_keys * head_dim


def count_full_pass(cache: KVCache, batch: int, tokens: int) -> None:
    """Add a whole pass's full-cache FLOPs (a pass replayed without running this module)."""
    for layer in cache.layers:
        _count_full(cache, layer, batch, tokens, cache.num_heads, cache.head_dim)


def attend(cache: KVCache, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           probe=None) -> torch.Tensor:
    """Self-attention of the chunk's queries over [cached context | chunk] of one layer.
    q, k, v: [B, Lc, H, D], RoPE applied, in the model's head order; returns [B, Lc, H, D]
    in the same order (heads are gathered into storage order and scattered back)."""
    layer = cache.layers[layer_index]
    if layer.identity:
        return attend_ordered(cache, layer_index, q, k, v, probe)
    if probe is not None:
        raise RuntimeError("attention profiling needs the undivided cache (profile before regrouping)")
    order = layer.order_index(q.device)
    grouped = attend_ordered(cache, layer_index, q.index_select(2, order), k.index_select(2, order),
                             v.index_select(2, order))
    # a partial layer (heads split across processes): the heads held elsewhere come out 0
    out = q.new_zeros(q.shape) if layer.partial else torch.empty_like(grouped)
    return out.index_copy_(2, order, grouped)


def attend_ordered(cache: KVCache, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   probe=None, side_stream=None, kernel=None) -> torch.Tensor:
    """Like :func:`attend` with q, k, v and the result in the layer's *storage order*, so each
    group is a contiguous slice of heads. ``side_stream`` (CUDA): groups after the first run
    on it, overlapping the first group's attention (the calling stream waits for it).
    ``kernel(out, q, keys, values)``: writes a group's attention into ``out`` (q / out
    [B, L, h, D] slices, keys / values [B, h, Lk, D]); default SDPA (``attention_8bit``
    has the 8-bit ones)."""
    layer = cache.layers[layer_index]
    B, L, H, D = q.shape
    _count_full(cache, layer, B, L, H, D)
    if probe is not None and not layer.identity:
        raise RuntimeError("attention profiling needs the undivided cache (profile before regrouping)")
    if len(layer.groups) == 1:
        g = layer.groups[0]
        qt = q.transpose(1, 2)
        keys, values = g.write(k.transpose(1, 2), v.transpose(1, 2))
        if probe is not None:
            probe(qt, keys, g)
        cache.flops.done += 4 * B * H * L * keys.shape[2] * D
        if kernel is not None:
            return kernel(torch.empty((B, L, H, D), dtype=q.dtype, device=q.device), q, keys, values)
        return F.scaled_dot_product_attention(qt, keys, values).transpose(1, 2)
    out = torch.empty((B, L, H, D), dtype=q.dtype, device=q.device)
    main = None
    if side_stream is not None and q.is_cuda:
        main = torch.cuda.current_stream(q.device)
        side_stream.wait_stream(main)
    for j, (g, (a, b)) in enumerate(zip(layer.groups, layer.ranges)):
        ctx = torch.cuda.stream(side_stream) if (main is not None and j > 0) else _NULL
        with ctx:
            keys, values = g.write(k[:, :, a:b].transpose(1, 2), v[:, :, a:b].transpose(1, 2))
            cache.flops.done += 4 * B * (b - a) * L * keys.shape[2] * D
            if kernel is not None:
                kernel(out[:, :, a:b], q[:, :, a:b], keys, values)
            else:
                copy_rows(out[:, :, a:b], F.scaled_dot_product_attention(q[:, :, a:b].transpose(1, 2), keys,
                                                                         values).transpose(1, 2))
    if main is not None:
        main.wait_stream(side_stream)
    return out
