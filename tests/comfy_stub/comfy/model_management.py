"""Stub of comfy/model_management.py (ComfyUI v0.3.64), CPU only.

Mirrors: get_torch_device(), intermediate_device(), unet_offload_device(), vae_device(),
text_encoder_device(), load_models_gpu(models, memory_required=0, force_patch_weights=False,
minimum_memory_required=None, force_full_load=False), load_model_gpu(model), loaded_models(),
unload_all_models(), soft_empty_cache(force=False), module_size(module), cast_to_device,
InterruptProcessingException, interrupt_current_processing(value=True), processing_interrupted(),
throw_exception_if_processing_interrupted(), current_loaded_models.

Test-only extras (not in ComfyUI): set_torch_device(dev), reset_stub_state(), load_calls.
"""
from __future__ import annotations

import threading
from enum import Enum

import torch


class VRAMState(Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


# The real module reads --cpu at import; the stub behaves like `main.py --cpu`.
vram_state = VRAMState.DISABLED
cpu_state = CPUState.CPU

_torch_device = torch.device("cpu")


def set_torch_device(device) -> None:
    """Test-only: make get_torch_device() return `device` (e.g. "cuda" on a GPU runner)."""
    global _torch_device
    _torch_device = torch.device(device)


def get_torch_device() -> torch.device:
    return _torch_device


def intermediate_device() -> torch.device:
    # Real: get_torch_device() only with --gpu-only, else CPU.
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def unet_inital_load_device(parameters, dtype):  # (sic) spelled like the real one
    return torch.device("cpu")


def vae_device() -> torch.device:
    return get_torch_device()


def vae_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return torch.device("cpu")


def is_device_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def is_device_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def cpu_mode() -> bool:
    return cpu_state == CPUState.CPU


def module_size(module) -> int:
    total = 0
    for t in module.state_dict().values():
        total += t.nelement() * t.element_size()
    return total


def cast_to_device(tensor, device, dtype, copy=False):
    return tensor.to(device=device, dtype=dtype, copy=copy)


def get_free_memory(dev=None, torch_free_too=False):
    free = 64 * 1024 ** 3
    return (free, free) if torch_free_too else free


TOTAL_MEMORY = 80 * 1024 ** 3  # what get_total_memory reports; tests may change it


def get_total_memory(dev=None, torch_total_too=False):
    return (TOTAL_MEMORY, TOTAL_MEMORY) if torch_total_too else TOTAL_MEMORY


def minimum_inference_memory():
    return int(0.8 * 1024 ** 3)


def soft_empty_cache(force=False) -> None:
    global soft_empty_cache_calls
    soft_empty_cache_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


soft_empty_cache_calls = 0


# --------------------------------------------------------------------------- loading
class LoadedModel:
    """Holds a ModelPatcher that load_models_gpu loaded (the real one keeps a weakref)."""

    def __init__(self, model):
        self.model = model
        self.device = model.load_device
        self.currently_used = True

    def model_unload(self, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        return True

    def __eq__(self, other):
        return isinstance(other, LoadedModel) and self.model is other.model


current_loaded_models: list[LoadedModel] = []
load_calls: list[list] = []  # test-only: every load_models_gpu call's model list


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """Like the real one: loads each patcher (plus patches' models) on its load_device.

    A patcher already loaded stays loaded; another clone of the same torch model that is
    loaded is detached first (as ComfyUI does: ``loaded_model.model.is_clone(...)``). Loading
    applies the patcher's object patches (add_object_patch) and moves the module to
    load_device; they stay applied until another clone is loaded or the model is unloaded.
    """
    wanted = []
    for m in models:
        if m not in wanted:
            wanted.append(m)
        for mm in m.model_patches_models():
            if mm not in wanted:
                wanted.append(mm)
    load_calls.append(list(wanted))

    for m in wanted:
        entry = LoadedModel(m)
        if entry in current_loaded_models:
            current_loaded_models[current_loaded_models.index(entry)].currently_used = True
            # The real loader re-runs partially_load, which re-applies patches of this patcher.
            m.partially_load(m.load_device, force_patch_weights=force_patch_weights)
            continue
        for i in reversed(range(len(current_loaded_models))):
            other = current_loaded_models[i].model
            if m.is_clone(other):
                current_loaded_models.pop(i)
                other.detach(unpatch_all=False)
        m.partially_load(m.load_device, force_patch_weights=force_patch_weights)
        current_loaded_models.insert(0, entry)


def load_model_gpu(model):
    return load_models_gpu([model])


def loaded_models(only_currently_used=False):
    return [x.model for x in current_loaded_models if x.currently_used or not only_currently_used]


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop(0).model_unload()


def free_memory(memory_required, device, keep_loaded=[], for_dynamic=False, pins_required=0, ram_required=0):
    return []


def cleanup_models():
    pass


def cleanup_models_gc():
    pass


# --------------------------------------------------------------------------- interrupts
class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    """What the server calls when the user presses Cancel (POST /interrupt)."""
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    """Raises InterruptProcessingException once (and clears the flag) after an interrupt."""
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def reset_stub_state() -> None:
    """Test-only: unload everything, clear the interrupt flag and counters."""
    global soft_empty_cache_calls, _torch_device, TOTAL_MEMORY
    TOTAL_MEMORY = 80 * 1024 ** 3
    unload_all_models()
    load_calls.clear()
    interrupt_current_processing(False)
    soft_empty_cache_calls = 0
    _torch_device = torch.device("cpu")
