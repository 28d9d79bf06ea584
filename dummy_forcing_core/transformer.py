"""Drives a Wan2.1 transformer one chunk at a time, with a KV cache.

Works on any module with Wan2.1's structure and parameter names: ComfyUI's ``WanModel`` and
``CausalWanModel`` and our :class:`~dummy_forcing_core.wan_model.WanModel`. Only submodules
are called (``blocks[i].self_attn.q(...)`` etc.), so weight casting and patches applied by a
host (ComfyUI's ops, LoRA) keep working. Tokens are ordered frame-major, then row, column.

Shapes: B batch, F frames in the chunk, h x w patches per frame (tpf = h * w tokens),
L = F * tpf, H heads, D head dim, C = dim = H * D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import FULL, KVCache, Retention
from .rope import RopeTable, apply_rope, rope_table

__all__ = ["ModelGeometry", "TextCache", "ChunkRunner", "full_sequence_forward", "sinusoidal_embedding"]

WAN_KEYS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head")


@dataclass(frozen=True)
class ModelGeometry:
    """What a KV cache and a head profile depend on."""

    num_layers: int
    num_heads: int
    head_dim: int
    dim: int
    in_dim: int
    out_dim: int
    patch_size: tuple[int, int, int]
    freq_dim: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelGeometry":
        missing = [k for k in WAN_KEYS if not hasattr(model, k)]
        if missing:
            raise TypeError(f"{type(model).__name__} is not a Wan2.1 transformer: it has no {', '.join(missing)}. "
                            "Load a Wan2.1 (T2V 1.3B-style) diffusion model.")
        dim = int(model.dim)
        heads = int(model.num_heads)
        if hasattr(model, "in_dim"):
            in_dim = int(model.in_dim)
        else:
            in_dim = int(model.patch_embedding.weight.shape[1])
        return cls(len(model.blocks), heads, dim // heads, dim, in_dim, int(model.out_dim),
                   tuple(int(p) for p in model.patch_size), int(model.freq_dim))

    def fingerprint(self) -> dict:
        return {"num_layers": self.num_layers, "num_heads": self.num_heads, "head_dim": self.head_dim, "dim": self.dim}


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


@dataclass
class TextCache:
    """Cross-attention K/V of the text context, computed once per video: per layer
    (k, v) each [B, H, L_text, D]."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]


def text_cache(model, context: torch.Tensor, dtype) -> TextCache:
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


def check_latent(x: torch.Tensor, geom: ModelGeometry, what: str = "latent") -> None:
    if x.ndim != 5:
        raise ValueError(f"{what} must be a video latent [B, C, frames, H, W] (5 dims), got shape {tuple(x.shape)}; "
                         "an image latent [B, C, H, W] cannot be generated chunk by chunk: use a video latent "
                         "(EmptyHunyuanLatentVideo / EmptyARVideoLatent)")
    if x.shape[1] != geom.in_dim:
        raise ValueError(f"{what} has {x.shape[1]} channels but the model takes {geom.in_dim} (a Wan2.1 latent has 16)")
    _, ph, pw = geom.patch_size
    if x.shape[3] % ph or x.shape[4] % pw:
        raise ValueError(f"{what} height/width {x.shape[3]}x{x.shape[4]} must be divisible by the patch {ph}x{pw} "
                         f"(image width and height divisible by {8 * ph})")


