"""How a ComfyUI MODEL becomes the core's ChunkRunner: which patcher runs it, in which dtype,
with which fast-path options. Used by the pack's sampler and by ComfyUI's own AR loop.

ComfyUI 0.2x's dynamic VRAM (``ModelPatcherDynamic``, the default on NVIDIA cards) leaves the
weights in host memory and streams each layer to the GPU inside its own call (``comfy.ops``).
The core's fused forward reads weights directly, so with streamed weights it cannot run and
the reference loop does (ComfyUI's own layer calls: right, but slower). When the fused forward
could run and the weights fit on the card, :func:`runnable_clone` runs the model through
ComfyUI's non-dynamic delegate instead, as core does for hooked conditionings: a second
patcher of the same checkpoint (reloaded from its file once, then kept with the user's
model), which ComfyUI's model management loads whole, or partially when VRAM is short. When
the weights would not fit, the model keeps streaming and the log says so once.
"""
from __future__ import annotations

import logging
import weakref

import torch

import comfy.model_management

from dummy_forcing_core.attention_8bit import BACKENDS as _BACKENDS_8BIT
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.fused_forward import FastOptions

__all__ = ["ATTENTION_8BIT_CHOICES", "attention_8bit_choice", "compute_dtype", "fp8_fast", "make_runner", "load_runner", "runnable", "runnable_clone", "streams_weights"]

log = logging.getLogger("dummy_forcing")

# the user's torch model (a patcher's .model) -> its non-dynamic delegate's model override
_DELEGATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SAID: set[str] = set()
ATTENTION_8BIT_CHOICES = ("comfyui",) + _BACKENDS_8BIT  # Apply Dummy Forcing's attention_8bit widget
RESERVE_FRACTION = 0.15  # of the card kept for the KV cache and activations when deciding "fits"


def _say_once(key: str, msg: str, *args) -> None:
    if key not in _SAID:
        _SAID.add(key)
        log.warning(msg, *args)


def compute_dtype(model) -> torch.dtype:
    """The dtype the MODEL computes in: ComfyUI's inference dtype (its manual cast dtype for
    fp8 / low-precision storage); a storage-only dtype becomes bf16 on CUDA, else float32."""
    base = model.model
    get = getattr(base, "get_dtype_inference", None)
    dt = get() if get is not None else (getattr(base, "manual_cast_dtype", None) or base.get_dtype())
    if dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return dt
    return torch.bfloat16 if torch.device(model.load_device).type == "cuda" else torch.float32


def fp8_fast(model) -> bool:
    """Whether the user asked ComfyUI for fp8 matrix products: UNETLoader weight_dtype
    'fp8_e4m3fn_fast' (model_options 'fp8_optimizations') or --fast fp8_matrix_mult."""
    if (getattr(model, "model_options", None) or {}).get("fp8_optimizations"):
        return True
    if (getattr(getattr(model.model, "model_config", None), "optimizations", None) or {}).get("fp8"):
        return True
    try:
        from comfy.cli_args import args, PerformanceFeature
        return PerformanceFeature.Fp8MatrixMultiplication in (args.fast or ())
    except (ImportError, AttributeError):
        return False


def _fused_forward_possible(model) -> bool:
    """The fused forward runs on CUDA in bf16 / fp16 (ChunkRunner's auto rule)."""
    return torch.device(model.load_device).type == "cuda" and compute_dtype(model) in (torch.bfloat16, torch.float16)


