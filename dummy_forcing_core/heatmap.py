"""A picture of a head profile: layers (rows) x heads (columns).

Hue = head type: sink heads blue, neighbor heads orange, dummy heads green (grey when no
assignment is given). Strength = a_current: a vivid, saturated cell puts most of its
attention on the current chunk; a pale, washed-out cell looks mostly at cached frames.
A legend strip under the grid shows, per hue, a_current from 0 (left) to 1 (right).
Layer numbers and legend words are drawn with Pillow when it is installed; without it the
picture is the same minus the text.
"""
from __future__ import annotations

import numpy as np
import torch

from .head_program import HeadType

__all__ = ["head_map_image", "TYPE_COLOURS", "NO_TYPE_COLOUR"]

TYPE_COLOURS = {HeadType.SINK: (31, 119, 180), HeadType.NEIGHBOR: (255, 127, 14), HeadType.DUMMY: (44, 160, 44)}
NO_TYPE_COLOUR = (90, 90, 90)
BACKGROUND = (24, 24, 24)
MIN_STRENGTH = 0.3  # a_current = 0 still shows the hue
MAX_WIDTH = 1024


def _shade(base, a_current: np.ndarray) -> np.ndarray:
    """Blend white -> base by strength 0.3 + 0.7 * a_current; returns [..., 3] float."""
    v = MIN_STRENGTH + (1.0 - MIN_STRENGTH) * np.clip(a_current, 0.0, 1.0)
    base = np.asarray(base, dtype=np.float64)
    return 255.0 * (1.0 - v[..., None]) + base * v[..., None]


def _font():
    try:
        from PIL import ImageFont
        return ImageFont.load_default()
    except Exception:  # Pillow missing or broken: no text
        return None


def head_map_image(scores, assign=None, cell: int | None = None, labels: bool = True) -> np.ndarray:
    """RGB uint8 [h, w, 3] of scores [L, H, 3] coloured by assign [L, H] (HeadType values) or
    grey if ``assign`` is None. ``cell``: pixels per head (default 16, smaller for models with
    many heads so the picture stays <= 1024 px wide)."""
    s = torch.as_tensor(scores).detach().cpu().double().numpy()
    if s.ndim != 3 or s.shape[-1] != 3:
        raise ValueError(f"scores must be [layers, heads, 3], got {tuple(s.shape)}")
    L, H = s.shape[:2]
    if assign is not None:
        a = torch.as_tensor(assign).detach().cpu().numpy().astype(np.int64)
        if a.shape != (L, H):
            raise ValueError(f"head assignment {a.shape} does not match scores {(L, H)}")
        if not np.isin(a, list(TYPE_COLOURS)).all():
            raise ValueError("head assignment holds values other than 0 (sink), 1 (neighbor), 2 (dummy)")
    font = _font() if labels else None
    margin = 28 if font is not None else 0
    gap = 1
    if cell is None:
        cell = max(2, min(16, (MAX_WIDTH - margin - 2 * gap) // H - gap))
    pitch = cell + gap
    grid_w, grid_h = H * pitch + gap, L * pitch + gap

    types = sorted(TYPE_COLOURS) if assign is not None else [None]
    bar_h = max(6, min(12, cell))
    bar_w = max(64, min(256, grid_w))
    text_w = 60 if font is not None else 0
    legend_h = len(types) * (bar_h + 4) + 6
    width = max(margin + grid_w, margin + text_w + bar_w + 4)
    height = grid_h + legend_h + (12 if font is not None else 0)
    img = np.empty((height, width, 3), dtype=np.float64)
    img[:] = BACKGROUND

    # grid cells
    colours = np.empty((L, H, 3))
    if assign is None:
        colours[:] = _shade(NO_TYPE_COLOUR, s[..., 2])
    else:
        for t, base in TYPE_COLOURS.items():
            m = a == t
            colours[m] = _shade(base, s[..., 2][m])
    block = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)  # [L*cell, H*cell, 3]
    rows = (np.arange(L)[:, None] * pitch + gap + np.arange(cell)[None, :]).reshape(-1)
    cols = (np.arange(H)[:, None] * pitch + gap + np.arange(cell)[None, :]).reshape(-1)
    img[np.ix_(rows, margin + cols)] = block

    # legend: one gradient bar per hue, a_current 0 (left) -> 1 (right)
    ramp = np.linspace(0.0, 1.0, bar_w)
    y0 = grid_h + 6
    bar_x = margin + text_w
    for i, t in enumerate(types):
        y = y0 + i * (bar_h + 4)
        base = NO_TYPE_COLOUR if t is None else TYPE_COLOURS[t]
        img[y:y + bar_h, bar_x:bar_x + bar_w] = _shade(base, ramp)[None]

    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if font is not None:
        out = _draw_text(out, font, L, pitch, gap, margin, types, y0, bar_h, bar_x, bar_w)
    return out


def _draw_text(img, font, L, pitch, gap, margin, types, y0, bar_h, bar_x, bar_w):
    try:
        from PIL import Image, ImageDraw
    except Exception:
        return img
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    grey = (200, 200, 200)
    step = 1 if pitch >= 12 else (5 if pitch * 5 >= 12 else 10)
    for layer in range(0, L, step):
        y = layer * pitch + gap + max(0, (pitch - 11) // 2)
        d.text((2, y), str(layer), fill=grey, font=font)
    for i, t in enumerate(types):
        y = y0 + i * (bar_h + 4) + (bar_h - 11) // 2
        d.text((margin, y), "heads" if t is None else HeadType(t).label, fill=grey, font=font)
    y = y0 + len(types) * (bar_h + 4)
    d.text((bar_x, y), "a_current: 0", fill=grey, font=font)
    d.text((bar_x + bar_w - 8, y), "1", fill=grey, font=font)
    return np.asarray(pil, dtype=np.uint8).copy()
