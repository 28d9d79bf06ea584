import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from planted import DEFAULT_KINDS, KIND_REGION, make_planted_wan, planted_types, profile_planted  # noqa: E402

from dummy_forcing_core.head_program import HeadType, program_heads  # noqa: E402
from dummy_forcing_core.kv_cache import Retention  # noqa: E402
from dummy_forcing_core.attention_profiler import AttentionProfiler  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.wan_model import WanConfig, WanModel  # noqa: E402


class FakeGroup:
    def __init__(self, frame_ids, tpf):
        self._ids, self.tpf = list(frame_ids), tpf

    def frame_ids(self, row):
        return list(self._ids)


def brute_force(q, keys, frame_ids, tpf, sink_frames, rows=None):
    """[H, 3] float64 region masses with the full softmax of every query, then averaged over
    the batch and ``rows``; regions assigned token by token with plain Python."""
    q, keys = q.double(), keys.double()
    B, H, Lq, D = q.shape
    Lk = keys.shape[2]
    p = torch.softmax(q @ keys.transpose(-1, -2) / D ** 0.5, dim=-1)  # [B, H, Lq, Lk] all at once
    region = []
    for f in frame_ids:
        region += [0 if f < sink_frames else 1] * tpf
    region += [2] * Lq
    assert len(region) == Lk
    rows = torch.arange(Lq) if rows is None else rows
    out = torch.zeros(H, 3, dtype=torch.float64)
    for key, r in enumerate(region):
        out[:, r] += p[:, :, rows, key].sum(dim=(0, 2))
    return out / (B * len(rows))


def random_call(seed, B=2, H=3, D=8, tpf=4, frame_ids=(0, 1, 2, 7, 8, 9), chunk=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    Lq = chunk * tpf
    Lk = len(frame_ids) * tpf + Lq
    q = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64) * 2
    keys = torch.randn(B, H, Lk, D, generator=g, dtype=torch.float64) * 2
    return q.to(dtype), keys.to(dtype), FakeGroup(frame_ids, tpf)


def test_all_rows_match_brute_force():
    q, keys, grp = random_call(0)
    prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=1.0)
    prof(0, q, keys, grp)
    assert torch.equal(prof.last_rows[0], torch.arange(q.shape[2]))
    ref = brute_force(q, keys, grp.frame_ids(0), grp.tpf, 3)
    s = prof.scores()
    assert s.shape == (1, 3, 3) and s.dtype == torch.float32
    torch.testing.assert_close(prof._sums[0], ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(s[0], ref.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.sum(-1), torch.ones(1, 3), rtol=0, atol=1e-6)
    assert prof.calls == 1 and prof.elapsed_s > 0


def test_sampled_rows_match_brute_force_and_are_deterministic():
    q, keys, grp = random_call(1, chunk=4)  # 16 queries
    a = AttentionProfiler(2, 3, sink_frames=2, sample_fraction=0.3, seed=5)
    a(1, q, keys, grp)
    rows = a.last_rows[1]
    assert len(rows) == round(0.3 * 16) and len(set(rows.tolist())) == len(rows)
    ref = brute_force(q, keys, grp.frame_ids(0), grp.tpf, 2, rows)
    torch.testing.assert_close(a._sums[1], ref, rtol=0, atol=1e-12)

    b = AttentionProfiler(2, 3, sink_frames=2, sample_fraction=0.3, seed=5)
    b(1, q, keys, grp)
    assert torch.equal(b.last_rows[1], rows) and torch.equal(b._sums, a._sums)
    c = AttentionProfiler(2, 3, sink_frames=2, sample_fraction=0.3, seed=6)
    c(1, q, keys, grp)
    assert not torch.equal(c.last_rows[1], rows)
    assert not torch.allclose(c._sums[1], a._sums[1])
    # a different layer with the same seed samples other rows
    a(0, q, keys, grp)
    assert not torch.equal(a.last_rows[0], rows)


def test_at_least_one_row_and_calls_average():
    q1, k1, g1 = random_call(2)
    q2, k2, g2 = random_call(3)
    prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=1e-9)
    prof(0, q1, k1, g1)
    assert len(prof.last_rows[0]) == 1
    prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=1.0)
    prof(0, q1, k1, g1)
    prof(0, q2, k2, g2)
    ref = (brute_force(q1, k1, g1.frame_ids(0), 4, 3) + brute_force(q2, k2, g2.frame_ids(0), 4, 3)) / 2
    torch.testing.assert_close(prof.scores()[0], ref.float(), rtol=0, atol=1e-6)
    assert prof.calls == 2 and prof.layer_calls.tolist() == [2]


