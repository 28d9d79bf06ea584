"""Apply Dummy Forcing's presets against the authors' rules, written out independently in float64
from their description (docs: /work/shared/reference/dummy-forcing.md; their dummyforcing.py /
causal_model.py as described in issue 21), not from our code:

* cache before ``ar_start``: frame 0 + the last L chunks (frames 1, 2 of chunk 0 while L chunks
  are not yet there); neighbor heads never hold frame 0;
* profiled regions, over the keys in cache order ``[cache | chunk]``: "sink" = the first frame of
  the cache (ar_start 1) or its first chunk, 3 frames (ar_start >= 2); "current" = the chunk;
  "neighbor" = the rest; full softmax, mass per region averaged over the query rows;
* cost: a_sink and a_neighbor divided by their sums over all heads, cost = max; the N heads of
  lowest cost over all layers become dummy; the others sink if a_sink >= a_neighbor (normalised),
  else neighbor.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from planted import make_planted_wan  # noqa: E402
from test_dummy_forcing import profile_for, reference_generate, rel  # noqa: E402

from dummy_forcing_core.cache_policy import CacheSpec  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.dummy_forcing import CUSTOM, PRESETS, DummyForcingConfig, DummyForcingPolicy  # noqa: E402
from dummy_forcing_core.errors import SettingError  # noqa: E402
from dummy_forcing_core.head_program import HeadType, resolve_dummy_count  # noqa: E402
from dummy_forcing_core.sampler import SamplerSettings, generate  # noqa: E402
from helpers import make_tiny_wan  # noqa: E402

SINK, NEIGH, DUMMY = int(HeadType.SINK), int(HeadType.NEIGHBOR), int(HeadType.DUMMY)
FAMILIES = [p for p in PRESETS if p != CUSTOM]
CHUNK = 3


def authors_types(scores, num_dummy):
    """Head types [L][H] by the authors' rule, in float64 with plain Python (ties: lower flat index)."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    L, H = s.shape[:2]
    flat = [(float(s[i, h, 0]), float(s[i, h, 1])) for i in range(L) for h in range(H)]
    tot_sink, tot_nb = sum(a for a, _ in flat), sum(b for _, b in flat)
    norm = [(a / tot_sink, b / tot_nb) for a, b in flat]
    cost = [max(a, b) for a, b in norm]
    dummy = set(sorted(range(L * H), key=lambda i: (cost[i], i))[:num_dummy])
    types = [DUMMY if i in dummy else (SINK if norm[i][0] >= norm[i][1] else NEIGH) for i in range(L * H)]
    return [types[i * H:(i + 1) * H] for i in range(L)]


def authors_cache_before(chunk, L):
    """Frames every head holds when generated chunk ``chunk`` (3 frames each) starts: frame 0,
    then frames 1.. of the first chunk until L whole chunks follow frame 0's, then the last L chunks."""
    history = chunk * CHUNK
    if history == 0:
        return []
    recent = list(range(max(1, history - CHUNK * L), history))
    return [0] + recent


def authors_regions(q, keys, ar_start):
    """[H, 3] float64 (a_sink, a_neighbor, a_current), batch averaged, every query row."""
    q, keys = q.double(), keys.double()
    Lq, D = q.shape[2], q.shape[3]
    sink_tokens = Lq // CHUNK if ar_start == 1 else Lq  # one frame, or one chunk of keys
    p = torch.softmax(q @ keys.transpose(-1, -2) / D ** 0.5, dim=-1)
    parts = [p[..., :sink_tokens], p[..., sink_tokens:-Lq], p[..., -Lq:]]
    return torch.stack([x.sum(-1).mean(dim=(0, 2)) for x in parts], dim=-1)


def test_presets_are_the_authors_published_settings():
    for name in FAMILIES:
        cfg = DummyForcingConfig(dummy_heads=0.9, normalised_cost=False, neighbor_chunks=4, sink_frames=3,
                                 neighbor_skips_sink=False, profile_seed=7).with_preset(name)
        assert cfg.normalised_cost and cfg.scope == "global" and cfg.neighbor_chunks == 1 and cfg.sink_frames == 1
        assert cfg.neighbor_skips_sink and cfg.context_packing and cfg.warmup_cache == "sink + L chunks"
        assert cfg.profile_seed == 7  # a setting no preset defines stays as given
        assert resolve_dummy_count(cfg.dummy_heads, cfg.dummy_head_count, 30, 12) == 180  # num_dummy 180 of 360
        assert cfg.ar_start == (2 if name == "LongLive" else 1)
        assert cfg.profile_sink_frames == (3 if name == "LongLive" else 0)
    krea = DummyForcingConfig().with_preset("Krea Realtime 14B")
    assert resolve_dummy_count(krea.dummy_heads, krea.dummy_head_count, 40, 40) == 800  # half, our choice
    assert DummyForcingConfig(ar_start=5).with_preset(CUSTOM) == DummyForcingConfig(ar_start=5)
    with pytest.raises(SettingError, match="'preset' must be one of custom"):
        DummyForcingConfig().with_preset("Self Forcing")


def test_default_is_the_authors_method():
    d = DummyForcingConfig()
    sf = d.with_preset("Self Forcing / Causal Forcing / CausVid")
    # equal but for the warm-up cache, which equals theirs at ar_start 1 with 3-frame chunks
    assert d == DummyForcingConfig(**{**sf.__dict__, "warmup_cache": "base"})
    assert authors_cache_before(1, 1) == list(range(3)) and authors_cache_before(1, 2) == list(range(3))


