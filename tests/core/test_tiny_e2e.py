"""End to end with the shipped tiny model on the CPU: a few chunks, full cache vs Dummy Forcing."""
import os

import numpy as np
import pytest
import torch

from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.tiny.model import DEFAULT_PATH, load_tiny
from dummy_forcing_core.tiny.world import (BACKGROUND_COLORS, DEFAULT_PROMPT, OBJECT_COLORS, SIZES, rgb_unit,
                                           spec_from_prompt)
from tiny_model_tools.dataset import ClipSpec, ObjectSpec, render, track_colors
from tiny_model_tools.demo import run_pair, side_by_side_gif
from tiny_model_tools.metrics import expected_area, psnr, ssim

pytestmark = pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")

RED = "a big red circle at top left moving right fast, on a navy plain background"
YELLOW = "a big yellow square at top left moving down right fast, on a black plain background"
BIG_AREA = np.pi * 6.0 ** 2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_tiny()


def _track(video, color):
    tr = track_colors(video, rgb_unit(OBJECT_COLORS[color])[None])
    found = tr["area"][:, 0] >= 0.25 * BIG_AREA
    return found, tr["centers"][:, 0], tr["area"][:, 0]


def test_shipped_model_file(tiny):
    model, text = tiny
    assert os.path.getsize(DEFAULT_PATH) <= 15 * 10**6
    assert model.config.in_dim == 12 and model.num_layers == 6 and model.num_heads == 8
    assert model.tiny_metadata["steps"] > 1000
    assert text.config.length == 32 and not text.unknown_words(RED)


def test_full_cache_makes_a_moving_object_and_dummy_forcing_stays_close(tiny, tmp_path):
    model, text = tiny
    df = DummyForcingConfig(dummy_heads=0.5, ar_start=1, neighbor_chunks=1, sink_frames=1, context_packing=True)
    r = run_pair(model, text, RED, seed=1, frames=12, df=df, warmup=False)  # 4 chunks of 3 frames
    full, dfv = r["full"], r["df"]
    assert full.shape == (3, 12, 32, 32) and torch.isfinite(full).all()

    # a recognisable object of the prompted colour, in (nearly) every frame, that moves
    found, centers, _ = _track(full, "red")
    assert found.mean() >= 0.75, found
    idx = np.where(found)[0]
    assert np.linalg.norm(centers[idx[-1]] - centers[idx[0]]) >= 3.0
    # in the prompted direction ("moving right"): mostly along +x
    dx, dy = centers[idx[-1]] - centers[idx[0]]
    assert dx >= 3.0 and abs(dy) < 0.5 * dx, (dx, dy)
    steps = np.linalg.norm(np.diff(centers[idx], axis=0), axis=-1)
    assert np.nanmax(steps) < 6.0  # no teleporting
    # the prompted background colour
    med = full.flatten(1).median(1).values.numpy()
    assert np.abs(med - rgb_unit(BACKGROUND_COLORS["navy"])).max() < 0.1
    # no other object colour shows up in quantity
    for other in ("yellow", "green", "white", "cyan"):
        assert _track(full, other)[2].max() < 0.25 * BIG_AREA

    # Dummy Forcing at 50%: chunks 0-1 identical (full cache until after ar_start), then close
    assert torch.equal(full[:, :6], dfv[:, :6])
    assert psnr(dfv, full) >= 27.0  # measured 30.2; 50% dummy heads chosen at random: ~22 dB
    assert ssim(dfv, full) >= 0.85
    assert _track(dfv, "red")[0].mean() >= 0.5
    fs, ds = r["full_stats"], r["df_stats"]
    assert ds.kv_bytes < 0.5 * fs.kv_bytes and ds.attn_flops < fs.attn_flops
    assert sum(c[2] for c in ds.type_counts()) == 24  # 50% of 48 heads are dummy

    gif = side_by_side_gif(str(tmp_path / "demo.gif"), [("full", full), ("df", dfv)], scale=2)
    assert os.path.getsize(gif) > 1000


def test_prompt_colour_and_direction_are_followed(tiny):
    model, text = tiny
    r = run_pair(model, text, YELLOW, seed=0, frames=9, warmup=False)
    found, centers, _ = _track(r["full"], "yellow")
    assert found.mean() >= 0.75
    idx = np.where(found)[0]
    dx, dy = centers[idx[-1]] - centers[idx[0]]  # "moving down right": +x and +y (y down)
    assert dx >= 2.0 and dy >= 1.5, (dx, dy)
    assert _track(r["full"], "red")[2].max() < 0.25 * BIG_AREA
    med = r["full"].flatten(1).median(1).values.numpy()
    assert np.abs(med - rgb_unit(BACKGROUND_COLORS["black"])).max() < 0.1


def _motion(video, obj: dict, frames: int = 12):
    """(px along the prompted direction, px across it, share of frames found) of a prompt's
    object (a spec_from_prompt dict) over the first ``frames`` frames, tracked by colour."""
    tr = track_colors(video[:, :frames], rgb_unit(OBJECT_COLORS[obj["color"]])[None])
    found = tr["area"][:, 0] >= 0.25 * expected_area(obj.get("shape"), obj.get("size"))
    idx = np.flatnonzero(found)
    if len(idx) < 2:
        return 0.0, 0.0, float(found.mean())
    d = obj["direction"]
    disp = tr["centers"][idx[-1], 0] - tr["centers"][idx[0], 0]
    return float(disp @ d), float(abs(disp[0] * d[1] - disp[1] * d[0])), float(found.mean())


def _planted(obj: dict, speed: float, frames: int = 12) -> torch.Tensor:
    """A ground-truth clip of the prompt's object moving at ``speed`` px/frame in its direction."""
    r = SIZES[obj["size"]]
    col, row = obj["cell"]
    start = (r + (32 - 2 * r) * (col + 0.5) / 3, r + (32 - 2 * r) * (row + 0.5) / 3)
    v = (float(obj["direction"][0] * speed), float(obj["direction"][1] * speed))
    o = ObjectSpec(obj["shape"], obj["color"], obj["size"], r, start, v, "", "", "")
    return render([ClipSpec([o], "maroon", False, frames, 32, prompt="-")])[0]


def test_default_demo_prompt_is_followed(tiny):
    """The demo's default prompt: its object is found in every frame and visibly moves the
    prompted way. (The README's earlier prompt, a red circle "at top left moving right fast"
    next to a blue square, moved its circle 1.9 px in 12 frames at seed 0.)"""
    model, text = tiny
    obj = spec_from_prompt(DEFAULT_PROMPT)[0]
    # the measure recovers a planted motion: 1 px/frame -> 11 px over 12 frames, nothing across
    along, across, found = _motion(_planted(obj, 1.0), obj)
    assert abs(along - 11.0) < 0.5 and across < 0.5 and found == 1.0
    assert abs(_motion(_planted(obj, 0.0), obj)[0]) < 0.1
    for seed in (0, 1):  # seed 0 is the demo's; measured 13.0 / 13.3 px (full cache), 14.1 / 14.0 (DF 50%)
        r = run_pair(model, text, DEFAULT_PROMPT, seed=seed, frames=12, warmup=False)
        for name in ("full", "df"):
            along, across, found = _motion(r[name], obj)
            assert found >= 0.9 and along >= 6.0 and across < 0.5 * along, (seed, name, along, across, found)