def test_slicing_does_not_change_the_result():
    q, keys, grp = random_call(4, chunk=5)
    out = []
    for qs, cap in ((1, None), (10 ** 6, None), (3, None), (10 ** 6, 1)):
        prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=0.6, seed=9, query_slice=qs,
                                 max_slice_elements=cap)
        prof(0, q, keys, grp)
        out.append(prof._sums.clone())
    for o in out[1:]:
        torch.testing.assert_close(o, out[0], rtol=0, atol=1e-14)


def test_float32_inputs_and_no_context():
    q, keys, grp = random_call(5, dtype=torch.float32)
    prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=1.0)
    prof(0, q, keys, grp)
    ref = brute_force(q, keys, grp.frame_ids(0), 4, 3)
    torch.testing.assert_close(prof.scores()[0], ref.float(), rtol=0, atol=1e-5)
    # the first chunk: no cached frames, all mass on the current chunk
    q, keys, grp = random_call(6, frame_ids=())
    prof = AttentionProfiler(1, 3, sink_frames=3)
    prof(0, q, keys, grp)
    torch.testing.assert_close(prof.scores()[0], torch.tensor([[0.0, 0.0, 1.0]] * 3))
    # sink_frames = 0: every cached frame is a neighbor frame
    q, keys, grp = random_call(7)
    prof = AttentionProfiler(1, 3, sink_frames=0, sample_fraction=1.0)
    prof(0, q, keys, grp)
    assert (prof.scores()[0, :, 0] == 0).all()


