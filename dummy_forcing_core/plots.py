"""Plots of one generation's statistics, drawn with numpy + Pillow only (no matplotlib).

:func:`stats_image` stacks three panels into one RGB picture (what the Cache Stats node shows):

1. KV memory per layer at the end of the video: a full cache (grey) next to what the run
   actually held (blue: Dummy Forcing or the base cache policy).
2. The head-type map (layers x heads, coloured sink / neighbor / dummy, shaded by attention on
   the current chunk) from :func:`~dummy_forcing_core.heatmap.head_map_image`, when the run
   used Dummy Forcing; otherwise a one-line note.
3. Seconds per chunk (DiT only). With Dummy Forcing, chunks generated with the per-head cache
   are green, the ones before the switch grey, and a dashed line marks the switch chunk.

Text uses Pillow's default font. Without Pillow the panels are drawn without any text.
"""
from __future__ import annotations

import math

import numpy as np

from .heatmap import head_map_image
from .stats import format_bytes

__all__ = ["stats_image", "bar_panel"]

BACKGROUND = (24, 24, 24)
PANEL = (34, 34, 34)
AXIS = (150, 150, 150)
GRID = (60, 60, 60)
TEXT = (220, 220, 220)
DIM_TEXT = (170, 170, 170)
FULL_COLOUR = (120, 120, 120)
HELD_COLOUR = (31, 119, 180)
BEFORE_COLOUR = (130, 130, 130)
AFTER_COLOUR = (44, 160, 44)
SWITCH_COLOUR = (255, 127, 14)

WIDTH = 720
BAR_PANEL_H = 230
LEFT, RIGHT, TOP, BOTTOM = 76, 16, 30, 44
GAP = 8


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
        return Image, ImageDraw, ImageFont.load_default()
    except Exception:  # Pillow missing or broken: no text, plain numpy drawing
        return None


class _Canvas:
    """An RGB canvas with rectangle / line / text primitives (Pillow when present)."""

    def __init__(self, width: int, height: int, colour=BACKGROUND):
        self.w, self.h = int(width), int(height)
        self.arr = np.empty((self.h, self.w, 3), dtype=np.uint8)
        self.arr[:] = colour
        self._pil = _pil()
        self.img = self.draw = self.font = None
        if self._pil is not None:
            Image, ImageDraw, font = self._pil
            self.img = Image.fromarray(self.arr)
            self.draw = ImageDraw.Draw(self.img)
            self.font = font

    @property
    def has_text(self) -> bool:
        return self.draw is not None

    def rect(self, x0, y0, x1, y1, colour):
        """Filled rectangle over pixels [x0, x1) x [y0, y1)."""
        x0, x1 = sorted((int(round(x0)), int(round(x1))))
        y0, y1 = sorted((int(round(y0)), int(round(y1))))
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.w), min(y1, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        if self.draw is not None:
            self.draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=tuple(colour))
        else:
            self.arr[y0:y1, x0:x1] = colour

    def hline(self, x0, x1, y, colour, dash: int = 0):
        y = int(round(y))
        for a in range(int(x0), int(x1), 2 * dash if dash else max(int(x1) - int(x0), 1)):
            self.rect(a, y, min(a + dash, x1) if dash else x1, y + 1, colour)

    def vline(self, x, y0, y1, colour, dash: int = 0):
        x = int(round(x))
        for a in range(int(y0), int(y1), 2 * dash if dash else max(int(y1) - int(y0), 1)):
            self.rect(x, a, x + 1, min(a + dash, y1) if dash else y1, colour)

    def text_size(self, s: str) -> tuple[int, int]:
        if self.draw is None:
            return 0, 0
        b = self.draw.textbbox((0, 0), s, font=self.font)
        return b[2] - b[0], b[3]

    def text(self, x, y, s: str, colour=TEXT, anchor: str = "l"):
        """anchor: "l" left, "c" centred, "r" right of x; y is the top of the text."""
        if self.draw is None or not s:
            return
        w, _ = self.text_size(s)
        x = x - w / 2 if anchor == "c" else (x - w if anchor == "r" else x)
        self.draw.text((int(round(x)), int(round(y))), s, fill=tuple(colour), font=self.font)

    def vertical_text(self, x, y_centre, s: str, colour=DIM_TEXT):
        """Text rotated 90 degrees (reading bottom to top), centred on y_centre."""
        if self.draw is None or not s:
            return
        Image, ImageDraw, font = self._pil
        w, h = self.text_size(s)
        tmp = Image.new("RGB", (w + 2, h + 2), BACKGROUND)
        ImageDraw.Draw(tmp).text((1, 0), s, fill=tuple(colour), font=font)
        rot = tmp.rotate(90, expand=True)
        self.img.paste(rot, (int(x), int(y_centre - rot.size[1] / 2)))

    def paste(self, arr: np.ndarray, x: int, y: int):
        h, w = arr.shape[:2]
        if self.img is not None:
            Image = self._pil[0]
            self.img.paste(Image.fromarray(arr), (int(x), int(y)))
        else:
            self.arr[y:y + h, x:x + w] = arr

    def to_array(self) -> np.ndarray:
        if self.img is not None:
            return np.asarray(self.img, dtype=np.uint8).copy()
        return self.arr.copy()


