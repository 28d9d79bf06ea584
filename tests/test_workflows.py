"""The example workflows in workflows/ load in ComfyUI's frontend and make complete prompts.

Checks every node type (ours, or a ComfyUI v0.3.64 core node listed below), every link
(endpoints, slots, types), every widgets_values list (count, and for our nodes and core combos
the values against the schema), and converts each workflow to the API format (/prompt) with a
small converter of our own to prove the graph is complete. ``to_api`` is reused by the node
tests that execute these workflows end to end on stub inputs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKFLOWS = os.path.join(ROOT, "workflows")
STUB_DIR = os.path.join(HERE, "comfy_stub")
PACK_MODULE = "ComfyUI_Dummy_Forcing"
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")

# ComfyUI v0.3.64 core nodes the workflows use (read from /opt/comfyui nodes.py and
# comfy_extras/nodes_hunyuan.py, nodes_video.py): widgets in frontend order, socket inputs
# (name -> type, True = optional) and output types. Widget specs: ("COMBO", options or None for a
# file list), ("INT"|"FLOAT", min, max), ("STRING",).
CORE_NODES = {
    "UNETLoader": {"widgets": [("unet_name", ("COMBO", None)),
                               ("weight_dtype", ("COMBO", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]))],
                   "inputs": {}, "outputs": ["MODEL"]},
    "CLIPLoader": {"widgets": [("clip_name", ("COMBO", None)),
                               ("type", ("COMBO", ["stable_diffusion", "stable_cascade", "sd3", "stable_audio",
                                                   "mochi", "ltxv", "pixart", "cosmos", "lumina2", "wan", "hidream",
                                                   "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"])),
                               ("device", ("COMBO", ["default", "cpu"]))],
                   "inputs": {}, "outputs": ["CLIP"]},
    "CLIPTextEncode": {"widgets": [("text", ("STRING",))], "inputs": {"clip": ("CLIP", False)},
                       "outputs": ["CONDITIONING"]},
    "ConditioningCombine": {"widgets": [], "inputs": {"conditioning_1": ("CONDITIONING", False),
                                                      "conditioning_2": ("CONDITIONING", False)},
                            "outputs": ["CONDITIONING"]},
    "EmptyHunyuanLatentVideo": {"widgets": [("width", ("INT", 16, 16384)), ("height", ("INT", 16, 16384)),
                                            ("length", ("INT", 1, 16384)), ("batch_size", ("INT", 1, 4096))],
                                "inputs": {}, "outputs": ["LATENT"]},
    "VAELoader": {"widgets": [("vae_name", ("COMBO", None))], "inputs": {}, "outputs": ["VAE"]},
    "VAEDecode": {"widgets": [], "inputs": {"samples": ("LATENT", False), "vae": ("VAE", False)},
                  "outputs": ["IMAGE"]},
    "CreateVideo": {"widgets": [("fps", ("FLOAT", 1.0, 120.0))],
                    "inputs": {"images": ("IMAGE", False), "audio": ("AUDIO", True)}, "outputs": ["VIDEO"]},
    "SaveVideo": {"widgets": [("filename_prefix", ("STRING",)), ("format", ("COMBO", ["auto", "mp4"])),
                              ("codec", ("COMBO", ["auto", "h264"]))],
                  "inputs": {"video": ("VIDEO", False)}, "outputs": [], "output_node": True},
    "PreviewImage": {"widgets": [], "inputs": {"images": ("IMAGE", False)}, "outputs": [], "output_node": True},
    # ComfyUI's own AR path (0.21+; read from ComfyUI 0.27's comfy_extras/nodes_ar_video.py,
    # nodes_custom_sampler.py and nodes.py LoadImage). "upload" is the frontend's upload button:
    # saved in widgets_values, never sent to the server.
    "LoadImage": {"widgets": [("image", ("COMBO", None)), ("upload", ("FRONTEND",))], "inputs": {},
                  "outputs": ["IMAGE", "MASK"]},
    "ARVideoI2V": {"widgets": [("width", ("INT", 16, 8192)), ("height", ("INT", 16, 8192)), ("length", ("INT", 1, 1024)),
                               ("batch_size", ("INT", 1, 64))],
                   "inputs": {"model": ("MODEL", False), "vae": ("VAE", False), "start_image": ("IMAGE", False)},
                   "outputs": ["MODEL", "LATENT"], "since": (0, 21, 0)},
    "CFGGuider": {"widgets": [("cfg", ("FLOAT", 0.0, 100.0))],
                  "inputs": {"model": ("MODEL", False), "positive": ("CONDITIONING", False),
                             "negative": ("CONDITIONING", False)}, "outputs": ["GUIDER"]},
    "BasicScheduler": {"widgets": [("scheduler", ("COMBO", ["simple"])), ("steps", ("INT", 1, 10000)),
                                   ("denoise", ("FLOAT", 0.0, 1.0))],
                       "inputs": {"model": ("MODEL", False)}, "outputs": ["SIGMAS"]},
    "SamplerARVideo": {"widgets": [("num_frame_per_block", ("INT", 1, 64))], "inputs": {}, "outputs": ["SAMPLER"],
                       "since": (0, 21, 0)},
    "RandomNoise": {"widgets": [("noise_seed", ("INT", 0, 0xFFFFFFFFFFFFFFFF)),
                                ("noise_seed.control_after_generate", ("CONTROL",))],
                    "inputs": {}, "outputs": ["NOISE"]},
    "SamplerCustomAdvanced": {"widgets": [], "inputs": {"noise": ("NOISE", False), "guider": ("GUIDER", False),
                                                        "sampler": ("SAMPLER", False), "sigmas": ("SIGMAS", False),
                                                        "latent_image": ("LATENT", False)},
                              "outputs": ["LATENT", "LATENT"], "output_node": False},
    # the tiny model's workflow (read from ComfyUI v0.3.64 comfy_extras/nodes_images.py; 0.27 adds an IMAGE
    # output to SaveAnimatedWEBP, which the frontend adds when it loads the workflow)
    "ImageStitch": {"widgets": [("direction", ("COMBO", ["right", "down", "left", "up"])),
                                ("match_image_size", ("BOOLEAN",)), ("spacing_width", ("INT", 0, 1024)),
                                ("spacing_color", ("COMBO", ["white", "black", "red", "green", "blue"]))],
                    "inputs": {"image1": ("IMAGE", False), "image2": ("IMAGE", True)}, "outputs": ["IMAGE"]},
    "SaveAnimatedWEBP": {"widgets": [("filename_prefix", ("STRING",)), ("fps", ("FLOAT", 0.01, 1000.0)),
                                     ("lossless", ("BOOLEAN",)), ("quality", ("INT", 0, 100)),
                                     ("method", ("COMBO", ["default", "fastest", "slowest"]))],
                         "inputs": {"images": ("IMAGE", False)}, "outputs": [], "output_node": True},
}
FRONTEND_ONLY = {"MarkdownNote": 1, "Note": 1}  # virtual nodes: widget count, never sent to the server
MUTED_MODES = (2, 4)  # 2 = never (muted), 4 = bypass: not part of the prompt


# ------------------------------------------------------------------------------------ schemas
def _pack():
    if importlib.util.find_spec("comfy") is None and STUB_DIR not in sys.path:
        sys.path.insert(0, STUB_DIR)
    import comfy_stub_tools

    return comfy_stub_tools.import_pack(ROOT, PACK_MODULE)


def our_nodes() -> dict:
    """{node_id: spec} in the same shape as CORE_NODES, built from our V3 schemas."""
    import asyncio

    pack = _pack()
    from comfy_api.latest import io

    ext = asyncio.run(pack.comfy_entrypoint())
    classes = asyncio.run(ext.get_node_list())
    out = {}
    for cls in classes:
        schema = cls.GET_SCHEMA()
        widgets, inputs = [], {}
        for inp in schema.inputs:
            if isinstance(inp, io.WidgetInput) and not inp.force_input:
                if isinstance(inp, io.Combo.Input):
                    spec = ("COMBO", None if inp.id == "profile_name" else list(inp.options))
                elif isinstance(inp, (io.Int.Input, io.Float.Input)):
                    spec = (inp.get_io_type(), inp.min, inp.max)
                else:
                    spec = (inp.get_io_type(),)
                widgets.append((inp.id, spec))
                if getattr(inp, "control_after_generate", None):
                    widgets.append((inp.id + ".control_after_generate", ("CONTROL",)))
            else:
                inputs[inp.id] = (inp.get_io_type(), bool(inp.optional))
        out[schema.node_id] = {"widgets": widgets, "inputs": inputs,
                               "outputs": [o.get_io_type() for o in schema.outputs],
                               "output_node": schema.is_output_node, "ours": True, "schema": schema}
    return out


def all_specs() -> dict:
    specs = {k: dict(v, ours=False) for k, v in CORE_NODES.items()}
    specs.update(our_nodes())
    return specs


def widget_values(node: dict, spec: dict) -> dict:
    """{widget name: value} from a UI node's positional widgets_values (control values dropped)."""
    vals = node.get("widgets_values") or []
    if isinstance(vals, dict):  # some frontends save a dict for V3 nodes
        return dict(vals)
    names = [n for n, _ in spec["widgets"]]
    assert len(vals) == len(names), (f"node {node['id']} ({node['type']}): {len(vals)} widgets_values for "
                                     f"{len(names)} widgets {names}")
    frontend = {n for n, w in spec["widgets"] if w[0] == "FRONTEND"}
    return {n: v for n, v in zip(names, vals) if not n.endswith(".control_after_generate") and n not in frontend}


