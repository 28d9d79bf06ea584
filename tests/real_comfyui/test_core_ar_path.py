"""The pack inside ComfyUI's own AR loop, on a real ComfyUI >= 0.21 (skipped on older ones).

In-process (core_ar_run.py, core's CFGGuider / ksampler("ar_video") as SamplerCustomAdvanced runs
them) and through the server's /prompt with the official template's nodes:
UNETLoader (causal checkpoint) -> [AR Cache Policy] -> [Apply Dummy Forcing] -> CFGGuider cfg 1,
BasicScheduler simple 4, Sampler AR Video, RandomNoise, EmptyARVideoLatent -> SamplerCustomAdvanced.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from harness import REPO_ROOT, TINY_CAUSAL_NAME, TINY_WAN_NAME, ComfyServer
from test_pack_nodes import TEXT_PACK, TEXT_PACK_SOURCE, apply, run_ok, saved_latent
from test_stub_matches_real import real_version

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(bool(os.environ.get("COMFYUI_DIR")) and
                                real_version(os.environ["COMFYUI_DIR"]) < (0, 21, 0),
                                reason="ComfyUI has its own AR video path from 0.21 on")


@pytest.fixture(scope="module")
def measured():
    with tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run([os.environ.get("COMFYUI_PYTHON", "python"), os.path.join(HERE, "core_ar_run.py"),
                            os.environ["COMFYUI_DIR"], REPO_ROOT, work], capture_output=True, text=True,
                           timeout=900, cwd=os.environ["COMFYUI_DIR"], env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_full_cache_through_the_pack_equals_cores_own(measured):
    assert measured["diffusion_model"] == "CausalWanModel"
    assert measured["full_routed_vs_core_rel"] < 1e-4  # float32 CPU: ~2e-6 seen
    assert measured["i2v_full_routed_vs_core_rel"] < 1e-4
    assert measured["ar_video_sampler_vs_routed_maxabs"] == 0.0  # same noise, same video in both samplers


def test_dummy_forcing_in_cores_loop(measured):
    for key in ("df_core_vs_ours_maxabs", "df_window_core_vs_ours_maxabs", "df_chunkwise_core_vs_ours_maxabs",
                "i2v_df_core_vs_ours_maxabs"):
        assert measured[key] == 0.0, key  # AR Video Sampler with the same settings and noise: the same video
    assert measured["df_before_switch_vs_plain_rel"] < 1e-4  # chunks before the switch: core's plain run
    assert measured["df_after_switch_vs_plain_rel"] > 1e-3  # later chunks: Dummy Forcing's
    assert measured["df_stats"]["loop"] == "ComfyUI Sampler AR Video" and measured["df_stats"]["switch_chunk"] == 2
    assert measured["i2v_changes_video_rel"] > 1e-2 and measured["i2v_chunks"] == 5  # 1 given + 5 generated


def test_fused_forward_reads_comfys_loaded_models(measured):
    """The fused forward accepts the layers ComfyUI's loader builds, also with weight_dtype
    fp8_e4m3fn (every block parameter fp8, cast-on-call layers), and computes what ComfyUI's
    own layer calls compute."""
    assert measured["fp8_param_dtypes"] == ["torch.float8_e4m3fn"]
    for kind in ("default", "fp8"):
        assert measured[f"fused_{kind}_reason"] == "on", measured[f"fused_{kind}_reason"]
        assert measured[f"fused_{kind}_rel"] < 1e-5, kind


def test_cores_dense_cache_is_not_allocated(measured):
    assert measured["core_dense_kv_bytes"] > 0  # core alone: K/V of every frame, allocated up front
    assert measured["pack_run_core_kv_bytes"] == 0 and measured["df_core_kv_bytes"] == 0
    assert measured["pack_run_kv_allocated_bytes"] == measured["core_dense_kv_bytes"]  # full cache: the same size
    assert measured["df_stats"]["kv_allocated"] < measured["core_dense_kv_bytes"] / 2


def test_runs_repeat_and_cancel_leaves_nothing(measured):
    assert measured["df_second_run_equal"] and measured["cancel_raised"] and measured["df_after_cancel_equal"]


# ------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server():
    srv = ComfyServer.from_env(extra_packs={TEXT_PACK: TEXT_PACK_SOURCE})
    srv.start()
    yield srv
    srv.stop()


def template(model=("unet", 0), unet=TINY_CAUSAL_NAME, length=21, block=1, seed=3):
    """The official AR template on the tiny causal checkpoint: 64x64, 21 frames -> 6 latent frames."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "text": {"class_type": "DFTestTextContext", "inputs": {"seed": 1, "tokens": 16, "batch": 1}},
        "neg": {"class_type": "DFTestTextContext", "inputs": {"seed": 2, "tokens": 16, "batch": 1}},
        "empty": {"class_type": "EmptyARVideoLatent", "inputs": {"width": 64, "height": 64, "length": length,
                                                                 "batch_size": 1}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": list(model), "positive": ["text", 0],
                                                         "negative": ["neg", 0], "cfg": 1.0}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": list(model), "scheduler": "simple", "steps": 4,
                                                             "denoise": 1.0}},
        "sampler": {"class_type": "SamplerARVideo", "inputs": {"num_frame_per_block": block}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0],
                                                                     "sampler": ["sampler", 0], "sigmas": ["sched", 0],
                                                                     "latent_image": ["empty", 0]}},
    }


