"""dummy_forcing_core.plots: the Cache Stats picture (numpy + Pillow only)."""
import numpy as np
import pytest

from dummy_forcing_core import heatmap, plots
from dummy_forcing_core.stats import GenerationStats


def make_stats(layers=2, heads=4, chunks=6, df=True, held=(1024, 2048), full=4096, seconds=None, switch=2):
    types = [[(h + l) % 3 for h in range(heads)] for l in range(layers)] if df else None
    scores = [[[0.2, 0.3, 0.5] for _ in range(heads)] for _ in range(layers)] if df else None
    return GenerationStats(
        fingerprint={"num_layers": layers, "num_heads": heads, "head_dim": 16, "dim": 16 * heads},
        latent_hw=(4, 4), frames=chunks * 3, chunk_frames=3, tokens_per_frame=4,
        policy="full", dummy_forcing=({"dummy_heads": 0.5, "dummy_head_count": 0, "scope": "global", "ar_start": 1,
                                       "neighbor_chunks": 1, "sink_frames": 1, "context_packing": True,
                                       "long_context_frames": 0, "head_profile": "online"} if df else None),
        chunk_seconds=list(seconds if seconds is not None else [0.4, 0.3] + [0.1] * (chunks - 2)),
        switch_chunk=switch if df else None, head_types=types, head_scores=scores,
        kv_bytes_layers=[held[i % len(held)] for i in range(layers)] if df else [full] * layers,
        kv_full_bytes_layers=[full] * layers)


def has_colour(img, colour, region=None):
    sub = img if region is None else img[region]
    return bool((sub == np.array(colour, dtype=np.uint8)).all(-1).any())


def test_image_with_dummy_forcing_has_three_panels():
    img = plots.stats_image(make_stats())
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] == plots.WIDTH and img.shape[0] > 2 * plots.BAR_PANEL_H
    top = (slice(0, plots.BAR_PANEL_H + plots.GAP), slice(None))
    bottom = (slice(img.shape[0] - plots.BAR_PANEL_H - plots.GAP, None), slice(None))
    middle = (slice(plots.BAR_PANEL_H + plots.GAP, img.shape[0] - plots.BAR_PANEL_H - plots.GAP), slice(None))
    assert has_colour(img, plots.FULL_COLOUR, top) and has_colour(img, plots.HELD_COLOUR, top)
    assert has_colour(img, plots.SWITCH_COLOUR, bottom)  # the switch chunk is marked
    assert has_colour(img, plots.BEFORE_COLOUR, bottom) and has_colour(img, plots.AFTER_COLOUR, bottom)
    # the head map (from heatmap.head_map_image) sits in the middle panel: its legend bars end in the pure hues
    for colour in heatmap.TYPE_COLOURS.values():
        assert has_colour(img, colour, middle)


def test_bar_heights_are_proportional():
    """Layer 0 holds 1 KiB, layer 1 2 KiB, a full cache 4 KiB: bars of 1/4, 1/2 and 1 of the axis."""
    img = plots.stats_image(make_stats(held=(1024, 2048), full=4096))
    plot_area = slice(plots.GAP + plots.TOP, plots.GAP + plots.BAR_PANEL_H - plots.BOTTOM + 1)  # below the legend
    panel = img[plot_area]

    def bar_heights(colour):
        mask = (panel == np.array(colour, dtype=np.uint8)).all(-1)
        cols = np.where(mask.sum(0) > 5)[0]
        runs, start = [], cols[0]
        for a, b in zip(cols, cols[1:]):
            if b != a + 1:
                runs.append((start, a))
                start = b
        runs.append((start, cols[-1]))
        return [int(mask[:, (s + e) // 2].sum()) for s, e in runs]

    full = bar_heights(plots.FULL_COLOUR)
    held = bar_heights(plots.HELD_COLOUR)
    assert len(full) == 2 and len(held) == 2 and full[0] == full[1]
    assert held[0] == pytest.approx(full[0] / 4, abs=2) and held[1] == pytest.approx(full[0] / 2, abs=2)


def test_image_without_dummy_forcing():
    img = plots.stats_image(make_stats(df=False))
    assert img.shape[1] == plots.WIDTH
    assert not has_colour(img, plots.SWITCH_COLOUR)
    assert not has_colour(img, heatmap.TYPE_COLOURS[2])  # no head map, no green bars


def test_dummy_forcing_that_never_switched():
    st = make_stats()
    st.head_types = st.head_scores = None
    st.switch_chunk = None
    img = plots.stats_image(st)
    assert not has_colour(img, plots.SWITCH_COLOUR)


def test_large_model_and_long_video():
    """Wan 1.3B geometry (30 x 12) and 81 chunks: the picture stays readable and wide enough."""
    st = make_stats(layers=30, heads=12, chunks=81, held=(3_000_000, 5_000_000), full=60_000_000)
    img = plots.stats_image(st)
    hm = heatmap.head_map_image(st.head_scores, st.head_types)
    assert img.shape[1] >= max(plots.WIDTH, hm.shape[1])
    assert img.shape[0] >= 2 * plots.BAR_PANEL_H + hm.shape[0]


def test_empty_and_zero_figures():
    st = make_stats(df=False, seconds=[], full=0)
    st.kv_bytes_layers = [0, 0]
    img = plots.stats_image(st)
    assert img.shape[1] == plots.WIDTH


def test_nice_axis_maxima():
    assert plots._nice_max(0.37) == 0.5 and plots._nice_max(3) == 5 and plots._nice_max(10) == 10
    assert plots._nice_max(0) == 1.0
    assert plots._nice_bytes_max(3 * 1024 ** 2) == 5 * 1024 ** 2
    assert plots._nice_bytes_max(300 * 1024) == 500 * 1024


def test_without_pillow(monkeypatch):
    monkeypatch.setattr(plots, "_pil", lambda: None)
    monkeypatch.setattr(heatmap, "_font", lambda: None)
    img = plots.stats_image(make_stats())
    assert img.dtype == np.uint8 and img.shape[1] == plots.WIDTH
    assert has_colour(img, plots.HELD_COLOUR) and has_colour(img, plots.SWITCH_COLOUR)


def test_cache_stats_text_has_a_row_per_layer_under_its_header():
    st = make_stats(layers=3, heads=4, held=(1024, 2048, 3072), full=8192)
    lines = st.to_text().splitlines()
    head = lines.index("layer  sink  neighbor  dummy  KV held      KV full")
    rows = lines[head + 1:head + 4]
    for i, row in enumerate(rows):
        types = st.head_types[i]
        assert row.split()[:4] == [str(i), str(types.count(0)), str(types.count(1)), str(types.count(2))]
        assert row.split()[4:] == [f"{st.kv_bytes_layers[i] / 1024:.2f}", "KiB", "8.00", "KiB"]
    assert lines[head + 4].split() == ["total"] + [str(sum(t.count(k) for t in st.head_types)) for k in range(3)]
    assert "layer  sink" not in make_stats(df=False).to_text()  # no per-head table without Dummy Forcing
