"""The base model opened from INPUT: the chosen entry of a training pickle (or the safetensors'
tensors) with plain Wan names, fp8 scales split off, validated; tensor data stays on disk until the
long pass (CRC, then read / merge / write)."""
from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping, NamedTuple

import torch

from ..wan_model import WanConfig
from .common import FP8, ConversionError, UsageError, _describe_keys, _is_tensor_dict
from .names import COMFY_PREFIX, _normalize_wan_keys
from .quant import _dequantize, _split_quantization
from .reading import _check_zip_crc, _Input, _is_data_member, _read_input, _resolve_input
from .validation import validate_wan_state_dict

SOURCE_KEYS = ("generator_ema", "generator", "model", "state_dict")


class _Model(NamedTuple):
    sd: dict                 # plain Wan names -> tensors (memory-mapped where possible), still quantized
    quant: dict              # weight name -> _Quant (ComfyUI fp8 scales)
    info: dict
    cfg: WanConfig
    inp: _Input

    def verify(self, progress: bool | None = None) -> None:
        """The long integrity pass: CRC-32 of every tensor member of a zip-format pickle."""
        if self.inp.kind == "pickle" and zipfile.is_zipfile(self.inp.path):
            _check_zip_crc(self.inp.path, _is_data_member, progress)


def _pick_entry(obj: Mapping, key: str | None, path: str) -> tuple[Any, str | None, str]:
    """(state dict, source key, source format) of a pickle's top-level object."""
    if _is_tensor_dict(obj):
        if key not in (None, "auto"):
            raise UsageError(f"{path}: is a plain state dict; it has no {key!r} entry")
        return obj, None, "state_dict"
    if key in (None, "auto"):
        key = next((k for k in SOURCE_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            if "generator_lora" in obj:
                raise UsageError(f"{path}: holds only LoRA weights ('generator_lora'); pass the base model as INPUT "
                                 f"and this file with --lora")
            raise ConversionError(f"{path}: expected a Self Forcing / Causal Forcing / CausVid / LongLive checkpoint "
                                  f"with a 'generator_ema' or 'generator' entry (or a plain Wan state dict); "
                                  f"top-level keys are: {_describe_keys(obj)}")
    elif key not in obj:
        raise UsageError(f"{path}: has no {key!r} entry; top-level keys are: {_describe_keys(obj)}")
    sd = obj[key]
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{path}: entry {key!r} is a {type(sd).__name__}, not a state dict")
    return dict(sd.items()), key, "training_checkpoint"


def _open_model(inp: _Input, key: str = "auto", num_heads: int | None = None) -> _Model:
    """Read names, shapes and dtypes (tensor data stays on disk) and validate them."""
    obj, meta = _read_input(inp)
    path = inp.path
    info: dict[str, Any] = {"path": path}
    if inp.kind == "pickle":
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{path}: expected a dict (training checkpoint or state dict), "
                                  f"got {type(obj).__name__}")
        sd, source_key, source_format = _pick_entry(obj, key, path)
        if source_format == "training_checkpoint":
            info["available_keys"] = [k for k in SOURCE_KEYS if k in obj]
        if not _is_tensor_dict(sd):
            non = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)][:5]
            raise ConversionError(f"{path}: the model entry is not a state dict of tensors"
                                  + (f" (non-tensor entries: {non})" if non else ""))
    else:
        if key not in (None, "auto"):
            raise UsageError(f"{path}: --key {key!r} applies to training pickles; a .safetensors file holds one model")
        sd, source_key = obj, None
        source_format = "sharded_safetensors" if inp.kind == "sharded" else "safetensors"
        if meta.get("dummy_forcing"):
            info["input_dummy_forcing"] = meta["dummy_forcing"]
    sd, notes = _normalize_wan_keys(sd, path)
    if source_format == "safetensors" and COMFY_PREFIX in notes["stripped"]:
        source_format = "comfyui_safetensors"
    sd, quant = _split_quantization(sd, meta, path)
    if num_heads is None and meta.get("_config_num_heads"):  # put there by _read_sharded from config.json
        num_heads = int(meta["_config_num_heads"])
    info.update(notes, source_format=source_format, source_key=source_key,
                quantization=(next(iter(quant.values())).kind if quant else
                              "fp8" if any(v.dtype in FP8 for v in sd.values()) else None))
    cfg = validate_wan_state_dict(sd, path, num_heads=num_heads)
    info["config"] = cfg.to_dict()
    return _Model(sd, quant, info, cfg, inp)


def load_wan_state_dict(path: str, key: str = "auto", num_heads: int | None = None) -> tuple[dict, dict]:
    """Read a Wan transformer from ``path`` (pickle, safetensors, sharded index or folder).

    ``key``: 'auto' (generator_ema, then generator, model, state_dict, else the dict itself),
    or the name of the top-level entry to use. Returns (state dict with plain Wan names, info)
    where info has ``source_format``, ``source_key``, ``stripped`` (prefixes / wrapper segments
    removed), ``naming``, ``quantization``, ``config`` (the WanConfig as a dict). ComfyUI
    scaled-fp8 layers come back dequantized in float32; zip pickles are CRC-checked."""
    model = _open_model(_resolve_input(os.fspath(path)), key=key, num_heads=num_heads)
    model.verify(progress=False)
    sd = {k: _dequantize(v, model.quant.get(k)) for k, v in model.sd.items()}
    return sd, model.info
