"""A procedural video world: coloured shapes moving on plain or gradient backgrounds.

Each clip has 1-3 shapes (circle, square, triangle; small or big; a named colour) moving at
constant velocity, bouncing off the walls, drawn back to front in a fixed depth order (so
they pass behind each other), on a plain or vertical-gradient background of a named colour.
A text prompt describes it, e.g.::

    "a big red circle at top left moving right fast, a small blue square at center
     falling slowly, on a navy gradient background"

Everything is a function of ``(seed, index)``: :meth:`ShapesWorld.spec` samples the clip's
parameters with numpy, :func:`render` draws any batch of specs with torch on any device
(anti-aliased by signed distance, so sub-pixel motion is smooth), and :class:`Truth` holds
the per-frame ground truth (centres, radii, colours, visible fraction) for evaluation.

Pixels are RGB in [-1, 1], video tensors ``[B, 3, F, H, W]`` (channels first, like latents).
The world's words and what they mean (colours, sizes, speeds, directions, start cells) are in
the runtime's :mod:`dummy_forcing_core.tiny.world`; this module draws it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from dummy_forcing_core.tiny.world import BACKGROUND_COLORS, DIRECTIONS, OBJECT_COLORS, POSITIONS, SHAPES, SIZES, \
    SPEEDS, rgb_unit

__all__ = ["ObjectSpec", "ClipSpec", "Truth", "ShapesWorld", "render", "truth_of", "prompt_of", "track_colors"]


@dataclass
class ObjectSpec:
    shape: str
    color: str
    size: str
    radius: float            # pixels
    start: tuple[float, float]  # centre (x, y) at frame 0, pixels
    velocity: tuple[float, float]  # pixels per frame
    position_word: str
    direction_word: str
    speed_word: str


@dataclass
class ClipSpec:
    """Everything that defines one clip; ``objects`` are listed back to front."""

    objects: list[ObjectSpec]
    background: str
    gradient: bool
    frames: int
    size: int
    prompt: str = ""

    def __post_init__(self):
        if not self.prompt:
            self.prompt = prompt_of(self)


@dataclass
class Truth:
    """Per-frame ground truth of a clip (numpy). ``centers`` [F, n, 2] (x, y) pixels,
    ``radius`` [n], ``colors`` [n, 3] in [-1, 1], ``visible`` [F, n] visible fraction of each
    object's area (occlusion by objects in front), plus names."""

    centers: np.ndarray
    radius: np.ndarray
    colors: np.ndarray
    visible: np.ndarray
    color_names: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)


def prompt_of(spec: ClipSpec) -> str:
    parts = [f"a {o.size} {o.color} {o.shape} at {o.position_word} {o.direction_word} {o.speed_word}" for o in spec.objects]
    art = "an" if spec.background[0] in "aeiou" else "a"
    bg = f"on {art} {spec.background} {'gradient' if spec.gradient else 'plain'} background"
    return ", ".join(parts) + ", " + bg


def _bounce(p0: np.ndarray, v: np.ndarray, lo: float, hi: float, frames: int) -> np.ndarray:
    """Positions [F] of a point moving at v from p0, reflected at lo and hi."""
    t = np.arange(frames, dtype=np.float64)
    span = hi - lo
    x = (p0 - lo) + v * t
    m = np.mod(x, 2 * span)
    return lo + span - np.abs(m - span)


