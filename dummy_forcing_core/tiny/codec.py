"""The tiny model's stand-in for a VAE: an exact, invertible pixels <-> latent map.

``pixel_unshuffle(2)`` of RGB in [-1, 1]: each 2 x 2 block of pixels becomes 12 channels,
so a 32 x 32 frame is a 12 x 16 x 16 latent frame (one latent frame per video frame, no
temporal compression). With Wan's patch (1, 2, 2) that is 8 x 8 = 64 tokens per frame.
Channel order is torch's: channel ``c * 4 + dy * 2 + dx`` holds colour ``c`` of pixel
``(2y + dy, 2x + dx)``. Decoding is exact (a permutation), so PSNR / SSIM between latents
decoded here are PSNR / SSIM between the videos.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SettingError

__all__ = ["PixelCodec", "CodecChunkDecoder", "CODEC", "to_uint8"]


class PixelCodec:
    def __init__(self, factor: int = 2, channels: int = 3):
        self.factor, self.channels = int(factor), int(channels)

    @property
    def latent_channels(self) -> int:
        return self.channels * self.factor ** 2

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        if height % self.factor or width % self.factor:
            raise ValueError(f"frame {height}x{width} is not divisible by {self.factor}")
        return self.latent_channels, frames, height // self.factor, width // self.factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] (or [3, F, H, W]) in [-1, 1] -> [B, 12, F, H/2, W/2]."""
        squeeze = video.ndim == 4
        if squeeze:
            video = video[None]
        B, C, Fr, H, W = video.shape
        if C != self.channels:
            raise ValueError(f"expected {self.channels} colour channels, got {C}")
        x = video.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, H, W)
        z = F.pixel_unshuffle(x, self.factor)
        z = z.view(B, Fr, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
        return z[0] if squeeze else z

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, 12, F, h, w] -> [B, 3, F, 2h, 2w] (not clamped)."""
        squeeze = latent.ndim == 4
        if squeeze:
            latent = latent[None]
        B, C, Fr, h, w = latent.shape
        if C != self.latent_channels:
            raise ValueError(f"expected {self.latent_channels} latent channels, got {C}")
        z = latent.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w)
        x = F.pixel_shuffle(z, self.factor)
        x = x.view(B, Fr, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
        return x[0] if squeeze else x


    def check(self, shape, name: str = "latent") -> None:
        """Refuse a latent shape that is not this codec's video latent [B, 12, F, h, w] (a Wan2.1
        latent has 16 channels, an image latent 4 dims): a SettingError naming the input."""
        shape = tuple(int(s) for s in shape)
        what = f"the '{name}' input {list(shape)}"
        if len(shape) != 5:
            raise SettingError("input", name, f"{what} is not a video latent [batch, {self.latent_channels}, frames, "
                               "height, width]: the tiny model's latents come from its empty latent node and AR "
                               "Video Sampler")
        C = shape[1]
        if C != self.latent_channels:
            hint = " (a Wan2.1 latent: decode it with VAE Decode and the Wan2.1 VAE)" if C == 16 else ""
            raise SettingError("input", name, f"{what} has {C} channels{hint}; the tiny model's latents have "
                               f"{self.latent_channels} (its pixel codec: 2x2 blocks of RGB)")
        if min(shape) < 1:
            raise SettingError("input", name, f"{what} is empty")

    def frames(self, latent: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """[B, 12, F, h, w] -> frames [B * F, 2h * scale, 2w * scale, 3] float in [0, 1] (ComfyUI's
        IMAGE layout; video after video), each pixel repeated ``scale`` x ``scale`` times."""
        return self.video_frames(latent, scale).flatten(0, 1)

    def video_frames(self, latent: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """[B, 12, F, h, w] -> frames [B, F, 2h * scale, 2w * scale, 3] float in [0, 1], on the CPU."""
        video = self.decode(latent.detach().float().cpu()).clamp(-1, 1).add(1).div(2)  # [B, 3, F, H, W]
        if scale > 1:
            video = video.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        return video.permute(0, 2, 3, 4, 1).contiguous()

    def chunk_decoder(self, scale: int = 1) -> "CodecChunkDecoder":
        """This codec as a chunk-by-chunk decoder for ``pixel_stream.PixelStream``."""
        return CodecChunkDecoder(self, scale)


class CodecChunkDecoder:
    """A :class:`~dummy_forcing_core.pixel_stream.FrameDecoder` over the codec: every latent frame
    is final as soon as it is pushed (the codec keeps nothing between frames), so ``push``
    returns its frames [B, n, H, W, 3] in 0..1 and ``finish`` nothing."""

    def __init__(self, codec: PixelCodec, scale: int = 1):
        self.codec, self.scale = codec, int(scale)

    def push(self, latent: torch.Tensor) -> torch.Tensor:
        return self.codec.video_frames(latent, self.scale)

    def finish(self) -> None:
        return None


CODEC = PixelCodec()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 frames [F, H, W, 3]."""
    v = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).numpy()
