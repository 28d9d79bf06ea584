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

The warm start (issue 23): one *warm slot* per process keeps the runner of the last warm run
(``ChunkRunner(warm=True)``: its video's KV cache, text buffers, CUDA graphs and derived
weights) for the next run on the same diffusion model, dtype, device and fast-path options
whose weights are the same tensors, unchanged (``ChunkRunner.weights_changed``); anything
else empties the slot first. The slot holds the diffusion model only while its ComfyUI model
lives (a finalizer on the ``BaseModel``), and is emptied when ComfyUI unloads the model (a keyed
``ON_DETACH`` callback on the patcher that runs it), when a warm run fails or is cancelled, by a
cold run (AR Video Sampler's ``warm_start`` off, Profile Heads) and by
``DUMMY_FORCING_WARM_START=0``. The callback goes only on a patcher the pack made (Apply Dummy
Forcing's / AR Cache Policy's clone, the non-dynamic delegate), never on the user's own: a MODEL
straight from the loader runs cold, as ComfyUI could not tell the pack when it unloads it.
"""
from __future__ import annotations

import logging
import os
import weakref

import torch

import comfy.model_management
import comfy.patcher_extension

from dummy_forcing_core.attention_8bit import BACKENDS as _BACKENDS_8BIT
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.fused_forward import FastOptions

__all__ = ["ATTENTION_8BIT_CHOICES", "attention_8bit_choice", "compute_dtype", "fp8_fast", "make_runner", "load_runner", "runnable", "runnable_clone", "streams_weights",
           "warm_start_allowed", "drop_warm", "warm_bytes", "report_warm"]

log = logging.getLogger("dummy_forcing")

# the user's torch model (a patcher's .model) -> its non-dynamic delegate's model override
_DELEGATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SAID: set[str] = set()
ATTENTION_8BIT_CHOICES = ("comfyui",) + _BACKENDS_8BIT  # Apply Dummy Forcing's attention_8bit widget
RESERVE_FRACTION = 0.15  # of the card kept for the KV cache and activations when deciding "fits"
WARM_ENV = "DUMMY_FORCING_WARM_START"  # "0" / "off" / "false": no warm start anywhere
_MADE: "weakref.WeakSet" = weakref.WeakSet()  # patchers the pack cloned (the unload callback goes on these only)
_DETACH_KEY = "dummy_forcing_warm"


class _WarmSlot:
    """The warm runner and what it was made for (see the module docstring)."""

    def __init__(self, model, key: tuple, runner: ChunkRunner):
        self.module = weakref.ref(model.model.diffusion_model)
        self.key, self.runner = key, runner
        self.finalizer = weakref.finalize(model.model, _drop_slot, id(self))
        self.finalizer.atexit = False


_SLOT: _WarmSlot | None = None


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
    _MADE.add(clone)
    return clone


def runnable_clone(model):
    """A clone of ``model`` for the pack to patch and run: a plain clone, or under dynamic VRAM
    (see the module docstring) the non-dynamic delegate, a clone that keeps the patches,
    object patches and options of ``model``. ``model`` itself is never changed."""
    d = _delegate(model)
    if d is None:
        d = model.clone()
        _MADE.add(d)
    return d


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


# ------------------------------------------------------------------------------------ warm start
def warm_start_allowed() -> bool:
    """False when ``DUMMY_FORCING_WARM_START`` is 0 / off / false (both sampling paths)."""
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def _drop_slot(slot_id: int | None = None) -> None:
    global _SLOT
    slot = _SLOT
    if slot is None or (slot_id is not None and id(slot) != slot_id):
        return
    _SLOT = None
    slot.finalizer.detach()
    slot.runner.drop_warm()


def drop_warm() -> None:
    """Free the warm slot (the runner and everything it kept)."""
    _drop_slot()


def warm_bytes() -> dict[str, int]:
    """What the warm slot holds (``ChunkRunner.warm_bytes``; zeros when empty)."""
    if _SLOT is None:
        return {"kv": 0, "text": 0, "graphs": 0, "weights": 0, "total": 0}
    return _SLOT.runner.warm_bytes()


def report_warm(runner: ChunkRunner) -> None:
    """One log line after a warm run: what is kept for the next run."""
    if _SLOT is None or _SLOT.runner is not runner:
        return
    b = runner.warm_bytes()
    if b["total"]:
        mib = {k: v / 2 ** 20 for k, v in b.items()}
        log.info("Dummy Forcing: warm start keeps %.0f MiB for the next run of this shape (KV cache %.0f, text %.0f, "
                 "CUDA graphs %.0f, derived weights %.0f MiB); this run %s; AR Video Sampler's warm_start off "
                 "frees it", mib["total"], mib["kv"], mib["text"], mib["graphs"], mib["weights"],
                 "reused the last run's" if runner.reused else "started cold")


def _on_detach(patcher, unpatch_all=True) -> None:
    """ON_DETACH of a patcher the pack cloned: ComfyUI unloaded its weights, free the slot."""
    slot = _SLOT
    dm = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    if unpatch_all and slot is not None and slot.module() is dm:
        _drop_slot()


def _watchable(model) -> bool:
    """Whether the pack made this patcher (or it carries the pack's cache settings: a lineage a
    pack node started), one the unload callback may go on, and the host has callbacks."""
    to = (getattr(model, "model_options", None) or {}).get("transformer_options") or {}
    can = callable(getattr(model, "get_callbacks", None)) and callable(getattr(model, "add_callback_with_key", None))
    return can and (model in _MADE or "dummy_forcing" in to)


def _watch_unload(model) -> None:
    """The unload callback on ``model`` (a patcher the pack made)."""
    on_detach = comfy.patcher_extension.CallbacksMP.ON_DETACH
    if not model.get_callbacks(on_detach, _DETACH_KEY):
        model.add_callback_with_key(on_detach, _DETACH_KEY, _on_detach)


def _warm_runner(model, dtype, dev, fast) -> ChunkRunner:
    """The slot's runner when it fits this MODEL (see the module docstring), else a new one in
    the slot."""
    global _SLOT
    dm = model.model.diffusion_model
    key = (dtype, dev, repr(fast))
    slot = _SLOT
    if slot is not None and slot.module() is dm and slot.key == key and not slot.runner.weights_changed():
        _watch_unload(model)
        return slot.runner
    _drop_slot()
    runner = ChunkRunner(dm, dtype=dtype, device=dev, fast=fast, warm=True)
    _SLOT = _WarmSlot(model, key, runner)
    _watch_unload(model)
    return runner


def make_runner(model, attention_8bit: str | None = None, warm: bool = False) -> ChunkRunner:
    """The core's runner over the MODEL's (loaded) diffusion model; fp8 products when the user
    asked ComfyUI for them; ``attention_8bit``: the model's CacheSpec choice (see
    :func:`attention_8bit_choice`); ``warm``: the warm slot's runner for a patcher the pack made
    (module docstring), while a cold run empties the slot first."""
    dev, dtype = torch.device(model.load_device), compute_dtype(model)
    fast = None
    if _fused_forward_possible(model):
        fast = FastOptions(fp8_matmul=fp8_fast(model), attention_8bit=attention_8bit_choice(attention_8bit))
    if warm and warm_start_allowed() and _watchable(model):
        runner = _warm_runner(model, dtype, dev, fast)
    else:
        drop_warm()
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


def load_runner(model, chunk_shape=None, extra_bytes: int = 0, attention_8bit: str | None = None,
                warm: bool = False) -> ChunkRunner:
    """Load the MODEL through ComfyUI's model management (weights, LoRA patches, offload), asking
    for room for a chunk's activations (``chunk_shape``) plus ``extra_bytes`` (the KV cache), and
    wrap its diffusion model in the core's ChunkRunner on the load device (``warm``: see
    :func:`make_runner`; a slot for another model, or a cold run, is freed before loading)."""
    slot = _SLOT
    if slot is not None and not (warm and warm_start_allowed() and _watchable(model)
                                 and slot.module() is model.model.diffusion_model):
        drop_warm()  # another model or a cold run: freed before ComfyUI counts free memory
    need = int(extra_bytes)  # the whole KV bound even when the slot holds a cache: its shape is not known here
    if chunk_shape is not None:
        try:
            need += int(model.memory_required(list(chunk_shape)))
        except Exception:  # an estimate only
            pass
    comfy.model_management.load_models_gpu([model], memory_required=need, minimum_memory_required=need)
    return make_runner(model, attention_8bit, True) if warm else make_runner(model, attention_8bit)
