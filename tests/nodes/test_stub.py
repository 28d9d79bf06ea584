"""The ComfyUI stub behaves like ComfyUI v0.3.64 where node code depends on it."""
import asyncio
import os
import types

import pytest
import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io, ui

needs_stub = pytest.mark.skipif(not getattr(__import__("comfy"), "IS_COMFY_STUB", False),
                                reason="checks the stub itself")


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.q(x)


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


# --------------------------------------------------------------------------- MODEL
def test_model_patcher_wraps_like_comfy(stub_model_patcher):
    net = _TinyNet().double()
    m = stub_model_patcher(net)
    assert m.model.diffusion_model is net
    assert isinstance(m.model.latent_format, comfy.latent_formats.Wan21)
    assert m.model.model_sampling.shift == 8.0  # Wan 2.1 T2V default, as UNETLoader gives it
    assert m.model.get_dtype() == torch.float64
    assert m.model.manual_cast_dtype is None
    assert m.model_options == {"transformer_options": {}} and m.object_patches == {}
    assert m.load_device == mm.get_torch_device() and m.offload_device == mm.unet_offload_device()
    # like ComfyUI: the whole BaseModel state dict, incl. the model_sampling.sigmas buffer
    assert m.model_size() == sum(p.numel() * 8 for p in net.parameters()) + 1000 * 4


def test_clone_isolates_model_options(stub_model_patcher):
    m = stub_model_patcher(_TinyNet())
    holder = types.SimpleNamespace(hits=0)
    m.model_options["transformer_options"]["holder"] = holder
    m.model_options["transformer_options"]["nested"] = {"a": [1]}
    c = m.clone()
    assert c.model is m.model and c.is_clone(m) and c.parent is m
    c.model_options["transformer_options"]["nested"]["a"].append(2)
    c.model_options["transformer_options"]["new"] = 1
    assert m.model_options["transformer_options"]["nested"] == {"a": [1]}
    assert "new" not in m.model_options["transformer_options"]
    # ComfyUI 0.27 copies the dicts and lists of model_options and shares every other object
    # (v0.3.64 deep-copied them: a holder object was copied by every clone)
    assert c.model_options["transformer_options"]["holder"] is holder
    c.add_object_patch("diffusion_model.blocks.0.forward", lambda x: x)
    assert m.object_patches == {}


def test_object_patch_applied_on_load_and_undone(stub_model_patcher):
    net = _TinyNet()
    base = stub_model_patcher(net)
    orig = net.blocks[0].forward
    patched = base.clone()
    fn = lambda x: x * 0 + 7  # noqa: E731
    patched.add_object_patch("diffusion_model.blocks.0.forward", fn)
    assert patched.get_model_object("diffusion_model.blocks.0.forward") is fn
    assert net.blocks[0].forward == orig  # nothing applied before loading
    mm.load_models_gpu([patched])
    assert net.blocks[0].forward is fn
    assert mm.loaded_models() == [patched]
    mm.load_models_gpu([base])  # another clone of the same model replaces it
    assert net.blocks[0].forward == orig
    mm.load_models_gpu([patched])
    mm.unload_all_models()
    assert net.blocks[0].forward == orig


def test_diff_weight_patch_applied_on_load(stub_model_patcher):
    net = _TinyNet()
    w0 = net.blocks[1].q.weight.detach().clone()
    m = stub_model_patcher(net).clone()
    key = "diffusion_model.blocks.1.q.weight"
    assert m.add_patches({key: (torch.ones(4, 4),)}, strength_patch=0.5) == [key]
    mm.load_models_gpu([m])
    assert torch.allclose(net.blocks[1].q.weight, w0 + 0.5)
    mm.unload_all_models()
    assert torch.equal(net.blocks[1].q.weight, w0)


