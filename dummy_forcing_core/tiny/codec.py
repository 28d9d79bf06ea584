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

__all__ = ["PixelCodec", "CODEC", "to_uint8"]


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


CODEC = PixelCodec()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 frames [F, H, W, 3]."""
    v = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).numpy()
