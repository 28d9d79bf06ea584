"""Prompt switches (LongLive-style KV re-cache) against an independent float64 reference: after a
switch, every head's cached K/V equal a fresh block-causal pass over the frames the cache still
holds, at their absolute positions, under the new prompt (tests/reference_wan.py)."""
import pytest
import torch

from helpers import make_tiny_wan, rel
from reference_wan import reference_forward

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.head_program import HeadType
from dummy_forcing_core.kv_cache import FULL, Retention
from dummy_forcing_core.prompt_schedule import PromptSchedule, latent_frame_of
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.video_session import VideoSession

H_LAT, W_LAT, TPF = 4, 6, 6
S, N, D = HeadType.SINK, HeadType.NEIGHBOR, HeadType.DUMMY
SCORE = {S: (0.6, 0.1, 0.3), N: (0.1, 0.6, 0.3), D: (0.01, 0.02, 0.97)}
TYPES = [[S, D, N, D], [N, S, D, S], [N, N, D, N]]


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=3, heads=4, head_dim=16, seed=11)


def ctx(seed):
    return torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def profile(model):
    scores = torch.tensor([[SCORE[t] for t in layer] for layer in TYPES], dtype=torch.float32)
    return HeadProfile(scores, ModelGeometry.of(model), {"planted": True})


def policies(model):
    df = dict(dummy_head_count=4, head_profile=profile(model), ar_start=1)
    return {"full": CacheSpec(), "sink+window": CacheSpec(Retention(1, 3)),
            "dummy forcing": CacheSpec(dummy_forcing=DummyForcingConfig(**df)),
            "df long context + window base": CacheSpec(Retention(2, 6), DummyForcingConfig(long_context_frames=4, **df)),
            "df, packing off": CacheSpec(dummy_forcing=DummyForcingConfig(context_packing=False, **df))}


class Capture:
    """The session's state right after each prompt switch."""

    def __init__(self, monkeypatch):
        self.states = []
        real = VideoSession.switch_prompt

        def spy(session, context, chunk, recache=True, on_pass=None):
            n = real(session, context, chunk, recache, on_pass)
            groups = [[(g.head_list, [g.frame_ids(r) for r in range(g.num_heads)], g.k.clone(), g.v.clone())
                       for g in layer.groups] for layer in session.cache.layers]
            written = {f0: (x.clone(), t.clone()) for f0, (x, t) in session._written.items()}
            self.states.append({"groups": groups, "written": written, "frames": session.cache.kept_frames(),
                                "passes": n, "context": context})
            return n

        monkeypatch.setattr(VideoSession, "switch_prompt", spy)


def reference_kv(model, state, chunk_frames):
    """Per layer (k, v) [L_kept, H, D] of a fresh pass over the kept frames under the new prompt:
    each run of consecutive kept frames of a written piece sees itself and the runs before it."""
    frames = state["frames"]
    kept = set(frames)
    xs, ts, run_of = [], [], []
    for f0 in sorted(state["written"]):
        x, t = state["written"][f0]
        run = None
        for f in range(f0, f0 + x.shape[2]):
            if f in kept:
                run = len(set(run_of)) if run is None or run_of[-1] != run or f - 1 not in kept else run
                xs.append(x[0, :, f - f0])
                ts.append(float(t[0]))
                run_of.append(run)
    runs = torch.tensor(run_of)
    mask = (runs[:, None] >= runs[None, :]).repeat_interleave(TPF, 0).repeat_interleave(TPF, 1)
    capture = []
    reference_forward(model.state_dict(), model.num_heads, torch.stack(xs, 1), torch.tensor(ts), state["context"][0],
                      frames, mask, capture=capture)
    return capture


@pytest.mark.parametrize("name", ["full", "sink+window", "dummy forcing", "df long context + window base",
                                  "df, packing off"])
def test_recached_kv_equal_a_fresh_pass_over_the_kept_frames(model, monkeypatch, name):
    cap = Capture(monkeypatch)
    spec = policies(model)[name]
    prompts = PromptSchedule([(0, ctx(1)), (12, ctx(2))])  # the switch comes after 4 chunks of 3 frames
    res = generate(ChunkRunner(model), prompts, (1, 16, 18, H_LAT, W_LAT), SamplerSettings(timesteps=(1000, 500)),
                   spec)
    (state,) = cap.states
    assert state["passes"] >= 1 and res.stats.prompt_switches[0]["chunk"] == 4
    ref = reference_kv(model, state, 3)
    pos = {f: i for i, f in enumerate(state["frames"])}
    checked = 0
    for layer, groups in enumerate(state["groups"]):
        rk, rv = ref[layer]
        for heads, frame_ids, k, v in groups:
            for row, (h, ids) in enumerate(zip(heads, frame_ids)):
                tok = torch.cat([torch.arange(pos[f] * TPF, (pos[f] + 1) * TPF) for f in ids]) if ids else None
                if tok is None:
                    continue
                got_k = k[0, row, :len(ids) * TPF]
                got_v = v[0, row, :len(ids) * TPF]
                assert rel(got_k, rk[tok, h]) < 1e-9 and rel(got_v, rv[tok, h]) < 1e-9, (layer, h, ids)
                checked += 1
    assert checked >= 6