class ShapesWorld:
    """Clips as a deterministic function of ``(seed, index)``."""

    def __init__(self, seed: int = 0, frames: int = 24, size: int = 32, max_objects: int = 3):
        if size % 4:
            raise ValueError("frame size must be divisible by 4 (codec factor 2, patch 2)")
        self.seed, self.frames, self.size, self.max_objects = int(seed), int(frames), int(size), int(max_objects)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index), 7919])

    def spec(self, index: int) -> ClipSpec:
        rng = self.rng(index)
        scale = self.size / 32.0
        n = int(rng.integers(1, self.max_objects + 1))
        colors = rng.choice(list(OBJECT_COLORS), size=n, replace=False)
        objects = []
        for c in colors:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            size_word = list(SIZES)[int(rng.integers(len(SIZES)))]
            r = SIZES[size_word] * scale
            lo, hi = r, self.size - r
            cell = (int(rng.integers(3)), int(rng.integers(3)))
            third = (hi - lo) / 3.0
            start = (lo + third * (cell[0] + rng.uniform(0.15, 0.85)), lo + third * (cell[1] + rng.uniform(0.15, 0.85)))
            dname = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
            sname = list(SPEEDS)[int(rng.integers(len(SPEEDS)))]
            speed = rng.uniform(*SPEEDS[sname]) * scale
            d = np.asarray(DIRECTIONS[dname])
            d = d / np.linalg.norm(d)
            objects.append(ObjectSpec(shape, str(c), size_word, float(r), (float(start[0]), float(start[1])),
                                      (float(d[0] * speed), float(d[1] * speed)), POSITIONS[cell], dname, sname))
        bg = list(BACKGROUND_COLORS)[int(rng.integers(len(BACKGROUND_COLORS)))]
        gradient = bool(rng.integers(2)) and bg != "black"
        return ClipSpec(objects, bg, gradient, self.frames, self.size)

    def specs(self, indices) -> list[ClipSpec]:
        return [self.spec(i) for i in indices]

    def clip(self, index: int, device="cpu") -> tuple[torch.Tensor, str, Truth]:
        """One clip: video [3, F, H, W] in [-1, 1], prompt, truth."""
        s = self.spec(index)
        video, vis = render([s], device=device, return_visible=True)
        return video[0], s.prompt, truth_of(s, vis[0])

    def batch(self, indices, device="cpu") -> tuple[torch.Tensor, list[str], list[ClipSpec]]:
        specs = self.specs(indices)
        return render(specs, device=device), [s.prompt for s in specs], specs


def _trajectories(spec: ClipSpec) -> np.ndarray:
    """[F, n, 2] object centres."""
    out = np.zeros((spec.frames, len(spec.objects), 2))
    for j, o in enumerate(spec.objects):
        for a in range(2):
            out[:, j, a] = _bounce(np.float64(o.start[a]), np.float64(o.velocity[a]), o.radius, spec.size - o.radius,
                                   spec.frames)
    return out


def truth_of(spec: ClipSpec, visible: np.ndarray | torch.Tensor | None = None) -> Truth:
    if visible is None:
        _, vis = render([spec], return_visible=True)
        visible = vis[0]
    if isinstance(visible, torch.Tensor):
        visible = visible.cpu().numpy()
    return Truth(
        centers=_trajectories(spec).astype(np.float32),
        radius=np.array([o.radius for o in spec.objects], dtype=np.float32),
        colors=np.stack([rgb_unit(OBJECT_COLORS[o.color]) for o in spec.objects]),
        visible=np.asarray(visible, dtype=np.float32)[:, :len(spec.objects)],
        color_names=[o.color for o in spec.objects],
        shapes=[o.shape for o in spec.objects],
    )


