"""The chunk-by-chunk runtime against an independent full-sequence reference (float64)."""
import pytest
import torch

from helpers import make_tiny_wan
from dummy_forcing_core.attention import attend
from dummy_forcing_core.kv_cache import FULL, GroupSpec, KVCache, Retention, kv_bytes
from dummy_forcing_core.rope import apply_rope, rope_table
from dummy_forcing_core.chunk_plan import plan_chunks
from dummy_forcing_core.sampler import SamplerSettings, flow_sigmas, generate
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.wan_model import WanConfig
from reference_wan import reference_forward, rope_complex, token_positions

H_LAT, W_LAT = 4, 6  # latent size -> 2 x 3 patches = 6 tokens per frame
TPF = 6


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def mask_for(frames, chunk_frames, retention=FULL, start=0):
    """Token mask of a block-causal video whose context follows ``retention`` (a frame of
    chunk i sees its own chunk and the kept frames of the history before the chunk)."""
    starts = list(range(start, start + frames, chunk_frames))
    chunk_of = {f: (s, min(chunk_frames, start + frames - s)) for s in starts for f in range(s, min(s + chunk_frames, start + frames))}
    allowed = torch.zeros(frames, frames, dtype=torch.bool)
    for qf in range(start, start + frames):
        s, _ = chunk_of[qf]
        kept = set(retention.kept_frame_ids(s))
        for kf in range(start, start + frames):
            ks, _ = chunk_of[kf]
            allowed[qf - start, kf - start] = (ks == s) or (ks < s and kf in kept)
    return allowed.repeat_interleave(TPF, 0).repeat_interleave(TPF, 1)


def encode_chunked(model, x, ctx, chunk_frames, retention=FULL):
    runner = ChunkRunner(model)
    B, C, Fr = x.shape[:3]
    cache = runner.new_cache(B, H_LAT, W_LAT, Fr, chunk_frames, retention)
    text = runner.encode_text(ctx)
    outs = []
    for f0, n in plan_chunks(x.shape, chunk_frames).chunks:
        outs.append(runner.forward(x[:, :, f0:f0 + n], torch.zeros(B), f0, text, cache, commit=True))
    return torch.cat(outs, 2), cache


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=2, heads=4, head_dim=16, seed=1)


def test_chunked_cache_equals_block_causal_reference(model):
    torch.manual_seed(0)
    Fr, c = 9, 3
    x = torch.randn(1, 16, Fr, H_LAT, W_LAT, dtype=torch.float64)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    out, _ = encode_chunked(model, x, ctx, c)
    ref = reference_forward(model.state_dict(), 4, x[0], torch.zeros(Fr), ctx[0], list(range(Fr)), mask_for(Fr, c))
    assert rel(out[0], ref) < 1e-10


def test_noisy_chunk_over_cached_context_equals_reference(model):
    """A denoising pass (not committed) sees the clean cached frames and its own noisy chunk."""
    torch.manual_seed(1)
    c = 3
    clean = torch.randn(1, 16, 6, H_LAT, W_LAT, dtype=torch.float64)
    noisy = torch.randn(1, 16, c, H_LAT, W_LAT, dtype=torch.float64)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    runner = ChunkRunner(model)
    cache = runner.new_cache(1, H_LAT, W_LAT, 9, c)
    text = runner.encode_text(ctx)
    for f0 in (0, 3):
        runner.forward(clean[:, :, f0:f0 + c], torch.zeros(1), f0, text, cache, commit=True)
    t = 612.5
    out1 = runner.forward(noisy, torch.tensor([t]), 6, text, cache)
    out2 = runner.forward(noisy, torch.tensor([t]), 6, text, cache)  # scratch reuse: same answer
    seq = torch.cat([clean, noisy], 2)[0]
    ts = torch.tensor([0.0] * 6 + [t] * 3)
    ref = reference_forward(model.state_dict(), 4, seq, ts, ctx[0], list(range(9)), mask_for(9, c))
    assert rel(out1[0], ref[:, 6:]) < 1e-10
    assert torch.equal(out1, out2)
    assert cache.history == 6


def test_shorter_last_chunk_and_frame_wise(model):
    torch.manual_seed(2)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    for Fr, c in ((7, 3), (4, 1)):
        x = torch.randn(1, 16, Fr, H_LAT, W_LAT, dtype=torch.float64)
        out, _ = encode_chunked(model, x, ctx, c)
        ref = reference_forward(model.state_dict(), 4, x[0], torch.zeros(Fr), ctx[0], list(range(Fr)), mask_for(Fr, c))
        assert rel(out[0], ref) < 1e-10