class ChunkRunner:
    """Runs a Wan transformer on one chunk of frames at its absolute position, reading and
    writing a :class:`KVCache`. ``dtype`` is the compute dtype (default: the weights').

    ``fast``: the inference fast path (:mod:`dummy_forcing_core.fast_path`): ``None`` (auto)
    uses it on CUDA in bf16/fp16 when every submodule is a plain one it can read; ``True``
    uses it wherever supported (also on CPU, for tests), ``False`` never; a
    :class:`~dummy_forcing_core.fast_path.FastOptions` turns it on with those switches.
    Results agree with the reference loop to the compute dtype's rounding."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, device=None, fast=None):
        self.geometry = ModelGeometry.of(model)
        self.model = model
        w = model.blocks[0].self_attn.q.weight
        self.dtype = dtype or (w.dtype if w.dtype.is_floating_point and w.element_size() >= 2 else torch.float32)
        self.device = torch.device(device) if device is not None else w.device
        self._rope_cache: dict[tuple, RopeTable] = {}
        self.fast_path = None
        self.fast_reason = "off"
        from .fast_path import FastOptions, FastPath

        if fast is None:
            want = self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16)
            opts = FastOptions()
            if not want:
                self.fast_reason = "auto: only on CUDA in bf16/fp16"
        else:
            want = fast is not False
            opts = fast if isinstance(fast, FastOptions) else FastOptions()
        if want:
            fp = FastPath(model, self.geometry, self.dtype, self.device, opts)
            if fp.supported:
                self.fast_path, self.fast_reason = fp, "on"
            else:
                self.fast_reason = fp.reason

    def rope(self, frames: int, height: int, width: int, start_frame: int) -> RopeTable:
        """RoPE angles of a chunk on the device, cached (the passes of a chunk share them);
        built on the CPU in float64 and copied without a host sync."""
        key = (frames, height, width, start_frame)
        table = self._rope_cache.get(key)
        if table is None:
            dt = torch.float64 if self.dtype == torch.float64 else torch.float32
            t = rope_table(frames, height, width, self.geometry.head_dim, start_frame, dtype=dt)
            if self.device.type == "cuda":
                t = RopeTable(t.cos.pin_memory().to(self.device, non_blocking=True),
                              t.sin.pin_memory().to(self.device, non_blocking=True))
            elif t.cos.device != self.device:
                t = RopeTable(t.cos.to(self.device), t.sin.to(self.device))
            if len(self._rope_cache) >= 4:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = table = t
        return table

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.geometry.patch_size
        return (height // ph) * (width // pw)

    def new_cache(self, batch: int, height: int, width: int, total_frames: int, chunk_frames: int,
                  retention: Retention = FULL, capacity_frames: int | None = None) -> KVCache:
        """``capacity_frames``: see :meth:`KVCache.create` (default: the whole video)."""
        g = self.geometry
        return KVCache.create(g.num_layers, g.num_heads, g.head_dim, self.tokens_per_frame(height, width), chunk_frames,
                              total_frames, retention, batch, self.dtype, self.device, capacity_frames=capacity_frames)

    def end_video(self) -> None:
        """Drop per-video state: the fast path's CUDA graphs read the video's cache buffers and
        keep them (and their memory pools) alive until dropped. :func:`generate` calls this
        when a video ends, finished or not."""
        if self.fast_path is not None:
            self.fast_path.release_graphs()

    def encode_text(self, context: torch.Tensor) -> TextCache:
        """context: [B, L_text, text_dim] (umT5 for real Wan models)."""
        if context.ndim != 3:
            raise ValueError(f"text context must be [B, tokens, dim], got shape {tuple(context.shape)}")
        return text_cache(self.model, context.to(self.device), self.dtype)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, start_frame: int, text: TextCache,
                cache: KVCache, commit: bool = False, probe=None) -> torch.Tensor:
        """Flow prediction for a chunk.

        x: [B, C_in, F, H, W] in model space; timesteps: [B] or [B, F] (0..1000);
        start_frame: absolute index of the chunk's first frame (= cache.history).
        commit: after the pass, the chunk's K/V become cached context (the clean t = 0 pass).
        probe(layer, q, keys, group): optional observer of the attention (profiling).
        Returns [B, C_out, F, H, W] in float32 (float64 when computing in float64).
        """
        g = self.geometry
        check_latent(x, g, "chunk")
        if start_frame != cache.history:
            raise ValueError(f"chunk starts at frame {start_frame} but the cache holds {cache.history} frames")
        B, _, Fr, Hh, Ww = x.shape
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(B, Fr)
        x = x.to(self.device)
        _, ph, pw = g.patch_size
        rope = self.rope(Fr, Hh // ph, Ww // pw, start_frame)
        if self.fast_path is not None:
            out, grid = self.fast_path.run(x, timesteps.to(self.device), rope, cache, text, probe)
            if commit:
                cache.commit()
            return unpatchify(out, grid, g.patch_size, g.out_dim).to(
                torch.float64 if self.dtype == torch.float64 else torch.float32)
        tokens, grid = embed_patches(self.model, x, self.dtype)
        e, e0 = time_embed(self.model, timesteps.to(self.device), self.dtype)
        for i, block in enumerate(self.model.blocks):
            layer = cache.layers[i]
            layer_probe = None if probe is None else (lambda q, k, grp, i=i: probe(i, q, k, grp))
            tokens = block_forward(block, tokens, e0, rope,
                                   lambda q, k, v, layer=layer, p=layer_probe: layer.attend(q, k, v, p),
                                   *text.kv[i])
        out = head_forward(self.model, tokens, e)
        if commit:
            cache.commit()
        return unpatchify(out, grid, g.patch_size, g.out_dim).to(torch.float64 if self.dtype == torch.float64 else torch.float32)


def full_sequence_forward(model, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                          attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Whole-sequence pass of a Wan model (training, references). x [B, C, F, H, W];
    timesteps [B] or [B, F]; attn_mask: bool [L, L] or [B, 1, L, L], True = may attend."""
    geom = ModelGeometry.of(model)
    check_latent(x, geom)
    dtype = model.blocks[0].self_attn.q.weight.dtype
    B, _, Fr = x.shape[:3]
    if timesteps.ndim == 1:
        timesteps = timesteps[:, None].expand(B, Fr)
    tokens, grid = embed_patches(model, x, dtype)
    e, e0 = time_embed(model, timesteps, dtype)
    rope = rope_table(*grid, geom.head_dim, 0, device=x.device,
                      dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    ctx = text_cache(model, context, dtype)

    def attend(q, k, v):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        return o.transpose(1, 2)

    for i, block in enumerate(model.blocks):
        tokens = block_forward(block, tokens, e0, rope, attend, *ctx.kv[i])
    return unpatchify(head_forward(model, tokens, e), grid, geom.patch_size, geom.out_dim)
