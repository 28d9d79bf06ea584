"""A throwaway V3 node pack installed next to ours in the real server (custom_nodes/df_stub_probe).

It checks, inside the real ComfyUI, the facts tests/comfy_stub relies on: comfy_entrypoint
loading, the locked class clone, hidden inputs, ui.PreviewText in /history, what a MODEL from
UNETLoader (+ ModelSamplingSD3) looks like, and clone / object-patch / interrupt behaviour.
The same source is run against the stub to compare the /object_info entry.
"""

PACK_NAME = "df_stub_probe"
NODE_ID = "DFStubProbe"

SOURCE = r'''
import json

import torch
from comfy_api.latest import ComfyExtension, io, ui


class DFStubProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DFStubProbe", display_name="DF stub probe", category="testing/dummy_forcing",
            description="reports facts about the MODEL it gets",
            inputs=[
                io.Model.Input("model", tooltip="a Wan model"),
                io.Float.Input("ratio", default=0.25, min=0.0, max=1.0, step=0.05, tooltip="a float"),
                io.Int.Input("steps", default=4, min=1, max=64, display_mode=io.NumberDisplay.slider),
                io.Combo.Input("mode", options=["a", "b"], default="b"),
                io.Boolean.Input("flag", default=True, label_on="on", label_off="off"),
                io.String.Input("note", default="", multiline=True),
                io.Custom("HEAD_PROFILE").Input("profile", optional=True),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="facts", tooltip="json")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, ratio, steps, mode, flag, note, profile=None):
        import comfy.model_management as mm
        import comfy.utils
        f = {}
        try:
            cls.some_state = 1
            f["class_locked"] = False
        except AttributeError:
            f["class_locked"] = True
        f["unique_id"] = cls.hidden.unique_id
        f["patcher"] = type(model).__module__ + "." + type(model).__name__
        base = model.model
        f["base_model"] = type(base).__name__
        f["diffusion_model"] = type(base.diffusion_model).__module__ + "." + type(base.diffusion_model).__name__
        f["latent_format"] = type(base.latent_format).__name__
        f["latent_channels"] = base.latent_format.latent_channels
        f["shift_attr_before_load"] = float(base.model_sampling.shift)
        f["shift_get_model_object"] = float(model.get_model_object("model_sampling").shift)
        f["object_patches"] = sorted(model.object_patches)
        f["model_options_keys"] = sorted(model.model_options)
        f["transformer_options"] = sorted(model.model_options["transformer_options"])
        f["get_dtype"] = str(base.get_dtype())
        f["diffusion_model_dtype"] = str(getattr(base.diffusion_model, "dtype", None))
        f["manual_cast_dtype"] = str(base.manual_cast_dtype)
        f["num_heads"] = base.diffusion_model.num_heads
        f["dim"] = base.diffusion_model.dim
        f["load_device"] = str(model.load_device)
        f["offload_device"] = str(model.offload_device)
        f["torch_device"] = str(mm.get_torch_device())
        f["intermediate_device"] = str(mm.intermediate_device())
        c = model.clone()
        c.model_options["transformer_options"]["probe"] = {"x": [1]}
        f["clone_isolated"] = "probe" not in model.model_options["transformer_options"]
        f["clone_same_model"] = c.model is model.model
        mm.load_models_gpu([model])
        f["shift_attr_after_load"] = float(base.model_sampling.shift)
        f["loaded"] = [type(x).__name__ for x in mm.loaded_models()]
        x = torch.ones(1, 16, 2, 4, 4)
        y = base.latent_format.process_in(x)
        f["process_in_identity"] = bool(torch.allclose(x, y))
        hook = comfy.utils.PROGRESS_BAR_HOOK
        f["progress_hook_set"] = hook is not None
        pbar = comfy.utils.ProgressBar(2)
        pbar.update(1)
        mm.interrupt_current_processing(True)
        try:
            mm.throw_exception_if_processing_interrupted()
            f["interrupt_raises"] = False
        except mm.InterruptProcessingException:
            f["interrupt_raises"] = True
        f["interrupt_cleared"] = not mm.processing_interrupted()
        text = json.dumps(f, sort_keys=True)
        return io.NodeOutput(model, text, ui=ui.PreviewText(text))


class _Ext(ComfyExtension):
    async def get_node_list(self):
        return [DFStubProbe]


async def comfy_entrypoint():
    return _Ext()
'''
