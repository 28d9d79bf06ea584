"""End to end with the shipped tiny model on the CPU: a few chunks, full cache vs Dummy Forcing."""
import os

import numpy as np
import pytest
import torch

from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.tiny.dataset import BACKGROUND_COLORS, OBJECT_COLORS, rgb_unit, track_colors
from dummy_forcing_core.tiny.demo import run_pair, side_by_side_gif
from dummy_forcing_core.tiny.metrics import psnr, ssim
from dummy_forcing_core.tiny.model import DEFAULT_PATH, load_tiny

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
