"""Stub of comfy/ldm/wan/vae.py (ComfyUI 0.2x interface): a small causal video decoder, written
for these tests, with the real one's calling convention: ``WanVAE.conv2`` (per-frame 1x1x1),
``decoder(x, feat_cache=list, feat_idx=[0])`` keeping each causal conv's last CACHE_T input
frames in ``feat_cache`` (no join with older frames: the caller must feed 2 frames per call
after the first, as ``decode`` does), a 4x temporal upsample after the first call, a list of
output chunks, and ``count_cache_layers``. Latent [B, 16, T, h, w] -> [B, 3, 1 + 4 (T - 1), 8h, 8w]
(the 8x spatial upsample is per frame, nearest)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_T = 2


class CausalConv3d(nn.Conv3d):
    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=(0, 1, 1))

    def forward(self, x, cache_x=None):
        hist = cache_x if cache_x is not None else x[:, :, :0]
        pad = x.new_zeros(x.shape[0], x.shape[1], max(0, 2 - hist.shape[2]), *x.shape[3:])
        return super().forward(torch.cat([pad, hist[:, :, -2:], x], dim=2))


class Decoder3d(nn.Module):
    def __init__(self, z_dim=16, dim=8):
        super().__init__()
        self.conv1 = CausalConv3d(z_dim, dim)
        self.time_up = nn.Conv3d(dim, 4 * dim, 1)
        self.head = CausalConv3d(dim, 3)

    def forward(self, x, feat_cache=None, feat_idx=[0]):
        i = feat_idx[0]
        cache_x = x[:, :, -CACHE_T:]
        x = F.silu(self.conv1(x, feat_cache[i]))
        feat_cache[i] = cache_x
        if feat_cache[i + 1] is None:  # the first call: frame 0 stays one frame
            feat_cache[i + 1] = "Rep"
        else:
            b, c, t, h, w = x.shape
            x = self.time_up(x).view(b, 4, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 4 * t, h, w)
        cache_x = x[:, :, -CACHE_T:]
        x = self.head(x, feat_cache[i + 2])
        x = F.interpolate(x, scale_factor=(1, 8, 8), mode="nearest")
        feat_cache[i + 2] = cache_x
        feat_idx[0] = i + 3
        return [x[:, :, k:k + 2] for k in range(0, x.shape[2], 2)]


def count_cache_layers(model):
    return 3


class WanVAE(nn.Module):
    def __init__(self, z_dim=16, dim=8):
        super().__init__()
        self.z_dim = z_dim
        self.conv2 = nn.Conv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(z_dim, dim)

    def decode(self, z):
        x = self.conv2(z)
        feat_map = [None] * count_cache_layers(self.decoder)
        out = self.decoder(x[:, :, :1], feat_cache=feat_map, feat_idx=[0])
        for i in range(1, 1 + z.shape[2] // 2):
            out += self.decoder(x[:, :, 1 + 2 * (i - 1):1 + 2 * i], feat_cache=feat_map, feat_idx=[0])
        return torch.cat(out, 2)
