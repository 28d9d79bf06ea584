"""Dummy Forcing in a whole generation against an independent per-head masked reference."""
import pytest
import torch

from helpers import make_tiny_wan
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.head_program import HeadType
from dummy_forcing_core.kv_cache import FULL, Retention
from dummy_forcing_core.head_profile import HeadProfile, ProfilingSpec, profile_heads
from dummy_forcing_core.sampler import SamplerSettings, flow_sigmas, generate
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.geometry import ModelGeometry
from reference_wan import reference_forward

H_LAT, W_LAT, TPF = 4, 6, 6
SINK, NEIGH, DUMMY = HeadType.SINK, HeadType.NEIGHBOR, HeadType.DUMMY
SCORE_OF = {SINK: (0.6, 0.1, 0.3), NEIGH: (0.1, 0.6, 0.3), DUMMY: (0.01, 0.02, 0.97)}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def profile_for(model, types):
    """A head profile whose scores make programming choose exactly ``types`` [L][H]."""
    scores = torch.tensor([[SCORE_OF[t] for t in layer] for layer in types], dtype=torch.float32)
    return HeadProfile(scores, ModelGeometry.of(model).fingerprint(), {"planted": True})


def visible(cfg, base, chunk_frames, ar_start, head_type, q_chunk, q_start, k_frame):
    """May a query of generated chunk ``q_chunk`` (first frame q_start) see cached frame k_frame?"""
    if cfg is None:
        return k_frame in base.kept_frame_ids(q_start)
    S = cfg.sink_frames
    recent = k_frame >= q_start - cfg.neighbor_frames(chunk_frames)
    if q_chunk <= ar_start:  # the authors' warm-up cache: the sink frames + the neighbor window
        return k_frame < S or recent if cfg.warmup_cache == "sink + L chunks" else k_frame in base.kept_frame_ids(q_start)
    if head_type == SINK:
        return k_frame < S
    if head_type == NEIGH:  # the authors' neighbor window never holds the sink frames
        return recent and (k_frame >= S or not cfg.neighbor_skips_sink)
    return cfg.context_packing and k_frame >= q_start - S


def reference_generate(model, ctx, shape, settings, cfg, types, base=FULL):
    """The sampling loop written out: every pass recomputes the prefix with the reference
    forward, each query chunk masked per layer and head as Dummy Forcing prescribes."""
    B, C, Fr, Hh, Ww = shape
    Lyr, Hd = len(model.blocks), model.num_heads
    gen = torch.Generator().manual_seed(settings.seed)
    draw = lambda s: torch.randn(s, generator=gen, dtype=torch.float32).double()[0]  # noqa: E731
    sig = flow_sigmas(settings)
    c = settings.chunk_frames
    video = torch.zeros(C, Fr, Hh, Ww, dtype=torch.float64)
    for ci, f0 in enumerate(range(0, Fr, c)):
        n = min(c, Fr - f0)
        ids = list(range(f0 + n))
        mask = torch.zeros(Lyr, Hd, len(ids), len(ids), dtype=torch.bool)
        for qf in ids:
            qc, qs = qf // c, (qf // c) * c
            for kf in ids:
                kc = kf // c
                for layer in range(Lyr):
                    for h in range(Hd):
                        t = types[layer][h] if types is not None else None
                        ok = kc == qc or (kc < qc and visible(cfg, base, c, cfg.ar_start if cfg else 0,
                                                              t, qc, qs, kf))
                        mask[layer, h, qf, kf] = ok
        mask = mask.repeat_interleave(TPF, 2).repeat_interleave(TPF, 3)
        x = draw((B, C, n, Hh, Ww))
        for k, s in enumerate(sig):
            seq = torch.cat([video[:, :f0], x], 1)
            ts = torch.tensor([0.0] * f0 + [s * 1000] * n, dtype=torch.float64)
            v = reference_forward(model.state_dict(), Hd, seq, ts, ctx[0], ids, mask)[:, f0:]
            x0 = x - s * v
            if k + 1 < len(sig):
                x = (1 - sig[k + 1]) * x0 + sig[k + 1] * draw((B, C, n, Hh, Ww))
        video[:, f0:f0 + n] = x0
    return video


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=3, heads=4, head_dim=16, seed=7)


@pytest.fixture(scope="module")
def ctx():
    return torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


