"""Our nodes inside a real ComfyUI (COMFYUI_DIR; run on v0.3.64 and 0.27), end to end on the
harness's tiny Wan checkpoint (ComfyUI's own WanModel class, random weights, 2 layers x 2 heads).

There is no text encoder in the harness, so a throwaway test-only pack (df_test_text_context)
gives a random umT5-shaped CONDITIONING [batch, tokens, 4096]. Runs only with COMFYUI_DIR set.

    COMFYUI_DIR=/opt/comfyui COMFYUI_PYTHON=/opt/comfyui-venv/bin/python \
        python -m pytest -q tests/real_comfyui/test_pack_nodes.py
"""
from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from harness import PACK_NAME, REPO_ROOT, TINY_WAN_NAME, ComfyServer
from test_stub_matches_real import real_version

TEXT_PACK = "df_test_text_context"
TEXT_PACK_SOURCE = r'''
import torch
from comfy_api.latest import ComfyExtension, io


class DFTestTextContext(io.ComfyNode):
    """Test only: a random umT5-shaped text conditioning (no text encoder file needed)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DFTestTextContext", display_name="DF test text context", category="testing/dummy_forcing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2 ** 31),
                    io.Int.Input("tokens", default=16, min=1, max=512),
                    io.Int.Input("batch", default=1, min=1, max=8)],
            outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, seed, tokens, batch):
        g = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(batch, tokens, 4096, generator=g), {}]])


class _Ext(ComfyExtension):
    async def get_node_list(self):
        return [DFTestTextContext]


async def comfy_entrypoint():
    return _Ext()
'''

OUR_NODES = {
    "ARVideoSampler": ("AR Video Sampler", ["model", "positive", "latent", "seed", "denoise_timesteps", "steps",
                                            "shift", "frames_per_chunk", "cache", "sink_frames", "window_frames",
                                            "context_timestep", "start_frames"],
                       ["sigmas", "noise", "noise_layout", "recache_on_switch", "vae", "return_frames",
                        "save_video", "filename_prefix", "frame_rate", "live_preview", "warm_start"],
                       ["LATENT", "DF_STATS", "IMAGE"]),
    "ARVideoDecode": ("AR Video Decode", ["samples", "vae", "chunk_frames"],
                      ["return_frames", "save_video", "filename_prefix", "frame_rate", "live_preview"], ["IMAGE"]),
    "ARCachePolicy": ("AR Cache Policy", ["model", "cache", "sink_frames", "window_frames"], [], ["MODEL"]),
    "ApplyDummyForcing": ("Apply Dummy Forcing", ["model", "dummy_heads", "dummy_head_count", "scope",
                                                  "normalised_cost", "ar_start", "neighbor_chunks", "sink_frames",
                                                  "context_packing", "profile_sample_fraction", "profile_seed",
                                                  "long_context_frames"],
                          ["head_profile", "reprofile_on_prompt_switch", "neighbor_skips_sink", "warmup_cache",
                           "profile_sink_frames", "preset", "attention_8bit"], ["MODEL"]),
    "ARPromptStart": ("AR Prompt Start", ["conditioning", "start", "unit"], [], ["CONDITIONING"]),
    "ProfileHeads": ("Profile Heads", ["model", "conditioning", "latent", "seed", "runs_per_prompt", "ar_start",
                                       "chunks_to_profile", "sink_frames", "frames_per_chunk", "denoise_timesteps",
                                       "steps", "shift", "sample_fraction", "preview_dummy_heads", "save_name"],
                     ["profile_sink_frames"], ["HEAD_PROFILE", "IMAGE"]),
    "LoadHeadProfile": ("Load Head Profile", ["profile_name"], [], ["HEAD_PROFILE"]),
    "CacheStats": ("Cache Stats", [], ["stats", "model", "latent"], ["STRING", "IMAGE"]),
}


@pytest.fixture(scope="module")
def server():
    srv = ComfyServer.from_env(extra_packs={TEXT_PACK: TEXT_PACK_SOURCE})
    if srv is None:
        pytest.skip("COMFYUI_DIR is not set")
    srv.start()
    yield srv
    srv.stop()


