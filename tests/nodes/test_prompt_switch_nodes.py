"""Prompt schedules through the nodes: AR Prompt Start tags, Conditioning (Combine) joins, AR Video
Sampler switches (and re-caches) at each start."""
from __future__ import annotations

import pytest
import torch

from node_helpers import ModelSnapshot, cond, video_latent

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate


def tag(run_node, N, c, start, unit="latent frames"):
    return run_node(N["ARPromptStart"], conditioning=c, start=start, unit=unit)[0]


def test_a_schedule_through_the_nodes_equals_the_core(run_node, N, model):
    a, b, c = cond(1), cond(2), cond(3)
    positive = a + tag(run_node, N, b, 2) + tag(run_node, N, c, 1.0, "seconds")  # 1 s = latent frame 4
    snap = ModelSnapshot(model)
    out = run_node(N["ARVideoSampler"], model=model, positive=positive, latent=video_latent(frames=6),
                   frames_per_chunk=1, seed=4)
    snap.assert_unchanged()
    lat, stats = out[0]["samples"], out[1]
    assert [s["chunk"] for s in stats.prompt_switches] == [2, 4]
    assert all(s["recache"] and s["recache_passes"] >= 1 for s in stats.prompt_switches)
    fmt = model.model.latent_format
    ref = generate(ChunkRunner(model.model.diffusion_model), PromptSchedule([(0, a[0][0]), (2, b[0][0]),
                                                                            (4, c[0][0])]),
                   (1, 16, 6, 4, 4), SamplerSettings(chunk_frames=1, shift=5.0, seed=4), CacheSpec())
    assert torch.equal(lat, fmt.process_out(ref.latent).float())
    untagged_first_anywhere = tag(run_node, N, b, 2) + a  # the untagged prompt plays first wherever it is
    again = run_node(N["ARVideoSampler"], model=model, positive=untagged_first_anywhere + tag(run_node, N, c, 4),
                     latent=video_latent(frames=6), frames_per_chunk=1, seed=4)[0]["samples"]
    assert torch.equal(again, lat)
    off = run_node(N["ARVideoSampler"], model=model, positive=positive, latent=video_latent(frames=6),
                   frames_per_chunk=1, seed=4, recache_on_switch=False)
    assert off[1].prompt_switches[0]["recache_passes"] == 0 and not torch.equal(off[0]["samples"], lat)


def test_prompt_schedule_errors_name_the_input(run_node, N, model):
    a, b, c = cond(1), cond(2), cond(3)
    lat = video_latent(frames=6)

    def fails(positive, match, **kw):
        with pytest.raises(ValueError, match=match):
            run_node(N["ARVideoSampler"], model=model, positive=positive, latent=lat, **{"frames_per_chunk": 1, **kw})

    fails(a + tag(run_node, N, b, 4) + tag(run_node, N, c, 2), r"^AR Video Sampler: the prompts of 'positive' start at "
          r"latent frames \[0, 4, 2\]: out of order")
    fails(a + tag(run_node, N, b, 3) + tag(run_node, N, c, 3), r"two prompts of 'positive' start at latent frame 3")
    fails(a + tag(run_node, N, b, 6), r"starts at latent frame 6, beyond the video \(6 latent frames")
    fails(a + tag(run_node, N, b, 3) + tag(run_node, N, c, 4), r"start at latent frames 3 and 4, both in the chunk",
          frames_per_chunk=3)
    fails(a + b + tag(run_node, N, c, 3), r"holds 2 prompts without a start")
    with pytest.raises(ValueError, match=r"^AR Prompt Start: 'start' = 2.5 latent frames is not a whole frame"):
        tag(run_node, N, b, 2.5)
    with pytest.raises(ValueError, match=r"^AR Prompt Start: 'start' = nan"):
        tag(run_node, N, b, float("nan"), "seconds")


def test_reprofile_widget_reaches_the_policy(run_node, N, model):
    df = run_node(N["ApplyDummyForcing"], model=model, reprofile_on_prompt_switch=True, profile_sample_fraction=1.0)[0]
    positive = cond(1) + tag(run_node, N, cond(2), 4)
    _, stats, _ = run_node(N["ARVideoSampler"], model=df, positive=positive, latent=video_latent(frames=6),
                        frames_per_chunk=1).args
    assert stats.prompt_switches[0]["reprofiled"]
    with pytest.raises(ValueError, match=r"^Apply Dummy Forcing: 'reprofile_on_prompt_switch' .* 'recache_on_switch'"):
        run_node(N["ARVideoSampler"], model=df, positive=positive, latent=video_latent(frames=6), frames_per_chunk=1,
                 recache_on_switch=False)