def to_api(workflow: dict, specs: dict | None = None, include_muted: bool = False) -> dict:
    """UI workflow -> API prompt {id: {"class_type", "inputs"}} like the frontend's graphToPrompt:
    frontend-only nodes and muted / bypassed nodes are left out."""
    specs = specs or all_specs()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for nid, node in nodes.items():
        if node["type"] in FRONTEND_ONLY or (node.get("mode", 0) in MUTED_MODES and not include_muted):
            continue
        spec = specs[node["type"]]
        inputs = widget_values(node, spec)
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            _, src, src_slot, _, _, _ = links[inp["link"]]
            if nodes[src].get("mode", 0) in MUTED_MODES and not include_muted:
                continue
            inputs[inp["name"]] = [str(src), src_slot]
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs,
                            "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def load_workflows() -> dict:
    out = {}
    for name in sorted(os.listdir(WORKFLOWS)):
        if name.endswith(".json"):
            with open(os.path.join(WORKFLOWS, name)) as f:
                out[name] = json.load(f)
    return out


EXPECTED = ["causal_forcing_i2v_dummy_forcing.json", "first_try_tiny_model.json", "long_video_prompt_switch.json",
            "long_video_sink_window.json", "profile_and_reuse.json", "text_to_video_dummy_forcing.json"]


