"""Stub of comfy/patcher_extension.py (ComfyUI 0.27): callback / wrapper registries.

Mirrors: CallbacksMP and WrappersMP constants, add_wrapper_with_key / get_all_wrappers /
add_callback_with_key / get_all_callbacks on a transformer_options dict, WrapperExecutor
(new_executor / new_class_executor / execute; a wrapper is called as wrapper(executor, *args)
and continues the chain with executor(*args)), PatcherInjection, copy_nested_dicts,
merge_nested_dicts.
"""
from __future__ import annotations

from typing import Callable


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_DEEPCLONE_MULTIGPU = "on_deepclone_multigpu"
    ON_MATCH_MULTIGPU_CLONES = "on_match_multigpu_clones"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"

    @classmethod
    def init_callbacks(cls) -> dict[str, dict[str, list[Callable]]]:
        return {}


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict[str, dict[str, list[Callable]]]:
        return {}


def _target(options: dict, is_model_options: bool, create: bool) -> dict:
    if not is_model_options:
        return options
    if create:
        return options.setdefault("transformer_options", {})
    return options.get("transformer_options", {})


def add_callback(call_type: str, callback: Callable, transformer_options: dict, is_model_options=False):
    add_callback_with_key(call_type, None, callback, transformer_options, is_model_options)


def add_callback_with_key(call_type: str, key: str, callback: Callable, transformer_options: dict,
                          is_model_options=False):
    to = _target(transformer_options, is_model_options, True)
    to.setdefault("callbacks", {}).setdefault(call_type, {}).setdefault(key, []).append(callback)


def get_callbacks_with_key(call_type: str, key: str, transformer_options: dict, is_model_options=False):
    to = _target(transformer_options, is_model_options, False)
    return list(to.get("callbacks", {}).get(call_type, {}).get(key, []))


def get_all_callbacks(call_type: str, transformer_options: dict, is_model_options=False):
    to = _target(transformer_options, is_model_options, False)
    out = []
    for lst in to.get("callbacks", {}).get(call_type, {}).values():
        out.extend(lst)
    return out


def add_wrapper(wrapper_type: str, wrapper: Callable, transformer_options: dict, is_model_options=False):
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(wrapper_type: str, key: str, wrapper: Callable, transformer_options: dict,
                         is_model_options=False):
    to = _target(transformer_options, is_model_options, True)
    to.setdefault("wrappers", {}).setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def get_wrappers_with_key(wrapper_type: str, key: str, transformer_options: dict, is_model_options=False):
    to = _target(transformer_options, is_model_options, False)
    return list(to.get("wrappers", {}).get(wrapper_type, {}).get(key, []))


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False):
    to = _target(transformer_options, is_model_options, False)
    out = []
    for lst in to.get("wrappers", {}).get(wrapper_type, {}).values():
        out.extend(lst)
    return out


class WrapperExecutor:
    """Calls wrappers[idx](executor, *args) in turn, then the original function."""

    def __init__(self, original: Callable, class_obj: object, wrappers: list[Callable], idx: int):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(self.wrappers)

    def __call__(self, *args, **kwargs):
        nxt = WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1)
        return nxt.execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list[Callable], idx=0):
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj: object, wrappers: list[Callable], idx=0):
        return cls(original, class_obj, wrappers, idx)


class PatcherInjection:
    def __init__(self, inject: Callable, eject: Callable):
        self.inject = inject
        self.eject = eject


def copy_nested_dicts(input_dict: dict):
    """Copies dicts recursively and lists shallowly; other values are shared."""
    out = dict(input_dict)
    for k, v in input_dict.items():
        if isinstance(v, dict):
            out[k] = copy_nested_dicts(v)
        elif isinstance(v, list):
            out[k] = list(v)
    return out


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1=True):
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for k, v in dict2.items():
        if isinstance(v, dict):
            merged[k] = merge_nested_dicts(merged.setdefault(k, {}), v)
        elif isinstance(v, list):
            merged.setdefault(k, []).extend(v)
        else:
            merged[k] = v
    return merged
