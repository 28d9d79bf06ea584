"""A standalone Wan2.1 text-to-video transformer with the exact Wan parameter names.

Its state dict loads into ComfyUI's ``WanModel`` / ``CausalWanModel`` and the other way
round (same names, same shapes). It is used by the tests, the demo, the training script
and to run the pack without ComfyUI. Chunk-by-chunk causal inference does not go through
``forward`` here: :class:`dummy_forcing_core.chunk_runner.ChunkRunner` drives the
submodules of this (or ComfyUI's) module directly. ``forward`` is the full-sequence pass
(optionally with an attention mask), used for training and as a plain reference.

Parameter names (L = num_layers)::

    patch_embedding.{weight,bias}                 Conv3d(in_dim, dim, patch, stride=patch)
    text_embedding.{0,2}.{weight,bias}            Linear(text_dim, dim), GELU, Linear(dim, dim)
    time_embedding.{0,2}.{weight,bias}            Linear(freq_dim, dim), SiLU, Linear(dim, dim)
    time_projection.1.{weight,bias}               SiLU, Linear(dim, 6 * dim)
    blocks.N.self_attn.{q,k,v,o}.{weight,bias}
    blocks.N.self_attn.norm_{q,k}.weight          RMSNorm(dim) over all heads together
    blocks.N.norm3.{weight,bias}                  LayerNorm before cross-attention
    blocks.N.cross_attn.{q,k,v,o}.{weight,bias}, blocks.N.cross_attn.norm_{q,k}.weight
    blocks.N.ffn.{0,2}.{weight,bias}              Linear(dim, ffn_dim), GELU(tanh), Linear
    blocks.N.modulation                           [1, 6, dim]
    head.head.{weight,bias}, head.modulation      Linear(dim, out_dim * prod(patch)), [1, 2, dim]
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .wan_blocks import full_sequence_forward

__all__ = ["WanConfig", "WanModel", "WAN21_1_3B"]


@dataclass(frozen=True)
class WanConfig:
    """Geometry of a Wan2.1-style transformer. Defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError("head dim must be even for RoPE")
        if self.patch_size[0] != 1:
            raise ValueError("only temporal patch 1 is supported (all Wan2.1 models use (1, 2, 2))")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        if "patch_size" in kw:
            kw["patch_size"] = tuple(kw["patch_size"])
        return cls(**kw)

    @classmethod
    def from_state_dict(cls, sd: dict, num_heads: int | None = None) -> "WanConfig":
        """Infer the geometry from Wan parameter names (no prefix). ``num_heads`` defaults
        to dim // 128, as ComfyUI does (every released Wan model has head dim 128)."""
        if "head.modulation" not in sd or "patch_embedding.weight" not in sd:
            raise ValueError("not a Wan model: 'head.modulation' / 'patch_embedding.weight' missing")
        dim = sd["head.modulation"].shape[-1]
        pe = sd["patch_embedding.weight"]
        patch = tuple(int(s) for s in pe.shape[2:])
        layers = 0
        while f"blocks.{layers}.self_attn.q.weight" in sd:
            layers += 1
        return cls(
            dim=dim,
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            num_heads=num_heads or max(1, dim // 128),
            num_layers=layers,
            in_dim=pe.shape[1],
            out_dim=sd["head.head.weight"].shape[0] // math.prod(patch),
            text_dim=sd["text_embedding.0.weight"].shape[1],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            patch_size=patch,
        )


WAN21_1_3B = WanConfig()


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class _Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.dim = d
        self.num_heads = cfg.num_heads
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = _SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = _SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))


class _Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))


class WanModel(nn.Module):
    """Wan2.1 T2V transformer. Attributes mirror ComfyUI's WanModel (``dim``, ``num_heads``,
    ``freq_dim``, ``patch_size``, ``out_dim``) so the runtime drives either the same way."""

    def __init__(self, cfg: WanConfig = WAN21_1_3B):
        super().__init__()
        self.config = cfg
        self.dim, self.num_heads, self.num_layers = cfg.dim, cfg.num_heads, cfg.num_layers
        self.freq_dim, self.patch_size, self.out_dim = cfg.freq_dim, cfg.patch_size, cfg.out_dim
        self.in_dim, self.text_dim, self.eps = cfg.in_dim, cfg.text_dim, cfg.eps
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.num_layers)])
        self.head = _Head(cfg)

    @torch.no_grad()
    def init_random(self, seed: int = 0, scale: float = 1.0) -> "WanModel":
        """Deterministic random weights with sane activations (tests, benchmarks)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm3.weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (scale / math.sqrt(fan_in)))
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence pass.

        x: [B, in_dim, F, H, W] latent; timesteps: [B] or [B, F] in 0..1000 (per frame);
        context: [B, L_text, text_dim]; attn_mask: optional bool [F*h*w, F*h*w] (True =
        may attend), e.g. block-causal. Returns the flow prediction [B, out_dim, F, H, W].
        """
        return full_sequence_forward(self, x, timesteps, context, attn_mask)
