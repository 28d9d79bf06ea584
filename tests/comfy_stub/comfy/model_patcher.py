"""Stub of comfy/model_patcher.py (ComfyUI 0.27): the MODEL type.

Mirrors the parts a node pack touches:
- ModelPatcher(model, load_device, offload_device, size=0, weight_inplace_update=False)
  with .model (a BaseModel: .diffusion_model, .latent_format, .model_sampling), .load_device,
  .offload_device, .model_options == {"transformer_options": {}} initially, .patches,
  .object_patches, .object_patches_backup (shared between clones, like the real one),
  .parent, .attachments, .callbacks, .wrappers.
- clone(disable_dynamic=False, model_override=None, force_deepcopy=False): new patcher on the
  SAME torch model (or on ``model_override[0]``); model_options are copied with comfy.utils.deepcopy_list_dict (dicts and
  lists copied, other objects shared: a holder object in transformer_options is shared by
  later clones, as in 0.27; v0.3.64 deep-copied it); patches / object_patches / callbacks /
  wrappers dicts are copied; ON_CLONE callbacks run with (old, new).
- add_object_patch(name, obj), get_model_object(name), set_model_compute_dtype(dtype),
  add_patches(patches, strength_patch=1.0, strength_model=1.0) (plain "diff" patches are applied
  at load like comfy.lora does; other patch kinds raise), model_size(), loaded_size(),
  model_dtype(), is_clone(other), set_model_patch / set_model_patch_replace /
  set_model_attn1_replace / set_model_unet_function_wrapper / set_model_sampler_cfg_function,
  add_callback(_with_key), add_wrapper(_with_key), get_all_callbacks, get_all_wrappers,
  get_wrappers, remove_wrappers_with_key, set_attachments / get_attachment,
  patch_model / unpatch_model / partially_load / detach / cleanup / pre_run,
  is_dynamic(), get_clone_model_override(), cached_patcher_init (a loader and its args, set by
  comfy.sd.load_diffusion_model).
- ModelPatcherDynamic (dynamic VRAM): loads nothing at load time (its weights stay where they
  are, each linear marked ``comfy_cast_weights``); ``clone(disable_dynamic=True)`` gives a plain
  ModelPatcher of a second model from ``cached_patcher_init`` (or of ``model_override``),
  and get_non_dynamic_delegate() keeps that model for the next delegate, as 0.27 does.
"""
from __future__ import annotations

