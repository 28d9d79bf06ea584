"""Chunk-by-chunk video decoders that keep their causal state between chunks, so decoding a
video chunk by chunk gives the frames one decode of the whole latent gives.

Both read a VAE module by its structure (the core never imports ComfyUI):

* :class:`WanCausalDecoder`, the Wan2.1 VAE (``.conv2``, a per-frame 1x1x1 conv, and
  ``.decoder(x, feat_cache=list, feat_idx=[0])``, whose causal convolutions keep their last
  input frames in ``feat_cache``). The whole-latent decode feeds the decoder latent frame 0
  alone, then ``segment_frames`` frames per call (ComfyUI 0.2x: 2; 0.3.x: 1); this decoder
  cuts its stream the same way and holds back a frame that waits for its pair.
* :class:`TAEHVDecoder`, the tiny video autoencoders (TAEHV: taew2_1, lighttaew2_1): a
  ``.decoder`` sequence of per-frame blocks, ``MemBlock`` s (each frame also sees the previous
  frame's input to the block) and ``TGrow`` s (one frame becomes ``stride`` frames). Each chunk
  runs all its frames at once; every MemBlock keeps the last frame it saw for the next chunk.
  The first ``frames_to_trim`` output frames of the video are dropped, as the whole decode does.

Frames come out as ``[B, T, H, W, 3]`` in the VAE's output dtype after ``process_output``
(0..1), on the decoder's device.
"""
from __future__ import annotations

import torch

__all__ = ["WanCausalDecoder", "TAEHVDecoder"]


def _cat_time(parts) -> torch.Tensor:
    return parts if torch.is_tensor(parts) else torch.cat(list(parts), dim=2)


class WanCausalDecoder:
    """vae: the Wan2.1 VAE module; cache_slots: the length of its decoder's feature cache list;
    segment_frames: latent frames per decoder call after the first; dtype / device: the decode's;
    out_dtype: the frames' dtype; process_output: [B, 3, T, H, W] in [-1, 1] -> 0..1 (in place ok)."""

    def __init__(self, vae, cache_slots: int, segment_frames: int, dtype: torch.dtype, device,
                 out_dtype: torch.dtype = torch.float32, process_output=None):
        if segment_frames < 1:
            raise ValueError("segment_frames must be >= 1")
        self.vae, self.slots, self.segment = vae, int(cache_slots), int(segment_frames)
        self.dtype, self.device, self.out_dtype = dtype, torch.device(device), out_dtype
        self.process_output = process_output or (lambda x: x.add_(1.0).div_(2.0).clamp_(0.0, 1.0))
        self.feat_cache: list = [None] * self.slots
        self.pending: torch.Tensor | None = None   # conv2 output [B, C, k, H, W] waiting for a full segment
        self.started = False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = _cat_time(self.vae.decoder(x, feat_cache=self.feat_cache, feat_idx=[0]))
        out = self.process_output(out.to(self.out_dtype))
        return out.movedim(1, -1)  # [B, T, H, W, 3]

    def push(self, latent: torch.Tensor) -> torch.Tensor | None:
        x = self.vae.conv2(latent.to(device=self.device, dtype=self.dtype))
        x = x if self.pending is None else torch.cat([self.pending, x], dim=2)
        outs = []
        while x.shape[2] > 0:
            n = self.segment if self.started else 1
            if x.shape[2] < n:
                break
            outs.append(self._run(x[:, :, :n]))
            self.started = True
            x = x[:, :, n:]
        self.pending = x if x.shape[2] > 0 else None
        return torch.cat(outs, dim=1) if outs else None

    def finish(self) -> torch.Tensor | None:
        if self.pending is None:
            return None
        x, self.pending = self.pending, None
        return self._run(x)


class TAEHVDecoder:
    """tae: a TAEHV module (``.decoder``, ``.frames_to_trim``, ``.process_in``); dtype / device:
    the decode's; out_dtype, process_output: as :class:`WanCausalDecoder` (TAEHV's output is 0..1
    already: identity by default)."""

    def __init__(self, tae, dtype: torch.dtype, device, out_dtype: torch.dtype = torch.float32, process_output=None):
        self.tae, self.dtype, self.device, self.out_dtype = tae, dtype, torch.device(device), out_dtype
        self.process_output = process_output or (lambda x: x)
        self.blocks = list(tae.decoder)
        self.memory: dict[int, torch.Tensor] = {}   # MemBlock index -> its input's last frame [B, 1, C, H, W]
        self.to_trim = int(getattr(tae, "frames_to_trim", 0))

    def push(self, latent: torch.Tensor) -> torch.Tensor | None:
        x = latent.to(device=self.device, dtype=self.dtype)
        process_in = getattr(self.tae, "process_in", None)
        x = (process_in(x) if process_in is not None else x).movedim(2, 1)  # [B, T, C, H, W]
        B, T = x.shape[:2]
        h = x.reshape(B * T, *x.shape[2:])
        for i, block in enumerate(self.blocks):
            kind = type(block).__name__
            if kind == "MemBlock":
                cur = h.view(B, T, *h.shape[1:])
                prev = self.memory.get(i)
                prev = torch.zeros_like(cur[:, :1]) if prev is None else prev
                past = torch.cat([prev, cur[:, :-1]], dim=1).reshape(h.shape)
                self.memory[i] = cur[:, -1:].clone()
                h = block(h, past)
            elif kind == "TGrow":
                h = block(h)
                T *= int(block.stride)
            else:
                h = block(h)
        out = h.view(B, T, *h.shape[1:])                 # [B, T', 3, H', W']
        if self.to_trim:
            out, self.to_trim = out[:, min(self.to_trim, out.shape[1]):], max(0, self.to_trim - out.shape[1])
        if out.shape[1] == 0:
            return None
        out = self.process_output(out.movedim(2, 1).to(self.out_dtype))  # [B, 3, T, H, W], as the VAE's
        return out.movedim(1, -1)

    def finish(self) -> torch.Tensor | None:
        return None