# ------------------------------------------------------------------------------------ tests
def test_the_workflows_exist_and_nothing_else():
    assert sorted(load_workflows()) == EXPECTED
    others = [f for f in os.listdir(WORKFLOWS) if not f.endswith((".json", ".png", ".jpg", ".webp"))]
    assert not others, f"ComfyUI serves workflows/ as templates; keep other files out: {others}"


@pytest.fixture(scope="module")
def specs():
    return all_specs()


@pytest.mark.parametrize("name", EXPECTED)
def test_structure_types_and_links(name, specs):
    wf = load_workflows()[name]
    assert wf["version"] == 0.4
    ids = [n["id"] for n in wf["nodes"]]
    assert len(set(ids)) == len(ids) and wf["last_node_id"] >= max(ids)
    link_ids = [link[0] for link in wf["links"]]
    assert len(set(link_ids)) == len(link_ids) and wf["last_link_id"] >= max(link_ids)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        assert n["type"] in specs or n["type"] in FRONTEND_ONLY, f"unknown node type {n['type']}"
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in (out.get("links") or []), f"link {lid} missing on node {src} output {src_slot}"
        assert inp["link"] == lid, f"link {lid} missing on node {dst} input {dst_slot}"
        assert out["type"] == typ == inp["type"], (lid, out["type"], typ, inp["type"])
        s_spec, d_spec = specs[nodes[src]["type"]], specs[nodes[dst]["type"]]
        assert s_spec["outputs"][src_slot] == typ, (lid, nodes[src]["type"], s_spec["outputs"])
        assert d_spec["inputs"][inp["name"]][0] == typ, (lid, nodes[dst]["type"], inp["name"])
    # every input / output slot refers back to existing links
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        spec = specs[n["type"]]
        assert [o["type"] for o in n.get("outputs", [])] == spec["outputs"], n["type"]
        for inp in n.get("inputs", []):
            assert inp["name"] in spec["inputs"], (n["type"], inp["name"])
            assert inp["type"] == spec["inputs"][inp["name"]][0]
            if inp.get("link") is not None:
                assert any(link[0] == inp["link"] and link[3] == n["id"] for link in wf["links"])
        for o in n.get("outputs", []):
            for lid in o.get("links") or []:
                assert any(link[0] == lid and link[1] == n["id"] for link in wf["links"])


