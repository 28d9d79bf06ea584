"""Profile Heads' profile_sink_frames widget reaches the profile (and its file); an old
workflow without it keeps today's region (frames with index < sink_frames)."""
from __future__ import annotations

import os

import pytest
from node_helpers import cond, video_latent

from dummy_forcing_core.head_profile import HeadProfile


def test_profile_sink_frames_widget_is_used_and_saved(run_node, N, model, comfy_dirs):
    args = dict(conditioning=cond(1), latent=video_latent(frames=5), frames_per_chunk=1, ar_start=3,
                denoise_timesteps="1000")
    default = run_node(N["ProfileHeads"], model=model, **args)[0]  # widget absent, as in an old workflow
    assert default.settings["profile_sink_frames"] == 0
    out = run_node(N["ProfileHeads"], model=model, profile_sink_frames=2, save_name="region", **args)
    prof = out[0]
    assert prof.settings["profile_sink_frames"] == 2 and "sink region=first 2 cached frames" in out.ui["text"][0]
    # at ar_start 3 with 1-frame chunks the cache holds frames 0, 1, 2: a 2-frame region moves frame
    # 1's attention from neighbor to sink; the cached frames' total and the current chunk's stay
    assert (prof.scores[..., 0] > default.scores[..., 0]).all() and (prof.scores[..., 1] < default.scores[..., 1]).all()
    assert (prof.scores[..., 2] - default.scores[..., 2]).abs().max() < 1e-5
    saved = HeadProfile.load(os.path.join(comfy_dirs.output, "dummy_forcing", "profiles", "region.safetensors"))
    assert saved.settings["profile_sink_frames"] == 2


def test_profile_sink_frames_covering_the_cache_is_refused(run_node, N, model, comfy_dirs):
    with pytest.raises(Exception, match="Profile Heads: 'profile_sink_frames' = 2 leaves no neighbor frame"):
        run_node(N["ProfileHeads"], model=model, conditioning=cond(1), latent=video_latent(frames=3),
                 frames_per_chunk=1, ar_start=1, profile_sink_frames=2, save_name="never")
    assert not os.path.exists(os.path.join(comfy_dirs.output, "dummy_forcing", "profiles", "never.safetensors"))
