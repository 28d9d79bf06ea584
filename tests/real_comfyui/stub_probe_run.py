"""Run probe_pack.SOURCE against tests/comfy_stub, the way the real graph runs it:
UNETLoader(tiny Wan) -> ModelSamplingSD3(shift 5) -> DFStubProbe (node id "3").
Prints {"node_info": ..., "facts": ..., "rejected": ...} as JSON.
"""
import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "comfy_stub"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import comfy  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.utils  # noqa: E402
import comfy_stub_tools  # noqa: E402
import probe_pack  # noqa: E402

assert getattr(comfy, "IS_COMFY_STUB", False)


class TinyWanLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embedding = torch.nn.Linear(16, 256)
        self.dim, self.num_heads, self.dtype = 256, 2, torch.float32


def main():
    mod = types.ModuleType(probe_pack.PACK_NAME)
    exec(compile(probe_pack.SOURCE, "probe_pack", "exec"), mod.__dict__)
    classes, _ = comfy_stub_tools.load_pack_nodes(mod)
    node = classes[probe_pack.NODE_ID]
    base = comfy.model_base.wrap_diffusion_model(TinyWanLike(), shift=8.0)
    model = comfy.model_patcher.ModelPatcher(base, mm.get_torch_device(), mm.unet_offload_device())
    model = comfy_stub_tools.model_sampling_sd3(model, 5.0)
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: None)  # the server always sets one
    out = comfy_stub_tools.run_node(node, hidden={"UNIQUE_ID": "3"}, model=model, ratio=0.25, steps=4, mode="b",
                                    flag=True, note="")
    facts = json.loads(comfy_stub_tools.ui_dict(out)["text"][0])
    rejected = None
    try:
        comfy_stub_tools.run_node(node, model=model, ratio=2.0)
    except comfy_stub_tools.NodeValidationError as e:
        rejected = [err["type"] for err in e.errors]
    print(json.dumps({"node_info": node.GET_NODE_INFO_V1(), "facts": facts, "rejected": rejected}, default=str))


if __name__ == "__main__":
    main()