def save(prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}}


def test_template_with_dummy_forcing_and_cache_stats(server):
    p = template(model=("df", 0))
    p.update({"df": apply(("unet", 0)), "save": save("latents/core_df"),
              "stats": {"class_type": "CacheStats", "inputs": {"model": ["df", 0], "latent": ["sample", 0]}}})
    res = run_ok(server, p)
    text = res.outputs["stats"]["text"][0]
    assert "loop: ComfyUI Sampler AR Video" in text and "per-head cache from chunk 2" in text
    got = saved_latent(server, "latents/core_df")
    plain = template()
    plain["save"] = save("latents/core_plain")
    run_ok(server, plain)
    ref = saved_latent(server, "latents/core_plain")
    assert got.shape == ref.shape == (1, 16, 6, 8, 8)
    assert float((got[:, :, :2] - ref[:, :, :2]).abs().max()) < 1e-3 * float(ref.abs().max())
    assert float((got[:, :, 2:] - ref[:, :, 2:]).abs().max()) > 1e-3


def test_settings_that_do_not_fit_name_apply_dummy_forcing(server):
    p = template(model=("df", 0))
    p.update({"df": apply(("unet", 0), ar_start=6), "save": save("latents/never")})
    res = server.queue_prompt(p, timeout=120)
    assert not res.ok
    msg = res.error["exception_message"]
    assert msg.startswith("Apply Dummy Forcing: this video generates 6 chunk(s)") and "'ar_start' = 6" in msg
    assert "(found while running Sampler AR Video)" in msg and res.error["node_type"] == "SamplerCustomAdvanced"


def test_a_non_causal_model_gets_the_fixes(server):
    """A checkpoint without the causal_ar flag (ComfyUI's WanModel): core alone says it lacks
    init_kv_caches; through the pack's nodes the error names the flag, the converter and AR Video
    Sampler."""
    plain = template(unet=TINY_WAN_NAME)
    plain["save"] = save("latents/never1")
    res = server.queue_prompt(plain, timeout=120)
    assert not res.ok and "init_kv_caches" in res.error["exception_message"]  # core's own, untouched
    p = template(model=("df", 0), unet=TINY_WAN_NAME)
    p.update({"df": apply(("unet", 0)), "save": save("latents/never2")})
    res = server.queue_prompt(p, timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("Sampler AR Video: the model (WanModel) is not a causal checkpoint"), msg
    assert "'causal_ar' flag" in msg and "python -m dummy_forcing_core.convert" in msg and "AR Video Sampler" in msg
    assert "init_kv_caches" not in msg and res.error["exception_type"] == "dummy_forcing.NodeError"


def test_an_image_latent_in_cores_loop_is_asked_to_be_a_video(server):
    """Empty Latent Image: SamplerCustomAdvanced makes it one latent frame; with Dummy Forcing the
    error asks for a video latent instead of 'make the video longer'."""
    p = template(model=("df", 0))
    p["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    p.update({"df": apply(("unet", 0)), "save": save("latents/never3")})
    res = server.queue_prompt(p, timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("SamplerCustomAdvanced: the 'latent_image' input is an image latent"), msg
    assert "EmptyARVideoLatent" in msg and "chunks" not in msg


def test_a_prompt_start_is_refused_in_cores_loop(server):
    """Core's loop plays one prompt from frame 0: a prompt tagged to start at frame 3 is refused."""
    p = template(model=("df", 0))
    p["late"] = {"class_type": "ARPromptStart", "inputs": {"conditioning": ["text", 0], "start": 3.0,
                                                           "unit": "latent frames"}}
    p["guider"]["inputs"]["positive"] = ["late", 0]
    p.update({"df": apply(("unet", 0)), "save": save("latents/never4")})
    res = server.queue_prompt(p, timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("CFGGuider: the positive prompt is tagged by AR Prompt Start to start at "
                                         "latent frame 3"), msg


def test_base_cache_errors_name_ar_cache_policys_widgets(server):
    p = template(model=("df", 0))
    p.update({"policy": {"class_type": "ARCachePolicy", "inputs": {"model": ["unet", 0], "cache": "sink + window",
                                                                   "sink_frames": 0, "window_frames": 1}},
              "df": apply(("policy", 0)), "save": save("latents/never5")})
    res = server.queue_prompt(p, timeout=120)
    msg = res.error["exception_message"]
    assert not res.ok and msg.startswith("Apply Dummy Forcing: at 'ar_start' = 1 the base cache"), msg
    assert "raise AR Cache Policy's 'sink_frames' to 1 or AR Cache Policy's 'window_frames' to 2" in msg
