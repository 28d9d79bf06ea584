"""A run's statistics name the Dummy Forcing preset that made it (or "custom"), and count FPS in
the video frames of the model's latent format (Wan's VAE: the first latent frame decodes to one
frame, every other to 4; the tiny model's codec: 1 each), not always Wan's."""
import dataclasses
import statistics

import pytest
import torch
from helpers import make_tiny_wan

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import CUSTOM, PRESETS, DummyForcingConfig
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.stats import GenerationStats
from dummy_forcing_core.tiny.codec import CODEC

SHAPE = (1, 16, 12, 4, 4)  # 4 chunks of 3: enough for LongLive's ar_start 2
SETTINGS = SamplerSettings(chunk_frames=3, timesteps=(1000.0,))


@pytest.fixture(scope="module")
def runner():
    return ChunkRunner(make_tiny_wan(layers=2, heads=4, head_dim=16, seed=3))


def run(runner, cfg):
    ctx = torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return generate(runner, ctx, SHAPE, SETTINGS, CacheSpec(dummy_forcing=cfg)).stats


@pytest.mark.parametrize("preset", list(PRESETS))
def test_stats_name_the_preset_of_the_run(runner, preset):
    cfg = DummyForcingConfig(dummy_heads=0.25, profile_sample_fraction=1.0).with_preset(preset)
    stats = run(runner, cfg)
    assert stats.dummy_forcing["preset"] == preset
    line = next(x for x in stats.to_text().splitlines() if x.startswith("dummy forcing:"))
    assert line.endswith(f" preset={preset}")
    assert stats.to_dict()["dummy_forcing"]["preset"] == preset
    assert stats.switch_chunk == cfg.ar_start + 1  # the preset's settings did run


def test_the_preset_is_a_label_not_a_setting():
    sf = DummyForcingConfig().with_preset("Self Forcing / Causal Forcing / CausVid")
    krea = DummyForcingConfig().with_preset("Krea Realtime 14B")
    assert sf == krea  # the same settings (Krea's are our choice: Self Forcing's) ...
    assert (sf.describe()["preset"], krea.describe()["preset"]) == (sf.preset, krea.preset)  # ... named apart
    # a setting changed after the preset: the run is no longer the preset's
    edited = dataclasses.replace(DummyForcingConfig().with_preset("LongLive"), ar_start=3)
    assert edited.describe()["preset"] == CUSTOM
    assert DummyForcingConfig().describe()["preset"] == CUSTOM
    assert DummyForcingConfig(preset="no such preset").describe()["preset"] == CUSTOM


def test_stats_without_dummy_forcing_say_it_is_off(runner):
    ctx = torch.randn(1, 5, 32, dtype=torch.float64)
    stats = generate(runner, ctx, SHAPE, SETTINGS, CacheSpec()).stats
    assert stats.dummy_forcing is None and "dummy forcing: off" in stats.to_text()


def wan_video_frames(latent_frames: int) -> int:
    """Frames Wan's causal VAE decodes: the first latent frame to 1, each next one to 4
    (EmptyHunyuanLatentVideo's length 81 is 21 latent frames)."""
    return 1 + 4 * (latent_frames - 1)


@pytest.mark.parametrize("frames_per_latent", [1, 4])
def test_fps_counts_the_latent_formats_frames(runner, frames_per_latent):
    stats = run(runner, DummyForcingConfig())
    stats.chunk_seconds = [4.0, 2.0, 1.0, 3.0]  # per-head cache from chunk 2: steady chunks 2, 3
    stats.frames_per_latent = frames_per_latent
    F = SHAPE[2]
    if frames_per_latent == 1:  # the tiny codec: decode a latent of F frames and count
        video = CODEC.decode(torch.zeros(1, CODEC.latent_channels, F, 2, 2)).shape[2]
        per_chunk = CODEC.decode(torch.zeros(1, CODEC.latent_channels, 3, 2, 2)).shape[2]
    else:
        video, per_chunk = wan_video_frames(F), 4 * 3
    assert wan_video_frames(21) == 81
    steady, clip = stats.fps()
    assert clip == pytest.approx(video / 10.0)
    assert steady == pytest.approx(per_chunk / statistics.median_high([1.0, 3.0]))
    assert f"FPS (video frames, {frames_per_latent} per latent frame; DiT only): steady {steady:.2f}, whole clip " \
           f"{clip:.2f}" in stats.to_text()
    assert (stats.to_dict()["fps_steady"], stats.to_dict()["fps_clip"]) == (steady, clip)


def test_fps_default_is_wans(runner):
    stats = run(runner, DummyForcingConfig())
    assert stats.frames_per_latent == 4 and GenerationStats.frames_per_latent == 4
