"""Core errors of issue 20 (items 5, 6, 10): the base cache's widgets named by (owner, name)
with the least values that fix them, NaN from the model under online profiling named as the
model's, a prompt schedule refusing a start before the video."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from helpers import make_tiny_wan
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_plan import plan_chunks
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=2, heads=4, head_dim=16, seed=2)


def _fits(cfg, geom, plan, base) -> bool:
    try:
        cfg.check_video(geom, plan, base)
        return True
    except SettingError:
        return False


def test_base_cache_errors_propose_the_least_sink_or_window_that_works(model):
    """Over a grid of Dummy Forcing settings and base caches, every refusal names the base
    cache's 'sink_frames' / 'window_frames' as references (owner "cache") and proposes values
    that fit, one less of which does not (checked against check_video itself)."""
    geom = ModelGeometry.of(model)
    plan = plan_chunks((1, 16, 12, 4, 4), 2)
    refused = 0
    for sink, chunks, a, bs, bw in itertools.product((1, 2), (1, 2), (1, 2), (0, 1), (0, 1, 2)):
        cfg = DummyForcingConfig(dummy_heads=0.5, sink_frames=sink, neighbor_chunks=chunks, ar_start=a)
        base = Retention(bs, bw)
        try:
            cfg.check_video(geom, plan, base)
            continue
        except SettingError as e:
            err = e
        refused += 1
        assert err.owner == "dummy_forcing" and err.refs["base_sink"] == ("cache", "sink_frames")
        assert err.refs["base_window"] == ("cache", "window_frames") and err.refs["cache"] == ("cache", "cache")
        msg = str(err)
        assert "base sink / window" not in msg and "the base cache's 'cache' to 'full'" in msg
        m = re.search(r"raise the base cache's 'sink_frames' to (\d+) or the base cache's 'window_frames' to (\d+)",
                      msg)
        assert m, msg
        s, w = int(m.group(1)), int(m.group(2))
        assert _fits(cfg, geom, plan, Retention(s, bw)) and not _fits(cfg, geom, plan, Retention(s - 1, bw))
        assert _fits(cfg, geom, plan, Retention(bs, w)) and not _fits(cfg, geom, plan, Retention(bs, w - 1))
        one_type = msg.count("heads keep") == 1  # lowering one setting fixes one head type only
        assert ("or lower '" in msg) == (one_type and getattr(cfg, err.name) > 1)
    assert refused >= 10


def test_nan_weights_under_online_profiling_name_the_model(model):
    broken = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=2)
    with torch.no_grad():
        broken.blocks[0].self_attn.q.weight[0, 0] = float("inf")
    ctx = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    spec = CacheSpec(None, DummyForcingConfig(dummy_heads=0.5))
    calls = []
    with pytest.raises(SettingError, match=r"^the model produced NaN or infinite values in the attention Dummy "
                       r"Forcing profiled \(chunk 1\): its weights may be damaged") as e:
        generate(ChunkRunner(broken), ctx, (1, 16, 6, 4, 4), SamplerSettings(chunk_frames=1, timesteps=(1000.0,)),
                 spec, callback=lambda ev: calls.append(ev.chunk))
    assert (e.value.owner, e.value.name) == ("input", "model")
    assert max(calls) == 1  # stopped at the profiled chunk, not at the end of the video
    generate(ChunkRunner(model), ctx, (1, 16, 6, 4, 4), SamplerSettings(chunk_frames=1, timesteps=(1000.0,)), spec)


def test_a_prompt_schedule_refuses_a_start_before_the_video():
    a, b = torch.zeros(1, 2, 4), torch.ones(1, 2, 4)
    with pytest.raises(SettingError, match=r"starts at latent frame -4: frames are numbered from 0") as e:
        PromptSchedule([(0, a), (-4, b)], "positive")
    assert "out of order" not in str(e.value) and e.value.name == "positive"