def _nice_max(v: float) -> float:
    """A round axis maximum >= v (1, 2, 2.5, 5 x 10^k)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if v <= m * e * (1 + 1e-9):
            return m * e
    return 10.0 * e


def _nice_bytes_max(v: float) -> float:
    """A round axis maximum in the unit format_bytes will print (B, KiB, MiB, GiB)."""
    unit = 1.0
    while v >= 1024 * unit and unit < 1024 ** 3:
        unit *= 1024
    return _nice_max(v / unit) * unit


def _seconds(v: float) -> str:
    if v == 0:
        return "0 s"
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.01 else f"{v * 1000:.1f} ms"
    return f"{v:.2f} s"


def bar_panel(canvas: _Canvas, x: int, y: int, w: int, h: int, series: list[list[float]], colours,
              title: str, xlabel: str, ylabel: str, fmt=str, bar_colours: list | None = None,
              legend: list[tuple[str, tuple]] | None = None, marker: int | None = None,
              marker_label: str = "", nice=_nice_max) -> None:
    """Grouped bars: ``series[k][i]`` is bar k of group i. ``bar_colours[i]`` overrides the colour
    of single-series bars per group. ``marker``: draw a dashed vertical line before group i.
    ``nice(v)``: the axis maximum for the largest value ``v``."""
    canvas.rect(x, y, x + w, y + h, PANEL)
    canvas.text(x + 8, y + 8, title, TEXT)
    px0, px1 = x + LEFT, x + w - RIGHT
    py0, py1 = y + TOP, y + h - BOTTOM
    n = max((len(s) for s in series), default=0)
    vmax = nice(max((max(s) for s in series if s), default=0.0))
    # axes and grid
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        yy = py1 - frac * (py1 - py0)
        canvas.hline(px0, px1, yy, GRID if frac else AXIS)
        if frac in (0.0, 0.5, 1.0):
            canvas.text(px0 - 6, yy - 6, fmt(frac * vmax), DIM_TEXT, anchor="r")
    canvas.vline(px0, py0, py1 + 1, AXIS)
    canvas.vertical_text(x + 4, (py0 + py1) / 2, ylabel)
    canvas.text((px0 + px1) / 2, y + h - 14, xlabel, DIM_TEXT, anchor="c")
    if n == 0:
        canvas.text((px0 + px1) / 2, (py0 + py1) / 2 - 6, "no data", DIM_TEXT, anchor="c")
        return
    slot = (px1 - px0 - 2) / n
    k = len(series)
    inner = max(slot * 0.8, 1.0)
    bw = max(inner / k, 1.0)
    for i in range(n):
        g0 = px0 + 1 + i * slot + (slot - inner) / 2
        for j, s in enumerate(series):
            if i >= len(s):
                continue
            v = max(float(s[i]), 0.0)
            top = py1 - (v / vmax) * (py1 - py0)
            col = bar_colours[i] if (bar_colours is not None and k == 1) else colours[j]
            canvas.rect(g0 + j * bw, top, g0 + (j + 1) * bw - (1 if bw > 3 else 0), py1, col)
    # x tick labels: every step-th group, step so labels do not collide
    label_w = max(canvas.text_size(str(n - 1))[0], 1) + 6 if canvas.has_text else 1
    step = max(1, math.ceil(label_w / max(slot, 1e-9)))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if nice >= step:
            step = nice
            break
    for i in range(0, n, step):
        canvas.text(px0 + 1 + (i + 0.5) * slot, py1 + 4, str(i), DIM_TEXT, anchor="c")
    if marker is not None and 0 <= marker <= n:
        mx = px0 + 1 + marker * slot
        canvas.vline(mx, py0, py1, SWITCH_COLOUR, dash=4)
        if marker_label:
            canvas.text(mx + 3, py0 - 1, marker_label, SWITCH_COLOUR)
    if legend:
        lx = x + w - RIGHT
        for name, col in reversed(legend):
            tw = canvas.text_size(name)[0]
            lx -= tw
            canvas.text(lx, y + 8, name, TEXT)
            lx -= 14
            canvas.rect(lx, y + 10, lx + 10, y + 20, col)
            lx -= 12


def _head_panel(canvas: _Canvas, x: int, y: int, w: int, hm: np.ndarray | None, note: str) -> None:
    h = _head_panel_height(hm)
    canvas.rect(x, y, x + w, y + h, PANEL)
    canvas.text(x + 8, y + 8, "Head types (rows: layers, columns: heads; shade: attention on the current chunk)", TEXT)
    if hm is None:
        canvas.text(x + 8, y + TOP + 4, note, DIM_TEXT)
        return
    canvas.paste(hm, x + max((w - hm.shape[1]) // 2, 8), y + TOP)


def _head_panel_height(hm: np.ndarray | None) -> int:
    return TOP + (hm.shape[0] if hm is not None else 24) + 10


def stats_image(stats) -> np.ndarray:
    """RGB uint8 [h, w, 3]: KV memory per layer, the head-type map, seconds per chunk."""
    hm, note = None, "Dummy Forcing was off for this run: every head kept the base cache."
    if stats.dummy_forcing:
        if stats.head_scores is not None and stats.head_types is not None:
            hm = head_map_image(stats.head_scores, stats.head_types)
        else:
            note = "Dummy Forcing was on but the switch chunk was never reached (video too short)."
    width = max(WIDTH, (hm.shape[1] + 16) if hm is not None else 0)
    heights = [BAR_PANEL_H, _head_panel_height(hm), BAR_PANEL_H]
    canvas = _Canvas(width, sum(heights) + GAP * (len(heights) + 1))
    y = GAP
    x, w = GAP, width - 2 * GAP

    held = list(stats.kv_bytes_layers)
    full = list(stats.kv_full_bytes_layers)
    what = "Dummy Forcing" if stats.dummy_forcing else f"cache: {stats.policy}"
    total = sum(held)
    ratio = (sum(full) / total) if total else float("inf")
    bar_panel(canvas, x, y, w, heights[0], [full, held], [FULL_COLOUR, HELD_COLOUR],
              f"KV memory per layer at the end ({format_bytes(total)} vs full {format_bytes(sum(full))}, "
              f"{ratio:.2f}x smaller)", "layer", "KV bytes", format_bytes,
              nice=_nice_bytes_max, legend=[("full cache", FULL_COLOUR), (what, HELD_COLOUR)])
    y += heights[0] + GAP

    _head_panel(canvas, x, y, w, hm, note)
    y += heights[1] + GAP

    secs = list(stats.chunk_seconds)
    sw = stats.switch_chunk if stats.dummy_forcing else None
    colours = None
    legend = None
    if sw is not None:
        colours = [BEFORE_COLOUR if i < sw else AFTER_COLOUR for i in range(len(secs))]
        legend = [("full cache", BEFORE_COLOUR), ("per-head cache", AFTER_COLOUR)]
    steady, clip = stats.fps()
    bar_panel(canvas, x, y, w, heights[2], [secs], [HELD_COLOUR],
              f"Seconds per chunk, DiT only (steady {steady:.1f} FPS, clip {clip:.1f} FPS)", "chunk", "seconds",
              _seconds, bar_colours=colours, legend=legend, marker=sw,
              marker_label="switch" if sw is not None else "")
    return canvas.to_array()
