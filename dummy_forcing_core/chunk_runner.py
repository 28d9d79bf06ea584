"""Drives a Wan2.1 transformer one chunk at a time, with a KV cache.

:class:`ChunkRunner` runs a chunk of frames at its absolute position, reading and writing a
:class:`~dummy_forcing_core.kv_cache.KVCache`. The reference loop is ``wan_blocks.wan_forward``
with self-attention over the cache (``attention.attend``); on CUDA in bf16/fp16 the fused
forward (``fused_forward.py``) computes the same with fewer passes over memory.
"""
from __future__ import annotations

import torch

from .attention import attend
from .fused_forward import FastOptions, FusedForward
from .geometry import ModelGeometry, check_latent
from .kv_cache import FULL, KVCache, Retention
from .rope import RopeTable, rope_table
from .wan_blocks import TextCache, text_cache, unpatchify, wan_forward

__all__ = ["ChunkRunner"]


class ChunkRunner:
    """Runs a Wan transformer on one chunk at its absolute position. ``dtype`` is the compute
    dtype (default: the weights').

    ``fast``: the fused forward: ``None`` (auto) uses it on CUDA in bf16/fp16 when every
    submodule is a plain one it can read; ``True`` uses it wherever supported (also on CPU,
    for tests), ``False`` never; a :class:`~dummy_forcing_core.fused_forward.FastOptions`
    turns it on with those switches. Results agree with the reference loop to the compute
    dtype's rounding."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, device=None, fast=None):
        self.geometry = ModelGeometry.of(model)
        self.model = model
        w = model.blocks[0].self_attn.q.weight
        self.dtype = dtype or (w.dtype if w.dtype.is_floating_point and w.element_size() >= 2 else torch.float32)
        self.device = torch.device(device) if device is not None else w.device
        self._rope_cache: dict[tuple, RopeTable] = {}
        self.fast_path: FusedForward | None = None
        self.fast_reason = "off"
        if fast is None:
            want = self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16)
            opts = FastOptions()
            if not want:
                self.fast_reason = "auto: only on CUDA in bf16/fp16"
        else:
            want = fast is not False
            opts = fast if isinstance(fast, FastOptions) else FastOptions()
        if want:
            fp = FusedForward(model, self.geometry, self.dtype, self.device, opts)
            if fp.supported:
                self.fast_path, self.fast_reason = fp, "on"
            else:
                self.fast_reason = fp.reason

    @property
    def out_dtype(self) -> torch.dtype:
        """What :meth:`forward` returns: float32 (float64 when computing in float64)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

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
        return self.geometry.tokens_per_frame(height, width)

    def new_cache(self, batch: int, height: int, width: int, total_frames: int, chunk_frames: int,
                  retention: Retention = FULL, capacity_frames: int | None = None) -> KVCache:
        """``capacity_frames``: see :meth:`KVCache.create` (default: the whole video)."""
        g = self.geometry
        return KVCache.create(g.num_layers, g.num_heads, g.head_dim, self.tokens_per_frame(height, width), chunk_frames,
                              total_frames, retention, batch, self.dtype, self.device, capacity_frames=capacity_frames)

    def attend(self, cache: KVCache, layer: int, q, k, v, probe=None) -> torch.Tensor:
        """The reference loop's self-attention of one layer ([B, L, H, D] in and out)."""
        return attend(cache, layer, q, k, v, probe)

    def end_video(self) -> None:
        """Drop per-video state: the fused forward's CUDA graphs read the video's cache buffers
        and keep them (and their memory pools) alive until dropped. A video session calls this
        when the video ends, finished or not."""
        if self.fast_path is not None:
            self.fast_path.graphs.release()

    def encode_text(self, context: torch.Tensor) -> TextCache:
        """context: [B, L_text, text_dim] (umT5 for real Wan models)."""
        if context.ndim != 3:
            raise ValueError(f"text context must be [B, tokens, dim], got shape {tuple(context.shape)}")
        return text_cache(self.model, context.to(self.device), self.dtype)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, start_frame: int, text: TextCache,
                cache: KVCache, commit: bool = False, probe=None, position: int | None = None) -> torch.Tensor:
        """Flow prediction for a chunk.

        x: [B, C_in, F, H, W] in model space; timesteps: [B] or [B, F] (0..1000);
        start_frame: where the chunk goes in the cache (= cache.history).
        commit: after the pass, the chunk's K/V become cached context (the cache pass).
        probe(layer, q, keys, group): optional observer of the attention (profiling).
        position: the absolute frame index of the chunk's first frame, for RoPE (default
        start_frame; differs in a re-cache pass, whose cache holds only some frames).
        Returns [B, C_out, F, H, W] in :attr:`out_dtype`.
        """
        g = self.geometry
        check_latent(x.shape, g, "chunk")
        if start_frame != cache.history:
            raise ValueError(f"chunk starts at frame {start_frame} but the cache holds {cache.history} frames")
        B, _, Fr, Hh, Ww = x.shape
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(B, Fr)
        x = x.to(self.device)
        timesteps = timesteps.to(self.device)
        _, ph, pw = g.patch_size
        rope = self.rope(Fr, Hh // ph, Ww // pw, start_frame if position is None else position)
        if self.fast_path is not None:
            out, grid = self.fast_path.run(x, timesteps, rope, cache, text, probe)
        else:
            def self_attend(i, q, k, v):
                p = None if probe is None else (lambda qq, kk, grp: probe(i, qq, kk, grp))
                return self.attend(cache, i, q, k, v, p)

            out, grid = wan_forward(self.model, x, timesteps, text, rope, self_attend, self.dtype)
        if commit:
            cache.commit()
        return unpatchify(out, grid, g.patch_size, g.out_dim).to(self.out_dtype)
