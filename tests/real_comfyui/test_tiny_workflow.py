"""The small model's workflow in a real ComfyUI (COMFYUI_DIR; run on 0.27 and 0.3.64), through the
HTTP API, with an empty models/ folder: nothing to download.

workflows/first_try_tiny_model.json is converted to an API prompt as the frontend sends it
(tests/test_workflows.py to_api), two SaveLatent nodes are added on the samplers' outputs, and
the videos are checked: the object the prompt names is found and moves the named way, Dummy
Forcing stays within the recorded PSNR / SSIM of the full cache, the saved WEBP holds exactly
those frames, and both videos equal the core's own loop on the pack's standalone model (so
ComfyUI's module, built by Load Tiny Model, computes the trained model). On ComfyUI 0.21+ also
ComfyUI's own Sampler AR Video on the model, plain and through Apply Dummy Forcing.

Thresholds and the numbers measured when they were set: tests/tiny_quality.py (shared with the
stub suite, tests/nodes/test_tiny_nodes.py).

    COMFYUI_DIR=/work/comfy027 COMFYUI_PYTHON=/work/venv027/bin/python \
        python -m pytest -q tests/real_comfyui/test_tiny_workflow.py
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from harness import PACK_NAME, REPO_ROOT, ComfyServer
from test_stub_matches_real import real_version
from tiny_quality import CORE_PSNR_MIN, CORE_SSIM_MIN, check_quality

from dummy_forcing_core.tiny.world import DEFAULT_PROMPT

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
WORKFLOW = "first_try_tiny_model"
SAVED_WEBP = "dummy_forcing_tiny/full_cache_vs_dummy_forcing"


def _load(name: str, path: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def workflow_tools():
    return _load("df_test_workflows", os.path.join(TESTS, "test_workflows.py"))


@pytest.fixture(scope="module")
def server():
    srv = ComfyServer.from_env(random_checkpoints=False)
    if srv is None:
        pytest.skip("COMFYUI_DIR is not set")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_prompt():
    tools = workflow_tools()
    return tools.to_api(tools.load_workflows()[WORKFLOW + ".json"])


def sampler_ids(prompt: dict) -> dict:
    """{'full' | 'df': node id} of the workflow's two AR Video Samplers."""
    out = {}
    for nid, p in prompt.items():
        if p["class_type"] == "ARVideoSampler":
            src = prompt[p["inputs"]["model"][0]]["class_type"]
            out["df" if src == "ApplyDummyForcing" else "full"] = nid
    assert sorted(out) == ["df", "full"]
    return out


def run_ok(server, prompt, timeout=600):
    res = server.queue_prompt(prompt, timeout=timeout)
    assert res.ok, f"{json.dumps(res.error, indent=1)[:3000]}\n{server.log_tail(60)}"
    return res


def saved(server, prefix: str, ext: str) -> str:
    files = [f for f in server.output_files() if f.startswith(prefix) and f.endswith(ext)]
    assert len(files) == 1, server.output_files()
    return os.path.join(server.base_dir, "output", files[0])


def saved_latent(server, prefix: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(saved(server, prefix, ".latent"))["latent_tensor"]


def video(latent: torch.Tensor) -> torch.Tensor:
    from dummy_forcing_core.tiny.codec import CODEC

    return CODEC.decode(latent.float())[0]


@pytest.fixture(scope="module")
def workflow_run(server, api_prompt):
    """The workflow as shipped, plus SaveLatent on both samplers' latents."""
    p = json.loads(json.dumps(api_prompt))
    ids = sampler_ids(p)
    for name, nid in ids.items():
        p[f"save_{name}"] = {"class_type": "SaveLatent",
                             "inputs": {"samples": [nid, 0], "filename_prefix": f"tiny_latents/{name}"}}
    res = run_ok(server, p)
    return res, {name: saved_latent(server, f"tiny_latents/{name}") for name in ids}


@pytest.fixture(scope="module")
def reference():
    from dummy_forcing_core.dummy_forcing import DummyForcingConfig
    from dummy_forcing_core.tiny.model import load_tiny
    from dummy_forcing_core.tiny.world import DEFAULT_PROMPT
    from tiny_model_tools.demo import run_pair

    model, text = load_tiny()
    return run_pair(model, text, DEFAULT_PROMPT, seed=0, frames=24, df=DummyForcingConfig(), warmup=False)


# ------------------------------------------------------------------------------------ tests
def test_the_nodes_are_registered_and_the_workflow_is_a_template(server):
    info = server.object_info()
    for node_id, display in (("DFTinyModelLoader", "Load Tiny Model"), ("DFTinyTextEncode", "Tiny Text Encode"),
                             ("DFTinyEmptyLatent", "Tiny Empty Latent"), ("DFTinyDecode", "Tiny Decode")):
        assert info[node_id]["display_name"] == display and info[node_id]["category"] == "video/dummy forcing"
        assert info[node_id]["python_module"] == f"custom_nodes.{PACK_NAME}"
    for core in ("ImageStitch", "SaveAnimatedWEBP", "SaveLatent"):
        assert core in info
    assert os.listdir(os.path.join(server.base_dir, "models", "diffusion_models")) == []
    with urllib.request.urlopen(server.url + "/api/workflow_templates", timeout=30) as r:
        templates = json.loads(r.read().decode())
    assert WORKFLOW in templates.get(PACK_NAME, []), templates
    with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_NAME}/{WORKFLOW}.json", timeout=30) as r:
        served = json.loads(r.read().decode())
    with open(os.path.join(REPO_ROOT, "workflows", WORKFLOW + ".json")) as f:
        assert served == json.load(f)


