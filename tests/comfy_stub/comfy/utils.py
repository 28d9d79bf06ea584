"""Stub of comfy/utils.py (ComfyUI v0.3.64): progress bar, attribute paths, torch file I/O.

Mirrors: ProgressBar(total, node_id=None) with .update(value) and
.update_absolute(value, total=None, preview=None); PROGRESS_BAR_HOOK and
set_progress_bar_global_hook(function) (the hook is read when the bar is created and called as
hook(current, total, preview, node_id=node_id)); set_progress_bar_enabled(enabled);
get_attr(obj, attr) / set_attr(obj, attr, value) with dotted paths;
load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False);
save_torch_file(sd, ckpt, metadata=None); repeat_to_batch_size, common_upscale (subset).
"""
from __future__ import annotations

import torch

PROGRESS_BAR_ENABLED = True


def set_progress_bar_enabled(enabled):
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function):
    """The server installs a hook that sends 'progress' websocket messages."""
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK  # captured now, like the real class
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


def deepcopy_list_dict(obj, memo=None):
    """Copy dicts and lists recursively; every other object is shared (ComfyUI 0.27)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        res = {deepcopy_list_dict(k, memo): deepcopy_list_dict(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        res = [deepcopy_list_dict(v, memo) for v in obj]
    else:
        res = obj
    memo[id(obj)] = res
    return res


def get_attr(obj, attr: str):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, attr: str, value):
    """Sets a dotted attribute and returns the previous value."""
    *parents, last = attr.split(".")
    for name in parents:
        obj = getattr(obj, name)
    prev = getattr(obj, last)
    setattr(obj, last, value)
    return prev


def set_attr_param(obj, attr, value):
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    if device is None:
        device = torch.device("cpu")
    device = torch.device(device)
    metadata = None
    if ckpt.lower().endswith((".safetensors", ".sft")):
        import safetensors
        with safetensors.safe_open(ckpt, framework="pt", device=device.type) as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            if return_metadata:
                metadata = f.metadata()
    else:
        loaded = torch.load(ckpt, map_location=device, weights_only=True)
        if "state_dict" in loaded:
            sd = loaded["state_dict"]
        elif len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict):
            sd = next(iter(loaded.values()))
        else:
            sd = loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd, ckpt, metadata=None):
    import safetensors.torch
    if metadata is not None:
        safetensors.torch.save_file(sd, ckpt, metadata=metadata)
    else:
        safetensors.torch.save_file(sd, ckpt)


def repeat_to_batch_size(tensor, batch_size, dim=0):
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = -(-batch_size // tensor.shape[dim])
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def common_upscale(samples, width, height, upscale_method, crop):
    """Resize the last two dims to (height, width); `crop` "center" crops to aspect first."""
    if crop == "center":
        old_h, old_w = samples.shape[-2], samples.shape[-1]
        old_aspect = old_w / old_h
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    mode = {"bislerp": "bilinear", "lanczos": "bicubic"}.get(upscale_method, upscale_method)
    lead = samples.shape[:-2]
    flat = samples.reshape(-1, 1, samples.shape[-2], samples.shape[-1])
    kwargs = {} if mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
    out = torch.nn.functional.interpolate(flat, size=(height, width), mode=mode, **kwargs)
    return out.reshape(*lead, height, width)
