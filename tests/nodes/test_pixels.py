"""Pixels out through the nodes (stub ComfyUI): AR Video Sampler with a VAE and AR Video Decode give
VAE Decode's frames, write whole video files or none, and refuse bad input before sampling."""
from __future__ import annotations

import os
import sys

import pytest
import torch

import comfy.model_management as mm
import comfy_stub_tools
from node_helpers import PACK_MODULE, cond, tiny_wan, video_latent

pytestmark = pytest.mark.skipif(not getattr(__import__("comfy"), "IS_COMFY_STUB", False),
                                reason="stub VAE; real ComfyUI: tests/real_comfyui")


@pytest.fixture
def vae():
    import comfy.sd
    return comfy.sd.VAE()


@pytest.fixture
def model(stub_model_patcher):
    return stub_model_patcher(tiny_wan(), shift=5.0)


def vae_decode(vae, latent):
    """What VAE Decode returns for a video latent: [B * T, H, W, 3]."""
    x = vae.decode(latent["samples"])
    return x.reshape(-1, *x.shape[-3:])


def sample(run_node, N, model, **kw):
    return run_node(N["ARVideoSampler"], model=model, positive=cond(), latent=video_latent(frames=7),
                    frames_per_chunk=3, **kw)


def files_in(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_sampler_frames_equal_vae_decode_of_its_latent(run_node, N, model, vae, output_dir):
    latent, _, images = sample(run_node, N, model, vae=vae, live_preview=False)
    plain = sample(run_node, N, model)
    assert torch.equal(latent["samples"], plain[0]["samples"])  # decoding changes nothing upstream
    assert plain[2] is None
    ref = vae_decode(vae, latent)
    assert images.shape == ref.shape == (1 + 4 * 6, 32, 32, 3)
    torch.testing.assert_close(images, ref, rtol=0, atol=1e-6)
    assert files_in(output_dir) == []


def test_sampler_writes_the_video_and_returns_the_last_frame_only(run_node, N, model, vae, output_dir):
    av = pytest.importorskip("av")
    out = run_node(N["ARVideoSampler"], model=model, positive=cond(), latent=video_latent(frames=7),
                   frames_per_chunk=3, vae=vae, return_frames=False, save_video="mp4",
                   filename_prefix="clips/run", live_preview=False)
    latent, _, last = out.result
    ref = vae_decode(vae, latent)
    torch.testing.assert_close(last, ref[-1:], rtol=0, atol=1e-6)
    assert files_in(output_dir) == [os.path.join("clips", "run_00001_.mp4")]
    with av.open(os.path.join(output_dir, "clips", "run_00001_.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == ref.shape[0]
    saved = comfy_stub_tools.ui_dict(out)["images"]  # shown on the node as Save Video shows its file
    assert saved[0]["filename"] == "run_00001_.mp4" and saved[0]["subfolder"] == "clips"


def test_cancel_leaves_no_file(run_node, N, model, vae, output_dir, monkeypatch):
    px = sys.modules[PACK_MODULE + ".nodes.pixel_output"]  # the pack's module, as ComfyUI loads it

    pushed = []
    original = px.PixelStream.push

    def push_then_cancel(self, latent):
        original(self, latent)
        pushed.append(latent.shape[2])
        if len(pushed) == 2:
            mm.interrupt_current_processing(True)  # the user presses Cancel after the second chunk

    monkeypatch.setattr(px.PixelStream, "push", push_then_cancel)
    with pytest.raises(mm.InterruptProcessingException):
        sample(run_node, N, model, vae=vae, save_video="mp4", live_preview=False)
    assert len(pushed) == 2
    assert files_in(output_dir) == []  # neither the final name nor the partial file


@pytest.mark.parametrize("bad,named", [
    (dict(vae="sd_vae"), "'vae'"),
    (dict(save_video="mp4"), "'save_video'"),
    (dict(vae="ok", save_video="mp4", filename_prefix="../../outside/run"), "'filename_prefix'"),
    (dict(vae="ok", frame_rate=float("nan")), "'frame_rate'"),
])
def test_bad_pixel_input_is_refused_before_sampling(run_node, N, model, vae, output_dir, monkeypatch, bad, named):
    import comfy.sd
    sampler_node = sys.modules[PACK_MODULE + ".nodes.sampler"]

    def no_sampling(*a, **k):
        raise AssertionError("sampled despite bad input")

    monkeypatch.setattr(sampler_node, "generate", no_sampling)
    kw = dict(bad)
    if kw.get("vae") == "sd_vae":
        kw["vae"] = comfy.sd.VAE(first_stage_model=torch.nn.Conv2d(4, 3, 1), latent_channels=4)
    elif kw.get("vae") == "ok":
        kw["vae"] = vae
    with pytest.raises(ValueError) as e:
        sample(run_node, N, model, **kw)
    msg = str(e.value)
    assert msg.startswith("AR Video Sampler:") and named in msg and "\n" not in msg
    assert files_in(output_dir) == []


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_decode_node_equals_vae_decode(run_node, N, vae, chunk, output_dir):
    latent = video_latent(batch=2, frames=6, seed=3)
    images = run_node(N["ARVideoDecode"], samples=latent, vae=vae, chunk_frames=chunk, live_preview=False)[0]
    torch.testing.assert_close(images, vae_decode(vae, latent), rtol=0, atol=1e-6)


def test_decode_node_refuses_image_latents_and_other_vaes(run_node, N, vae):
    import comfy.sd
    with pytest.raises(ValueError, match="AR Video Decode: .*'samples'.*video latent"):
        run_node(N["ARVideoDecode"], samples={"samples": torch.zeros(1, 16, 4, 4)}, vae=vae)
    wan22 = comfy.sd.VAE(latent_channels=48)
    with pytest.raises(ValueError, match="AR Video Decode: .*'vae'.*Wan2.1"):
        run_node(N["ARVideoDecode"], samples=video_latent(channels=48), vae=wan22)