@pytest.mark.parametrize("name", EXPECTED)
def test_widgets_values_match_schemas(name, specs):
    wf = load_workflows()[name]
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            assert len(n["widgets_values"]) == FRONTEND_ONLY[n["type"]]
            continue
        spec = specs[n["type"]]
        vals = widget_values(n, spec)  # asserts the count
        raw = n["widgets_values"]
        for i, (wname, wspec) in enumerate(spec["widgets"]):
            v = raw[i]
            where = f"{name}: node {n['id']} {n['type']}.{wname} = {v!r}"
            kind = wspec[0]
            if kind == "CONTROL":
                assert v in SEED_CONTROLS, where
            elif kind == "FRONTEND":
                continue
            elif kind == "COMBO":
                assert isinstance(v, str), where
                if wspec[1] is not None:
                    assert v in wspec[1], where
                else:
                    assert v.endswith((".safetensors", ".png", ".jpg", ".webp")), where
            elif kind == "INT":
                assert isinstance(v, int) and not isinstance(v, bool), where
                assert wspec[1] <= v <= wspec[2], where
            elif kind == "FLOAT":
                assert isinstance(v, (int, float)) and not isinstance(v, bool), where
                assert wspec[1] <= v <= wspec[2], where
            elif kind == "BOOLEAN":
                assert isinstance(v, bool), where
            elif kind == "STRING":
                assert isinstance(v, str), where
        assert set(vals) == {w for w, s in spec["widgets"]
                             if not w.endswith(".control_after_generate") and s[0] != "FRONTEND"}


@pytest.mark.parametrize("name", EXPECTED)
def test_converts_to_a_complete_api_prompt(name, specs):
    wf = load_workflows()[name]
    for include_muted in (False, True):
        prompt = to_api(wf, specs, include_muted=include_muted)
        assert prompt
        outputs = [nid for nid, p in prompt.items() if specs[p["class_type"]].get("output_node")]
        assert outputs, "a prompt needs an output node"
        for nid, p in prompt.items():
            spec = specs[p["class_type"]]
            for iname, (_, optional) in spec["inputs"].items():
                if not optional:
                    assert iname in p["inputs"], f"{name}: node {nid} {p['class_type']} input {iname} unconnected"
            for w, ws in spec["widgets"]:
                if not w.endswith(".control_after_generate") and ws[0] != "FRONTEND":
                    assert w in p["inputs"]
            for v in p["inputs"].values():
                if isinstance(v, list):
                    assert v[0] in prompt, f"{name}: node {nid} depends on a node left out of the prompt"
        # every active node feeds an output node (nothing dangling that the server would skip silently)
        needed, todo = set(), list(outputs)
        while todo:
            nid = todo.pop()
            if nid in needed:
                continue
            needed.add(nid)
            todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
        assert needed == set(prompt), f"{name}: nodes not feeding an output: {set(prompt) - needed}"
        json.dumps(prompt)  # serialisable as the frontend would send it


