"""The warm start (issue 23): a ``ChunkRunner(warm=True)`` keeps its video's KV cache (reset),
text buffers, CUDA graphs and derived weights between videos of one shape. Videos one after
another on one warm runner equal the same videos on fresh runners, bit for bit (float64, the
reference loop and the fused forward on the CPU): a new seed, a new prompt, a prompt switch,
online profiling that gives other head types than the last video's. With a stand-in for CUDA
graphs (replays recompute the captured pass, as in test_fast_path), the second video of a
layout captures nothing. A cancelled or failed video leaves nothing kept; a weight changed
between videos drops the graphs and derived weights."""
from __future__ import annotations


import pytest
import torch

from helpers import install_fake_graphs, make_tiny_wan
from dummy_forcing_core import kv_cache
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate

H_LAT, W_LAT = 4, 6
SHAPE = (1, 16, 12, H_LAT, W_LAT)  # 4 chunks of 3: profiled at chunk 1, per-head from chunk 2


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=3, heads=4, head_dim=16, seed=7)


def ctx(seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def df(**kw) -> CacheSpec:
    return CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, ar_start=1, profile_sample_fraction=1.0, **kw))


def planted(model) -> CacheSpec:
    """Dummy Forcing with a given head profile: every video gets these head types."""
    types = [[0, 2, 1, 2], [1, 0, 2, 0], [1, 1, 1, 1]]
    score = {0: (0.6, 0.1, 0.3), 1: (0.1, 0.6, 0.3), 2: (0.01, 0.02, 0.97)}
    scores = torch.tensor([[score[t] for t in layer] for layer in types], dtype=torch.float32)
    profile = HeadProfile(scores, ModelGeometry.of(model).fingerprint(), {"planted": True})
    return CacheSpec(dummy_forcing=DummyForcingConfig(dummy_head_count=5, ar_start=1, head_profile=profile))


# (prompt, seed) of videos in a row, profiled online: a new prompt whose profile gives the same head
# types (checked below), a new seed that gives others, a new prompt and seed, the first again
VIDEOS = [(ctx(1), 1), (ctx(1, 0.9), 1), (ctx(1), 2), (ctx(1), 1)]


def settings(seed: int) -> SamplerSettings:
    return SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=seed)


def assert_same(got, want, what: str):
    assert torch.equal(got.latent, want.latent), what
    assert got.stats.head_types == want.stats.head_types, what
    assert got.stats.kv_bytes == want.stats.kv_bytes and got.stats.kv_allocated_bytes == want.stats.kv_allocated_bytes
    assert got.stats.attn_flops == want.stats.attn_flops and got.stats.attn_flops_full == want.stats.attn_flops_full


class _Counter:
    """Counts head groups built (buffers allocated) while it is installed."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = kv_cache.HeadGroup.__init__

        def init(group, *a, **kw):
            self.n += 1
            real(group, *a, **kw)

        monkeypatch.setattr(kv_cache.HeadGroup, "__init__", init)


@pytest.mark.parametrize("keep_base", [True, False])
@pytest.mark.parametrize("fast", [False, True])
def test_videos_on_a_warm_runner_equal_fresh_runners(model, fast, keep_base, monkeypatch):
    if not keep_base:  # a base over the budget: freed at the regroup, built again by reset
        monkeypatch.setattr(ChunkRunner, "keep_base_budget", lambda self: 0)
    fresh = [generate(ChunkRunner(model, fast=fast), c, SHAPE, settings(s), df()) for c, s in VIDEOS]
    types = [f.stats.head_types for f in fresh]
    assert types[0] == types[1] and types[1] != types[2], "the case needs profiles that differ (and one that does not)"
    built = _Counter(monkeypatch)
    warm = ChunkRunner(model, fast=fast, warm=True)
    caches, groups = [], []
    for i, ((c, s), want) in enumerate(zip(VIDEOS, fresh)):
        before = built.n
        got = generate(warm, c, SHAPE, settings(s), df())
        assert_same(got, want, f"video {i}")
        caches.append(warm._parked)
        groups.append(built.n - before)
        assert warm.warm_bytes()["kv"] == warm._parked.reserved_bytes() > 0
    assert all(c is caches[0] for c in caches), "the cache was not kept"
    if fast:  # between videos: one head order's weights per layer (the base's concat is not kept)
        assert all(len(per) == 1 for per in warm.fast_path._kept.values())
    assert warm._parked.keep_base == keep_base
    # a video like the last one builds nothing, or only the base groups (one per layer, alive
    # until the regroup) when the base is not kept
    assert groups[0] > 3 and groups[1] == (0 if keep_base else 3), "a video like the last one allocated buffers"
    assert groups[2] > 3  # other head types: new groups where a layer's layout differs


@pytest.mark.parametrize("fast", [False, True])
def test_a_given_head_profile_reuses_everything(model, fast, monkeypatch):
    """Profile Heads' workflow: the same head types every video; new seeds and prompts."""
    built = _Counter(monkeypatch)
    warm = ChunkRunner(model, fast=fast, warm=True)
    for i, (c, s) in enumerate([(ctx(1), 1), (ctx(1), 2), (ctx(2), 3)]):
        want = generate(ChunkRunner(model, fast=fast), c, SHAPE, settings(s), planted(model))
        before = built.n
        assert_same(generate(warm, c, SHAPE, settings(s), planted(model)), want, f"video {i}")
        new = built.n - before
        assert new == 0 if i else new > 3  # then nothing: the per-head groups and the base are kept


