"""Quality measures for the tiny model's videos (numpy / torch only).

- :func:`psnr`, :func:`ssim`: of a video against a reference (here: Dummy Forcing against
  the full-cache output of the same prompt and seed). Videos ``[3, F, H, W]`` in [-1, 1],
  compared in [0, 1]. SSIM is the standard one (Wang et al. 2004): Gaussian window 11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, per channel and frame over the valid region, averaged.
- :func:`world_metrics`: from the synthetic world itself, by tracking each prompted object
  by its colour: persistence (share of frames where it is found at >= 25% of its expected
  area), size stability (coefficient of variation of its area), speed (mean centroid
  step, px/frame) and jerk (mean |second difference| of the centroid, px/frame^2: 0 for
  constant velocity, bounces add a little), teleports (share of steps > 4 px) and the
  chunk-boundary jump ratio (step across a chunk boundary / step inside a chunk); prompt
  following: ``direction`` (cosine between each object's motion over the first 6 frames
  and the prompted direction; 0 for an object that does not move or is not found) and
  ``start_cell`` (share of objects found at frame 0 inside the prompted 3 x 3 start cell).
  Ground-truth clips give the reference values (bounces in the first frames lower their
  ``direction`` a little).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dummy_forcing_core.tiny.world import OBJECT_COLORS, SIZES, rgb_unit, spec_from_prompt

from .dataset import track_colors

__all__ = ["psnr", "ssim", "expected_area", "WORLD_KEYS", "world_metrics", "mean_metrics"]


def _unit(video: torch.Tensor) -> torch.Tensor:
    return ((video.detach().double().cpu().clamp(-1, 1) + 1) / 2)


def psnr(video: torch.Tensor, ref: torch.Tensor, cap: float = 100.0) -> float:
    """PSNR in dB of [3, F, H, W] videos in [-1, 1] (peak 1 after mapping to [0, 1])."""
    mse = float(((_unit(video) - _unit(ref)) ** 2).mean())
    return cap if mse <= 10 ** (-cap / 10) else 10 * math.log10(1.0 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(video: torch.Tensor, ref: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of [3, F, H, W] videos in [-1, 1] (data range 1 after mapping to [0, 1])."""
    x = _unit(video).permute(1, 0, 2, 3)  # [F, 3, H, W]
    y = _unit(ref).permute(1, 0, 2, 3)
    C = x.shape[1]
    w = _gauss(window, sigma).expand(C, 1, window, window).contiguous()
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(t):
        return F.conv2d(t, w, groups=C)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def expected_area(shape: str | None, size: str | None, frame_size: int = 32) -> float:
    r = SIZES.get(size or "small", SIZES["small"]) * frame_size / 32.0
    if shape == "square":
        return (1.76 * r) ** 2
    if shape == "triangle":
        R = 1.25 * r
        return 3 * math.sqrt(3) / 4 * R * R
    return math.pi * r * r


WORLD_KEYS = ("persistence", "size_cv", "speed", "jerk", "teleport", "boundary_jump", "direction", "start_cell")

def world_metrics(video: torch.Tensor, prompt: str, found_frac: float = 0.25, tol: float = 0.45,
                  chunk: int = 3, teleport_px: float = 4.0) -> dict:
    """Track the prompt's objects by colour in ``video`` [3, F, H, W] (in [-1, 1]).

    Besides persistence / size_cv / speed / jerk: ``teleport`` = share of frame-to-frame
    centroid steps longer than ``teleport_px`` (the world's fastest object moves 1.5 px per
    frame); ``boundary_jump`` = mean step across chunk boundaries / mean step inside chunks
    (about 1 for smooth motion, > 1 for discontinuities where a new chunk starts)."""
    objs = [o for o in spec_from_prompt(prompt) if "color" in o]
    if not objs:
        return {k: float("nan") for k in WORLD_KEYS}
    cols = np.stack([rgb_unit(OBJECT_COLORS[o["color"]]) for o in objs])
    tr = track_colors(video, cols, tol)
    S = video.shape[-1]
    exp = np.array([expected_area(o.get("shape"), o.get("size"), S) for o in objs])
    area, cen = tr["area"], tr["centers"]  # [F, n], [F, n, 2]
    found = area >= found_frac * exp[None]
    cvs, speeds, jerks, all_steps, cross, inner = [], [], [], [], [], []
    boundary = (np.arange(1, area.shape[0]) % chunk) == 0  # step f-1 -> f crosses into a new chunk
    for j in range(len(objs)):
        a = area[found[:, j], j]
        if len(a) >= 2:
            cvs.append(float(a.std() / max(a.mean(), 1e-6)))
        c = np.where(found[:, j, None], cen[:, j], np.nan)
        step = np.linalg.norm(np.diff(c, axis=0), axis=-1)
        acc = np.linalg.norm(np.diff(c, n=2, axis=0), axis=-1)
        if np.isfinite(step).any():
            speeds.append(float(np.nanmean(step)))
            ok = np.isfinite(step)
            all_steps += step[ok].tolist()
            cross += step[ok & boundary].tolist()
            inner += step[ok & ~boundary].tolist()
        if np.isfinite(acc).any():
            jerks.append(float(np.nanmean(acc)))
    nanmean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    dirs, cells = [], []
    for j, o in enumerate(objs):
        r = SIZES.get(o.get("size") or "small", SIZES["small"]) * S / 32.0
        if "direction" in o:
            idx = np.flatnonzero(found[:6, j])
            cos = 0.0
            if len(idx) >= 2:
                disp = cen[idx[-1], j] - cen[idx[0], j]
                n = np.linalg.norm(disp)
                cos = float(disp @ o["direction"] / n) if n > 0.5 else 0.0
            dirs.append(cos)
        if "cell" in o:
            third = (S - 2 * r) / 3.0
            ok = bool(found[0, j]) and all(
                o["cell"][a] == min(2, max(0, int((cen[0, j, a] - r) // third))) for a in range(2))
            cells.append(float(ok))
    tele = float(np.mean(np.asarray(all_steps) > teleport_px)) if all_steps else float("nan")
    bj = float(np.mean(cross) / max(np.mean(inner), 1e-6)) if cross and inner else float("nan")
    return {"persistence": float(found.mean()), "size_cv": nanmean(cvs), "speed": nanmean(speeds),
            "jerk": nanmean(jerks), "teleport": tele, "boundary_jump": bj, "direction": nanmean(dirs),
            "start_cell": nanmean(cells)}


def mean_metrics(rows: list[dict]) -> dict:
    keys = rows[0].keys() if rows else []
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r[k], (int, float)) and math.isfinite(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out
