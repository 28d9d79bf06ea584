"""The shipped small model in a graph (stub ComfyUI): Load Tiny Model, Tiny Text Encode, Tiny Empty
Latent, Tiny Decode, the first_try_tiny_model.json workflow end to end, ComfyUI's own AR sampler on
the model, and the latents / conditionings of the wrong model refused.

Quality bars and the numbers measured when they were set: tests/tiny_quality.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from node_helpers import ModelSnapshot, cond, tiny_wan, video_latent
from test_workflow_graphs import CoreStandIns, _workflow_tools, execute
from tiny_quality import CORE_PSNR_MIN, CORE_SSIM_MIN, check_quality

import comfy.model_management
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.stats import GenerationStats
from dummy_forcing_core.tiny.codec import CODEC
from dummy_forcing_core.tiny.model import DEFAULT_PATH, load_tiny, read_tiny
from dummy_forcing_core.tiny.world import DEFAULT_PROMPT, PROMPT_FORM

pytestmark = pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")


def pack_module(name: str):
    import importlib

    return importlib.import_module(f"ComfyUI_Dummy_Forcing.nodes.{name}")  # the pack is loaded by the N fixture


def video_of(frames: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """IMAGE frames [F, H, W, 3] in [0, 1] (one video) -> [3, F, H/scale, W/scale] in [-1, 1]."""
    return frames[:, ::scale, ::scale].permute(3, 0, 1, 2) * 2 - 1


@pytest.fixture
def tiny(N, run_node):
    model, text = run_node(N["DFTinyModelLoader"]).args
    return model, text


@pytest.fixture(scope="module")
def reference():
    """The demo's videos of the workflow's prompt and seed: the core's own loop on the pack's
    WanModel, loaded from the file without ComfyUI (full cache, Dummy Forcing 50%)."""
    from tiny_model_tools.demo import run_pair

    model, text = load_tiny()
    r = run_pair(model, text, DEFAULT_PROMPT, seed=0, frames=24, df=DummyForcingConfig(), warmup=False)
    return r


# ------------------------------------------------------------------------------------ the nodes
def test_loader_makes_a_causal_wan_model_of_the_files_weights(tiny):
    core_ar_loop, tiny_comfy_model = pack_module("core_ar_loop"), pack_module("tiny_comfy_model")
    model, text = tiny
    dm = model.model.diffusion_model
    assert core_ar_loop.is_causal_ar(model)  # ComfyUI's Sampler AR Video and Apply Dummy Forcing take it
    geom = ModelGeometry.of(dm)
    assert (geom.num_layers, geom.num_heads, geom.head_dim, geom.in_dim) == (6, 8, 32, 12)
    assert isinstance(model.model.latent_format, tiny_comfy_model.TinyLatent)
    assert model.model.latent_format.latent_channels == 12
    assert model.get_model_object("model_sampling").shift == 5.0
    f = read_tiny()
    sd = dm.state_dict()
    assert set(sd) == set(f.wan) and all(torch.equal(sd[k], v.float()) for k, v in f.wan.items())
    assert all(p.dtype == torch.float32 for p in dm.parameters())
    assert text.encode(["a red circle"]).shape == (1, 32, 64)


def test_loader_names_a_missing_or_foreign_model_file(N, run_node, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    nodes = pack_module("tiny_nodes")
    monkeypatch.setattr(nodes, "DEFAULT_PATH", str(tmp_path / "gone.safetensors"))
    with pytest.raises(ValueError, match=r"^Load Tiny Model: the shipped model file .*gone.safetensors is missing; "
                                         r"reinstall the pack"):
        run_node(N["DFTinyModelLoader"])
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(nodes, "DEFAULT_PATH", str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"^Load Tiny Model: .*other.safetensors is not a tiny Dummy Forcing model"):
        run_node(N["DFTinyModelLoader"])


def test_previews_are_the_frames(tiny):
    """The latent format's RGB factors are the codec's: a sampler's preview of a latent is its last
    frame with each 2x2 block averaged."""
    model, _ = tiny
    video = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    _, image, _ = pack_module("comfy_glue").make_previewer(model)(CODEC.encode(video))
    want = torch.nn.functional.avg_pool2d(video[0, :, -1], 2).permute(1, 2, 0).add(1).div(2).mul(255)
    assert np.abs(np.asarray(image, dtype=np.float64) - want.numpy()).max() <= 1.0  # uint8 rounding


def test_text_encode_gives_the_models_context_and_names_unknown_words(tiny, N, run_node):
    model, text = tiny
    out = run_node(N["DFTinyTextEncode"], text_encoder=text, prompt=DEFAULT_PROMPT)
    (ctx, extra), = out.args[0]
    assert torch.equal(ctx, text.encode([DEFAULT_PROMPT]))
    assert ctx.shape == (1, 32, 64) and extra == {}
    shown = out.ui.as_dict()["text"][0]
    assert "warning" not in shown and "the model reads: small yellow square at bottom left up right fast" in shown

    out = run_node(N["DFTinyTextEncode"], text_encoder=text,
                   prompt="a big purple dragon at top left moving right fast, on a navy plain background")
    shown = out.ui.as_dict()["text"][0]
    assert "warning: words the tiny model does not know (ignored as <unk>): purple, dragon" in shown
    assert PROMPT_FORM in shown
    four = ", ".join(f"a small {c} circle at center falling fast" for c in ("red", "green", "blue", "white"))
    shown = run_node(N["DFTinyTextEncode"], text_encoder=text, prompt=four).ui.as_dict()["text"][0]
    assert "names 4 objects but the model was trained on at most 3" in shown

    with pytest.raises(ValueError, match=r"^Tiny Text Encode: the 'text_encoder' input is a dict; connect"):
        run_node(N["DFTinyTextEncode"], text_encoder={"clip": 1}, prompt="a red circle")


def test_empty_latent_and_decode(N, run_node):
    lat, = run_node(N["DFTinyEmptyLatent"], frames=7, size=48, batch_size=2).args
    assert lat["samples"].shape == (2, 12, 7, 24, 24) and not lat["samples"].any()
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    frames, = run_node(N["DFTinyDecode"], latent={"samples": CODEC.encode(video)}, scale=2).args
    assert frames.shape == (10, 16, 16, 3)
    assert torch.allclose(video_of(frames[5:], 2), video[1], atol=1e-6)  # the second video's frames, exact
    with pytest.raises(ValueError, match=r"^Tiny Empty Latent: 'size' = 30 must be a multiple of 4"):
        run_node(N["DFTinyEmptyLatent"], frames=7, size=30, batch_size=1)


@pytest.mark.parametrize("samples, words", [
    (torch.zeros(1, 16, 6, 4, 4), "has 16 channels (a Wan2.1 latent: decode it with VAE Decode and the Wan2.1 VAE); "
                                  "the tiny model's latents have 12"),
    (torch.zeros(1, 12, 16, 16), "is not a video latent [batch, 12, frames, height, width]"),
    (torch.full((1, 12, 3, 4, 4), float("nan")), "holds NaN or infinite values"),
])
def test_decode_refuses_latents_that_are_not_the_tiny_models(N, run_node, samples, words):
    with pytest.raises(ValueError) as e:
        run_node(N["DFTinyDecode"], latent={"samples": samples}, scale=4)
    assert str(e.value).startswith("Tiny Decode: ") and words in str(e.value), str(e.value)


def sampler_inputs(**kw):
    inputs = dict(seed=0, denoise_timesteps="1000,750,500,250", steps=4, shift=0.0, frames_per_chunk=3, cache="full",
                  sink_frames=3, window_frames=12, context_timestep=0, start_frames=0)
    inputs.update(kw)
    return inputs


def test_the_pack_refuses_the_other_models_latents_and_text(tiny, N, run_node, stub_model_patcher, progress_events):
    """AR Video Sampler: the tiny MODEL with a Wan latent or a umT5-shaped conditioning, and a Wan
    MODEL with the tiny model's latent, are refused by name before any pass."""
    model, text = tiny
    tiny_cond = run_node(N["DFTinyTextEncode"], text_encoder=text, prompt=DEFAULT_PROMPT).args[0]
    tiny_latent = run_node(N["DFTinyEmptyLatent"], frames=6, size=32, batch_size=1).args[0]
    cases = [(model, video_latent(frames=6), tiny_cond, "has 16 channels but the model takes 12"),
             (model, tiny_latent, cond(dim=4096), "has 4096-dim tokens but the model's text embedding takes 64"),
             (stub_model_patcher(tiny_wan(), shift=5.0), tiny_latent, cond(), "has 12 channels but the model takes 16")]
    for m, lat, c, words in cases:
        with pytest.raises(ValueError) as e:
            run_node(N["ARVideoSampler"], model=m, positive=c, latent=lat, **sampler_inputs())
        assert str(e.value).startswith("AR Video Sampler: ") and words in str(e.value), str(e.value)
    assert progress_events == []