def test_workflows_use_the_settings_they_advertise(specs):
    wfs = load_workflows()

    def api(name, **kw):
        return to_api(wfs[name], specs, **kw)

    t2v = api("text_to_video_dummy_forcing.json")
    kinds = sorted(p["class_type"] for p in t2v.values())
    assert {"UNETLoader", "CLIPLoader", "CLIPTextEncode", "EmptyHunyuanLatentVideo", "ApplyDummyForcing",
            "ARVideoSampler", "VAELoader", "CreateVideo", "SaveVideo", "CacheStats"} == set(kinds)
    s = next(p for p in t2v.values() if p["class_type"] == "ARVideoSampler")["inputs"]
    assert t2v[s["vae"][0]]["inputs"]["vae_name"] == "wan_2.1_vae.safetensors"  # pixels decoded while sampling
    video = next(p for p in t2v.values() if p["class_type"] == "CreateVideo")["inputs"]
    assert t2v[video["images"][0]]["class_type"] == "ARVideoSampler" and video["images"][1] == 2
    unet = next(p for p in t2v.values() if p["class_type"] == "UNETLoader")["inputs"]
    assert unet["unet_name"] == "self_forcing_dmd_bf16.safetensors"
    clip = next(p for p in t2v.values() if p["class_type"] == "CLIPLoader")["inputs"]
    assert clip["type"] == "wan" and "umt5_xxl" in clip["clip_name"]
    empty = next(p for p in t2v.values() if p["class_type"] == "EmptyHunyuanLatentVideo")["inputs"]
    assert (empty["width"], empty["height"], empty["length"]) == (832, 480, 81)

    long = api("long_video_sink_window.json")
    s = next(p for p in long.values() if p["class_type"] == "ARVideoSampler")["inputs"]
    assert s["cache"] == "sink + window" and (s["sink_frames"], s["window_frames"]) == (3, 12)
    a = next(p for p in long.values() if p["class_type"] == "ApplyDummyForcing")["inputs"]
    assert a["long_context_frames"] > s["window_frames"] and a["ar_start"] == 2
    assert next(p for p in long.values() if p["class_type"] == "EmptyHunyuanLatentVideo")["inputs"]["length"] == 241
    assert long[s["vae"][0]]["inputs"]["vae_name"] == "lighttaew2_1.safetensors"
    assert s["save_video"] == "mp4" and s["return_frames"] is False  # written while made, flat memory

    pr = api("profile_and_reuse.json")
    prof = next(p for p in pr.values() if p["class_type"] == "ProfileHeads")["inputs"]
    assert prof["save_name"] == "self_forcing_480p"
    src = pr[prof["conditioning"][0]]
    assert src["class_type"] == "ConditioningCombine"  # several prompts
    assert "LoadHeadProfile" not in {p["class_type"] for p in pr.values()}  # muted until the file exists
    full = api("profile_and_reuse.json", include_muted=True)
    load = next(p for p in full.values() if p["class_type"] == "LoadHeadProfile")["inputs"]
    assert load["profile_name"] == prof["save_name"] + ".safetensors"
    applies = [p["inputs"] for p in full.values() if p["class_type"] == "ApplyDummyForcing"]
    assert sorted(full[a["head_profile"][0]]["class_type"] for a in applies) == ["LoadHeadProfile", "ProfileHeads"]
    samplers = [p for p in full.values() if p["class_type"] == "ARVideoSampler"]
    assert len(samplers) == 2


def test_the_i2v_workflow_is_cores_template_with_dummy_forcing(specs):
    """ComfyUI's Causal Forcing I2V template (frame-wise checkpoint, ARVideoI2V 832x480x81, CFG 1,
    simple 4 steps, Sampler AR Video 1) with Apply Dummy Forcing on the model and Cache Stats."""
    p = to_api(load_workflows()["causal_forcing_i2v_dummy_forcing.json"], specs)

    def one(kind):
        found = [(nid, q["inputs"]) for nid, q in p.items() if q["class_type"] == kind]
        assert len(found) == 1, kind
        return found[0]

    unet_id, unet = one("UNETLoader")
    assert unet["unet_name"] == "causal_forcing-framewise.safetensors"
    df_id, df = one("ApplyDummyForcing")
    assert df["model"][0] == unet_id
    _, i2v = one("ARVideoI2V")
    assert i2v["model"][0] == df_id and (i2v["width"], i2v["height"], i2v["length"]) == (832, 480, 81)
    _, guider = one("CFGGuider")
    assert guider["cfg"] == 1.0 and p[guider["model"][0]]["class_type"] == "ARVideoI2V"
    _, sched = one("BasicScheduler")
    assert (sched["scheduler"], sched["steps"], sched["denoise"]) == ("simple", 4, 1.0)
    assert one("SamplerARVideo")[1]["num_frame_per_block"] == 1
    sample_id, _ = one("SamplerCustomAdvanced")
    _, stats = one("CacheStats")
    assert stats["model"][0] == df_id and stats["latent"][0] == sample_id