@pytest.mark.parametrize("retention", [Retention(1, 3), Retention(2, 2), Retention(0, 4)])
def test_rolling_window_equals_windowed_reference_after_wrapping(model, retention):
    """A video 4x+ longer than the window: the window has rolled over several times."""
    torch.manual_seed(3)
    Fr, c = 18, 3
    x = torch.randn(1, 16, Fr, H_LAT, W_LAT, dtype=torch.float64)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    out, cache = encode_chunked(model, x, ctx, c, retention)
    ref = reference_forward(model.state_dict(), 4, x[0], torch.zeros(Fr), ctx[0], list(range(Fr)),
                            mask_for(Fr, c, retention))
    full = reference_forward(model.state_dict(), 4, x[0], torch.zeros(Fr), ctx[0], list(range(Fr)), mask_for(Fr, c))
    assert rel(out[0], ref) < 1e-10
    assert rel(out[0], full) > 1e-4  # the window really changed the result
    assert cache.layers[0].groups[0].frames == retention.kept(Fr)


def test_rope_chunk_equals_slice_of_full_table():
    full = rope_table(40, 3, 5, 16, 0, dtype=torch.float64)
    tpf = 15
    for f in (0, 7, 37):
        part = rope_table(3, 3, 5, 16, f, dtype=torch.float64)
        assert torch.equal(part.cos, full.cos[f * tpf:(f + 3) * tpf])
        assert torch.equal(part.sin, full.sin[f * tpf:(f + 3) * tpf])


def test_rope_far_beyond_1024_frames_matches_complex_reference():
    x = torch.randn(1, 2 * 15, 3, 16, dtype=torch.float64)
    got = apply_rope(x, rope_table(2, 3, 5, 16, 3000, dtype=torch.float64))
    rot = rope_complex(*token_positions([3000, 3001], 3, 5), 16)
    xc = torch.view_as_complex(x[0].reshape(30, 3, 8, 2))
    want = torch.view_as_real(xc * rot[:, None, :]).flatten(-2)
    assert rel(got[0], want) < 1e-12


def test_cache_holds_exactly_what_the_policy_keeps():
    L, H, D, B = 3, 4, 8, 2
    c, Fr = 3, 21
    elem = 2  # bf16
    for ret in (FULL, Retention(3, 12), Retention(1, 0)):
        cache = KVCache.create(L, H, D, TPF, c, Fr, ret, batch=B, dtype=torch.bfloat16)
        k = torch.randn(B, c * TPF, H, D, dtype=torch.bfloat16)
        for f0 in range(0, Fr - c, c):
            for i in range(L):
                attend(cache, i, k, k, k)
            cache.commit()
            kept = ret.kept(f0 + c)
            assert cache.held_bytes() == 2 * L * B * H * kept * TPF * D * elem
        cap = min(ret.most_kept(Fr - 1), Fr - 1) + c
        assert cache.allocated_bytes() == 2 * L * B * H * cap * TPF * D * elem
        assert kv_bytes(L * H * ret.capacity_for(Fr, c), B, D, TPF, torch.bfloat16) == cache.allocated_bytes()
    full = KVCache.create(L, H, D, TPF, c, Fr, FULL, batch=B, dtype=torch.bfloat16)
    win = KVCache.create(L, H, D, TPF, c, Fr, Retention(3, 12), batch=B, dtype=torch.bfloat16)
    assert full.allocated_bytes() > win.allocated_bytes()