def test_a_prompt_switch_on_a_warm_runner(model):
    """Re-cache passes and a re-profile after the switch: the text buffers are refilled, the
    layout refilled in place; two videos equal two fresh runs."""
    prompts = [PromptSchedule([(0, ctx(1)), (6, ctx(2))]), PromptSchedule([(0, ctx(4)), (6, -3 * ctx(5))])]
    spec = df(reprofile_on_prompt_switch=True)
    warm = ChunkRunner(model, fast=True, warm=True)
    for i, p in enumerate(prompts + prompts[:1]):
        want = generate(ChunkRunner(model, fast=True), p, SHAPE, settings(i), spec)
        assert_same(generate(warm, p, SHAPE, settings(i), spec), want, f"video {i}")


def test_other_shapes_and_policies_rebuild(model):
    """A video of another length or cache policy does not get the kept cache (a new one is made)."""
    warm = ChunkRunner(model, fast=True, warm=True)
    runs = [(SHAPE, df()), ((1, 16, 15, H_LAT, W_LAT), df()), (SHAPE, CacheSpec(Retention(1, 3))), (SHAPE, df())]
    kept = []
    for shape, spec in runs:
        want = generate(ChunkRunner(model, fast=True), ctx(1), shape, settings(1), spec)
        assert_same(generate(warm, ctx(1), shape, settings(1), spec), want, str(shape))
        kept.append(warm._parked)
    assert len({id(c) for c in kept}) == len(kept)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["callback", "forward"])
def test_a_cancelled_or_failed_video_drops_the_warm_state(model, where, monkeypatch):
    warm = ChunkRunner(model, fast=True, warm=True)
    generate(warm, ctx(1), SHAPE, settings(1), df())
    assert warm.warm_bytes()["total"] > 0 and warm._parked is not None
    calls = []

    def cancel(event):  # the node's progress callback raises when the user cancels
        if event.chunk == 2:
            raise _Stop

    real = warm.forward

    def failing(x, *a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise _Stop
        return real(x, *a, **kw)

    if where == "forward":
        monkeypatch.setattr(warm, "forward", failing)
    with pytest.raises(_Stop):
        generate(warm, ctx(2), SHAPE, settings(2), df(), callback=cancel if where == "callback" else None)
    assert warm.warm_bytes() == {"kv": 0, "text": 0, "graphs": 0, "weights": 0, "total": 0}
    assert warm._parked is None and warm._text is None and not warm.fast_path._kept
    monkeypatch.undo()
    want = generate(ChunkRunner(model, fast=True), ctx(3), SHAPE, settings(3), df())
    assert_same(generate(warm, ctx(3), SHAPE, settings(3), df()), want, "after the cancel")


# -- CUDA graphs, with a stand-in on the CPU ----------------------------------------------------------
@pytest.fixture
def fake_graphs(monkeypatch):
    install_fake_graphs(monkeypatch)


@pytest.mark.parametrize("max_graphs", [2, 8])
@pytest.mark.parametrize("case", ["df", "df_given", "window"])
def test_second_video_replays_the_first_ones_graphs(model, fake_graphs, case, max_graphs):
    """Graphs captured in video 1 replay in video 2 and the videos equal fresh eager runs; a
    growing cache's first chunks are captured too, so from video 3 on (same layout) every pass
    replays; a video whose profile gives other head types captures its new layout."""
    spec = {"df": df(), "df_given": planted(model), "window": CacheSpec(Retention(1, 3))}[case]
    shape = (1, 16, 15, H_LAT, W_LAT)
    warm = ChunkRunner(model, fast=FastOptions(max_graphs=max_graphs), warm=True)
    st = warm.fast_path.graphs.stats
    videos = VIDEOS[:3] if case == "df" else [(ctx(1), 1), (ctx(1), 2), (ctx(2), 3)]
    captures, replays, eager = [], [], []
    for i, (c, s) in enumerate(videos):
        want = generate(ChunkRunner(model, fast=FastOptions(cuda_graphs=False)), c, shape, settings(s), spec)
        before = dict(st)
        got = generate(warm, c, shape, settings(s), spec)
        assert torch.equal(got.latent, want.latent), f"video {i}"
        assert got.stats.attn_flops == want.stats.attn_flops and got.stats.attn_flops_full == want.stats.attn_flops_full
        captures.append(st["captures"] - before["captures"])
        replays.append(st["replays"] - before["replays"])
        eager.append(st["eager"] - before["eager"])
        assert replays[-1] > 0, f"video {i} replayed nothing"
        assert len(warm.fast_path.graphs._graphs) <= max_graphs
    assert captures[0] >= 1, captures
    assert warm.fast_path.graphs.error is None
    if max_graphs == 2:  # no room: the steady layout's graphs are what is kept
        return
    # video 2 re-captures nothing of video 1's but the passes video 1 ran once (a growing
    # cache's cache passes): it replays more; video 3 then replays every pass
    assert replays[1] > replays[0], (captures, replays)
    if case == "df":  # other head types (online profile, another seed): their layout is captured
        assert captures[2] >= 1, captures
    else:
        assert captures[2] == 0 and eager[2] == 0, (captures, eager)


def test_a_weight_changed_between_videos_drops_graphs_and_derived_weights(fake_graphs):
    m = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=3)
    spec = df()
    shape = (1, 16, 24, H_LAT, W_LAT)
    warm = ChunkRunner(m, fast=True, warm=True)
    generate(warm, ctx(1), shape, settings(1), spec)
    st = warm.fast_path.graphs.stats
    with torch.no_grad():
        m.blocks[1].self_attn.q.weight.mul_(1.5)  # an in-place patch between videos
    before = st["captures"]
    got = generate(warm, ctx(1), shape, settings(1), spec)
    assert st["captures"] > before  # the old graphs read the old derived weights: dropped
    want = generate(ChunkRunner(m, fast=FastOptions(cuda_graphs=False)), ctx(1), shape, settings(1), spec)
    assert torch.equal(got.latent, want.latent)