def test_the_prompt_switch_workflow_schedules_three_prompts(specs):
    p = to_api(load_workflows()["long_video_prompt_switch.json"], specs)
    sampler = next(q["inputs"] for q in p.values() if q["class_type"] == "ARVideoSampler")
    assert sampler["recache_on_switch"] is True and sampler["cache"] == "sink + window"
    starts = sorted((q["inputs"]["start"], q["inputs"]["unit"]) for q in p.values() if q["class_type"] == "ARPromptStart")
    assert starts == [(5.0, "seconds"), (10.0, "seconds")]
    top = p[sampler["positive"][0]]
    assert top["class_type"] == "ConditioningCombine"
    assert next(q for q in p.values() if q["class_type"] == "EmptyHunyuanLatentVideo")["inputs"]["length"] == 241


def test_the_tiny_model_workflow_compares_full_cache_and_dummy_forcing(specs):
    """Nothing to download: the shipped small model, one prompt and seed through two AR Video
    Samplers (the model directly, and through Apply Dummy Forcing), both decoded side by side into
    one saved animation, a Cache Stats for each."""
    from dummy_forcing_core.tiny.world import DEFAULT_PROMPT

    p = to_api(load_workflows()["first_try_tiny_model.json"], specs)
    kinds = sorted(q["class_type"] for q in p.values())
    assert kinds == sorted(["DFTinyModelLoader", "DFTinyTextEncode", "DFTinyEmptyLatent", "ApplyDummyForcing",
                            "ARVideoSampler", "ARVideoSampler", "DFTinyDecode", "DFTinyDecode", "ImageStitch",
                            "SaveAnimatedWEBP", "CacheStats", "CacheStats"])
    assert not {"UNETLoader", "CLIPLoader", "VAELoader"} & set(kinds)  # no file to download
    loader = next(nid for nid, q in p.items() if q["class_type"] == "DFTinyModelLoader")
    encode = next(q["inputs"] for q in p.values() if q["class_type"] == "DFTinyTextEncode")
    assert encode["prompt"] == DEFAULT_PROMPT and encode["text_encoder"] == [loader, 1]
    empty = next(q["inputs"] for q in p.values() if q["class_type"] == "DFTinyEmptyLatent")
    assert (empty["frames"], empty["size"], empty["batch_size"]) == (24, 32, 1)  # what the model was trained on
    samplers = {nid: q["inputs"] for nid, q in p.items() if q["class_type"] == "ARVideoSampler"}
    by_model = {p[s["model"][0]]["class_type"]: (nid, s) for nid, s in samplers.items()}
    assert set(by_model) == {"DFTinyModelLoader", "ApplyDummyForcing"}
    df = p[by_model["ApplyDummyForcing"][1]["model"][0]]["inputs"]
    assert df["model"] == [loader, 0] and df["dummy_heads"] == 0.5
    full, dfs = by_model["DFTinyModelLoader"][1], by_model["ApplyDummyForcing"][1]
    same = {k: v for k, v in full.items() if k != "model"}
    assert same == {k: v for k, v in dfs.items() if k != "model"}  # the same video settings, seed, prompt, latent
    assert full["frames_per_chunk"] == 3 and full["cache"] == "full" and full["seed"] == 0
    stitch = next(q["inputs"] for q in p.values() if q["class_type"] == "ImageStitch")
    decodes = [p[stitch[k][0]] for k in ("image1", "image2")]
    assert [p[d["inputs"]["latent"][0]]["inputs"]["model"] for d in decodes] == [full["model"], dfs["model"]]
    assert stitch["match_image_size"] is False  # same size already: no resampling of the pixels
    save = next(q["inputs"] for q in p.values() if q["class_type"] == "SaveAnimatedWEBP")
    assert save["lossless"] is True and p[save["images"][0]]["class_type"] == "ImageStitch"
    stats = sorted(samplers[q["inputs"]["stats"][0]]["model"][0] for q in p.values() if q["class_type"] == "CacheStats")
    assert stats == sorted([full["model"][0], dfs["model"][0]])