def reference_sampler(model, ctx, shape, settings, start=None, start_frames=0):
    """The sampling loop written out with the reference forward over the whole prefix."""
    B, C, Fr, Hh, Ww = shape
    gen = torch.Generator().manual_seed(settings.seed)
    draw = lambda s: torch.randn(s, generator=gen, dtype=torch.float32).double()  # noqa: E731
    sig = flow_sigmas(settings)
    video = torch.zeros(C, Fr, Hh, Ww, dtype=torch.float64)
    if start_frames:
        video[:, :start_frames] = start[0, :, :start_frames]
    c = settings.chunk_frames
    for f0 in range(start_frames, Fr, c):
        n = min(c, Fr - f0)
        x = draw((B, C, n, Hh, Ww))[0]
        for k, s in enumerate(sig):
            seq = torch.cat([video[:, :f0], x], 1)
            ts = torch.tensor([0.0] * f0 + [s * 1000] * n, dtype=torch.float64)
            starts = list(range(0, start_frames, c)) + list(range(start_frames, Fr, c))
            chunk = lambda f: max(i for i, s0 in enumerate(starts) if s0 <= f)  # noqa: E731
            ids = list(range(f0 + n))
            m = torch.tensor([[chunk(a) >= chunk(b) for b in ids] for a in ids])
            m = m.repeat_interleave(TPF, 0).repeat_interleave(TPF, 1)
            v = reference_forward(model.state_dict(), model.num_heads, seq, ts, ctx[0], ids, m)[:, f0:]
            x0 = x - s * v
            if k + 1 < len(sig):
                x = (1 - sig[k + 1]) * x0 + sig[k + 1] * draw((B, C, n, Hh, Ww))[0]
        video[:, f0:f0 + n] = x0
    return video


def test_sampler_equals_reference_loop(model):
    torch.manual_seed(4)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), shift=5.0, seed=11)
    shape = (1, 16, 7, H_LAT, W_LAT)
    res = generate(ChunkRunner(model), ctx, shape, settings)
    ref = reference_sampler(model, ctx, shape, settings)
    assert rel(res.latent[0], ref) < 1e-9
    again = generate(ChunkRunner(model), ctx, shape, settings)
    assert torch.equal(res.latent, again.latent)
    other = generate(ChunkRunner(model), ctx, shape, SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=12))
    assert rel(other.latent, res.latent) > 1e-3


def test_start_frames_are_encoded_then_continued(model):
    torch.manual_seed(5)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    start = torch.randn(1, 16, 9, H_LAT, W_LAT, dtype=torch.float64)
    settings = SamplerSettings(chunk_frames=3, steps=2, shift=3.0, seed=3)
    shape = (1, 16, 9, H_LAT, W_LAT)
    res = generate(ChunkRunner(model), ctx, shape, settings, start_latent=start, start_frames=4)
    assert torch.equal(res.latent[:, :, :4], start[:, :, :4])
    ref = reference_sampler(model, ctx, shape, settings, start, 4)
    assert rel(res.latent[0], ref) < 1e-9


def test_sigmas_match_self_forcing_schedule():
    s = flow_sigmas(SamplerSettings(timesteps=(1000, 750, 500, 250), shift=5.0))
    assert s == pytest.approx([1.0, 0.9375, 0.8333333, 0.625], abs=1e-6)
    assert flow_sigmas(SamplerSettings(timesteps=None, steps=4, shift=5.0)) == pytest.approx(s)


