"""3-axis rotary position embedding of Wan2.1, computed on the fly at absolute frame index.

Wan splits a head's D dims into time / height / width parts of
``D - 4 * (D // 6)``, ``2 * (D // 6)``, ``2 * (D // 6)`` dims (44 / 42 / 42 for D = 128).
Consecutive dim pairs (2i, 2i+1) are rotated as complex numbers by ``pos * theta^(-2j/d_axis)``.
The authors' tables stop at 1024 frames; here angles are computed for the positions asked
for, so a chunk at frame 3000 costs the same as one at frame 0.
"""
from __future__ import annotations

import torch

__all__ = ["rope_axes", "RopeTable", "rope_table", "apply_rope"]


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Dims given to (time, height, width)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


class RopeTable:
    """cos/sin of the rotation angles of a token block: each [L, D/2], float32 (or float64).

    Tokens are ordered frame-major, then row, then column, as Wan's patch embedding makes them.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        self.cos, self.sin = cos, sin

    def __len__(self):
        return self.cos.shape[0]


def _axis_freqs(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_table(frames: int, height: int, width: int, head_dim: int, frame_offset: int = 0,
               theta: float = 10000.0, device=None, dtype=torch.float32) -> RopeTable:
    """Angles for a block of ``frames`` x ``height`` x ``width`` tokens starting at absolute
    frame ``frame_offset`` (height/width in patches). Computed in float64, stored in ``dtype``."""
    dt, dh, dw = rope_axes(head_dim)
    t = torch.arange(frame_offset, frame_offset + frames, dtype=torch.float64)
    h = torch.arange(height, dtype=torch.float64)
    w = torch.arange(width, dtype=torch.float64)
    at = torch.outer(t, _axis_freqs(dt, theta))  # [F, dt/2]
    ah = torch.outer(h, _axis_freqs(dh, theta))  # [H, dh/2]
    aw = torch.outer(w, _axis_freqs(dw, theta))  # [W, dw/2]
    ang = torch.cat([
        at[:, None, None, :].expand(frames, height, width, -1),
        ah[None, :, None, :].expand(frames, height, width, -1),
        aw[None, None, :, :].expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, head_dim // 2)
    return RopeTable(ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype))


def apply_rope(x: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Rotate x [B, L, H, D] by the table ([L, D/2]); math in float32 (float64 for float64
    input), result in x's dtype."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(work).unflatten(-1, (-1, 2))
    a, b = xs[..., 0], xs[..., 1]
    cos = table.cos.to(device=x.device, dtype=work)[None, :, None, :]
    sin = table.sin.to(device=x.device, dtype=work)[None, :, None, :]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
