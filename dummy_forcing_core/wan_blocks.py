"""The Wan2.1 forward, written once: the pieces of a block and the skeleton that chains them.

Works on any module with Wan2.1's structure and parameter names (ComfyUI's ``WanModel`` /
``CausalWanModel``, the pack's :class:`~dummy_forcing_core.wan_model.WanModel`). Only
submodules are called (``blocks[i].self_attn.q(...)`` etc.), so weight casting and patches
applied by a host (ComfyUI's ops, LoRA) keep working. Tokens are ordered frame-major, then
row, column.

:func:`wan_forward` is the skeleton (patch embedding, per-frame time embedding, blocks, head)
shared by the chunk runner's reference loop, :func:`full_sequence_forward` and teacher
forcing; each passes its own self-attention. The fused inference path
(``fused_forward.py``) is the one deliberate second implementation.

Shapes: B batch, F frames, h x w patches per frame (tpf = h * w tokens), L = F * tpf,
H heads, D head dim, C = dim = H * D.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .geometry import ModelGeometry, check_latent
from .rope import RopeTable, apply_rope, rope_table

__all__ = ["sinusoidal_embedding", "embed_patches", "time_embed", "TextCache", "text_cache", "block_forward",
           "head_forward", "unpatchify", "wan_forward", "full_sequence_forward", "SelfAttend"]

SelfAttend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""self_attend(layer, q, k, v) -> out, all [B, L, H, D] (q, k RoPE-rotated)."""