@pytest.mark.parametrize("seed", range(4))
def test_head_selection_equals_the_authors_rule(seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(30, 12, 3, generator=g, dtype=torch.float64) ** 3  # skewed, like real profiles
    raw[..., 0] *= 0.2  # sink attention rarer than neighbor attention: normalising matters
    scores = raw / raw.sum(-1, keepdim=True)
    for name in FAMILIES:
        cfg = DummyForcingConfig().with_preset(name)
        n = resolve_dummy_count(cfg.dummy_heads, cfg.dummy_head_count, 30, 12)
        assert cfg.assign(scores, n).tolist() == authors_types(scores, n)
    assert DummyForcingConfig(normalised_cost=False).assign(scores, 180).tolist() != authors_types(scores, 180)


def test_planted_rare_sink_head_is_kept_by_the_normalised_cost():
    # sink attention is rare in this model: head 1's 0.06 is 60 % of all sink mass (normalised
    # costs 0.5, 0.6, 0.25, 0.17), its 0.10 neighbor mass the least of all (raw costs 0.6, 0.1, 0.3, 0.2)
    scores = torch.tensor([[[0.01, 0.60, 0.39], [0.06, 0.10, 0.84], [0.02, 0.30, 0.68], [0.01, 0.20, 0.79]]])
    for name in FAMILIES:
        cfg = DummyForcingConfig().with_preset(name)
        assert authors_types(scores, 2) == [[NEIGH, SINK, DUMMY, DUMMY]] == cfg.assign(scores, 2).tolist()
    # the raw max would make the rare sink head dummy
    assert DummyForcingConfig(normalised_cost=False).assign(scores, 2).tolist() == [[NEIGH, DUMMY, NEIGH, DUMMY]]


@pytest.mark.parametrize("preset", FAMILIES)
def test_online_profile_and_program_equal_the_authors(preset, monkeypatch):
    """A whole video on a model with planted sink / neighbor / dummy heads: the cache the profiled
    chunk sees, the region masses and the head types equal the authors' rules computed from the
    very queries and keys the runtime passed to the probe."""
    kinds = [["dummy", "sink", "neighbor", "dummy"], ["neighbor", "dummy", "sink", "sink"],
             ["sink", "neighbor", "dummy", "neighbor"]]
    model = make_planted_wan(kinds)
    cfg = DummyForcingConfig(profile_sample_fraction=1.0).with_preset(preset)
    seen = {}
    real_probe_for = DummyForcingPolicy.probe_for

    def probe_for(self, chunk):
        prof = real_probe_for(self, chunk)
        if prof is None:
            return None

        def probe(layer, q, keys, group):
            seen[layer] = (q.clone(), keys.clone(), list(group.frame_ids(0)))
            prof(layer, q, keys, group)
        return probe
    monkeypatch.setattr(DummyForcingPolicy, "probe_for", probe_for)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = generate(ChunkRunner(model), ctx, (1, 16, 12, 8, 8), SamplerSettings(chunk_frames=CHUNK, timesteps=(1000,)),
                   CacheSpec(dummy_forcing=cfg))
    a = cfg.ar_start
    assert sorted(seen) == [0, 1, 2] and res.stats.switch_chunk == a + 1
    ref = torch.zeros(3, 4, 3, dtype=torch.float64)
    for layer, (q, keys, frames) in seen.items():
        assert frames == authors_cache_before(a, cfg.neighbor_chunks)
        ref[layer] = authors_regions(q, keys, a)
    torch.testing.assert_close(torch.tensor(res.stats.head_scores, dtype=torch.float64), ref, rtol=0, atol=1e-6)
    types = authors_types(ref, 6)
    assert res.stats.head_types == types
    assert {t for row in types for t in row} == {SINK, NEIGH, DUMMY}  # the planted heads give every type
    # heads planted to look at their own frame are dummy heads (the planted sink / neighbor heads
    # look by frame distance, which the regions of ar_start 1 and of LongLive's cache mix)
    assert all(types[i][h] == DUMMY for i, row in enumerate(kinds) for h, k in enumerate(row) if k == "dummy")


@pytest.mark.parametrize("preset", FAMILIES)
def test_preset_generation_equals_the_masked_reference(preset):
    """The whole video under each preset (its warm-up cache and neighbor windows) against the
    per-head masked float64 reference of test_dummy_forcing."""
    model = make_tiny_wan(layers=3, heads=4, head_dim=16, seed=7)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    types = [[SINK, DUMMY, NEIGH, DUMMY], [SINK, NEIGH, DUMMY, DUMMY], [NEIGH, DUMMY, SINK, DUMMY]]  # 6 = half
    cfg = DummyForcingConfig(head_profile=profile_for(model, [[HeadType(t) for t in r] for r in types]))
    cfg = cfg.with_preset(preset)
    settings = SamplerSettings(chunk_frames=CHUNK, timesteps=(1000, 500), seed=5)
    shape = (1, 16, 15, 4, 6)
    res = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(dummy_forcing=cfg))
    assert res.stats.head_types == types
    ref = reference_generate(model, ctx, shape, settings, cfg, types)
    assert rel(res.latent[0], ref) < 1e-9