def test_shift_is_an_object_patch_like_model_sampling_sd3(stub_model_patcher):
    m = stub_model_patcher(_TinyNet(), shift=5.0)
    assert sorted(m.object_patches) == ["model_sampling"]
    assert m.get_model_object("model_sampling").shift == 5.0
    assert m.model.model_sampling.shift == 8.0  # the real ComfyUI shows the same before loading
    mm.load_models_gpu([m])
    assert m.model.model_sampling.shift == 5.0


# --------------------------------------------------------------------------- interrupt / progress
def test_interrupt_raises_once():
    mm.throw_exception_if_processing_interrupted()  # no-op
    mm.interrupt_current_processing()
    assert mm.processing_interrupted()
    with pytest.raises(mm.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()
    assert not mm.processing_interrupted()
    mm.throw_exception_if_processing_interrupted()


def test_progress_bar_calls_global_hook(progress_events):
    pbar = comfy.utils.ProgressBar(4, node_id="7")
    pbar.update(1)
    pbar.update_absolute(3, preview=("JPEG", None, 512))
    pbar.update(5)  # clamped to total
    assert progress_events == [(1, 4, None, "7"), (3, 4, ("JPEG", None, 512), "7"), (4, 4, None, "7")]
    comfy.utils.set_progress_bar_global_hook(None)
    pbar.update(1)  # the hook was captured when the bar was created
    assert len(progress_events) == 4
    comfy.utils.ProgressBar(2).update(1)
    assert len(progress_events) == 4


# --------------------------------------------------------------------------- latents
def test_wan21_latent_format_is_not_identity():
    lf = comfy.latent_formats.Wan21()
    assert lf.latent_channels == 16 and lf.latent_dimensions == 3
    x = torch.randn(1, 16, 3, 4, 4, dtype=torch.float64)
    y = lf.process_in(x)
    assert (y - x).abs().max() > 0.5
    assert torch.allclose(lf.process_out(y), x)


# --------------------------------------------------------------------------- V3 schema
class _Node(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StubTestNode", display_name="Stub Test Node", category="testing",
            description="for tests",
            inputs=[
                io.Model.Input("model"),
                io.Float.Input("ratio", default=0.5, min=0.0, max=1.0, step=0.05, tooltip="how much"),
                io.Int.Input("steps", default=4, min=1, max=50),
                io.Combo.Input("mode", options=["fast", "exact"], default="fast"),
                io.Custom("HEAD_PROFILE").Input("profile", optional=True),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, ratio, steps, mode, profile=None):
        text = f"{mode}:{ratio}:{steps}:{profile}"
        return io.NodeOutput(model, text, ui=ui.PreviewText(text))


class _BadNode(_Node):
    @classmethod
    def execute(cls, **kw):
        cls.counter = 1  # V3 classes must keep no state: ComfyUI locks the class
        return io.NodeOutput(None, "")


def test_schema_introspection():
    schema = _Node.GET_SCHEMA()
    inputs = {i.id: i for i in schema.inputs}
    assert inputs["ratio"].default == 0.5 and inputs["ratio"].max == 1.0 and inputs["ratio"].tooltip == "how much"
    assert inputs["steps"].min == 1 and inputs["mode"].options == ["fast", "exact"]
    assert inputs["profile"].get_io_type() == "HEAD_PROFILE" and inputs["profile"].optional
    assert _Node.RETURN_TYPES == ["MODEL", "STRING"]
    assert _Node.RETURN_NAMES == ["MODEL", "report"]
    assert _Node.OUTPUT_NODE is True and _Node.CATEGORY == "testing"
    assert _Node.FUNCTION == "EXECUTE_NORMALIZED"
    it = _Node.INPUT_TYPES()
    assert it["required"]["ratio"] == ("FLOAT", {"tooltip": "how much", "default": 0.5, "min": 0.0, "max": 1.0,
                                                 "step": 0.05})
    assert it["required"]["mode"][0] == "COMBO" and it["required"]["mode"][1]["options"] == ["fast", "exact"]
    assert it["optional"]["profile"] == ("HEAD_PROFILE", {})
    assert set(it["hidden"]) == {"prompt", "extra_pnginfo"}
    info = _Node.GET_NODE_INFO_V1()
    assert info["name"] == "StubTestNode" and info["output"] == ["MODEL", "STRING"]


def test_run_node_validates_and_executes(run_node):
    from comfy_stub_tools import NodeValidationError, ui_dict
    out = run_node(_Node, model="M", steps=2)
    assert isinstance(out, io.NodeOutput)
    assert out.result == ("M", "fast:0.5:2:None") and out[0] == "M"
    assert ui_dict(out) == {"text": ("fast:0.5:2:None",)}
    with pytest.raises(NodeValidationError, match="bigger than max"):
        run_node(_Node, model="M", ratio=1.5)
    with pytest.raises(NodeValidationError, match="not in list"):
        run_node(_Node, model="M", mode="slow")
    with pytest.raises(NodeValidationError, match="Required input is missing"):
        run_node(_Node)
    with pytest.raises(AttributeError, match="locked"):
        run_node(_BadNode, model="M")


def test_load_pack_nodes_like_comfyui(load_pack_nodes):
    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [_Node]

    async def comfy_entrypoint():
        return Ext()

    pack = types.SimpleNamespace(comfy_entrypoint=comfy_entrypoint)
    classes, names = load_pack_nodes(pack)
    assert classes == {"StubTestNode": _Node} and names == {"StubTestNode": "Stub Test Node"}
    pack.NODE_CLASS_MAPPINGS = {"Other": object}  # wins over comfy_entrypoint in v0.3.64
    assert load_pack_nodes(pack)[0] == {"Other": object}
    assert asyncio.run(Ext().on_load()) is None


def test_preview_image_saves_to_temp(comfy_dirs):
    out = ui.PreviewImage(torch.rand(2, 8, 8, 3))
    d = out.as_dict()
    assert [r["type"] for r in d["images"]] == ["temp", "temp"]
    assert all(os.path.isfile(os.path.join(comfy_dirs.temp, r["filename"])) for r in d["images"])


# --------------------------------------------------------------------------- folder_paths
def test_folder_paths_in_temp_dir(comfy_dirs, output_dir):
    assert output_dir == folder_paths.get_output_directory() and output_dir.startswith(comfy_dirs.base)
    dm = os.path.join(comfy_dirs.models, "diffusion_models", "sub")
    os.makedirs(dm)
    open(os.path.join(dm, "tiny.safetensors"), "wb").close()
    open(os.path.join(dm, "notes.txt"), "w").close()
    assert folder_paths.get_filename_list("diffusion_models") == ["sub/tiny.safetensors"]
    assert folder_paths.get_filename_list("unet") == ["sub/tiny.safetensors"]
    assert folder_paths.get_full_path("diffusion_models", "sub/tiny.safetensors") == os.path.join(dm, "tiny.safetensors")
    assert folder_paths.get_full_path("diffusion_models", "missing.safetensors") is None
    assert folder_paths.get_annotated_filepath("a.png [output]") == os.path.join(output_dir, "a.png")
    assert folder_paths.get_annotated_filepath("a.png") == os.path.join(comfy_dirs.input, "a.png")
    folder, name, counter, sub, _ = folder_paths.get_save_image_path("vid/clip", output_dir)
    assert (name, counter, sub) == ("clip", 1, "vid")
    open(os.path.join(folder, "clip_00004_.png"), "w").close()
    assert folder_paths.get_save_image_path("vid/clip", output_dir)[2] == 5


@needs_stub
def test_core_wan_model_through_patcher(stub_model_patcher):
    from dummy_forcing_core.wan_model import WanConfig, WanModel
    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=8, freq_dim=16)
    net = WanModel(cfg).init_random(0).eval()
    m = stub_model_patcher(net).clone()
    mm.load_models_gpu([m])
    assert m.model.diffusion_model.blocks[0] is net.blocks[0]
    assert m.get_model_object("diffusion_model") is net
