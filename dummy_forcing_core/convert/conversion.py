"""One conversion, start to end: cheap checks first (arguments, output path, then from file headers
names, geometry, LoRA, free disk space), then the long pass (CRC of zip pickles, then read / dequantize
/ merge / check / cast / write); and :func:`load_converted` to read the result back.

Output
------
One ``.safetensors`` with plain Wan names (``patch_embedding.*``, ``blocks.N.*``, ``head.*``), loadable
by ComfyUI's "Load Diffusion Model", with metadata:

* ``config``: ``{"transformer": {"causal_ar": true}}`` -- exactly what ComfyUI writes/reads.
  ComfyUI's ``model_detection.detect_unet_config`` does
  ``dit_config.update(json.loads(metadata["config"]).get("transformer", {}))`` for Wan models,
  ``supported_models.WAN21_CausalAR_T2V`` matches ``causal_ar: True`` and pops it, and the rest
  of the dict is passed as keyword arguments to ``CausalWanModel(...)``, which takes no
  ``**kwargs``. Any extra key there (e.g. ``num_frame_per_block``) would make ComfyUI fail with
  an unexpected-keyword ``TypeError``, so the chunk size lives in our own entry instead.
* ``dummy_forcing``: JSON with ``source_format``, ``source_key``, ``chunk_frames`` (also as
  ``num_frame_per_block``), ``lora_merged`` and details (``num_heads``, layers, dtype, LoRA scale).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from typing import Any, Callable

import torch

from ..bounded_json import NestingError, loads_bounded
from ..wan_model import WanModel
from .base_model import _Model, _open_model
from .common import ConversionError, UsageError, _all_finite, _finite_positive, _not_finite, _same_file
from .lora import _apply_lora, _lora_plan, load_lora_state_dict
from .names import _normalize_wan_keys
from .quant import _dequantize
from .reading import _read_safetensors, _resolve_input
from .validation import validate_wan_state_dict
from .writing import _header, _Spec, _write_safetensors

FORMAT_VERSION = 1
# What ComfyUI reads (comfy/model_detection.py, Wan branch) and matches
# (comfy/supported_models.py WAN21_CausalAR_T2V). Keep it exactly this.
COMFY_CONFIG = {"transformer": {"causal_ar": True}}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == "keep":
        return None
    if isinstance(dtype, torch.dtype) and dtype in (torch.bfloat16, torch.float16, torch.float32):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise UsageError(f"unknown dtype {dtype!r}: use bf16, fp16, fp32 or keep")


def _check_args(chunk_frames: Any, num_heads: Any, lora: Any, lora_alpha: Any, lora_rank: Any) -> None:
    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not positive_int(chunk_frames):
        raise UsageError(f"--chunk-frames must be a positive integer (3 for chunk-wise, 1 for frame-wise "
                         f"checkpoints), got {chunk_frames!r}")
    if num_heads is not None and not positive_int(num_heads):
        raise UsageError(f"--num-heads must be a positive integer, got {num_heads!r}")
    if lora_alpha is not None and not _finite_positive(lora_alpha):
        raise UsageError(f"--lora-alpha must be a finite positive number, got {lora_alpha!r}")
    if lora_rank is not None and not positive_int(lora_rank):
        raise UsageError(f"--lora-rank must be a positive integer, got {lora_rank!r}")
    if not lora and (lora_alpha is not None or lora_rank is not None):
        raise UsageError("--lora-alpha / --lora-rank apply to a LoRA; pass one with --lora")


def _check_output(dst: str, inputs: list[str]) -> str:
    """Refuse a destination that is not a new or replaceable .safetensors file. Returns its folder."""
    if os.path.isdir(dst):
        raise UsageError(f"{dst}: is a folder; give the output file's path "
                         f"(e.g. {os.path.join(dst, 'model.safetensors')})")
    if not dst.lower().endswith(".safetensors"):
        raise UsageError(f"{dst}: the output must be a .safetensors file")
    for inp in inputs:
        if _same_file(inp, dst):
            raise UsageError(f"{dst}: refusing to overwrite the input file {inp}")
    out_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(out_dir):
        raise UsageError(f"{dst}: the output folder {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK):
        raise ConversionError(f"{dst}: the output folder {out_dir} is not writable")
    return out_dir


def _check_free_space(out_dir: str, need: int, dst: str) -> None:
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise ConversionError(f"{dst}: not enough free disk space: the output needs {need / 2**30:.2f} GiB, "
                              f"{free / 2**30:.2f} GiB are free in {out_dir}")


def _prepare_lora(lora: str, model: _Model, lora_alpha: float | None, lora_rank: int | None) -> tuple[dict, dict]:
    """(plan {weight: (A, B, scale)}, metadata entries) for ``lora`` on ``model``."""
    lora_sd, linfo = load_lora_state_dict(lora)
    alpha, rank = linfo["alpha"], linfo["rank"]
    if alpha is not None and lora_alpha is not None and float(lora_alpha) != alpha:
        warnings.warn(f"{lora}: the file states alpha={alpha:g}; ignoring --lora-alpha {lora_alpha:g}")
    if rank is not None and lora_rank is not None and int(lora_rank) != int(rank):
        warnings.warn(f"{lora}: the file states rank={rank:g}; ignoring --lora-rank {lora_rank}")
    alpha = alpha if alpha is not None else lora_alpha
    rank = int(rank) if rank is not None else lora_rank
    try:
        plan = _lora_plan({k: v.shape for k, v in model.sd.items()}, lora_sd, alpha=alpha, rank=rank)
    except ConversionError as exc:
        raise ConversionError(f"{lora}: {exc}") from None
    ranks = sorted({int(A.shape[0]) for A, _, _ in plan.values()})
    scales = sorted({s for _, _, s in plan.values()})
    eff_alpha = alpha if alpha is not None else (ranks[0] if len(ranks) == 1 else None)
    return plan, {"lora_merged": True, "lora_file": os.path.basename(lora), "lora_source_key": linfo["source_key"],
                  "lora_modules": len(plan), "lora_rank": ranks[0] if len(ranks) == 1 else ranks,
                  "lora_alpha": eff_alpha, "lora_scale": scales[0] if len(scales) == 1 else None}


def _producer(model: _Model, plan: dict, out_dtype: torch.dtype | None) -> Callable[[str], torch.Tensor]:
    """name -> final tensor: dequantize, check finite, merge LoRA, cast (one tensor in memory at a time)."""
    src = model.inp.path

    def produce(name: str) -> torch.Tensor:
        t = _dequantize(model.sd[name], model.quant.get(name))
        if not _all_finite(t):
            raise _not_finite(src, name, t)
        if name in plan:
            t = _apply_lora(t, *plan[name])
        target = out_dtype or model.sd[name].dtype  # 'keep' is refused for scaled weights
        c = t.to(target)
        if target == torch.float16 and not _all_finite(c):
            raise ConversionError(f"{src}: {name} overflows float16; use --dtype bf16 or fp32")
        return c

    return produce


def convert_checkpoint(src: str, dst: str, lora: str | None = None, key: str = "auto", chunk_frames: int = 3,
                       dtype: Any = None, num_heads: int | None = None, lora_alpha: float | None = None,
                       lora_rank: int | None = None, comfy_causal_ar: bool = True,
                       progress: bool | None = None) -> dict:
    """Convert ``src`` (+ optional LongLive ``lora``) into ``dst`` (.safetensors). Returns info.

    ``src``: file, sharded index json or folder (see the module docstring). ``dtype``: None / 'keep'
    keeps the stored dtype (not possible for ComfyUI scaled-fp8 inputs), else 'bf16' / 'fp16' /
    'fp32'. ``num_heads`` defaults to a config.json next to a sharded index, else dim // 128 (as
    ComfyUI assumes). ``comfy_causal_ar=False`` leaves out ComfyUI's ``config`` entry (ComfyUI then
    loads its bidirectional WanModel; this pack drives it causally anyway). ``progress``: tqdm bars
    (None: when stderr is a TTY and tqdm is installed).

    Order: argument and output-path checks, then headers (names, shapes, dtypes, LoRA factors,
    free space), then the long pass (CRC of zip pickles, then read / merge / check / write)."""
    src, dst = os.fspath(src), os.fspath(dst)
    lora = os.fspath(lora) if lora else None
    _check_args(chunk_frames, num_heads, lora, lora_alpha, lora_rank)
    out_dtype = _resolve_dtype(dtype)
    inp = _resolve_input(src)
    lora_inp = _resolve_input(lora) if lora else None
    out_dir = _check_output(dst, inp.files + (lora_inp.files if lora_inp else []))

    model = _open_model(inp, key=key, num_heads=num_heads)
    cfg, info = model.cfg, model.info
    if cfg.dim // 128 and cfg.num_heads != cfg.dim // 128:
        warnings.warn(f"{inp.path}: {cfg.num_heads} heads; ComfyUI assumes dim // 128 = {cfg.dim // 128} heads "
                      f"when it loads the output (this pack reads the head count from its metadata)")
    if model.quant and out_dtype is None:
        raise UsageError(f"{inp.path}: holds ComfyUI scaled-fp8 weights, which cannot be kept without their scales; "
                         f"choose --dtype bf16, fp16 or fp32")
    plan, lora_info = _prepare_lora(lora, model, lora_alpha, lora_rank) if lora else ({}, {"lora_merged": False})
    specs = [_Spec(k, tuple(v.shape), out_dtype or v.dtype) for k, v in model.sd.items()]
    stored = sorted({str(s.dtype).replace("torch.", "") for s in specs})
    ours = {
        "format_version": FORMAT_VERSION,
        "source_format": info["source_format"],
        "source_key": info["source_key"],
        "source_file": os.path.basename(inp.path),
        "chunk_frames": chunk_frames,
        "num_frame_per_block": chunk_frames,
        **lora_info,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "dim": cfg.dim,
        "dtype": stored[0] if len(stored) == 1 else stored,
    }
    metadata = {"dummy_forcing": json.dumps(ours, sort_keys=True)}
    if comfy_causal_ar:
        metadata["config"] = json.dumps(COMFY_CONFIG)
    _check_free_space(out_dir, len(_header(specs, metadata)) + sum(s.nbytes for s in specs), dst)

    model.verify(progress)
    _write_safetensors(dst, specs, _producer(model, plan, out_dtype), metadata, progress)
    return {"output": dst, "metadata": {"config": json.loads(metadata["config"]) if comfy_causal_ar else None,
                                        "dummy_forcing": ours},
            "config": cfg.to_dict(), "num_params": sum(math.prod(s.shape) for s in specs), "num_tensors": len(specs),
            "stripped_prefixes": info.get("stripped", []), "source": info}


def load_converted(path: str, num_heads: int | None = None) -> tuple[WanModel, dict]:
    """Build our standalone :class:`WanModel` from a converted (or any plain Wan) safetensors.

    num_heads: argument, else our metadata's ``num_heads``, else dim // 128. Returns
    (model in eval mode with the file's dtype, metadata with JSON entries decoded)."""
    path = os.fspath(path)
    sd, raw_meta = _read_safetensors(path)
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = loads_bounded(v)
        except NestingError as exc:
            raise ConversionError(f"{path}: metadata entry {k!r} is {exc}; the file is damaged or crafted") from None
        except (TypeError, ValueError):
            meta[k] = v  # plain text metadata
    ours = meta.get("dummy_forcing") if isinstance(meta.get("dummy_forcing"), dict) else {}
    if num_heads is None:
        num_heads = ours.get("num_heads")
    sd, _ = _normalize_wan_keys(sd, path)
    cfg = validate_wan_state_dict(sd, path, num_heads=num_heads)
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval(), meta