def test_the_workflow_makes_the_trained_models_videos(workflow_run, reference):
    """Both samplers' videos are the core's own loop on the pack's standalone model (the demo's):
    ComfyUI's module built by Load Tiny Model computes the trained model, and the quality bars hold."""
    _, latents = workflow_run
    assert latents["full"].shape == latents["df"].shape == (1, 12, 24, 16, 16)
    full, dfv = video(latents["full"]), video(latents["df"])
    assert float((full - reference["full"]).abs().max()) < 1e-3 and float((dfv - reference["df"]).abs().max()) < 1e-3
    assert torch.equal(full[:, :6], dfv[:, :6])  # the full cache until after ar_start
    check_quality(full, dfv)


def test_the_saved_animation_holds_both_videos_side_by_side(server, workflow_run):
    from dummy_forcing_core.tiny.codec import CODEC

    _, latents = workflow_run
    with Image.open(saved(server, SAVED_WEBP, ".webp")) as im:
        assert im.n_frames == 24 and im.size == (128 + 8 + 128, 128)
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    got = np.stack(frames)
    for name, cols in (("full", slice(0, 128)), ("df", slice(136, 264))):
        want = (CODEC.frames(latents[name], 4).numpy() * 255).astype(np.int16)  # ComfyUI truncates to uint8
        assert np.abs(got[:, :, cols] - want).max() <= 1, name  # lossless WEBP
    assert (got[:, :, 128:136] == 255).all()  # the white gap


def test_cache_stats_and_the_prompt_read_are_shown(api_prompt, workflow_run):
    res, _ = workflow_run
    ids = sampler_ids(api_prompt)
    stats = {name: next(res.outputs[nid]["text"][0] for nid, p in api_prompt.items()
                        if p["class_type"] == "CacheStats" and p["inputs"]["stats"][0] == ids[name])
             for name in ids}
    assert "dummy forcing: dummy heads 0.5" in stats["df"] and "per-head cache from chunk 2" in stats["df"]
    assert "dummy forcing: off" in stats["full"]
    encode = next(nid for nid, p in api_prompt.items() if p["class_type"] == "DFTinyTextEncode")
    assert res.outputs[encode]["text"] == ["the model reads: small yellow square at bottom left up right fast , "
                                           "maroon plain"]


def test_save_video_takes_the_frames_too(server, api_prompt):
    p = json.loads(json.dumps(api_prompt))
    save = next(nid for nid, q in p.items() if q["class_type"] == "SaveAnimatedWEBP")
    src = p.pop(save)["inputs"]["images"]
    p["create"] = {"class_type": "CreateVideo", "inputs": {"images": src, "fps": 8.0}}
    p["save_mp4"] = {"class_type": "SaveVideo", "inputs": {"video": ["create", 0], "filename_prefix": "tiny_mp4/v",
                                                           "format": "auto", "codec": "auto"}}
    run_ok(server, p)
    assert os.path.getsize(saved(server, "tiny_mp4/v", ".mp4")) > 1000