def sinusoidal_embedding(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [N] -> [N, freq_dim] as [cos | sin], computed in float64."""
    half = freq_dim // 2
    pos = t.to(torch.float64).flatten()
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    ang = torch.outer(pos, freqs)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


def _param(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return p.to(device=like.device, dtype=like.dtype)


def embed_patches(model, x: torch.Tensor, dtype) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[B, C_in, F, H, W] -> tokens [B, F*h*w, dim] and the grid (F, h, w)."""
    pe = model.patch_embedding
    wdt = pe.weight.dtype
    in_dtype = wdt if wdt in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
    y = pe(x.to(in_dtype)).to(dtype)
    grid = tuple(y.shape[2:])
    return y.flatten(2).transpose(1, 2), grid


def time_embed(model, timesteps: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame timesteps [B, F] (0..1000) -> e [B, F, dim] (head) and e0 [B, F, 6, dim] (blocks)."""
    B, Fr = timesteps.shape
    sin = sinusoidal_embedding(model.freq_dim, timesteps).to(device=timesteps.device, dtype=dtype)
    e = model.time_embedding(sin)
    e0 = model.time_projection(e)
    return e.view(B, Fr, -1), e0.view(B, Fr, 6, -1)


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, F*tpf, C] -> [B, F, tpf, C] (a view) so per-frame modulation broadcasts."""
    return x.view(x.shape[0], frames, -1, x.shape[-1])


_TEXT_IDS = itertools.count()


@dataclass
class TextCache:
    """Cross-attention K/V of the text context, computed once per prompt: per layer (k, v)
    each [B, H, L_text, D]. ``uid`` names these buffers (a CUDA graph that reads them is keyed
    by it): :meth:`refill` puts another prompt's K/V into them and keeps it."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    uid: int = field(default_factory=lambda: next(_TEXT_IDS))

    def fits(self, other: "TextCache") -> bool:
        """Whether ``other``'s K/V have these buffers' shapes, dtypes and devices."""
        def sig(t):
            return tuple(t.shape), t.dtype, t.device
        return len(self.kv) == len(other.kv) and all(
            sig(a) == sig(c) and sig(b) == sig(d) for (a, b), (c, d) in zip(self.kv, other.kv))

    def refill(self, other: "TextCache") -> "TextCache":
        """Copy ``other``'s K/V into these buffers (``fits`` must hold); returns self."""
        for (k, v), (k2, v2) in zip(self.kv, other.kv):
            k.copy_(k2)
            v.copy_(v2)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.kv for t in kv)


def text_cache(model, context: torch.Tensor, dtype) -> TextCache:
    """context [B, L_text, text_dim] (umT5 for real Wan models) -> every layer's text K/V."""
    ctx = model.text_embedding(context.to(dtype))
    B, Lt, C = ctx.shape
    out = []
    for block in model.blocks:
        ca = block.cross_attn
        H = block.num_heads
        k = ca.norm_k(ca.k(ctx)).view(B, Lt, H, C // H).transpose(1, 2)
        v = ca.v(ctx).view(B, Lt, H, C // H).transpose(1, 2)
        out.append((k.contiguous(), v.contiguous()))
    return TextCache(out)


def block_forward(block, x: torch.Tensor, e0: torch.Tensor, rope: RopeTable, self_attend,
                  cross_k: torch.Tensor, cross_v: torch.Tensor) -> torch.Tensor:
    """One Wan attention block. x [B, L, C]; e0 [B, F, 6, C]; self_attend(q, k, v) gets and
    returns [B, L, H, D]; cross_k/v: [B, H, L_text, D] of this block."""
    B, L, C = x.shape
    Fr = e0.shape[1]
    sa, ca = block.self_attn, block.cross_attn
    H = block.num_heads
    D = C // H
    mod = (_param(block.modulation, e0).unsqueeze(0) + e0).unsqueeze(3)  # [B, F, 6, 1, C]
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # each [B, F, 1, C]

    h = _per_frame(block.norm1(x), Fr) * (1 + scale1) + shift1
    h = h.view(B, L, C)
    q = apply_rope(sa.norm_q(sa.q(h)).view(B, L, H, D), rope)
    k = apply_rope(sa.norm_k(sa.k(h)).view(B, L, H, D), rope)
    v = sa.v(h).view(B, L, H, D)
    y = sa.o(self_attend(q, k, v).reshape(B, L, C))
    x = (_per_frame(x, Fr) + _per_frame(y, Fr) * gate1).view(B, L, C)

    cq = ca.norm_q(ca.q(block.norm3(x))).view(B, L, H, D).transpose(1, 2)
    cy = F.scaled_dot_product_attention(cq, cross_k, cross_v).transpose(1, 2).reshape(B, L, C)
    x = x + ca.o(cy)

    h = (_per_frame(block.norm2(x), Fr) * (1 + scale2) + shift2).view(B, L, C)
    y = block.ffn(h)
    return (_per_frame(x, Fr) + _per_frame(y, Fr) * gate2).view(B, L, C)


def head_forward(model, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x [B, L, C], e [B, F, C] -> [B, L, out_dim * prod(patch)]."""
    B, L, C = x.shape
    Fr = e.shape[1]
    mod = (_param(model.head.modulation, e).unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3)  # [B, F, 2, 1, C]
    shift, scale = mod.unbind(2)
    h = (_per_frame(model.head.norm(x), Fr) * (1 + scale) + shift).view(B, L, C)
    return model.head.head(h)


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], out_dim: int) -> torch.Tensor:
    """[B, F*h*w, out*pt*ph*pw] -> [B, out, F*pt, h*ph, w*pw]."""
    B = x.shape[0]
    f, h, w = grid
    pt, ph, pw = patch
    u = x.view(B, f, h, w, pt, ph, pw, out_dim)
    u = torch.einsum("bfhwpqrc->bcfphqwr", u)
    return u.reshape(B, out_dim, f * pt, h * ph, w * pw)


def wan_forward(model, x: torch.Tensor, timesteps: torch.Tensor, text: TextCache, rope: RopeTable,
                self_attend: SelfAttend, dtype) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The skeleton: x [B, C_in, F, H, W], per-frame timesteps [B, F] (0..1000), the text K/V,
    the RoPE of every token, and ``self_attend(layer, q, k, v)``. Returns the head output
    [B, L, out_dim * prod(patch)] and the token grid (F, h, w); :func:`unpatchify` makes a latent."""
    tokens, grid = embed_patches(model, x, dtype)
    e, e0 = time_embed(model, timesteps, dtype)
    for i, block in enumerate(model.blocks):
        tokens = block_forward(block, tokens, e0, rope, lambda q, k, v, i=i: self_attend(i, q, k, v), *text.kv[i])
    return head_forward(model, tokens, e), grid


def full_sequence_forward(model, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                          attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-sequence pass of a Wan model (training, references). x [B, C, F, H, W];
    timesteps [B] or [B, F]; attn_mask: bool [L, L] or [B, 1, L, L], True = may attend."""
    geom = ModelGeometry.of(model)
    check_latent(x.shape, geom)
    dtype = model.blocks[0].self_attn.q.weight.dtype
    B, _, Fr, Hh, Ww = x.shape
    if timesteps.ndim == 1:
        timesteps = timesteps[:, None].expand(B, Fr)
    _, ph, pw = geom.patch_size
    rope = rope_table(Fr, Hh // ph, Ww // pw, geom.head_dim, 0, device=x.device,
                      dtype=torch.float64 if dtype == torch.float64 else torch.float32)

    def attend(_layer, q, k, v):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        return o.transpose(1, 2)

    out, grid = wan_forward(model, x, timesteps, text_cache(model, context, dtype), rope, attend, dtype)
    return unpatchify(out, grid, geom.patch_size, geom.out_dim)
