"""The same V3 probe node (probe_pack.py) behaves alike in the real ComfyUI and in tests/comfy_stub.

Runs only when COMFYUI_DIR is set (see conftest.py); shares the module's server.
"""
import json
import os
import subprocess
import sys

import pytest

import probe_pack
from harness import PromptRejected, TINY_WAN_NAME
from test_stub_matches_real import real_version

HERE = os.path.dirname(os.path.abspath(__file__))

# Facts the stub must reproduce exactly (the rest are printed for reference). Not compared:
# "shift_attr_before_load" -- model.model.model_sampling is whatever object patch the LAST loaded
# clone of that model applied (8.0 on a fresh server, 5.0 after an earlier prompt loaded the
# ModelSamplingSD3 clone), so node code must read model.get_model_object("model_sampling").
SAME_FACTS = ["class_locked", "unique_id", "base_model", "latent_format", "latent_channels",
              "shift_get_model_object", "object_patches", "model_options_keys",
              "transformer_options", "clone_isolated", "clone_same_model", "shift_attr_after_load",
              "process_in_identity", "progress_hook_set", "interrupt_raises", "interrupt_cleared",
              "torch_device", "intermediate_device", "load_device", "offload_device", "manual_cast_dtype",
              "num_heads", "dim"]


def _graph(**probe_inputs):
    inputs = {"model": ["2", 0], "ratio": 0.25, "steps": 4, "mode": "b", "flag": True, "note": ""}
    inputs.update(probe_inputs)
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN_NAME, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 5.0}},
        "3": {"class_type": probe_pack.NODE_ID, "inputs": inputs},
    }


@pytest.fixture(scope="module")
def stub_run():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "stub_probe_run.py")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# /object_info keys of ComfyUI 0.27 (what the stub mirrors) that v0.3.64 does not send yet
NEW_IN_0_27 = {"is_input_list", "output_matchtypes", "dev_only", "price_badge", "search_aliases",
               "essentials_category", "has_intermediate_output"}


def test_v3_entrypoint_pack_registers(comfy_server, stub_run):
    """Every key both send is equal; the real one may send more (additive); the stub sends
    keys the real one lacks only where the real ComfyUI is older than 0.27."""
    status = comfy_server.pack_import_status(probe_pack.PACK_NAME)
    assert status["attempted"] and not status["failed"], status
    real = comfy_server.object_info(probe_pack.NODE_ID)[probe_pack.NODE_ID]
    stub = json.loads(json.dumps(stub_run["node_info"]))  # tuples -> lists, like the HTTP answer
    assert real["python_module"] == f"custom_nodes.{probe_pack.PACK_NAME}"
    real.pop("python_module")
    stub.pop("python_module")
    older = real_version(os.environ["COMFYUI_DIR"]) < (0, 27, 0)
    assert set(stub) - set(real) <= (NEW_IN_0_27 if older else set()), set(stub) - set(real)
    shared = set(stub) & set(real)
    assert {k: real[k] for k in shared} == {k: stub[k] for k in shared}


def test_probe_facts_match_stub(comfy_server, stub_run):
    res = comfy_server.queue_prompt(_graph(), timeout=90)
    assert res.ok, f"{res.error}\n{comfy_server.log_tail(60)}"
    real = json.loads(res.outputs["3"]["text"][0])
    print("\nreal ComfyUI facts:", json.dumps(real, indent=1, sort_keys=True))
    stub = stub_run["facts"]
    diffs = {k: (real.get(k), stub.get(k)) for k in SAME_FACTS if real.get(k) != stub.get(k)}
    assert not diffs, f"real vs stub: {diffs}"
    assert real["diffusion_model"] == "comfy.ldm.wan.model.WanModel"
    assert real["patcher"] == "comfy.model_patcher.ModelPatcher"


def test_validation_rejects_like_stub(comfy_server, stub_run):
    with pytest.raises(PromptRejected) as e:
        comfy_server.queue_prompt(_graph(ratio=2.0))
    errs = [err["type"] for err in e.value.node_errors["3"]["errors"]]
    assert errs == stub_run["rejected"] == ["value_bigger_than_max"]
