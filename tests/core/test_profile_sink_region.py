"""Profile Heads' (offline) sink region: frames with index < sink_frames, or with
``profile_sink_frames`` > 0 the first that many cached frames (the authors' LongLive setting:
one chunk, 3 frames, while sink heads keep 1 frame).

A planted model (tests/core/planted.py) whose heads look at chosen frame distances is profiled
through the real offline path (``profile_heads``: full cache, generation, probe) at ar_start 2
with chunks of 3 frames, so the profiled queries are frames 6..8 and the cache holds frames 0..5:

* "sink"    (peak 6): query frames 6, 7, 8 look at frames 0, 1, 2: a third of its mass on
  frame 0, the rest on frames 1-2, which are sink with a 3-frame region and neighbor with 1;
* "frame0"  (peak 8): every query looks mostly at frame 0 (sink under both regions);
* "neighbor" (peak 3): frames 3..5; "dummy" (peak 0): its own frame.

The region masses are recomputed in float64 from the very queries and keys the runtime handed
to the probe, and the head types by the authors' rule (normalised cost, N lowest over all
layers, sink if the normalised a_sink >= the normalised a_neighbor) in plain Python.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import planted  # noqa: E402

from dummy_forcing_core import head_profile as hp  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.errors import SettingError  # noqa: E402
from dummy_forcing_core.head_profile import HeadProfile, ProfilingSpec, profile_heads  # noqa: E402
from dummy_forcing_core.head_program import HeadType  # noqa: E402
from dummy_forcing_core.sampler import SamplerSettings  # noqa: E402

SINK, NEIGH, DUMMY = int(HeadType.SINK), int(HeadType.NEIGHBOR), int(HeadType.DUMMY)
CHUNK, AR_START = 3, 2
KINDS = [["sink", "frame0", "neighbor", "dummy"],
         ["frame0", "neighbor", "dummy", "frame0"],
         ["neighbor", "dummy", "neighbor", "dummy"]]
PLANTED_SINK = (0, 0)  # the head whose type depends on the region
NUM_DUMMY = 4          # the planted dummy heads


def reference_regions(q, keys, frame_ids, sink_frames, profile_sink_frames):
    """[H, 3] float64 (a_sink, a_neighbor, a_current): full softmax of every query row over
    ``[cache | chunk]``, mass per region averaged over rows and batch."""
    q, keys = q.double(), keys.double()
    Lq, D = q.shape[2], q.shape[3]
    tpf = (keys.shape[2] - Lq) // len(frame_ids)
    if profile_sink_frames:
        sink = [pos < profile_sink_frames for pos in range(len(frame_ids))]
    else:
        sink = [f < sink_frames for f in frame_ids]
    key_sink = torch.tensor([s for s in sink for _ in range(tpf)])
    p = torch.softmax(q @ keys.transpose(-1, -2) / D ** 0.5, dim=-1)
    ctx, cur = p[..., :-Lq], p[..., -Lq:]
    parts = [ctx[..., key_sink].sum(-1), ctx[..., ~key_sink].sum(-1), cur.sum(-1)]
    return torch.stack([x.mean(dim=(0, 2)) for x in parts], dim=-1)


def reference_types(scores, num_dummy):
    """The authors' rule, plain Python (ties: lower flat index)."""
    L, H = len(scores), len(scores[0])
    flat = [(float(scores[i][h][0]), float(scores[i][h][1])) for i in range(L) for h in range(H)]
    tot_s, tot_n = sum(a for a, _ in flat), sum(b for _, b in flat)
    norm = [(a / tot_s, b / tot_n) for a, b in flat]
    dummy = set(sorted(range(L * H), key=lambda i: (max(norm[i]), i))[:num_dummy])
    types = [DUMMY if i in dummy else (SINK if norm[i][0] >= norm[i][1] else NEIGH) for i in range(L * H)]
    return [types[i * H:(i + 1) * H] for i in range(L)]


@pytest.fixture(scope="module")
def model():
    real = planted.peaks
    planted.peaks = lambda chunk_frames=CHUNK, ar_start=AR_START: {**real(chunk_frames, ar_start), "frame0": 8}
    try:
        return planted.make_planted_wan(KINDS, chunk_frames=CHUNK, ar_start=AR_START)
    finally:
        planted.peaks = real