@pytest.mark.parametrize("where", ["q", "keys"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_input_makes_nan_scores(where, dtype):
    """A NaN the model made must reach the scores (Dummy Forcing then names the model), also
    where SDPA turns a NaN query row into zero masses (torch 2.13's CPU kernel does)."""
    q, keys, grp = random_call(8, dtype=dtype)
    (q if where == "q" else keys)[0, 1, 0, 0] = float("nan")
    prof = AttentionProfiler(1, 3, sink_frames=3, sample_fraction=1.0)
    prof(0, q, keys, grp)
    assert torch.isnan(prof.scores()).all()
    prof.reset()  # a new measurement starts finite
    q, keys, grp = random_call(9, dtype=dtype)
    prof(0, q, keys, grp)
    assert torch.isfinite(prof.scores()).all()


def test_errors():
    with pytest.raises(RuntimeError, match="probed"):
        AttentionProfiler(2, 3, 1).scores()
    prof = AttentionProfiler(2, 3, 1)
    q, keys, grp = random_call(8)
    prof(0, q, keys, grp)
    with pytest.raises(RuntimeError, match=r"layers \[1\]"):
        prof.scores()
    with pytest.raises(ValueError, match="heads"):
        AttentionProfiler(2, 4, 1)(0, q, keys, grp)
    with pytest.raises(ValueError, match="cached frames"):
        prof(0, q, keys, FakeGroup([0, 1], 4))
    for bad in (dict(sample_fraction=0.0), dict(sample_fraction=1.5), dict(query_slice=0), dict(sink_frames=-1)):
        kw = dict(num_layers=1, num_heads=1, sink_frames=1)
        kw.update(bad)
        with pytest.raises(ValueError):
            AttentionProfiler(**kw)


def test_real_runtime_with_sink_window_cache():
    """The profiler as the runtime's probe, on a cache keeping 1 sink + 2 recent frames: it must
    agree with a brute force on the very q / keys / group the runtime passes."""
    torch.manual_seed(0)
    cfg = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=16, out_dim=16, text_dim=32, freq_dim=32)
    model = WanModel(cfg).init_random(3).double().eval()
    runner = ChunkRunner(model)
    prof = AttentionProfiler(2, 4, sink_frames=1, sample_fraction=1.0)
    refs = {}

    def probe(layer, q, keys, group):
        ids = group.frame_ids(0)
        assert ids == [0, 4, 5]
        refs[layer] = brute_force(q, keys, ids, group.tpf, 1)
        prof(layer, q, keys, group)

    cache = runner.new_cache(1, 4, 4, 8, 2, Retention(sink=1, window=2))
    text = runner.encode_text(torch.randn(1, 5, 32, dtype=torch.float64))
    x = torch.randn(1, 16, 8, 4, 4, dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.float64)
    for c in range(4):
        runner.forward(x[:, :, 2 * c:2 * c + 2], t, 2 * c, text, cache, commit=True, probe=probe if c == 3 else None)
    s = prof.scores()
    for layer in range(2):
        torch.testing.assert_close(s[layer], refs[layer].float(), rtol=0, atol=1e-6)
    assert (s[..., 0] > 0).all() and (s[..., 1] > 0).all()


def test_planted_heads_are_recovered():
    kinds = DEFAULT_KINDS
    model = make_planted_wan(kinds)
    prof = profile_planted(model, sink_frames=3, ar_start=2, chunk_frames=3)
    s = prof.scores()
    assert prof.calls == len(kinds) and prof.elapsed_s > 0
    # the planted model really does what it was built for: > 90 % on the intended region
    region = torch.tensor([[KIND_REGION[k] for k in row] for row in kinds])
    intended = s.gather(-1, region[..., None]).squeeze(-1)
    assert (intended > 0.9).all(), intended
    assert (intended < 0.999).all(), intended  # and some mass leaks, so the test is not trivial
    want = planted_types(kinds)
    n = int((want == HeadType.DUMMY).sum())
    assert n == 4 and [int((r == HeadType.DUMMY).sum()) for r in want] == [2, 1, 1]
    assert torch.equal(program_heads(s, n, "global"), want)
    assert torch.equal(program_heads(s, n, "per_layer"), want)  # quota 1 + the extra one to layer 0
    assert torch.equal(program_heads(s, n, "global", normalise=True), want)
    # a different sampling seed gives (slightly) different scores and the same types
    s2 = profile_planted(model, seed=1).scores()
    assert not torch.equal(s, s2)
    assert torch.equal(program_heads(s2, n, "per_layer"), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    q, keys, grp = random_call(10, dtype=torch.float32)
    cpu = AttentionProfiler(1, 3, 3, sample_fraction=0.5, seed=2)
    gpu = AttentionProfiler(1, 3, 3, sample_fraction=0.5, seed=2)
    cpu(0, q, keys, grp)
    gpu(0, q.cuda(), keys.cuda(), grp)
    torch.testing.assert_close(gpu.scores(), cpu.scores(), rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_bf16_fused_path_matches_float64():
    """bf16 on CUDA takes all sampled rows in one fused call and times with events."""
    q, keys, grp = random_call(10, dtype=torch.float64)
    ref = AttentionProfiler(1, 3, 3, sample_fraction=0.5, seed=2)
    gpu = AttentionProfiler(1, 3, 3, sample_fraction=0.5, seed=2, query_slice=1)
    ref(0, q, keys, grp)
    gpu(0, q.cuda().bfloat16(), keys.cuda().bfloat16(), grp)
    assert gpu.elapsed_s > 0 and gpu.calls == 1
    torch.testing.assert_close(gpu.scores(), ref.scores(), rtol=0, atol=2e-2)
    assert gpu._values_cache is None  # scores() frees the device buffer