# ------------------------------------------------------------------------------------ prompts
def base_prompt(length=21, size=64, seed=3, frames_per_chunk=1, text_seed=1, batch=1):
    """UNETLoader (tiny Wan) + a text conditioning + an empty video latent: 64x64, 21 frames ->
    [batch, 16, 6, 8, 8]: 6 chunks of one latent frame, 16 tokens per frame."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN_NAME, "weight_dtype": "default"}},
        "text": {"class_type": "DFTestTextContext", "inputs": {"seed": text_seed, "tokens": 16, "batch": 1}},
        "empty": {"class_type": "EmptyHunyuanLatentVideo",
                  "inputs": {"width": size, "height": size, "length": length, "batch_size": batch}},
    }


def sampler(model, seed=3, frames_per_chunk=1, latent=("empty", 0), **kw):
    inputs = {"model": list(model), "positive": ["text", 0], "latent": list(latent), "seed": seed,
              "denoise_timesteps": "1000,750,500,250", "steps": 4, "shift": 5.0,
              "frames_per_chunk": frames_per_chunk, "cache": "full", "sink_frames": 3, "window_frames": 12,
              "context_timestep": 0, "start_frames": 0}
    inputs.update(kw)
    return {"class_type": "ARVideoSampler", "inputs": inputs}


def apply(model=("unet", 0), profile=None, **kw):
    inputs = {"model": list(model), "dummy_heads": 0.5, "dummy_head_count": 0, "scope": "global",
              "normalised_cost": False, "ar_start": 1, "neighbor_chunks": 1, "sink_frames": 1,
              "context_packing": True, "profile_sample_fraction": 0.25, "profile_seed": 0,
              "long_context_frames": 0}
    if profile is not None:
        inputs["head_profile"] = list(profile)
    inputs.update(kw)
    return {"class_type": "ApplyDummyForcing", "inputs": inputs}


def stats(src):
    return {"class_type": "CacheStats", "inputs": {"stats": [src, 1]}}


def save_latent(src, prefix):
    return {"class_type": "SaveLatent", "inputs": {"samples": [src, 0], "filename_prefix": prefix}}


def run_ok(server, prompt, timeout=180):
    res = server.queue_prompt(prompt, timeout=timeout)
    assert res.ok, f"{json.dumps(res.error, indent=1)[:3000]}\n{server.log_tail(60)}"
    return res


def saved_latent(server, prefix) -> torch.Tensor:
    files = [f for f in server.output_files() if f.startswith(prefix) and f.endswith(".latent")]
    assert len(files) == 1, server.output_files()
    return load_file(os.path.join(server.base_dir, "output", files[0]))["latent_tensor"]


# ------------------------------------------------------------------------------------ tests
def test_pack_loads_and_its_nodes_in_object_info(server):
    status = server.pack_import_status()
    assert status["attempted"] and not status["failed"], "\n".join(status["error_lines"]) + server.log_tail(80)
    info = server.object_info()
    for node_id, (display, required, optional, outputs) in OUR_NODES.items():
        assert node_id in info, f"{node_id} not registered:\n{server.log_tail(80)}"
        e = info[node_id]
        assert e["display_name"] == display and e["category"] == "video/dummy forcing"
        assert e["python_module"] == f"custom_nodes.{PACK_NAME}"
        assert len(e["description"]) > 80
        assert list(e["input"]["required"]) == required
        assert list(e["input"].get("optional", {})) == optional
        assert e["output"] == outputs
        for name, spec in {**e["input"]["required"], **e["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["ARVideoSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["ARVideoSampler"]["input"]["required"]["cache"][1]["options"] == ["full", "sink + window"]
    assert info["ApplyDummyForcing"]["input"]["optional"]["head_profile"][0] == "HEAD_PROFILE"
    assert info["CacheStats"]["output_node"] is True and info["ProfileHeads"]["output_node"] is True
    assert info["LoadHeadProfile"]["input"]["required"]["profile_name"][1]["options"] == []  # nothing saved yet


def test_core_nodes_of_the_workflows_match_the_test_list(server):
    """tests/test_workflows.py keeps a static list of the core nodes the workflows use (widgets
    and sockets): check it against this ComfyUI. Additive changes of a newer ComfyUI pass (a
    widget appended after ours, a new optional socket, more combo options); a removed or
    renamed widget or socket, or a lost combo option, fails."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("df_test_workflows_real",
                                                  os.path.join(REPO_ROOT, "tests", "test_workflows.py"))
    tw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tw)
    info = server.object_info()
    version = real_version(os.environ["COMFYUI_DIR"])
    for node_id, spec in tw.CORE_NODES.items():
        if version < spec.get("since", (0, 0, 0)):
            assert node_id not in info, node_id
            continue
        e = info[node_id]
        inputs = {**e["input"]["required"], **e["input"].get("optional", {})}
        order = e["input_order"]["required"] + e["input_order"].get("optional", [])
        sockets = {n: inputs[n][0] for n in order if isinstance(inputs[n][0], str) and inputs[n][0] not in
                   ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")}
        widgets = [n for n in order if n not in sockets]
        ours = [w for w, ws in spec["widgets"] if ws[0] != "FRONTEND" and not w.endswith(".control_after_generate")]
        assert widgets[:len(ours)] == ours, (node_id, widgets)  # widgets_values are positional
        assert all(n in e["input"].get("optional", {}) for n in widgets[len(ours):]), (node_id, widgets)
        for n, (t, _) in spec["inputs"].items():
            assert sockets.get(n) == t, (node_id, n, sockets)
        assert all(n in e["input"].get("optional", {}) for n in sockets if n not in spec["inputs"]), node_id
        assert e["output"][:len(spec["outputs"])] == spec["outputs"], node_id  # links name output slots
        for w, wspec in spec["widgets"]:
            if wspec[0] == "COMBO" and wspec[1] is not None:
                opts = inputs[w][0] if isinstance(inputs[w][0], list) else inputs[w][1]["options"]
                assert set(wspec[1]) <= set(opts), (node_id, w, set(wspec[1]) - set(opts))


def test_web_extension_is_served(server):
    with urllib.request.urlopen(server.url + "/extensions", timeout=30) as r:
        exts = json.loads(r.read().decode())
    path = f"/extensions/{PACK_NAME}/dummy_forcing.js"
    assert path in exts, exts
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        served = r.read().decode()
    with open(os.path.join(REPO_ROOT, "web", "dummy_forcing.js")) as f:
        assert served == f.read()


def test_text_to_video_with_dummy_forcing_end_to_end(server):
    prompt = base_prompt()
    prompt.update({"df": apply(), "sample": sampler(("df", 0)), "stats": stats("sample"),
                   "save": save_latent("sample", "latents/df_e2e")})
    res = run_ok(server, prompt)
    ui = res.outputs["stats"]
    text = ui["text"][0]
    assert "model: 2 layers x 2 heads (head dim 128)" in text
    assert "video: 6 latent frames, 8x8 latent, 16 tokens/frame, chunks of 1" in text
    assert "dummy forcing: dummy heads 0.5 scope=global ar_start=1" in text and "head profile=online" in text
    assert "per-head cache from chunk 2" in text
    assert ui["images"] and ui["images"][0]["type"] == "temp"
    img = os.path.join(server.base_dir, "temp", ui["images"][0]["subfolder"], ui["images"][0]["filename"])
    assert os.path.getsize(img) > 1000
    lat = saved_latent(server, "latents/df_e2e")
    assert lat.shape == (1, 16, 6, 8, 8) and torch.isfinite(lat).all() and lat.abs().sum() > 0


def test_input_model_unchanged_and_no_state_leak(server):
    """Prompts in a row on the one loaded (cached) model: a plain run A, Apply Dummy Forcing + a run
    on its clone, a plain run B with other settings. Then B and A again, in the other order, on a
    freshly loaded copy of the same weights (another file name, so ComfyUI's cache cannot answer).
    Equal latents: Apply Dummy Forcing left the loaded model alone and no run leaked state."""
    run_b = dict(seed=13, frames_per_chunk=2, cache="sink + window", sink_frames=1, window_frames=2)

    def one(model_file, key, node, prefix):
        p = base_prompt()
        p["unet"]["inputs"]["unet_name"] = model_file
        p.update(node)
        if prefix:
            p["save"] = save_latent(key, prefix)
        return run_ok(server, p)

    one(TINY_WAN_NAME, "a", {"a": sampler(("unet", 0), seed=11)}, "latents/leak_a")
    res = one(TINY_WAN_NAME, "d", {"df": apply(dummy_heads=0.75, scope="per_layer"),
                                   "d": sampler(("df", 0), seed=12), "st": stats("d")}, None)
    assert "dummy forcing: dummy heads 0.75 scope=per_layer" in res.outputs["st"]["text"][0]
    one(TINY_WAN_NAME, "b", {"b": sampler(("unet", 0), **run_b)}, "latents/leak_b")

    copy = "tiny_wan_t2v_copy.safetensors"
    server.write_tiny_wan(copy)  # same seed: the same weights
    one(copy, "b", {"b": sampler(("unet", 0), **run_b)}, "latents/fresh_b")
    one(copy, "a", {"a": sampler(("unet", 0), seed=11)}, "latents/fresh_a")
    a, b = saved_latent(server, "latents/leak_a"), saved_latent(server, "latents/leak_b")
    assert torch.equal(a, saved_latent(server, "latents/fresh_a"))
    assert torch.equal(b, saved_latent(server, "latents/fresh_b"))
    assert not torch.equal(a, b)
    log = server.log_text()
    assert log.count("Prompt executed") >= 5


def test_profile_save_load_and_reuse(server):
    prompt = base_prompt()
    prompt["prof"] = {"class_type": "ProfileHeads", "inputs": {
        "model": ["unet", 0], "conditioning": ["text", 0], "latent": ["empty", 0], "seed": 0, "runs_per_prompt": 2,
        "ar_start": 1, "chunks_to_profile": 2, "sink_frames": 1, "frames_per_chunk": 1,
        "denoise_timesteps": "1000,750,500,250", "steps": 4, "shift": 5.0, "sample_fraction": 0.25,
        "preview_dummy_heads": 0.5, "save_name": "tiny_real"}}
    res = run_ok(server, prompt)
    text = res.outputs["prof"]["text"][0]
    assert "saved to" in text and "head profile: 2 layers x 2 heads" in text
    assert res.outputs["prof"]["images"]
    assert "dummy_forcing/profiles/tiny_real.safetensors" in server.output_files()
    options = server.object_info("LoadHeadProfile")["LoadHeadProfile"]["input"]["required"]["profile_name"][1]
    assert "tiny_real.safetensors" in options["options"]

    reuse = base_prompt()
    reuse.update({"load": {"class_type": "LoadHeadProfile", "inputs": {"profile_name": "tiny_real.safetensors"}},
                  "df": apply(profile=("load", 0), dummy_heads=0.5), "sample": sampler(("df", 0)),
                  "stats": stats("sample")})
    res = run_ok(server, reuse)
    text = res.outputs["stats"]["text"][0]
    assert "profile=given" in text and "profiling: 0.0 ms" in text


def test_clear_errors_in_the_real_executor(server):
    # an image latent (Empty Latent Image) instead of a video latent
    prompt = base_prompt()
    prompt["img"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt.update({"sample": sampler(("unet", 0), latent=("img", 0)), "stats": stats("sample")})
    res = server.queue_prompt(prompt, timeout=120)
    assert not res.ok
    assert res.error["node_type"] == "ARVideoSampler"
    assert res.error["exception_message"].startswith("AR Video Sampler: the 'latent' input is an image latent")
    # too many dummy heads for this model (2 x 2 = 4 heads)
    prompt = base_prompt()
    prompt.update({"df": apply(dummy_head_count=5), "sample": sampler(("df", 0)), "stats": stats("sample")})
    res = server.queue_prompt(prompt, timeout=120)
    assert not res.ok and res.error["node_type"] == "ApplyDummyForcing"
    assert "'dummy_head_count' = 5 is out of range: the model has 2 layers x 2 heads = 4 heads" in \
        res.error["exception_message"]
    # ar_start beyond the video
    prompt = base_prompt(length=9)  # 3 latent frames -> 3 chunks
    prompt.update({"df": apply(ar_start=2), "sample": sampler(("df", 0)), "stats": stats("sample")})
    res = server.queue_prompt(prompt, timeout=120)
    assert not res.ok and res.error["exception_message"].startswith("Apply Dummy Forcing: this video generates 3 chunk(s)")


def test_cancel_while_sampling(server):
    """POST /interrupt while the sampler runs: the prompt ends as interrupted between steps."""
    prompt = base_prompt(length=401, size=128)  # 101 latent frames x 64 tokens: several seconds on CPU
    prompt.update({"sample": sampler(("unet", 0), seed=99), "stats": stats("sample")})
    code, body = server._post("/prompt", {"prompt": prompt, "client_id": server.client_id})
    assert code == 200, body
    pid = body["prompt_id"]
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until it is running
        q = server._get("/queue")
        if any(item[1] == pid for item in q.get("queue_running", [])):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    server.interrupt()
    while time.time() < deadline:
        entry = server._get(f"/history/{pid}").get(pid)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the interrupted prompt did not finish")
    msgs = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in msgs, msgs
    # the server is fine afterwards
    ok = base_prompt()
    ok.update({"sample": sampler(("unet", 0)), "stats": stats("sample")})
    run_ok(server, ok)


def test_prompt_switch_through_core_conditioning_combine(server):
    """AR Prompt Start + ComfyUI's own Conditioning (Combine): the tag survives core's
    conditioning plumbing; frames before the switch equal the single-prompt video."""
    def prompt(switch: bool, prefix: str):
        p = base_prompt()
        p.update({"df": apply(), "save": save_latent("sample", prefix), "stats": stats("sample")})
        if switch:
            p["text2"] = {"class_type": "DFTestTextContext", "inputs": {"seed": 2, "tokens": 16, "batch": 1}}
            p["start2"] = {"class_type": "ARPromptStart",
                           "inputs": {"conditioning": ["text2", 0], "start": 3.0, "unit": "latent frames"}}
            p["both"] = {"class_type": "ConditioningCombine",
                         "inputs": {"conditioning_1": ["text", 0], "conditioning_2": ["start2", 0]}}
            p["sample"] = sampler(("df", 0), positive=["both", 0], recache_on_switch=True)
        else:
            p["sample"] = sampler(("df", 0))
        return p

    res = run_ok(server, prompt(True, "latents/switch"))
    assert "prompt switch" in res.outputs["stats"]["text"][0]
    got = saved_latent(server, "latents/switch")
    run_ok(server, prompt(False, "latents/no_switch"))
    ref = saved_latent(server, "latents/no_switch")
    assert torch.equal(got[:, :, :3], ref[:, :, :3])
    assert float((got[:, :, 3:] - ref[:, :, 3:]).abs().max()) > 1e-3 * float(ref.abs().max())


def test_fp8_weights_from_comfys_loader(server):
    """UNETLoader weight_dtype fp8_e4m3fn (ComfyUI's own fp8 storage, cast per layer): AR Video
    Sampler with Dummy Forcing runs on it and stays close to the default-dtype video."""
    def prompt(dtype, prefix):
        p = base_prompt()
        p["unet"]["inputs"]["weight_dtype"] = dtype
        p.update({"df": apply(), "sample": sampler(("df", 0)), "save": save_latent("sample", prefix)})
        return p

    run_ok(server, prompt("fp8_e4m3fn", "latents/fp8"))
    run_ok(server, prompt("default", "latents/bf_ref"))
    got, ref = saved_latent(server, "latents/fp8"), saved_latent(server, "latents/bf_ref")
    assert torch.isfinite(got).all() and not torch.equal(got, ref)  # the weights really were rounded
    assert float((got - ref).norm() / ref.norm()) < 0.15


def test_error_type_names_the_pack_not_a_file_path(server):
    """ComfyUI shows '<module>.<class>' of an exception as its type and imports the pack by its
    folder's path: the pack's error type must not show that path."""
    prompt = base_prompt()
    prompt["img"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt.update({"sample": sampler(("unet", 0), latent=("img", 0)), "stats": stats("sample")})
    res = server.queue_prompt(prompt, timeout=120)
    assert not res.ok and res.error["exception_message"].startswith("AR Video Sampler: the 'latent' input")
    assert res.error["exception_type"] == "dummy_forcing.NodeError", res.error["exception_type"]
    assert os.sep not in res.error["exception_type"] and server.base_dir not in res.error["exception_type"]


def test_a_negative_prompt_start_from_a_link_is_refused_at_ar_prompt_start(server):
    """A linked value skips the widget's min: AR Prompt Start refuses a start before the video,
    naming 'start' (it was accepted, then blamed as 'out of order' by the sampler)."""
    if "PrimitiveFloat" not in server.object_info():
        pytest.skip("this ComfyUI has no PrimitiveFloat node")
    p = base_prompt()
    p["minus4"] = {"class_type": "PrimitiveFloat", "inputs": {"value": -4.0}}
    p["text2"] = {"class_type": "DFTestTextContext", "inputs": {"seed": 2, "tokens": 16, "batch": 1}}
    p["start2"] = {"class_type": "ARPromptStart",
                   "inputs": {"conditioning": ["text2", 0], "start": ["minus4", 0], "unit": "latent frames"}}
    p["both"] = {"class_type": "ConditioningCombine",
                 "inputs": {"conditioning_1": ["text", 0], "conditioning_2": ["start2", 0]}}
    p.update({"sample": sampler(("unet", 0), positive=["both", 0]), "stats": stats("sample")})
    res = server.queue_prompt(p, timeout=120)
    assert not res.ok and res.error["node_type"] == "ARPromptStart", res.error
    assert res.error["exception_message"].startswith("AR Prompt Start: 'start' = -4.0 latent frames is before the "
                                                     "video")
