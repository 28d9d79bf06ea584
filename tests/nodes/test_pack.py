"""The pack loads into ComfyUI's loader like a real custom node pack; schemas, tooltips, web extension."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import comfy_stub_tools
from helpers import ROOT
from node_helpers import PACK_MODULE, load_pack, pack_nodes

NODE_IDS = ["ARVideoSampler", "ApplyDummyForcing", "ARCachePolicy", "ARPromptStart", "ProfileHeads", "LoadHeadProfile",
            "CacheStats", "DFTinyModelLoader", "DFTinyTextEncode", "DFTinyEmptyLatent", "DFTinyDecode", "ARVideoDecode"]
DISPLAY = {"ARVideoSampler": "AR Video Sampler", "ARVideoDecode": "AR Video Decode", "ApplyDummyForcing": "Apply Dummy Forcing",
           "ARCachePolicy": "AR Cache Policy", "ARPromptStart": "AR Prompt Start", "ProfileHeads": "Profile Heads",
           "LoadHeadProfile": "Load Head Profile", "CacheStats": "Cache Stats", "DFTinyModelLoader": "Load Tiny Model",
           "DFTinyTextEncode": "Tiny Text Encode", "DFTinyEmptyLatent": "Tiny Empty Latent",
           "DFTinyDecode": "Tiny Decode"}
CATEGORY = "video/dummy forcing"


# ------------------------------------------------------------------------------------ tests
def test_pack_registers_its_v3_nodes_like_comfyui():
    mod = load_pack()
    assert not hasattr(mod, "NODE_CLASS_MAPPINGS"), "NODE_CLASS_MAPPINGS would make ComfyUI skip comfy_entrypoint"
    assert mod.WEB_DIRECTORY == "./web"
    assert os.path.isfile(os.path.join(ROOT, "web", "dummy_forcing.js"))
    classes, names = comfy_stub_tools.load_pack_nodes(mod)
    assert list(classes) == NODE_IDS
    assert names == DISPLAY
    for node_id, cls in classes.items():
        schema = cls.GET_SCHEMA()
        assert schema.category == CATEGORY
        assert len(schema.description) > 80, node_id
        info = comfy_stub_tools.node_info(cls)
        assert info["name"] == node_id and info["display_name"] == DISPLAY[node_id]


def test_pack_folder_appended_to_sys_path_and_core_imported_once():
    load_pack()
    assert ROOT in sys.path
    import dummy_forcing_core.sampler as core_sampler
    sampler_mod = sys.modules[PACK_MODULE + ".nodes.sampler"]
    assert sampler_mod.generate is core_sampler.generate
    assert "nodes" not in sys.modules or not getattr(sys.modules["nodes"], "__file__", "").startswith(
        os.path.join(ROOT, "nodes")), "our nodes/ must not be importable as the top-level 'nodes'"


def test_core_imports_without_comfyui():
    code = ("import sys, dummy_forcing_core, dummy_forcing_core.plots, dummy_forcing_core.heatmap; "
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'comfy_api', 'folder_paths'))]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


EXPECTED_INPUTS = {
    "ARVideoSampler": ["model", "positive", "latent", "sigmas", "noise", "seed", "denoise_timesteps", "steps", "shift",
                       "frames_per_chunk", "cache", "sink_frames", "window_frames", "context_timestep",
                       "start_frames", "noise_layout", "recache_on_switch", "vae", "return_frames", "save_video",
                       "filename_prefix", "frame_rate", "live_preview", "warm_start"],
    "ARVideoDecode": ["samples", "vae", "chunk_frames", "return_frames", "save_video", "filename_prefix", "frame_rate",
                      "live_preview"],
    "ApplyDummyForcing": ["model", "head_profile", "dummy_heads", "dummy_head_count", "scope", "normalised_cost",
                          "ar_start", "neighbor_chunks", "sink_frames", "context_packing", "profile_sample_fraction",
                          "profile_seed", "long_context_frames", "reprofile_on_prompt_switch", "neighbor_skips_sink",
                          "warmup_cache", "profile_sink_frames", "preset", "attention_8bit"],
    "ProfileHeads": ["model", "conditioning", "latent", "seed", "runs_per_prompt", "ar_start", "chunks_to_profile",
                     "sink_frames", "frames_per_chunk", "denoise_timesteps", "steps", "shift", "sample_fraction",
                     "preview_dummy_heads", "save_name", "profile_sink_frames"],
    "ARCachePolicy": ["model", "cache", "sink_frames", "window_frames"],
    "ARPromptStart": ["conditioning", "start", "unit"],
    "LoadHeadProfile": ["profile_name"],
    "CacheStats": ["stats", "model", "latent"],
    "DFTinyModelLoader": [], "DFTinyTextEncode": ["text_encoder", "prompt"],
    "DFTinyEmptyLatent": ["frames", "size", "batch_size"], "DFTinyDecode": ["latent", "scale"],
}
EXPECTED_OUTPUTS = {
    "ARVideoSampler": ["LATENT", "DF_STATS", "IMAGE"], "ARVideoDecode": ["IMAGE"], "ApplyDummyForcing": ["MODEL"], "ARCachePolicy": ["MODEL"],
    "ARPromptStart": ["CONDITIONING"],
    "ProfileHeads": ["HEAD_PROFILE", "IMAGE"], "LoadHeadProfile": ["HEAD_PROFILE"], "CacheStats": ["STRING", "IMAGE"],
    "DFTinyModelLoader": ["MODEL", "DF_TINY_TEXT"], "DFTinyTextEncode": ["CONDITIONING"],
    "DFTinyEmptyLatent": ["LATENT"], "DFTinyDecode": ["IMAGE"],
}
DEFAULTS = {
    "ARVideoSampler": dict(seed=0, denoise_timesteps="1000,750,500,250", steps=4, shift=0.0, frames_per_chunk=3,
                           cache="full", sink_frames=3, window_frames=12, context_timestep=0, start_frames=0,
                           noise_layout="pack", recache_on_switch=True),
    "ARCachePolicy": dict(cache="full", sink_frames=3, window_frames=12),
    "ApplyDummyForcing": dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=True, ar_start=1,
                              neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
                              profile_seed=0, long_context_frames=0, reprofile_on_prompt_switch=False,
                              neighbor_skips_sink=True, warmup_cache="base", profile_sink_frames=0, preset="custom",
                              attention_8bit="comfyui"),
    "ARPromptStart": dict(start=5.0, unit="seconds"),
    "ProfileHeads": dict(seed=0, runs_per_prompt=1, ar_start=1, chunks_to_profile=1, sink_frames=1,
                         frames_per_chunk=3, denoise_timesteps="1000,750,500,250", steps=4, shift=0.0,
                         sample_fraction=0.25, preview_dummy_heads=0.5, save_name="", profile_sink_frames=0),
}


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_schema_inputs_outputs_defaults_and_tooltips(node_id):
    from comfy_api.latest import io
    cls = pack_nodes()[node_id]
    schema = cls.GET_SCHEMA()
    assert [i.id for i in schema.inputs] == EXPECTED_INPUTS[node_id]
    assert [o.io_type for o in schema.outputs] == EXPECTED_OUTPUTS[node_id]
    for inp in schema.inputs:
        assert inp.tooltip and len(inp.tooltip) >= 40, f"{node_id}.{inp.id} needs a helpful tooltip"
        if isinstance(inp, io.WidgetInput) and not isinstance(inp, io.Combo.Input):
            assert inp.default is not None, f"{node_id}.{inp.id} has no default"
            if getattr(inp, "min", None) is not None:
                assert inp.min <= inp.default <= inp.max, f"{node_id}.{inp.id}"
    for inp in schema.inputs:
        if isinstance(inp, io.Combo.Input) and inp.default is not None:
            assert inp.default in inp.options
    for k, v in DEFAULTS.get(node_id, {}).items():
        got = next(i for i in schema.inputs if i.id == k).default
        assert got == v and type(got) is type(v), (k, got, v)
    for o in schema.outputs:
        assert o.tooltip
    seed = next((i for i in schema.inputs if i.id == "seed"), None)
    if seed is not None:
        assert seed.control_after_generate is True
    info = comfy_stub_tools.node_info(cls)
    if node_id in ("CacheStats", "ProfileHeads"):
        assert info["output_node"] is True


# ------------------------------------------------------------------------------------ web
NODE_BIN = shutil.which("node")


@pytest.mark.skipif(NODE_BIN is None, reason="node.js not installed")
def test_web_extension_parses():
    r = subprocess.run([NODE_BIN, "--check", os.path.join(ROOT, "web", "dummy_forcing.js")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(NODE_BIN is None, reason="node.js not installed")
def test_web_extension_shows_text_on_executed(tmp_path):
    """Run the extension in node.js against a fake app / ComfyWidgets laid out like ComfyUI's
    web root (extensions/<pack>/dummy_forcing.js imports ../../scripts/app.js)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "web", "dummy_forcing.js"), tmp_path / "extensions" / "pack" / "dummy_forcing.mjs")
    (tmp_path / "scripts" / "app.js").write_text(textwrap.dedent("""
        export const app = { extensions: [], registerExtension(e) { this.extensions.push(e); } };
        globalThis.__app = app;
    """))
    (tmp_path / "scripts" / "widgets.js").write_text(textwrap.dedent("""
        export const ComfyWidgets = {
          STRING(node, name, spec, app) {
            const element = { value: "", style: {}, readOnly: false };
            const widget = { name, type: "customtext", value: "", options: {}, element };
            (node.widgets ??= []).push(widget);
            return { widget };
          },
        };
    """))
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "run.mjs").write_text(textwrap.dedent("""
        globalThis.requestAnimationFrame = (f) => f();
        await import("./extensions/pack/dummy_forcing.mjs");
        const app = globalThis.__app;
        const ext = app.extensions[0];
        const results = {};
        for (const name of ["CacheStats", "ProfileHeads", "KSampler"]) {
          function NodeType() {}
          let chained = 0;
          NodeType.prototype.onExecuted = function () { chained++; };
          await ext.beforeRegisterNodeDef(NodeType, { name });
          const node = new NodeType();
          node.size = [300, 100];
          node.computeSize = () => [200, 180];
          node.setSize = (s) => { node.size = s; };
          node.onExecuted({ text: ["line 1\\nline 2"], images: [] });
          node.onExecuted({ text: ["second run"] });
          results[name] = { chained, widgets: (node.widgets || []).map((w) => [w.name, w.value, w.serialize,
                            w.element.readOnly]), size: node.size };
        }
        console.log(JSON.stringify({ name: ext.name, results }));
    """))
    r = subprocess.run([NODE_BIN, str(tmp_path / "run.mjs")], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["name"].startswith("DummyForcing")
    for name in ("CacheStats", "ProfileHeads"):
        res = out["results"][name]
        assert res["chained"] == 2  # the previous onExecuted still runs
        assert res["widgets"] == [["df_report", "second run", False, True]]  # one widget, reused on re-run
        assert res["size"][0] >= 300 and res["size"][1] >= 180
    assert out["results"]["KSampler"]["widgets"] == []  # other nodes untouched
