"""The pack loads into ComfyUI's loader like a real custom node pack; schemas, tooltips, web extension.

Also the shared helpers of the node tests (imported by the other tests/nodes/test_*.py files).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import comfy_stub_tools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
PACK_MODULE = "ComfyUI_Dummy_Forcing"
NODE_IDS = ["ARVideoSampler", "ApplyDummyForcing", "ProfileHeads", "LoadHeadProfile", "CacheStats"]
DISPLAY = {"ARVideoSampler": "AR Video Sampler", "ApplyDummyForcing": "Apply Dummy Forcing",
           "ProfileHeads": "Profile Heads", "LoadHeadProfile": "Load Head Profile", "CacheStats": "Cache Stats"}
CATEGORY = "video/dummy forcing"

# Tiny geometry used everywhere: 2 layers x 4 heads (8 heads), head dim 16, text dim 32,
# latent 4x4 (4 tokens per frame with the 2x2 patch), 16 channels.
TEXT_DIM = 32


# ------------------------------------------------------------------------------------ helpers
def load_pack():
    """Import the pack the way ComfyUI's nodes.load_custom_node does (spec_from_file_location)."""
    return comfy_stub_tools.import_pack(ROOT, PACK_MODULE)


def pack_nodes() -> dict:
    classes, _ = comfy_stub_tools.load_pack_nodes(load_pack())
    return classes


def _root_conftest():
    mod = sys.modules.get("df_tests_root_conftest")
    if mod is None:
        spec = importlib.util.spec_from_file_location("df_tests_root_conftest", os.path.join(TESTS, "conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def tiny_wan(seed=0, layers=2, heads=4, head_dim=16):
    """tests/conftest.py make_tiny_wan with in_dim 16, float32."""
    return _root_conftest().make_tiny_wan(layers=layers, heads=heads, head_dim=head_dim, seed=seed,
                                          dtype=torch.float32, text_dim=TEXT_DIM, in_dim=16)


def cond(seed=0, batch=1, tokens=8, dim=TEXT_DIM):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dim, generator=g), {"pooled_output": None}]]


def video_latent(batch=1, frames=6, h=4, w=4, channels=16, fill=None, seed=0):
    if fill is None:
        x = torch.zeros(batch, channels, frames, h, w)
    else:
        x = torch.randn(batch, channels, frames, h, w, generator=torch.Generator().manual_seed(seed))
    return {"samples": x}


def deep_equal(a, b) -> bool:
    """== that also compares tensors, dataclasses (e.g. DummyForcingConfig with a HeadProfile)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(deep_equal(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    return a == b


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.model.diffusion_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


class ModelSnapshot:
    """Everything a node must leave as it was on its input MODEL."""

    def __init__(self, model):
        self.model = model
        self.options = copy.deepcopy(model.model_options)
        self.options_id = id(model.model_options)
        self.to_id = id(model.model_options.get("transformer_options"))
        self.digest = weights_digest(model)
        self.object_patches = dict(model.object_patches)
        self.patches = {k: list(v) for k, v in model.patches.items()}

    def assert_unchanged(self):
        m = self.model
        assert deep_equal(m.model_options, self.options), "model_options changed"
        assert id(m.model_options) == self.options_id
        assert id(m.model_options.get("transformer_options")) == self.to_id
        assert weights_digest(m) == self.digest, "weights changed"
        assert m.object_patches == self.object_patches
        assert {k: list(v) for k, v in m.patches.items()} == self.patches


# ------------------------------------------------------------------------------------ tests
def test_pack_registers_five_v3_nodes_like_comfyui():
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
    "ARVideoSampler": ["model", "positive", "latent", "seed", "denoise_timesteps", "steps", "shift",
                       "frames_per_chunk", "cache", "sink_frames", "window_frames", "context_timestep",
                       "start_frames"],
    "ApplyDummyForcing": ["model", "head_profile", "dummy_heads", "dummy_head_count", "scope", "normalised_cost",
                          "ar_start", "neighbor_chunks", "sink_frames", "context_packing", "profile_sample_fraction",
                          "profile_seed", "long_context_frames"],
    "ProfileHeads": ["model", "conditioning", "latent", "seed", "runs_per_prompt", "ar_start", "chunks_to_profile",
                     "sink_frames", "frames_per_chunk", "denoise_timesteps", "steps", "shift", "sample_fraction",
                     "preview_dummy_heads", "save_name"],
    "LoadHeadProfile": ["profile_name"],
    "CacheStats": ["stats"],
}
EXPECTED_OUTPUTS = {
    "ARVideoSampler": ["LATENT", "DF_STATS"], "ApplyDummyForcing": ["MODEL"],
    "ProfileHeads": ["HEAD_PROFILE", "IMAGE"], "LoadHeadProfile": ["HEAD_PROFILE"], "CacheStats": ["STRING", "IMAGE"],
}
DEFAULTS = {
    "ARVideoSampler": dict(seed=0, denoise_timesteps="1000,750,500,250", steps=4, shift=5.0, frames_per_chunk=3,
                           cache="full", sink_frames=3, window_frames=12, context_timestep=0, start_frames=0),
    "ApplyDummyForcing": dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=False, ar_start=1,
                              neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
                              profile_seed=0, long_context_frames=0),
    "ProfileHeads": dict(seed=0, runs_per_prompt=1, ar_start=1, chunks_to_profile=1, sink_frames=1,
                         frames_per_chunk=3, denoise_timesteps="1000,750,500,250", steps=4, shift=5.0,
                         sample_fraction=0.25, preview_dummy_heads=0.5, save_name=""),
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