import copy
import inspect
import uuid
from typing import Callable

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.utils
from comfy.patcher_extension import CallbacksMP, WrappersMP


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = dict(model_options["transformer_options"])
    replace = dict(to.get("patches_replace", {}))
    replace[name] = dict(replace.get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    replace[name][block] = patch
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def create_model_options_clone(orig_model_options: dict):
    return comfy.patcher_extension.copy_nested_dicts(orig_model_options)


def _apply_diff_patches(patch_list, weight: torch.Tensor, key: str) -> torch.Tensor:
    """The "diff" subset of comfy.lora.calculate_weight."""
    for strength, v, strength_model, offset, function in patch_list:
        if offset is not None:
            raise NotImplementedError("stub: offset patches")
        fn = function if function is not None else (lambda a: a)
        if strength_model != 1.0:
            weight = weight * strength_model
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "diff":
            v = v[1]
        if isinstance(v, torch.Tensor):
            v = (v,)
        if not (isinstance(v, tuple) and len(v) >= 1 and isinstance(v[0], torch.Tensor)):
            raise NotImplementedError(f"stub: only 'diff' weight patches are supported ({key})")
        diff = v[0]
        if diff.shape != weight.shape:
            raise ValueError(f"WARNING SHAPE MISMATCH {key} WEIGHT NOT MERGED {diff.shape} != {weight.shape}")
        if strength != 0.0:
            weight = weight + fn(strength * diff.to(weight.device, weight.dtype))
    return weight


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:
            self.model.device = offload_device
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.weight_wrapper_patches = {}
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.force_cast_weights = False
        self.patches_uuid = uuid.uuid4()
        self.cached_patcher_init = None
        self.parent = None

        self.attachments: dict = {}
        self.additional_models: dict[str, list[ModelPatcher]] = {}
        self.callbacks: dict[str, dict[str, list[Callable]]] = CallbacksMP.init_callbacks()
        self.wrappers: dict[str, dict[str, list[Callable]]] = WrappersMP.init_wrappers()
        self.is_injected = False
        self.skip_injection = False
        self.injections: dict = {}
        self.hook_patches: dict = {}
        self.current_hooks = None
        self.forced_hooks = None
        self.is_clip = False

        for attr, default in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                              ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(self.model, attr):
                setattr(self.model, attr, default)

    # ------------------------------------------------------------------ sizes
    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self):
        return self.model.lowvram_patch_counter

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def current_loaded_device(self):
        return self.model.device

    # ------------------------------------------------------------------ cloning
    def is_dynamic(self):
        return False

    def get_clone_model_override(self):
        return self.model, (self.backup, self.object_patches_backup)

    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
        class_ = self.__class__
        if self.is_dynamic() and disable_dynamic:
            class_ = ModelPatcher
            if model_override is None:
                if self.cached_patcher_init is None:
                    raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
                model_override = self.cached_patcher_init[0](*self.cached_patcher_init[1],
                                                             disable_dynamic=True).get_clone_model_override()
        if model_override is None:
            model_override = self.get_clone_model_override()
        n = class_(model_override[0], self.load_device, self.offload_device, self.size,
                   weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = self.object_patches.copy()
        n.weight_wrapper_patches = self.weight_wrapper_patches.copy()
        n.model_options = comfy.utils.deepcopy_list_dict(self.model_options)
        n.backup, n.object_patches_backup = model_override[1]
        n.cached_patcher_init = self.cached_patcher_init
        n.parent = self
        n.force_cast_weights = self.force_cast_weights
        n.attachments = {}
        for k, a in self.attachments.items():
            n.attachments[k] = a.on_model_patcher_clone() if hasattr(a, "on_model_patcher_clone") else a
        for k, c in self.additional_models.items():
            n.additional_models[k] = [x.clone() for x in c]
        n.callbacks = {k: {k1: c1.copy() for k1, c1 in c.items()} for k, c in self.callbacks.items()}
        n.wrappers = {k: {k1: w1.copy() for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        n.is_injected = self.is_injected
        n.skip_injection = self.skip_injection
        n.injections = {k: i.copy() for k, i in self.injections.items()}
        n.is_clip = self.is_clip
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLONE):
            callback(self, n)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def clone_has_same_weights(self, clone):
        if not self.is_clone(clone):
            return False
        if len(self.patches) == 0 and len(clone.patches) == 0:
            return True
        return self.patches_uuid == clone.patches_uuid

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape=input_shape)

    # ------------------------------------------------------------------ model_options patches
    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            self.model_options["sampler_cfg_function"] = (
                lambda args: sampler_cfg_function(args["cond"], args["uncond"], args["cond_scale"]))
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def model_patches_to(self, device):
        to = self.model_options["transformer_options"]
        for name, plist in to.get("patches", {}).items():
            for i in range(len(plist)):
                if hasattr(plist[i], "to"):
                    plist[i] = plist[i].to(device)
        for name, pdict in to.get("patches_replace", {}).items():
            for k in pdict:
                if hasattr(pdict[k], "to"):
                    pdict[k] = pdict[k].to(device)
        wrap = self.model_options.get("model_function_wrapper")
        if hasattr(wrap, "to"):
            self.model_options["model_function_wrapper"] = wrap.to(device)

    def model_patches_models(self):
        to = self.model_options["transformer_options"]
        models = []
        for plist in to.get("patches", {}).values():
            for p in plist:
                if hasattr(p, "models"):
                    models += p.models()
        for pdict in to.get("patches_replace", {}).values():
            for p in pdict.values():
                if hasattr(p, "models"):
                    models += p.models()
        wrap = self.model_options.get("model_function_wrapper")
        if hasattr(wrap, "models"):
            models += wrap.models()
        return models

    # ------------------------------------------------------------------ object / weight patches
    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def set_model_compute_dtype(self, dtype):
        self.add_object_patch("manual_cast_dtype", dtype)
        if dtype is not None:
            self.force_cast_weights = True
        self.patches_uuid = uuid.uuid4()

    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return comfy.utils.get_attr(self.model, name)

    def add_weight_wrapper(self, name, function):
        self.weight_wrapper_patches[name] = self.weight_wrapper_patches.get(name, []) + [function]
        self.patches_uuid = uuid.uuid4()

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        added = set()
        model_sd = self.model.state_dict()
        for k in patches:
            offset = function = None
            if isinstance(k, str):
                key = k
            else:
                key, offset = k[0], k[1]
                if len(k) > 2:
                    function = k[2]
            if key in model_sd:
                added.add(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return list(added)

    def get_key_patches(self, filter_prefix=None):
        out = {}
        for k, v in self.model.state_dict().items():
            if filter_prefix is not None and not k.startswith(filter_prefix):
                continue
            out[k] = [v] + self.patches.get(k, [])
        return out

    def model_state_dict(self, filter_prefix=None):
        sd = self.model.state_dict()
        if filter_prefix is not None:
            sd = {k: v for k, v in sd.items() if k.startswith(filter_prefix)}
        return sd

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        weight = comfy.utils.get_attr(self.model, key)
        if key not in self.backup:
            self.backup[key] = weight.detach().to(device=self.offload_device, copy=True)
        temp = weight.detach().to(device=device_to if device_to is not None else weight.device,
                                  dtype=torch.float32, copy=True)
        out = _apply_diff_patches(self.patches[key], temp, key).to(weight.dtype)
        comfy.utils.set_attr_param(self.model, key, out)

    # ------------------------------------------------------------------ load / unload
    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k, obj in self.object_patches.items():
            old = comfy.utils.set_attr(self.model, k, obj)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
        if load_weights:
            self.load(device_to, force_patch_weights=force_patch_weights)
        return self.model

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        for key in self.patches:
            self.patch_weight_to_device(key, device_to=device_to)
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.current_weight_patches_uuid = self.patches_uuid
        for callback in self.get_all_callbacks(CallbacksMP.ON_LOAD):
            callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        """What load_models_gpu runs: restore what another clone patched, then patch this one."""
        self.unpatch_model(self.offload_device, unpatch_weights=True)
        self.patch_model(device_to, load_weights=True, force_patch_weights=force_patch_weights)
        return self.model.model_loaded_weight_memory

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for k in list(self.backup.keys()):
                comfy.utils.set_attr_param(self.model, k, self.backup[k])
            self.backup.clear()
            self.model.current_weight_patches_uuid = None
            if device_to is not None:
                self.model.to(device_to)
                self.model.device = device_to
            self.model.model_loaded_weight_memory = 0
        for k in list(self.object_patches_backup.keys()):
            comfy.utils.set_attr(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup.clear()

    def detach(self, unpatch_all=True):
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        for callback in self.get_all_callbacks(CallbacksMP.ON_DETACH):
            callback(self, unpatch_all)
        return self.model

    def pre_run(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self
        for callback in self.get_all_callbacks(CallbacksMP.ON_PRE_RUN):
            callback(self)

    def cleanup(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = None
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLEANUP):
            callback(self)

    # ------------------------------------------------------------------ callbacks / wrappers
    def add_callback(self, call_type: str, callback: Callable):
        self.add_callback_with_key(call_type, None, callback)

    def add_callback_with_key(self, call_type: str, key: str, callback: Callable):
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def remove_callbacks_with_key(self, call_type: str, key: str):
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_callbacks(self, call_type: str, key: str):
        return self.callbacks.get(call_type, {}).get(key, [])

    def get_all_callbacks(self, call_type: str):
        out = []
        for c in self.callbacks.get(call_type, {}).values():
            out.extend(c)
        return out

    def add_wrapper(self, wrapper_type: str, wrapper: Callable):
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper: Callable):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: str):
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: str):
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str):
        out = []
        for w in self.wrappers.get(wrapper_type, {}).values():
            out.extend(w)
        return out

    def set_attachments(self, key: str, attachment):
        self.attachments[key] = attachment

    def remove_attachments(self, key: str):
        self.attachments.pop(key, None)

    def get_attachment(self, key: str):
        return self.attachments.get(key, None)

    def set_additional_models(self, key: str, models: list):
        self.additional_models[key] = models

    def get_additional_models(self):
        out = []
        for models in self.additional_models.values():
            out.extend(models)
        return out


class ModelPatcherDynamic(ModelPatcher):
    """Dynamic VRAM: the weights stay in host memory and each layer's call streams them."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        super().__init__(model, load_device, offload_device, size, weight_inplace_update)
        self.non_dynamic_delegate_model = None

    def is_dynamic(self):
        return True

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        for m in self.model.modules():
            if isinstance(m, torch.nn.Linear):
                m.comfy_cast_weights = True  # what 0.27 marks; the weights are not moved
        self.model.current_weight_patches_uuid = self.patches_uuid
        for callback in self.get_all_callbacks(CallbacksMP.ON_LOAD):
            callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)

    def get_non_dynamic_delegate(self):
        model_patcher = self.clone(disable_dynamic=True, model_override=self.non_dynamic_delegate_model)
        self.non_dynamic_delegate_model = model_patcher.get_clone_model_override()
        return model_patcher