# layer 0: every type; layer 1: no neighbor heads; layer 2: no sink and no dummy heads
MIXED = [[SINK, DUMMY, NEIGH, DUMMY], [SINK, SINK, DUMMY, DUMMY], [NEIGH, NEIGH, NEIGH, NEIGH]]
N_DUMMY = sum(t == DUMMY for layer in MIXED for t in layer)


@pytest.mark.parametrize("packing,sink,L,long_ctx", [(True, 1, 1, 0), (False, 1, 1, 0), (True, 2, 2, 0),
                                                     (True, 1, 1, 5)])
def test_packed_generation_equals_per_head_masked_reference(model, ctx, packing, sink, L, long_ctx):
    cfg = DummyForcingConfig(dummy_head_count=N_DUMMY, ar_start=1, neighbor_chunks=L, sink_frames=sink,
                             context_packing=packing, long_context_frames=long_ctx, head_profile=profile_for(model, MIXED))
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=5)
    shape = (1, 16, 15, H_LAT, W_LAT)
    res = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(dummy_forcing=cfg))
    assert res.stats.head_types == [[int(t) for t in layer] for layer in MIXED]
    ref = reference_generate(model, ctx, shape, settings, cfg, MIXED)
    assert rel(res.latent[0], ref) < 1e-9
    base = generate(ChunkRunner(model), ctx, shape, settings)
    assert rel(res.latent, base.latent) > 1e-4  # Dummy Forcing really changed what heads saw


def test_zero_dummy_heads_with_matching_windows_equals_baseline(model, ctx):
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=2)
    shape = (1, 16, 12, H_LAT, W_LAT)
    window = Retention(0, 3)
    base = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(window))
    all_neighbor = [[NEIGH] * 4 for _ in range(3)]
    # raw cost: normalised, identical planted heads tie and become sink heads
    cfg = DummyForcingConfig(dummy_heads=0.0, neighbor_chunks=1, normalised_cost=False,
                             head_profile=profile_for(model, all_neighbor))
    df = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(window, cfg))
    assert torch.allclose(df.latent, base.latent, rtol=0, atol=1e-12)
    # all sink heads with a sink-only base cache
    sink_only = Retention(1, 0)
    base = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(sink_only))
    cfg = DummyForcingConfig(dummy_heads=0.0, sink_frames=1, head_profile=profile_for(model, [[SINK] * 4] * 3))
    df = generate(ChunkRunner(model), ctx, shape, settings, CacheSpec(sink_only, cfg))
    assert torch.allclose(df.latent, base.latent, rtol=0, atol=1e-12)


def test_online_profiling_runs_and_reports(model, ctx):
    cfg = DummyForcingConfig(dummy_heads=0.5, ar_start=1, profile_sample_fraction=0.5)
    res = generate(ChunkRunner(model), ctx, (1, 16, 12, H_LAT, W_LAT), SamplerSettings(timesteps=(1000, 500)),
                   CacheSpec(dummy_forcing=cfg))
    st = res.stats
    assert st.switch_chunk == 2
    assert sum(d for _, _, d in st.type_counts()) == 6
    assert st.profile_seconds > 0
    assert len(st.head_scores) == 3 and len(st.head_scores[0]) == 4
    assert st.attn_flops < st.attn_flops_full
    assert "dummy" in st.to_text()


def test_cache_bytes_follow_the_formula(model, ctx):
    """Bytes held after the video = sum over groups of rows x kept frames; far below full."""
    Fr, c, S, L = 15, 3, 1, 1
    cfg = DummyForcingConfig(dummy_head_count=N_DUMMY, sink_frames=S, neighbor_chunks=L,
                             head_profile=profile_for(model, MIXED))
    res = generate(ChunkRunner(model), ctx, (1, 16, Fr, H_LAT, W_LAT), SamplerSettings(timesteps=(1000,)),
                   CacheSpec(dummy_forcing=cfg))
    history = Fr - c  # the last chunk is not committed
    per_frame = 2 * TPF * 16 * 8  # K and V, one head, head dim 16, float64
    flat = [t for layer in MIXED for t in layer]
    kept = {SINK: S, DUMMY: S, NEIGH: L * c}
    want = sum(kept[t] for t in flat) * per_frame
    assert res.stats.kv_bytes == want
    assert res.stats.kv_full_bytes == len(flat) * history * per_frame
    assert res.stats.kv_full_bytes / res.stats.kv_bytes == pytest.approx(len(flat) * history / sum(kept[t] for t in flat))