def streams_weights(model) -> bool:
    """Whether ComfyUI streams this MODEL's weights layer by layer (dynamic VRAM)."""
    is_dynamic = getattr(model, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def _fits(model) -> bool:
    dev = torch.device(model.load_device)
    total = comfy.model_management.get_total_memory(dev)
    reserve = max(comfy.model_management.minimum_inference_memory(), RESERVE_FRACTION * total)
    return model.model_size() + reserve <= total


def _delegate(model):
    """The non-dynamic delegate of a streamed MODEL when the fused forward wants it, else None."""
    if not (streams_weights(model) and _fused_forward_possible(model)):
        return None
    if getattr(model, "cached_patcher_init", None) is None:
        _say_once("no-init", "Dummy Forcing: ComfyUI streams this model's weights (dynamic VRAM) and its loader "
                  "left no way to reload it without streaming, so the pack runs its reference loop (slower). Load "
                  "it with Load Diffusion Model, or start ComfyUI with --disable-dynamic-vram, for the fused forward")
        return None
    if not _fits(model):
        _say_once("no-fit", "Dummy Forcing: the model's weights (%.1f GiB) and room for the KV cache do not fit "
                  "on the card, so ComfyUI streams them (dynamic VRAM) and the pack runs its reference loop "
                  "(slower); fp8 weights (Load Diffusion Model weight_dtype fp8_e4m3fn) may fit",
                  model.model_size() / 2 ** 30)
        return None
    override = _DELEGATES.get(model.model)
    clone = model.clone(disable_dynamic=True, model_override=override)
    if override is None:
        _DELEGATES[model.model] = clone.get_clone_model_override()
    return clone


def runnable_clone(model):
    """A clone of ``model`` for the pack to patch and run: a plain clone, or under dynamic VRAM
    (see the module docstring) the non-dynamic delegate, a clone that keeps the patches,
    object patches and options of ``model``. ``model`` itself is never changed."""
    d = _delegate(model)
    return model.clone() if d is None else d


def runnable(model):
    """``model`` itself, or its non-dynamic delegate where :func:`runnable_clone` makes one."""
    d = _delegate(model)
    return model if d is None else d


def attention_8bit_choice(choice: str | None) -> str:
    """Apply Dummy Forcing's ``attention_8bit`` widget -> the core's backend choice
    (``attention_8bit.BACKENDS``): 'comfyui' or not set follows ComfyUI's --use-sage-attention
    (sageattention with it, else off)."""
    if choice in (None, "comfyui"):
        enabled = getattr(comfy.model_management, "sage_attention_enabled", None)
        return "sage" if enabled is not None and enabled() else "off"
    return choice


def make_runner(model, attention_8bit: str | None = None) -> ChunkRunner:
    """The core's runner over the MODEL's (loaded) diffusion model; fp8 products when the user
    asked ComfyUI for them; ``attention_8bit``: the model's CacheSpec choice (see
    :func:`attention_8bit_choice`)."""
    dev, dtype = torch.device(model.load_device), compute_dtype(model)
    fast = None
    if _fused_forward_possible(model):
        fast = FastOptions(fp8_matmul=fp8_fast(model), attention_8bit=attention_8bit_choice(attention_8bit))
    runner = ChunkRunner(model.model.diffusion_model, dtype=dtype, device=dev, fast=fast)
    if runner.fast_path is None and _fused_forward_possible(model):
        if streams_weights(model):
            reason = "ComfyUI streams the weights (dynamic VRAM)"
        elif getattr(model.model, "model_lowvram", False):
            reason = "ComfyUI loaded only part of the weights on the GPU (low VRAM)"
        else:
            reason = runner.fast_reason
        _say_once("ref:" + reason, "Dummy Forcing: the fused forward is off for this model (%s); running the "
                  "reference loop (same result, slower)", reason)
    return runner


def load_runner(model, chunk_shape=None, extra_bytes: int = 0, attention_8bit: str | None = None) -> ChunkRunner:
    """Load the MODEL through ComfyUI's model management (weights, LoRA patches, offload), asking
    for room for a chunk's activations (``chunk_shape``) plus ``extra_bytes`` (the KV cache), and
    wrap its diffusion model in the core's ChunkRunner on the load device."""
    need = int(extra_bytes)
    if chunk_shape is not None:
        try:
            need += int(model.memory_required(list(chunk_shape)))
        except Exception:  # an estimate only
            pass
    comfy.model_management.load_models_gpu([model], memory_required=need, minimum_memory_required=need)
    return make_runner(model, attention_8bit)
