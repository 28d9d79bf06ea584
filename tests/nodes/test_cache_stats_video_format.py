"""Cache Stats counts FPS in the video frames of the MODEL's latent format (Wan's VAE 4 per latent
frame, the shipped tiny model's codec 1) and names the Apply Dummy Forcing preset of the run."""
from __future__ import annotations

import os
import re
import types

import pytest
import torch

import comfy
import comfy.latent_formats
from node_helpers import cond, pack_nodes, tiny_causal_wan

from dummy_forcing_core.tiny.codec import CODEC
from dummy_forcing_core.tiny.model import DEFAULT_PATH

if not getattr(comfy, "IS_COMFY_STUB", False):
    pytest.skip("runs on the stub (a real ComfyUI: tests/real_comfyui)", allow_module_level=True)

from comfy_extras import nodes_ar_video as ar  # noqa: E402
from comfy_extras import nodes_custom_sampler as cs  # noqa: E402

SELF_FORCING = "Self Forcing / Causal Forcing / CausVid"


@pytest.fixture
def N():
    return pack_nodes()


def core_loop(run_node, model, positive, latent, block=3, steps=1):
    """SamplerCustomAdvanced(RandomNoise, CFGGuider cfg 1, Sampler AR Video, BasicScheduler simple)."""
    noise = run_node(cs.RandomNoise, noise_seed=0)[0]
    guider = run_node(cs.CFGGuider, model=model, positive=positive, negative=positive, cfg=1.0)[0]
    sampler = ar.SamplerARVideo.execute(num_frame_per_block=block)[0]
    sigmas = run_node(cs.BasicScheduler, model=model, scheduler="simple", steps=steps, denoise=1.0)[0]
    return run_node(cs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)[0]


def last_stats(model):
    from ComfyUI_Dummy_Forcing.nodes import core_ar_loop  # loaded by the N fixture

    return core_ar_loop.last_stats(model)


def fps_line(text: str) -> tuple[int, float]:
    """(frames per latent frame, whole-clip FPS) read off Cache Stats' text."""
    m = re.search(r"FPS \(video frames, (\d+) per latent frame; DiT only\): steady [\d.]+, whole clip ([\d.]+)", text)
    assert m, text
    return int(m.group(1)), float(m.group(2))


def test_frames_per_latent_of_a_model(N, stub_model_patcher):
    from ComfyUI_Dummy_Forcing.nodes import core_ar_loop, tiny_comfy_model  # loaded by the N fixture

    wan = stub_model_patcher(tiny_causal_wan())
    assert core_ar_loop.frames_per_latent(wan) == 4
    assert core_ar_loop.frames_per_latent(types.SimpleNamespace(
        model=types.SimpleNamespace(latent_format=tiny_comfy_model.TinyLatent()))) == 1
    # a host whose latent formats do not say (ComfyUI 0.3.x, the stub): Wan's; ComfyUI 0.27's Wan21 says 4
    def of(fmt):
        return core_ar_loop.frames_per_latent(types.SimpleNamespace(model=types.SimpleNamespace(latent_format=fmt)))
    assert of(types.SimpleNamespace(latent_channels=16)) == 4 and of(comfy.latent_formats.Wan21()) == 4
    assert of(types.SimpleNamespace(temporal_downscale_ratio=4)) == 4
    assert of(types.SimpleNamespace(temporal_downscale_ratio=1)) == 1


def test_core_loop_wan_counts_four_and_names_the_preset(run_node, N, stub_model_patcher):
    model = stub_model_patcher(tiny_causal_wan())
    df = run_node(N["ApplyDummyForcing"], model=model, preset=SELF_FORCING)[0]
    out = core_loop(run_node, df, cond(1), {"samples": torch.zeros(1, 16, 9, 4, 4)})
    text = run_node(N["CacheStats"], model=df, latent=out)[0]
    stats = last_stats(df)
    assert fps_line(text) == (4, round(stats.fps()[1], 2)) and f"preset={SELF_FORCING}" in text
    assert stats.fps()[1] == pytest.approx((1 + 4 * 8) / sum(stats.chunk_seconds))  # 9 latent frames: 33 frames


@pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")
def test_core_loop_tiny_model_counts_one(run_node, N):
    model, text_encoder = run_node(N["DFTinyModelLoader"]).args
    c = run_node(N["DFTinyTextEncode"], text_encoder=text_encoder, prompt="a big red circle at center").args[0]
    lat = run_node(N["DFTinyEmptyLatent"], frames=9, size=32, batch_size=1).args[0]
    df = run_node(N["ApplyDummyForcing"], model=model, preset="custom")[0]
    out = core_loop(run_node, df, c, lat)
    text = run_node(N["CacheStats"], model=df, latent=out)[0]
    stats = last_stats(df)
    frames, = run_node(N["DFTinyDecode"], latent=out, scale=1).args
    video = CODEC.decode(out["samples"]).shape[2]
    assert frames.shape[0] == video == 9 and "preset=custom" in text
    assert fps_line(text) == (1, round(stats.fps()[1], 2))
    assert stats.fps()[1] == pytest.approx(video / sum(stats.chunk_seconds))


def test_ar_video_sampler_wan_counts_four(run_node, N, stub_model_patcher):
    model = stub_model_patcher(tiny_causal_wan())
    _, stats = run_node(N["ARVideoSampler"], model=model, positive=cond(1),
                        latent={"samples": torch.zeros(1, 16, 6, 4, 4)}, frames_per_chunk=3)[:2]
    assert stats.frames_per_latent == 4


@pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")
def test_ar_video_sampler_tiny_model_counts_one(run_node, N):
    model, text_encoder = run_node(N["DFTinyModelLoader"]).args
    c = run_node(N["DFTinyTextEncode"], text_encoder=text_encoder, prompt="a big red circle at center").args[0]
    lat = run_node(N["DFTinyEmptyLatent"], frames=6, size=32, batch_size=1).args[0]
    _, stats = run_node(N["ARVideoSampler"], model=model, positive=c, latent=lat, frames_per_chunk=3,
                        denoise_timesteps="1000")[:2]
    assert stats.frames_per_latent == 1