def test_bad_settings_raise_before_anything_runs(model, ctx):
    runner = ChunkRunner(model)
    shape = (1, 16, 12, H_LAT, W_LAT)
    st = SamplerSettings(timesteps=(1000,))
    def df(**kw):
        return CacheSpec(dummy_forcing=DummyForcingConfig(**kw))

    with pytest.raises(ValueError, match="dummy_head_count"):
        generate(runner, ctx, shape, st, df(dummy_head_count=13))
    with pytest.raises(ValueError, match="dummy_heads"):
        generate(runner, ctx, shape, st, df(dummy_heads=1.5))
    with pytest.raises(ValueError, match="needs at least 5 chunks"):
        generate(runner, ctx, shape, st, df(ar_start=3))
    with pytest.raises(ValueError, match="neighbor_chunks"):
        generate(runner, ctx, shape, st, df(neighbor_chunks=0))
    other = make_tiny_wan(layers=2, heads=4, head_dim=16)
    with pytest.raises(ValueError, match="profile"):
        generate(runner, ctx, shape, st, df(head_profile=profile_for(other, [[SINK] * 4] * 2)))
    with pytest.raises(ValueError, match="sink"):
        generate(runner, ctx, shape, SamplerSettings(timesteps=(1000,)),
                 CacheSpec(Retention(0, 3), DummyForcingConfig(sink_frames=1, ar_start=2)))


def test_offline_profile_reproduces_online_profiling(model, ctx):
    """Profiling offline with the same prompt, seed and sampling as the online run gives the
    same scores, so generating with that profile gives the same video."""
    settings = SamplerSettings(timesteps=(1000, 500), seed=9)
    shape = (1, 16, 12, H_LAT, W_LAT)
    runner = ChunkRunner(model)
    geom = runner.geometry
    online = generate(runner, ctx, shape, settings, CacheSpec(dummy_forcing=DummyForcingConfig(
        dummy_heads=0.5, profile_sample_fraction=0.5, profile_seed=4)))
    prof = profile_heads(runner, [ctx], shape, settings, [9], ProfilingSpec.create(geom, 1, 1, 1, 0.5, 4))
    assert torch.allclose(prof.scores, torch.tensor(online.stats.head_scores, dtype=torch.float32))
    offline = generate(runner, ctx, shape, settings, CacheSpec(dummy_forcing=DummyForcingConfig(
        dummy_heads=0.5, head_profile=prof)))
    assert torch.equal(offline.latent, online.latent)
    both = profile_heads(runner, [ctx, -ctx], shape, settings, [9, 10], ProfilingSpec.create(geom, chunks=2))
    assert both.settings["prompts"] == 2 and both.num_samples == 8  # 2 prompts x 2 seeds x 2 chunks
    with pytest.raises(ValueError, match="at least"):
        profile_heads(runner, [ctx], shape, settings, [9], ProfilingSpec.create(geom, ar_start=2, chunks=2))


def test_what_the_base_cache_must_hold_for_dummy_heads(model, ctx):
    """With packing, a dummy head keeps the last sink_frames frames: a base cache that dropped
    them is refused before anything runs; one that keeps them (or packing off) is fine."""
    shape = (1, 16, 12, H_LAT, W_LAT)
    st = SamplerSettings(chunk_frames=3, timesteps=(1000,))
    no_neighbors = [[SINK, DUMMY, SINK, DUMMY]] * 3  # only sink and dummy heads

    def spec(base, packing):
        return CacheSpec(base, DummyForcingConfig(dummy_head_count=6, sink_frames=1, context_packing=packing,
                                                  head_profile=profile_for(model, no_neighbors)))

    first_three = Retention(3, 0)  # at ar_start = 1, 6 frames are cached: it holds 0, 1, 2 but not 5
    with pytest.raises(ValueError, match=r"no longer holds frames \[5\] that dummy heads keep \('sink_frames'\)"):
        generate(ChunkRunner(model), ctx, shape, st, spec(first_three, True))
    generate(ChunkRunner(model), ctx, shape, st, spec(first_three, False))  # dummy heads keep nothing
    res = generate(ChunkRunner(model), ctx, shape, st, spec(Retention(3, 1), True))  # keeps frame 5: enough
    assert res.stats.switch_chunk == 2
