"""Stub of comfy/ldm/wan/ar_model.py (ComfyUI 0.27): CausalWanModel, Wan2.1 with a KV cache.

Mirrors the interface core's AR sampler uses: ``init_kv_caches(batch_size, max_seq_len, device,
dtype)`` -> per layer ``{"k": [B, max_seq, H, D], "v": ..., "end": 0}`` (dense, allocated for
the whole video), ``init_crossattn_caches(batch_size, device, dtype)`` -> per layer
``{"is_init": False}``, ``forward_block(x, timestep, context, start_frame, kv_caches,
crossattn_caches, clip_fea=None)`` (one block: its K/V written at ``end``, ``end`` advanced,
RoPE from ``start_frame``), and ``forward(..., transformer_options)`` that runs forward_block
when ``transformer_options["ar_state"]`` is set, else the bidirectional pass.

forward_block is written here from the Wan2.1 equations (complex RoPE, explicit softmax) and
shares no code with the pack, so the pack's own cache is checked against an independent one.
"""
from __future__ import annotations

import math

import torch

from comfy.ldm.wan.model import WanModel


def _sinusoidal(dim: int, t: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t.to(torch.float64).flatten()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


def _rope(x: torch.Tensor, frames: int, h: int, w: int, start: int) -> torch.Tensor:
    """Rotate x [B, L, H, D] (tokens frame-major) at absolute frames start.. (3-axis Wan RoPE)."""
    D = x.shape[-1]
    dh = 2 * (D // 6)
    dt = D - 2 * dh
    pos_t = torch.arange(start, start + frames, dtype=torch.float64).repeat_interleave(h * w)
    pos_h = torch.arange(h, dtype=torch.float64).repeat_interleave(w).repeat(frames)
    pos_w = torch.arange(w, dtype=torch.float64).repeat(h * frames)
    parts = [p[:, None] * (10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))[None]
             for p, d in ((pos_t, dt), (pos_h, dh), (pos_w, dh))]
    rot = torch.polar(torch.ones(1, dtype=torch.float64), torch.cat(parts, dim=1)).to(x.device)  # [L, D/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot[None, :, None, :]).flatten(-2).to(x.dtype)


def _attention(q, k, v):
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H * D], softmax written out."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    o = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())
    return o.reshape(o.shape[0], o.shape[1], -1).to(q.dtype)


class CausalWanModel(WanModel):
    @property
    def head_dim(self):
        return self.dim // self.num_heads

    def init_kv_caches(self, batch_size, max_seq_len, device, dtype):
        shape = (batch_size, max_seq_len, self.num_heads, self.head_dim)
        return [{"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype),
                 "end": 0} for _ in range(len(self.blocks))]

    def init_crossattn_caches(self, batch_size, device, dtype):
        return [{"is_init": False} for _ in range(len(self.blocks))]

    def forward_block(self, x, timestep, context, start_frame, kv_caches, crossattn_caches, clip_fea=None):
        B, _, Fr, Hh, Ww = x.shape
        dt = x.dtype
        tok = self.patch_embedding(x.float()).to(dt)
        h, w = tok.shape[3], tok.shape[4]
        tok = tok.flatten(2).transpose(1, 2)                                   # [B, L, C]
        C, H = self.dim, self.num_heads
        e = self.time_embedding(_sinusoidal(self.freq_dim, timestep).to(dt)).view(B, Fr, C)
        e0 = self.time_projection(e).view(B, Fr, 6, C)
        ctx = self.text_embedding(context.to(dt))

        def per_frame(t):  # [B, F, C] -> [B, L, C]
            return t.repeat_interleave(h * w, dim=1)

        for i, blk in enumerate(self.blocks):
            m = [per_frame(blk.modulation[0, j].to(dt) + e0[:, :, j]) for j in range(6)]
            sa, ca = blk.self_attn, blk.cross_attn
            y = blk.norm1(tok) * (1 + m[1]) + m[0]
            q = _rope(sa.norm_q(sa.q(y)).view(B, -1, H, C // H), Fr, h, w, start_frame)
            k = _rope(sa.norm_k(sa.k(y)).view(B, -1, H, C // H), Fr, h, w, start_frame)
            v = sa.v(y).view(B, -1, H, C // H)
            cache = kv_caches[i]
            end = cache["end"]
            cache["k"][:, end:end + k.shape[1]] = k
            cache["v"][:, end:end + v.shape[1]] = v
            cache["end"] = end + k.shape[1]
            tok = tok + sa.o(_attention(q, cache["k"][:, :cache["end"]], cache["v"][:, :cache["end"]])) * m[2]
            cc = crossattn_caches[i]
            if not cc.get("is_init"):
                cc["k"] = ca.norm_k(ca.k(ctx)).view(B, -1, H, C // H)
                cc["v"] = ca.v(ctx).view(B, -1, H, C // H)
                cc["is_init"] = True
            cq = ca.norm_q(ca.q(blk.norm3(tok))).view(B, -1, H, C // H)
            tok = tok + ca.o(_attention(cq, cc["k"], cc["v"]))
            tok = tok + blk.ffn(blk.norm2(tok) * (1 + m[4]) + m[3]) * m[5]
        hm = self.head.modulation.to(dt)
        shift, scale = per_frame(hm[0, 0] + e), per_frame(hm[0, 1] + e)
        out = self.head.head(self.head.norm(tok) * (1 + scale) + shift)         # [B, L, out * 4]
        pt, ph, pw = self.patch_size
        out = out.view(B, Fr, h, w, pt, ph, pw, self.out_dim)
        return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(B, self.out_dim, Fr * pt, h * ph, w * pw)

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        ar_state = transformer_options.get("ar_state")
        if ar_state is not None:
            t = timestep.unsqueeze(1).expand(x.shape[0], x.shape[2])
            return self.forward_block(x=x, timestep=t, context=context, start_frame=ar_state["start_frame"],
                                      kv_caches=ar_state["kv_caches"], crossattn_caches=ar_state["crossattn_caches"],
                                      clip_fea=clip_fea)
        return super().forward(x, timestep, context, clip_fea=clip_fea, transformer_options=transformer_options)