_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def render(specs: list[ClipSpec], device="cpu", return_visible: bool = False):
    """Draw clips: -> video [B, 3, F, H, W] float32 in [-1, 1] (and visible [B, F, n_max])."""
    B = len(specs)
    Fr, S = specs[0].frames, specs[0].size
    if any(s.frames != Fr or s.size != S for s in specs):
        raise ValueError("all clips of a batch need the same frame count and size")
    n = max(len(s.objects) for s in specs)
    centers = np.zeros((B, Fr, n, 2), dtype=np.float32)
    radius = np.ones((B, n), dtype=np.float32)
    shape = np.zeros((B, n), dtype=np.int64)
    color = np.zeros((B, n, 3), dtype=np.float32)
    present = np.zeros((B, n), dtype=np.float32)
    bg = np.zeros((B, 2, 3), dtype=np.float32)
    for b, s in enumerate(specs):
        k = len(s.objects)
        centers[b, :, :k] = _trajectories(s)
        for j, o in enumerate(s.objects):
            radius[b, j] = o.radius
            shape[b, j] = _SHAPE_ID[o.shape]
            color[b, j] = rgb_unit(OBJECT_COLORS[o.color])
            present[b, j] = 1.0
        base = np.asarray(BACKGROUND_COLORS[s.background], dtype=np.float32)
        if s.gradient:
            top, bottom = np.minimum(base * 1.7 + 10, 255), base * 0.35
        else:
            top = bottom = base
        bg[b, 0], bg[b, 1] = top / 127.5 - 1, bottom / 127.5 - 1
    dev = torch.device(device)

    def t(a):  # pinned + non-blocking on CUDA, so building a batch never waits for the GPU
        x = torch.from_numpy(a)
        return x.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else x.to(dev)

    centers, radius, shape, color, present, bg = map(t, (centers, radius, shape, color, present, bg))

    coords = torch.arange(S, device=device, dtype=torch.float32) + 0.5
    py = coords.view(1, 1, S, 1)
    px = coords.view(1, 1, 1, S)
    ramp = (coords / S).view(1, 1, S, 1)  # [1, 1, H, 1] top -> bottom
    top, bottom = bg[:, 0].view(B, 3, 1, 1), bg[:, 1].view(B, 3, 1, 1)
    img = (top * (1 - ramp) + bottom * ramp).unsqueeze(2).expand(B, 3, Fr, S, S).clone()
    alphas = []
    for j in range(n):
        cx = centers[:, :, j, 0].view(B, Fr, 1, 1)
        cy = centers[:, :, j, 1].view(B, Fr, 1, 1)
        r = radius[:, j].view(B, 1, 1, 1)
        dx, dy = px - cx, py - cy
        d_circle = torch.sqrt(dx * dx + dy * dy) - r
        h = 0.88 * r
        qx, qy = dx.abs() - h, dy.abs() - h
        d_square = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2) + torch.maximum(qx, qy).clamp(max=0)
        # upward equilateral triangle with circumradius 1.25 r (inradius half of it), y down
        R = 1.25 * r
        c30 = math.cos(math.pi / 6)
        d_tri = torch.maximum(torch.maximum(dy, c30 * dx - 0.5 * dy), -c30 * dx - 0.5 * dy) - 0.5 * R
        sid = shape[:, j].view(B, 1, 1, 1)
        d = torch.where(sid == 0, d_circle, torch.where(sid == 1, d_square, d_tri))
        a = (0.5 - d).clamp(0, 1) * present[:, j].view(B, 1, 1, 1)  # [B, F, H, W]
        img = img * (1 - a.unsqueeze(1)) + color[:, j].view(B, 3, 1, 1, 1) * a.unsqueeze(1)
        alphas.append(a)
    if not return_visible:
        return img
    vis = torch.zeros(B, Fr, n, device=device)
    for j in range(n):
        cover = alphas[j]
        seen = cover.clone()
        for k in range(j + 1, n):
            seen = seen * (1 - alphas[k])
        vis[:, :, j] = seen.sum((-1, -2)) / cover.sum((-1, -2)).clamp(min=1e-6)
    return img, vis


# ----------------------------------------------------------------------------------------
# colour tracking (the world's words and prompt parsing: dummy_forcing_core.tiny.world)


def track_colors(video: torch.Tensor, colors: np.ndarray, tol: float = 0.45) -> dict[str, np.ndarray]:
    """Track objects by colour in a video [3, F, H, W] (in [-1, 1]).

    For each colour ([n, 3] in [-1, 1]) and frame: pixels within ``tol`` (RGB distance) of
    the colour. Returns ``centers`` [F, n, 2] (NaN where nothing matches), ``area`` [F, n]
    (pixel counts)."""
    v = video.detach().float().cpu()
    C, Fr, H, W = v.shape
    col = torch.as_tensor(np.asarray(colors, dtype=np.float32))  # [n, 3]
    dist = (v.permute(1, 2, 3, 0).unsqueeze(3) - col.view(1, 1, 1, -1, 3)).norm(dim=-1)  # [F, H, W, n]
    m = (dist < tol).float()
    area = m.sum((1, 2))  # [F, n]
    ys = torch.arange(H, dtype=torch.float32).view(1, H, 1, 1) + 0.5
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W, 1) + 0.5
    cx = (m * xs).sum((1, 2)) / area.clamp(min=1)
    cy = (m * ys).sum((1, 2)) / area.clamp(min=1)
    centers = torch.stack([cx, cy], -1)
    centers[area < 1] = float("nan")
    return {"centers": centers.numpy(), "area": area.numpy()}
