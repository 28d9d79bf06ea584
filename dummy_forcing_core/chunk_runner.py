"""Drives a Wan2.1 transformer one chunk at a time, with a KV cache.

:class:`ChunkRunner` runs a chunk of frames at its absolute position, reading and writing a
:class:`~dummy_forcing_core.kv_cache.KVCache`. The reference loop is ``wan_blocks.wan_forward``
with self-attention over the cache (``attention.attend``); on CUDA in bf16/fp16 the fused
forward (``fused_forward.py``) computes the same with fewer passes over memory.

A *warm* runner (``warm=True``, the warm start from the second run) keeps between videos of
one shape what a new video would otherwise rebuild: the video's KV cache (reset, not
reallocated: :meth:`KVCache.reset`), the text K/V buffers (refilled), the fused forward's
CUDA graphs and the derived weights of its base and its last head order; where it fits
(:meth:`keep_base_budget`), also the first chunks' full-cache buffers, so that their passes
replay too (``KVCache.keep_base``). :meth:`start_video`
hands out that cache after checking the model's weights are the same tensors, unchanged
(otherwise the graphs and derived weights are dropped); :meth:`end_video` keeps it only for
a video that finished, else drops everything (:meth:`drop_warm`); :meth:`warm_bytes` says what
is held.
"""
from __future__ import annotations

import itertools

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

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, device=None, fast=None,
                 warm: bool = False):
        self.geometry = ModelGeometry.of(model)
        self.model = model
        self.warm = bool(warm)
        self._video_cache: tuple[tuple, KVCache] | None = None  # warm: (its make, the cache) start_video gave
        self._parked: KVCache | None = None                # warm: that cache between videos
        self._text: TextCache | None = None                # warm: the text K/V buffers prompts are copied into
        self._weights_seen: tuple | None = None            # warm: weights_signature() at the last video's start
        self.reused = False  # warm: whether the last start_video reset the kept cache (no allocation)
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
                fp.orders_kept = 2 if self.warm else 1
                fp.graphs.warm = self.warm
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

    def start_video(self, batch: int, height: int, width: int, total_frames: int, chunk_frames: int,
                    retention: Retention = FULL, capacity_frames: int | None = None) -> KVCache:
        """The KV cache of a new video (arguments as :meth:`new_cache`). Warm: the last video's
        cache, reset, when it was made alike (else a new recycling one), after dropping the
        graphs and derived weights if the model's weights changed (:meth:`weights_changed`)."""
        if self.fast_path is not None:
            self.fast_path.graphs.new_video()
        if not self.warm:
            return self.new_cache(batch, height, width, total_frames, chunk_frames, retention, capacity_frames)
        if self.weights_changed():
            self._drop_weight_state()
        self._weights_seen = self.weights_signature()
        make = (batch, height, width, total_frames, chunk_frames, retention, capacity_frames)
        parked, self._parked = self._parked, None
        self.reused = parked is not None and self._video_cache is not None and self._video_cache[0] == make
        if self.reused:
            parked.reset()
            self._video_cache = (make, parked)
            return parked
        self._video_cache = None
        if parked is not None and self.fast_path is not None:  # its graphs read the cache dropped here
            self.fast_path.graphs.release()
        del parked
        g = self.geometry
        cache = KVCache.create(g.num_layers, g.num_heads, g.head_dim, self.tokens_per_frame(height, width),
                               chunk_frames, total_frames, retention, batch, self.dtype, self.device,
                               capacity_frames=capacity_frames, recycle=True)
        cache.keep_base = cache.base_bytes() <= self.keep_base_budget()
        self._video_cache = (make, cache)
        return cache

    def keep_base_budget(self) -> int:
        """Bytes a warm cache may hold for its base layout (the first chunks' full cache, which
        a regroup would free) so that the first chunks' CUDA graphs replay in the next video:
        an eighth of the GPU's memory (an 81-frame 480p video of the 1.3B model: 1.7 GiB)."""
        if self.device.type != "cuda":
            return 1 << 62
        return torch.cuda.get_device_properties(self.device).total_memory // 8

    def end_video(self, cache: KVCache | None = None, finished: bool = False) -> None:
        """A video ended. Warm and ``finished``: keep ``cache`` (the one :meth:`start_video` gave)
        and the graphs that read it for the next video. Otherwise (cancelled, failed, or not
        warm) drop per-video state: the fused forward's CUDA graphs read the video's cache
        buffers and keep them (and their memory pools) alive until dropped; a warm runner
        drops everything it kept (:meth:`drop_warm`). A video session calls this when the
        video ends, finished or not."""
        if self.warm and finished and cache is not None and self._video_cache is not None \
                and self._video_cache[1] is cache:
            self._parked = cache
            return
        self.drop_warm()

    def drop_warm(self) -> None:
        """Free everything kept between videos: the parked cache, the text buffers, the CUDA
        graphs and the derived weights (rebuilt on demand)."""
        self._parked = self._video_cache = None
        self._text = None
        self._weights_seen = None
        if self.fast_path is not None:
            self.fast_path.graphs.release()
            if self.warm:
                self.fast_path.clear()

    def weights_signature(self) -> tuple:
        """Every parameter and buffer of the model: object, address, in-place version (none for
        an inference tensor: torch does not count them), device and dtype (a CUDA graph and the
        derived weights read them by address)."""
        return tuple((id(t), t.data_ptr(), None if t.is_inference() else t._version, t.device, t.dtype)
                     for t in itertools.chain(self.model.parameters(), self.model.buffers()))

    def weights_changed(self) -> bool:
        """Whether a weight was replaced, moved or changed in place since the last video started."""
        return self._weights_seen is not None and self._weights_seen != self.weights_signature()

    def _drop_weight_state(self) -> None:
        if self.fast_path is not None:
            self.fast_path.graphs.release()
            self.fast_path.clear()

    def warm_bytes(self) -> dict[str, int]:
        """Bytes kept between videos: ``kv`` (the parked cache's buffers, in use and pooled),
        ``text`` (K/V buffers), ``graphs`` (their pools, as counted at capture), ``weights``
        (derived copies); ``total``."""
        fp = self.fast_path
        out = {"kv": self._parked.reserved_bytes() if self._parked is not None else 0,
               "text": self._text.nbytes() if self._text is not None else 0,
               "graphs": fp.graphs.held_bytes() if fp is not None else 0,
               "weights": fp.derived_bytes() if fp is not None else 0}
        out["total"] = sum(out.values())
        return out

    def encode_text(self, context: torch.Tensor) -> TextCache:
        """context: [B, L_text, text_dim] (umT5 for real Wan models). Warm: copied into the
        last prompt's buffers when the shapes match (same ``uid``: graphs keyed on it replay)."""
        if context.ndim != 3:
            raise ValueError(f"text context must be [B, tokens, dim], got shape {tuple(context.shape)}")
        text = text_cache(self.model, context.to(self.device), self.dtype)
        if not self.warm:
            return text
        if self._text is not None and self._text.fits(text):
            return self._text.refill(text)
        self._text = text
        return text

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