def test_bad_inputs_raise_clear_errors(model):
    runner = ChunkRunner(model)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="video latent"):
        runner.forward(torch.randn(1, 16, H_LAT, W_LAT), torch.zeros(1), 0, runner.encode_text(ctx),
                       runner.new_cache(1, H_LAT, W_LAT, 3, 3))
    with pytest.raises(ValueError, match="divisible by the patch"):
        generate(runner, ctx, (1, 16, 6, 5, W_LAT), SamplerSettings())
    with pytest.raises(ValueError, match="channels"):
        generate(runner, ctx, (1, 4, 6, H_LAT, W_LAT), SamplerSettings())
    with pytest.raises(ValueError, match="frames_per_chunk"):
        generate(runner, ctx, (1, 16, 6, H_LAT, W_LAT), SamplerSettings(chunk_frames=0))
    with pytest.raises(ValueError, match="denoise_timesteps"):
        generate(runner, ctx, (1, 16, 6, H_LAT, W_LAT), SamplerSettings(timesteps=(1500,)))
    with pytest.raises(ValueError, match="start_frames"):
        generate(runner, ctx, (1, 16, 6, H_LAT, W_LAT), SamplerSettings(), start_frames=6)
    with pytest.raises(TypeError, match="not a Wan2.1 transformer"):
        ModelGeometry.of(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not a Wan model"):
        WanConfig.from_state_dict({"conv1.weight": torch.zeros(3, 3)})


def reference_sampler_with_context_noise(model, ctx, shape, settings):
    """The loop written out when the cache pass writes a re-noised chunk: the cached context of
    a chunk is (1 - s) x0 + s eps at timestep ``context_timestep`` (s = that / 1000), eps
    drawn after the chunk's step noise."""
    B, C, Fr, Hh, Ww = shape
    gen = torch.Generator().manual_seed(settings.seed)
    draw = lambda s: torch.randn(s, generator=gen, dtype=torch.float32).double()[0]  # noqa: E731
    sig = flow_sigmas(settings)
    cs = settings.context_timestep / 1000.0
    video = torch.zeros(C, Fr, Hh, Ww, dtype=torch.float64)
    context = torch.zeros(C, Fr, Hh, Ww, dtype=torch.float64)  # what the cache holds, frame by frame
    c = settings.chunk_frames
    for f0 in range(0, Fr, c):
        n = min(c, Fr - f0)
        ids = list(range(f0 + n))
        m = torch.tensor([[a // c >= b // c for b in ids] for a in ids])
        m = m.repeat_interleave(TPF, 0).repeat_interleave(TPF, 1)
        x = draw((B, C, n, Hh, Ww))
        for k, s in enumerate(sig):
            seq = torch.cat([context[:, :f0], x], 1)
            ts = torch.tensor([settings.context_timestep] * f0 + [s * 1000] * n, dtype=torch.float64)
            v = reference_forward(model.state_dict(), model.num_heads, seq, ts, ctx[0], ids, m)[:, f0:]
            x0 = x - s * v
            if k + 1 < len(sig):
                x = (1 - sig[k + 1]) * x0 + sig[k + 1] * draw((B, C, n, Hh, Ww))
        video[:, f0:f0 + n] = x0
        context[:, f0:f0 + n] = (1 - cs) * x0 + cs * draw((B, C, n, Hh, Ww))
    return video


def test_context_timestep_renoises_the_cached_chunk(model):
    torch.manual_seed(6)
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    settings = SamplerSettings(chunk_frames=2, timesteps=(1000, 500), seed=13, context_timestep=200)
    shape = (1, 16, 6, H_LAT, W_LAT)
    res = generate(ChunkRunner(model), ctx, shape, settings)
    assert rel(res.latent[0], reference_sampler_with_context_noise(model, ctx, shape, settings)) < 1e-9
    clean = generate(ChunkRunner(model), ctx, shape, SamplerSettings(chunk_frames=2, timesteps=(1000, 500), seed=13))
    assert rel(res.latent[:, :, 2:], clean.latent[:, :, 2:]) > 1e-3  # the context really was re-noised
    assert torch.equal(res.latent[:, :, :2], clean.latent[:, :, :2])  # the first chunk sees no context


def test_regroup_holds_both_layouts_one_layer_at_a_time(monkeypatch):
    L, H, D, c, Fr = 4, 4, 8, 3, 12
    cache = KVCache.create(L, H, D, TPF, c, Fr, FULL)
    k = torch.randn(1, c * TPF, H, D)
    for _ in range(2):
        for i in range(L):
            attend(cache, i, k, k, k)
        cache.commit()
    keep = [torch.cat([g.k for g in layer.groups], 1)[:, :, : 6 * TPF].clone() for layer in cache.layers]
    window = Retention(1, 3)
    specs = [[GroupSpec([0, 1], [(2, window)]), GroupSpec([2, 3], [(2, Retention(0, 0))])] for _ in range(L)]
    bad = specs[:-1] + [[GroupSpec([0, 1, 2, 3], [(3, window)])]]  # the last layer's spec is broken
    with pytest.raises(ValueError, match="cover its heads"):
        cache.regroup(bad)
    assert all(torch.equal(torch.cat([g.k for g in layer.groups], 1)[:, :, : 6 * TPF], kk)
               for layer, kk in zip(cache.layers, keep))

    base_layer = cache.layers[0].groups[0].allocated_bytes()
    held = []
    build = KVCache._build_layer

    def counting(self, layer, layer_specs, where, **kw):
        new = build(self, layer, layer_specs, where, **kw)
        held.append(self.allocated_bytes() + sum(g.allocated_bytes() for g in new.groups))
        return new

    monkeypatch.setattr(KVCache, "_build_layer", counting)
    cache.regroup(specs)
    new_layer = sum(g.allocated_bytes() for g in cache.layers[0].groups)
    # layer i built while layers i.. are still in the old layout and layers <i already new
    assert held == [(L - i) * base_layer + (i + 1) * new_layer for i in range(L)]
    frames = cache.layers[2].groups[0].frame_ids(0)
    assert frames == [0, 3, 4, 5]
    assert torch.equal(cache.layers[2].groups[0].k[:, :, : 4 * TPF], keep[2][:, :2, [*range(TPF), *range(3 * TPF, 6 * TPF)]])