def profile_offline(model, monkeypatch, profile_sink_frames):
    """The offline profile, and what the probe saw: {layer: (q, keys, cached frame ids)}."""
    seen = {}
    real_probe_for = hp._ProfilingPolicy.probe_for

    def probe_for(self, chunk):
        prof = real_probe_for(self, chunk)
        if prof is None:
            return None

        def probe(layer, q, keys, group):
            seen[layer] = (q.clone(), keys.clone(), list(group.frame_ids(0)))
            prof(layer, q, keys, group)
        return probe
    monkeypatch.setattr(hp._ProfilingPolicy, "probe_for", probe_for)
    runner = ChunkRunner(model)
    spec = ProfilingSpec.create(runner.geometry, ar_start=AR_START, chunks=1, sink_frames=1, sample_fraction=1.0,
                                seed=0, profile_sink_frames=profile_sink_frames)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    profile = profile_heads(runner, [ctx], (1, 16, 12, 8, 8), SamplerSettings(chunk_frames=CHUNK, timesteps=(1000,)),
                            [0], spec)
    return profile, seen


@pytest.mark.parametrize("profile_sink_frames", [0, 1, 3])
def test_offline_regions_and_types_equal_the_reference(model, monkeypatch, profile_sink_frames):
    profile, seen = profile_offline(model, monkeypatch, profile_sink_frames)
    assert sorted(seen) == [0, 1, 2]
    ref = torch.zeros(3, 4, 3, dtype=torch.float64)
    for layer, (q, keys, frames) in seen.items():
        assert frames == list(range(AR_START * CHUNK))  # offline: a full cache
        ref[layer] = reference_regions(q, keys, frames, 1, profile_sink_frames)
    torch.testing.assert_close(profile.scores.double(), ref, rtol=0, atol=1e-6)
    assert profile.assign(NUM_DUMMY / 12).tolist() == reference_types(ref.tolist(), NUM_DUMMY)
    assert profile.settings["profile_sink_frames"] == profile_sink_frames and profile.settings["sink_frames"] == 1


def test_planted_head_is_sink_only_with_the_three_frame_region(model, monkeypatch):
    types = {}
    for psf in (0, 3):
        profile, seen = profile_offline(model, monkeypatch, psf)
        ref = [reference_regions(q, keys, frames, 1, psf).tolist() for _, (q, keys, frames) in sorted(seen.items())]
        types[psf] = reference_types(ref, NUM_DUMMY)
        assert profile.assign(NUM_DUMMY / 12).tolist() == types[psf]
        # the planted dummy heads are the dummy heads under both regions
        assert all((types[psf][i][h] == DUMMY) == (k == "dummy") for i, row in enumerate(KINDS)
                   for h, k in enumerate(row))
    i, h = PLANTED_SINK
    assert types[0][i][h] == NEIGH  # 1-frame region: frames 1-2 count as neighbor
    assert types[3][i][h] == SINK   # 3-frame region (the authors' LongLive): they count as sink
    # only that head changes type
    assert [(i, h) for i in range(3) for h in range(4) if types[0][i][h] != types[3][i][h]] == [PLANTED_SINK]


def test_sink_region_is_saved_and_summarised(model, monkeypatch, tmp_path):
    profile, _ = profile_offline(model, monkeypatch, 3)
    loaded = HeadProfile.load(profile.save(tmp_path / "p.safetensors"))
    assert loaded.settings["profile_sink_frames"] == 3 and loaded.settings["ar_start"] == AR_START
    assert "sink region=first 3 cached frames" in loaded.summary()
    default, _ = profile_offline(model, monkeypatch, 0)
    assert default.settings["profile_sink_frames"] == 0 and "sink region" not in default.summary()


def test_profile_sink_frames_is_checked_before_the_run(model):
    geom = ChunkRunner(model).geometry
    with pytest.raises(SettingError, match="'profile_sink_frames' must be >= 0") as e:
        ProfilingSpec.create(geom, profile_sink_frames=-1)
    assert e.value.name == "profile_sink_frames"
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    for ar_start, psf in ((2, 6), (1, 3)):  # the region would hold every cached frame: no neighbor left
        spec = ProfilingSpec.create(geom, ar_start=ar_start, profile_sink_frames=psf)
        with pytest.raises(SettingError, match="leaves no neighbor frame") as e:
            profile_heads(ChunkRunner(model), [ctx], (1, 16, 12, 8, 8), SamplerSettings(chunk_frames=CHUNK), [0],
                          spec)
        assert e.value.name == "profile_sink_frames" and spec.profiler.calls == 0
