"""Fixtures for node tests: a headless ComfyUI (tests/comfy_stub) unless a real one is importable.

- `comfy_is_stub`: True when the stub is in use.
- `stub_model_patcher(diffusion_model, shift=None, manual_cast_dtype=None, load_device=None)`:
  factory fixture; wraps a Wan-structured torch module the way UNETLoader's MODEL is built
  (ModelPatcher -> WAN21 BaseModel -> .diffusion_model; latent_format Wan21 with non-identity
  per-channel stats; flow model_sampling with the Wan 2.1 default shift 8.0, or for the stub's
  CausalWanModel a WAN21_CausalAR with shift 5, as ComfyUI 0.27 loads causal checkpoints). With `shift`, it
  returns what ModelSamplingSD3(shift) returns in ComfyUI: a clone whose object patch
  "model_sampling" carries the shift -- read it with m.get_model_object("model_sampling").shift
  (m.model.model_sampling.shift is still 8.0 until load_models_gpu([m]) applies the patch).
- `comfy_dirs` / `output_dir`: a fresh ComfyUI base dir (models/, input/, output/, temp/) per test.
- `progress_events`: records every ProgressBar update made through the global hook.
- `run_node`: comfy_stub_tools.run_node (validate + execute on a locked class clone).
- `load_pack_nodes`: comfy_stub_tools.load_pack_nodes (how ComfyUI registers a pack).
An autouse fixture clears interrupts, loaded models and the progress hook around every test.
"""
import importlib.util
import os
import sys
import types

import pytest

STUB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "comfy_stub")

_REAL_COMFY = importlib.util.find_spec("comfy") is not None
if not _REAL_COMFY:
    if STUB_DIR not in sys.path:
        sys.path.insert(0, STUB_DIR)
elif STUB_DIR not in sys.path:
    sys.path.append(STUB_DIR)  # only for comfy_stub_tools; the real comfy stays first

import comfy  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import comfy_stub_tools  # noqa: E402

IS_STUB = getattr(comfy, "IS_COMFY_STUB", False)


@pytest.fixture
def comfy_is_stub():
    return IS_STUB


@pytest.fixture(autouse=True)
def _comfy_isolation():
    mm = comfy.model_management
    old_hook = comfy.utils.PROGRESS_BAR_HOOK
    mm.interrupt_current_processing(False)
    if IS_STUB:
        mm.reset_stub_state()
    yield
    mm.interrupt_current_processing(False)
    comfy.utils.set_progress_bar_global_hook(old_hook)
    if IS_STUB:
        mm.reset_stub_state()


def _wrap_real(diffusion_model, manual_cast_dtype):
    """Fallback when a real ComfyUI is importable: a light BaseModel-like wrapper."""
    import torch
    import comfy.latent_formats
    import comfy.model_sampling

    class _Sampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    cfg = types.SimpleNamespace(sampling_settings={"shift": 8.0})
    base = torch.nn.Module()
    base.diffusion_model = diffusion_model
    base.latent_format = comfy.latent_formats.Wan21()
    base.model_sampling = _Sampling(cfg)
    base.manual_cast_dtype = manual_cast_dtype
    base.get_dtype = lambda: diffusion_model.dtype
    base.process_latent_in = base.latent_format.process_in
    base.process_latent_out = base.latent_format.process_out
    return base


@pytest.fixture
def stub_model_patcher():
    def make(diffusion_model, shift=None, manual_cast_dtype=None, load_device=None):
        import torch
        if getattr(diffusion_model, "dtype", None) is None:
            # ComfyUI's WanModel carries a .dtype attribute; mimic it for plain torch modules.
            diffusion_model.dtype = next(diffusion_model.parameters()).dtype
        if IS_STUB:
            import comfy.model_base
            base = comfy.model_base.wrap_diffusion_model(diffusion_model, manual_cast_dtype=manual_cast_dtype)
        else:
            base = _wrap_real(diffusion_model, manual_cast_dtype)
        mm = comfy.model_management
        m = comfy.model_patcher.ModelPatcher(
            base, load_device=torch.device(load_device) if load_device else mm.get_torch_device(),
            offload_device=mm.unet_offload_device())
        if shift is not None:
            m = comfy_stub_tools.model_sampling_sd3(m, shift)
        return m

    return make


@pytest.fixture
def comfy_dirs(tmp_path):
    base = tmp_path / "comfyui"
    if IS_STUB:
        folder_paths.set_base_directory(str(base))
    else:
        for name, setter in (("output", folder_paths.set_output_directory),
                             ("input", folder_paths.set_input_directory),
                             ("temp", folder_paths.set_temp_directory)):
            (base / name).mkdir(parents=True, exist_ok=True)
            setter(str(base / name))
    dirs = types.SimpleNamespace(
        base=str(base), output=folder_paths.get_output_directory(), input=folder_paths.get_input_directory(),
        temp=folder_paths.get_temp_directory(), models=os.path.join(str(base), "models"))
    for d in (dirs.output, dirs.input, dirs.temp):
        os.makedirs(d, exist_ok=True)
    return dirs


@pytest.fixture
def output_dir(comfy_dirs):
    return comfy_dirs.output


@pytest.fixture
def progress_events():
    events = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        events.append((value, total, preview, node_id))

    comfy.utils.set_progress_bar_global_hook(hook)
    return events


@pytest.fixture
def run_node():
    return comfy_stub_tools.run_node


@pytest.fixture
def N():
    """The pack's node classes by id."""
    from node_helpers import pack_nodes
    return pack_nodes()


@pytest.fixture
def model(stub_model_patcher):
    """A stub MODEL around the tiny random Wan, shift 5 (the causal checkpoints' value)."""
    from node_helpers import tiny_wan
    return stub_model_patcher(tiny_wan(), shift=5.0)


@pytest.fixture
def load_pack_nodes():
    return comfy_stub_tools.load_pack_nodes