def test_a_wan_vae_on_the_tiny_models_video_is_refused_before_sampling(tiny, N, run_node, progress_events):
    """AR Video Sampler's streamed decode with a Wan2.1 VAE on the tiny model's 12-channel latents:
    refused by name before any pass (was a raw conv error after the first chunk)."""
    import comfy.sd

    model, text = tiny
    c = run_node(N["DFTinyTextEncode"], text_encoder=text, prompt=DEFAULT_PROMPT).args[0]
    lat = run_node(N["DFTinyEmptyLatent"], frames=6, size=32, batch_size=1).args[0]
    with pytest.raises(ValueError) as e:
        run_node(N["ARVideoSampler"], model=model, positive=c, latent=lat, vae=comfy.sd.VAE(), **sampler_inputs())
    assert str(e.value).startswith("AR Video Sampler: the 'vae' input decodes 16-channel Wan2.1 latents but this "
                                   "video's latents have 12 channels (the small model's: leave 'vae' unconnected "
                                   "and decode them with Tiny Decode)"), str(e.value)
    assert progress_events == []


# ------------------------------------------------------------------------------------ the workflow
class TinyStandIns(CoreStandIns):
    """The stand-ins of test_workflow_graphs plus the image nodes this workflow uses."""

    def __init__(self, *a):
        super().__init__(*a)
        self.saved_webp = []

    def ImageStitch(self, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        assert direction == "right" and spacing_color == "white" and image1.shape[:3] == image2.shape[:3]
        gap = torch.ones(image1.shape[0], image1.shape[1], spacing_width, 3)
        return (torch.cat([image1, gap, image2], 2),)

    def SaveAnimatedWEBP(self, images, filename_prefix, fps, lossless, quality, method):
        self.saved_webp.append((filename_prefix, images, fps, lossless))
        return ()


def test_the_workflow_end_to_end(stub_model_patcher, comfy_dirs, run_node, reference):
    """first_try_tiny_model.json as shipped: both samplers make the core's videos of the pack's own
    model (the demo's), Dummy Forcing stays within the recorded quality of the full cache, the saved
    animation holds both side by side, and no node changed its input MODEL."""
    tools = _workflow_tools()
    specs = tools.all_specs()
    from node_helpers import pack_nodes

    core = TinyStandIns(stub_model_patcher, run_node)
    prompt = tools.to_api(tools.load_workflows()["first_try_tiny_model.json"], specs)
    results, uis, order = execute(prompt, pack_nodes(), core, run_node)
    assert core.models == {}  # nothing loaded from models/: no download
    runs = {prompt[prompt[nid]["inputs"]["model"][0]]["class_type"]: results[nid][:2]
            for nid, p in prompt.items() if p["class_type"] == "ARVideoSampler"}
    (full_latent, full_stats), (df_latent, df_stats) = runs["DFTinyModelLoader"], runs["ApplyDummyForcing"]
    assert full_latent["samples"].shape == (1, 12, 24, 16, 16)
    assert isinstance(df_stats, GenerationStats) and df_stats.switch_chunk == 2 and full_stats.switch_chunk is None
    assert df_stats.kv_bytes < 0.6 * full_stats.kv_bytes
    full = CODEC.decode(full_latent["samples"])[0]
    dfv = CODEC.decode(df_latent["samples"])[0]
    assert (full - reference["full"]).abs().max() < 1e-4 and (dfv - reference["df"]).abs().max() < 1e-4
    assert torch.equal(full[:, :6], dfv[:, :6])  # the full cache until after ar_start
    check_quality(full, dfv)

    (prefix, images, fps, lossless), = core.saved_webp
    assert prefix == "dummy_forcing_tiny/full_cache_vs_dummy_forcing" and lossless and fps == 8.0
    assert images.shape == (24, 128, 128 + 8 + 128, 3)
    assert torch.allclose(video_of(images[:, :, :128], 4), full.clamp(-1, 1), atol=1e-6)
    assert torch.allclose(video_of(images[:, :, 136:], 4), dfv.clamp(-1, 1), atol=1e-6)
    texts = sorted(results[nid][0] for nid, p in prompt.items() if p["class_type"] == "CacheStats")
    assert texts == sorted([full_stats.to_text(), df_stats.to_text()])
    assert comfy.model_management.processing_interrupted() is False


def test_comfys_own_ar_sampler_runs_the_tiny_model(tiny, N, run_node, reference):
    """SamplerCustomAdvanced + Sampler AR Video (3 frames per block) + BasicScheduler simple 4 +
    CFGGuider cfg 1 on the tiny MODEL, directly and through Apply Dummy Forcing: core's loop runs it
    (its own noise, so another video than the pack sampler's) and the video meets the same bars."""
    from comfy_extras import nodes_ar_video, nodes_custom_sampler as ncs

    model, text = tiny
    snap = ModelSnapshot(model)
    c = run_node(N["DFTinyTextEncode"], text_encoder=text, prompt=DEFAULT_PROMPT).args[0]
    lat = run_node(N["DFTinyEmptyLatent"], frames=24, size=32, batch_size=1).args[0]
    df_model = run_node(N["ApplyDummyForcing"], model=model, dummy_heads=0.5, dummy_head_count=0, scope="global",
                        normalised_cost=False, ar_start=1, neighbor_chunks=1, sink_frames=1, context_packing=True,
                        profile_sample_fraction=0.25, profile_seed=0, long_context_frames=0).args[0]
    videos = {}
    for name, m in (("full", model), ("df", df_model)):
        noise = run_node(ncs.RandomNoise, noise_seed=0).args[0]
        guider = run_node(ncs.CFGGuider, model=m, positive=c, negative=c, cfg=1.0).args[0]
        sigmas = run_node(ncs.BasicScheduler, model=m, scheduler="simple", steps=4, denoise=1.0).args[0]
        sampler = run_node(nodes_ar_video.SamplerARVideo, num_frame_per_block=3).args[0]
        out = run_node(ncs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                       latent_image=lat).args[0]
        frames, = run_node(N["DFTinyDecode"], latent=out, scale=1).args
        videos[name] = video_of(frames)
    snap.assert_unchanged()
    assert (videos["full"] - reference["full"].clamp(-1, 1)).abs().max() > 0.1  # core's noise: another video
    check_quality(videos["full"], videos["df"], CORE_PSNR_MIN, CORE_SSIM_MIN)
    stats, = run_node(N["CacheStats"], model=df_model).args[:1]
    assert "loop: ComfyUI Sampler AR Video" in stats