def test_an_unknown_word_is_named_on_the_node(server, api_prompt):
    p = json.loads(json.dumps(api_prompt))
    encode = next(nid for nid, q in p.items() if q["class_type"] == "DFTinyTextEncode")
    p[encode]["inputs"]["prompt"] = "a big purple circle at top left moving right fast, on a navy plain background"
    res = run_ok(server, p)
    text = res.outputs[encode]["text"][0]
    assert text.startswith("warning: words the tiny model does not know (ignored as <unk>): purple"), text
    assert "Tiny Text Encode: words the tiny model does not know (ignored as <unk>): purple" in server.log_text()


def test_latents_of_the_other_model_are_refused(server):
    wan_latent = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 21,
                                                                      "batch_size": 1}}
    res = server.queue_prompt({"empty": wan_latent, "dec": {"class_type": "DFTinyDecode",
                                                            "inputs": {"latent": ["empty", 0], "scale": 4}},
                               "save": {"class_type": "SaveAnimatedWEBP",
                                        "inputs": {"images": ["dec", 0], "filename_prefix": "never", "fps": 8.0,
                                                   "lossless": True, "quality": 100, "method": "default"}}},
                              timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("Tiny Decode: the 'latent' input [1, 16, 6, 8, 8] has 16 channels (a Wan2.1 "
                                         "latent: decode it with VAE Decode and the Wan2.1 VAE)"), msg
    p = {"load": {"class_type": "DFTinyModelLoader", "inputs": {}},
         "text": {"class_type": "DFTinyTextEncode", "inputs": {"text_encoder": ["load", 1], "prompt": "a red circle"}},
         "empty": wan_latent,
         "sample": {"class_type": "ARVideoSampler", "inputs": dict(
             model=["load", 0], positive=["text", 0], latent=["empty", 0], seed=0, denoise_timesteps="1000,750,500,250",
             steps=4, shift=0.0, frames_per_chunk=3, cache="full", sink_frames=3, window_frames=12,
             context_timestep=0, start_frames=0)},
         "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "never"}}}
    res = server.queue_prompt(p, timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("AR Video Sampler: ") and "has 16 channels but the model takes 12" in msg, msg
    assert not [f for f in server.output_files() if f.startswith("never")]


@pytest.mark.skipif(bool(os.environ.get("COMFYUI_DIR")) and real_version(os.environ["COMFYUI_DIR"]) < (0, 21, 0),
                    reason="ComfyUI has its own AR video sampler from 0.21 on")
def test_comfys_own_ar_sampler_runs_the_tiny_model(server):
    """SamplerCustomAdvanced + Sampler AR Video (3 frames per block), BasicScheduler simple 4, CFGGuider
    cfg 1, RandomNoise 0, on the tiny MODEL directly (core's dense cache) and through Apply Dummy
    Forcing (the pack's per-head cache in core's loop)."""
    latents = {}
    for name in ("full", "df"):
        model = ["df", 0] if name == "df" else ["load", 0]
        p = {"load": {"class_type": "DFTinyModelLoader", "inputs": {}},
             "text": {"class_type": "DFTinyTextEncode", "inputs": {"text_encoder": ["load", 1],
                                                                   "prompt": DEFAULT_PROMPT}},
             "empty": {"class_type": "DFTinyEmptyLatent", "inputs": {"frames": 24, "size": 32, "batch_size": 1}},
             "df": {"class_type": "ApplyDummyForcing", "inputs": dict(
                 model=["load", 0], dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=False,
                 ar_start=1, neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
                 profile_seed=0, long_context_frames=0)},
             "guider": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["text", 0],
                                                              "negative": ["text", 0], "cfg": 1.0}},
             "sched": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "simple", "steps": 4,
                                                                  "denoise": 1.0}},
             "sampler": {"class_type": "SamplerARVideo", "inputs": {"num_frame_per_block": 3}},
             "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
             "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sched", 0],
                 "latent_image": ["empty", 0]}},
             "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0],
                                                             "filename_prefix": f"tiny_core/{name}"}}}
        if name == "full":
            p.pop("df")
        else:
            p["stats"] = {"class_type": "CacheStats", "inputs": {"model": ["df", 0], "latent": ["sample", 0]}}
        res = run_ok(server, p)
        if name == "df":
            assert "loop: ComfyUI Sampler AR Video" in res.outputs["stats"]["text"][0]
        latents[name] = saved_latent(server, f"tiny_core/{name}")
    check_quality(video(latents["full"]), video(latents["df"]), CORE_PSNR_MIN, CORE_SSIM_MIN)