def test_a_switch_to_the_same_prompt_with_a_full_cache_changes_nothing(model):
    """Every frame stays cached, so the re-cache recomputes exactly the K/V the cache had."""
    st = SamplerSettings(timesteps=(1000, 500), seed=3)
    shape = (1, 16, 12, H_LAT, W_LAT)
    one = generate(ChunkRunner(model), ctx(1), shape, st)
    again = generate(ChunkRunner(model), PromptSchedule([(0, ctx(1)), (6, ctx(1))]), shape, st)
    assert rel(again.latent, one.latent) < 1e-12 and again.stats.prompt_switches[0]["recache_passes"] == 2


def test_switches_change_what_follows_and_only_that(model):
    st = SamplerSettings(timesteps=(1000, 500), seed=3)
    shape = (1, 16, 12, H_LAT, W_LAT)
    a = generate(ChunkRunner(model), ctx(1), shape, st)
    at0 = generate(ChunkRunner(model), PromptSchedule([(0, ctx(2))]), shape, st)
    b = generate(ChunkRunner(model), ctx(2), shape, st)
    assert torch.equal(at0.latent, b.latent)  # a schedule that starts with B is a single-prompt run of B
    switched = generate(ChunkRunner(model), PromptSchedule([(0, ctx(1)), (7, ctx(2))]), shape, st)
    assert torch.equal(switched.latent[:, :, :6], a.latent[:, :, :6])  # before the chunk holding frame 7
    assert rel(switched.latent[:, :, 6:], a.latent[:, :, 6:]) > 1e-3
    plain = generate(ChunkRunner(model), PromptSchedule([(0, ctx(1)), (7, ctx(2))]), shape,
                     SamplerSettings(timesteps=(1000, 500), seed=3, recache=False))
    assert rel(plain.latent[:, :, 6:], switched.latent[:, :, 6:]) > 1e-4  # the re-cache mattered
    assert plain.stats.prompt_switches[0]["recache_passes"] == 0


def test_progress_counts_recache_passes_and_cancel_works_between_them(model):
    events = []
    shape = (1, 16, 12, H_LAT, W_LAT)
    prompts = PromptSchedule([(0, ctx(1)), (9, ctx(2))])
    generate(ChunkRunner(model), prompts, shape, SamplerSettings(timesteps=(1000, 500)), CacheSpec(Retention(1, 3)),
             callback=events.append)
    kinds = [e.kind for e in events]
    assert kinds.count("recache") == 2  # frames 0 (sink) and 6..8 (window): two runs
    assert events[-1].done == events[-1].total == len(events)

    class Stop(Exception):
        pass

    def cancel(e):
        if e.kind == "recache":
            raise Stop

    with pytest.raises(Stop):
        generate(ChunkRunner(model), prompts, shape, SamplerSettings(timesteps=(1000, 500)), callback=cancel)


def test_reprofiling_after_a_switch(model):
    cfg = DummyForcingConfig(dummy_heads=0.5, ar_start=1, profile_sample_fraction=1.0, reprofile_on_prompt_switch=True)
    shape = (1, 16, 18, H_LAT, W_LAT)
    prompts = PromptSchedule([(0, ctx(1)), (12, -3 * ctx(2))])
    res = generate(ChunkRunner(model), prompts, shape, SamplerSettings(timesteps=(1000, 500)), CacheSpec(dummy_forcing=cfg))
    sw = res.stats.prompt_switches[0]
    assert sw["reprofiled"] and 0.0 <= sw["dummy_overlap"] <= 1.0 and sw["profile_seconds"] > 0
    kept = generate(ChunkRunner(model), prompts, shape, SamplerSettings(timesteps=(1000, 500)),
                    CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, ar_start=1,
                                                               profile_sample_fraction=1.0)))
    assert "reprofiled" not in kept.stats.prompt_switches[0]
    assert torch.equal(res.latent[:, :, :15], kept.latent[:, :, :15])  # the re-profiled chunk itself is the same
    with pytest.raises(ValueError, match="'reprofile_on_prompt_switch' .* turn the sampler's 'recache_on_switch' on"):
        generate(ChunkRunner(model), prompts, shape, SamplerSettings(timesteps=(1000,), recache=False),
                 CacheSpec(dummy_forcing=cfg))


def test_bad_schedules_are_refused(model):
    shape = (1, 16, 12, H_LAT, W_LAT)
    run = ChunkRunner(model)
    st = SamplerSettings(timesteps=(1000,))
    with pytest.raises(ValueError, match="out of order"):
        PromptSchedule([(0, ctx(1)), (9, ctx(2)), (6, ctx(3))])
    with pytest.raises(ValueError, match="two prompts of 'positive' start at latent frame 6"):
        PromptSchedule([(0, ctx(1)), (6, ctx(2)), (6, ctx(3))])
    with pytest.raises(ValueError, match="first prompt .* starts at latent frame 3"):
        PromptSchedule([(3, ctx(1))])
    with pytest.raises(ValueError, match="beyond the video"):
        generate(run, PromptSchedule([(0, ctx(1)), (12, ctx(2))]), shape, st)
    with pytest.raises(ValueError, match="both in the chunk of frames 6..8"):
        generate(run, PromptSchedule([(0, ctx(1)), (6, ctx(2)), (8, ctx(3))]), shape, st)
    assert latent_frame_of(0) == 0 and latent_frame_of(1 / 16) == 1 and latent_frame_of(1.0) == 4
    assert latent_frame_of(5.0) == 20  # 5 s = video frame 80 = latent frame 20 of an 81-frame clip
