"""Convert causal Wan2.1 training checkpoints into one ComfyUI-loadable ``.safetensors``.

Usable as functions and as a command::

    python -m dummy_forcing_core.convert INPUT [--lora LORA.pt] [--key auto|generator_ema|generator]
        [--chunk-frames 3] [--dtype bf16|fp16|fp32|keep] [--num-heads N]
        [--lora-alpha A] [--lora-rank R] -o OUT.safetensors

Inputs understood
-----------------
* Self Forcing / Causal Forcing / CausVid / LongLive training pickles (``.pt`` / ``.pth``): a dict
  with ``generator_ema`` and/or ``generator`` (``auto`` prefers ``generator_ema``), each a state
  dict of the ``WanDiffusionWrapper``: names ``model.<wan name>``, EMA copies of FSDP runs with
  ``_fsdp_wrapped_module.`` segments (``model._fsdp_wrapped_module.blocks.0...``, also nested
  inside blocks). Wrapper segments (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``,
  ``_orig_mod.``) are removed wherever they occur, then leading ``model.`` / ``module.`` /
  ``diffusion_model.`` / ``base_model.model.`` prefixes.
* A pickle that is directly a state dict, or ``{"model": sd}`` / ``{"state_dict": sd}``.
* Plain Wan ``.safetensors`` (Wan names, or ComfyUI full checkpoints with
  ``model.diffusion_model.``; VAE / text-encoder entries of such files are dropped).
* LongLive LoRA (``--lora``): the ``lora.pt`` LongLive writes, ``{"generator_lora": sd,
  "critic_lora": ..., "step": n}``, where ``sd`` comes from PEFT's ``get_peft_model_state_dict``
  on the generator's ``CausalWanModel``: ``base_model.model.blocks.N.<linear>.lora_A.weight`` /
  ``.lora_B.weight`` for every ``nn.Linear`` inside the attention blocks (self_attn / cross_attn
  q, k, v, o and ffn.0, ffn.2). Raw PEFT names with the adapter segment
  (``.lora_A.default.weight``) and kohya-style ``lora_down`` / ``lora_up`` / ``.alpha`` are also
  accepted. Merged as ``W += (alpha / rank) * B @ A`` in float32 (or float64 for float64 weights).
  ``rank`` is each module's ``lora_A`` row count; ``alpha`` comes from the file when it says so
  (per-module ``.alpha`` tensors, or an ``alpha`` / ``lora_alpha`` entry, also inside an
  ``adapter`` / ``lora_config`` / ``peft_config`` dict), else from ``--lora-alpha``, else equals
  the rank (scale 1: LongLive's released LoRA is rank 256 / alpha 256).

Pickles are only ever read with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling is refused.

Output
------
One ``.safetensors`` with plain Wan names (``patch_embedding.*``, ``blocks.N.*``, ``head.*``),
loadable by ComfyUI's "Load Diffusion Model", with metadata:

* ``config``: ``{"transformer": {"causal_ar": true}}`` -- exactly what ComfyUI writes/reads.
  ComfyUI's ``model_detection.detect_unet_config`` does
  ``dit_config.update(json.loads(metadata["config"]).get("transformer", {}))`` for Wan models,
  ``supported_models.WAN21_CausalAR_T2V`` matches ``causal_ar: True`` and pops it, and the rest
  of the dict is passed as keyword arguments to ``CausalWanModel(...)``, which takes no
  ``**kwargs``. Any extra key there (e.g. ``num_frame_per_block``) would make ComfyUI fail with
  an unexpected-keyword ``TypeError``, so the chunk size lives in our own entry instead.
* ``dummy_forcing``: JSON with ``source_format``, ``source_key``, ``chunk_frames`` (also as
  ``num_frame_per_block``), ``lora_merged`` and details (``num_heads``, layers, dtype, LoRA scale).

The output is written to a temporary file in the destination folder and moved into place at
the end; on any error the temporary file is removed and nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import tempfile
import warnings
from typing import Any, Mapping

import torch

from .wan_model import WanConfig, WanModel

__all__ = [
    "ConversionError",
    "load_wan_state_dict",
    "load_lora_state_dict",
    "merge_lora",
    "validate_wan_state_dict",
    "convert_checkpoint",
    "load_converted",
    "COMFY_CONFIG",
    "main",
]

FORMAT_VERSION = 1
# What ComfyUI reads (comfy/model_detection.py, Wan branch) and matches
# (comfy/supported_models.py WAN21_CausalAR_T2V). Keep it exactly this.
COMFY_CONFIG = {"transformer": {"causal_ar": True}}

WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
LEADING_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "model.", "module.")
COMFY_PREFIX = "model.diffusion_model."
SOURCE_KEYS = ("generator_ema", "generator", "model", "state_dict")
PICKLE_EXTS = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_EXTS = (".safetensors", ".sft")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ConversionError(ValueError):
    """A checkpoint could not be converted; the message says which file and why."""


# --------------------------------------------------------------------------------------- reading


def _is_safetensors(path: str) -> bool:
    if path.lower().endswith(SAFETENSORS_EXTS):
        return True
    try:  # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)
    except OSError:
        return False


def _torch_load(path: str) -> Any:
    """torch.load with weights_only=True only; mmap where the file format allows it."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch zip format / legacy pickle protocol >= 2
        raise ConversionError(f"{path}: could not be read: neither a PyTorch checkpoint (.pt/.pth) nor a "
                              f".safetensors file")
    last_exc: Exception | None = None
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            msg = str(exc)
            if "weights only" not in msg.lower():
                last_exc = exc
                break
            detail = next((ln.strip() for ln in msg.splitlines() if "unsupported global" in ln.lower()), "")
            raise ConversionError(
                f"{path}: not a plain-tensor checkpoint: it holds Python objects that only a full unpickle "
                f"(torch.load(weights_only=False)) could rebuild, and this tool never unpickles arbitrary "
                f"objects because that can run code from the file. Re-save it as a dict of tensors "
                f"(or as .safetensors) in an environment you trust." + (f" ({detail})" if detail else "")
            ) from None
        except RuntimeError as exc:  # e.g. mmap on a legacy (non-zip) file: retry without mmap
            last_exc = exc
            if mmap:
                continue
        except Exception as exc:  # noqa: BLE001 - corrupt/foreign files raise many things
            last_exc = exc
            break
    raise ConversionError(f"{path}: could not be read as a PyTorch checkpoint ({type(last_exc).__name__}: {last_exc})")


def _read_safetensors(path: str) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"{path}: could not be read as a .safetensors file ({exc})") from None
    return sd, metadata


def _read_any(path: str) -> tuple[Any, dict, str]:
    """(object, safetensors metadata, container) with container 'safetensors' or 'pickle'."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if _is_safetensors(path):
        sd, meta = _read_safetensors(path)
        return sd, meta, "safetensors"
    return _torch_load(path), {}, "pickle"


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _describe_keys(obj: Any, n: int = 8) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
        return ", ".join(repr(k) for k in keys[:n]) + more
    return type(obj).__name__


def _strip_name(name: str, removed: set | None = None) -> str:
    """Remove wrapper segments anywhere and known leading prefixes (repeatedly); Wan names
    never start with any of them. ``removed`` collects what was taken out."""
    for seg in WRAPPER_SEGMENTS:
        if seg in name:
            name = name.replace(seg, "")
            if removed is not None:
                removed.add(seg)
    changed = True
    while changed:
        changed = False
        for p in LEADING_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
                changed = True
                if removed is not None:
                    removed.add(p)
    return name


def _normalize_wan_keys(sd: Mapping[str, torch.Tensor], path: str) -> tuple[dict, dict]:
    """Strip wrappers / prefixes so names become plain Wan names. Returns (sd, notes)."""
    notes: dict[str, Any] = {}
    keys = list(sd.keys())
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        dropped = [k for k in keys if not k.startswith(COMFY_PREFIX)]
        if dropped:
            notes["dropped_non_diffusion_keys"] = len(dropped)
        keys = [k for k in keys if k.startswith(COMFY_PREFIX)]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    removed: set[str] = set()
    for k in keys:
        new = _strip_name(k, removed)
        if new in out:
            raise ConversionError(f"{path}: keys {origin[new]!r} and {k!r} both map to the Wan name {new!r}; "
                                  "the file holds two copies of the model")
        out[new] = sd[k]
        origin[new] = k
    notes["stripped"] = sorted(removed)
    return out, notes


# ------------------------------------------------------------------------------------ validation

_EXPECTED_CACHE: dict[str, Any] = {}


def _expected_names() -> tuple[list[str], list[str]]:
    """(top-level names, per-block suffixes) of our standalone WanModel (same as ComfyUI's)."""
    if "names" not in _EXPECTED_CACHE:
        with torch.device("meta"):
            m = WanModel(WanConfig(dim=64, ffn_dim=128, num_heads=1, num_layers=1, text_dim=8, freq_dim=8))
        top, block = [], []
        for k in m.state_dict().keys():
            if k.startswith("blocks.0."):
                block.append(k[len("blocks.0."):])
            else:
                top.append(k)
        _EXPECTED_CACHE["names"] = (top, block)
    return _EXPECTED_CACHE["names"]


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def validate_wan_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                            num_heads: int | None = None) -> WanConfig:
    """Check ``sd`` holds exactly a Wan2.1 T2V transformer with plain names. Returns its config.

    Raises :class:`ConversionError` naming ``source``, what was expected and what is missing,
    unexpected or of the wrong shape."""
    expected_hint = ("a Wan2.1 text-to-video diffusion transformer (parameters patch_embedding.weight, "
                     "text_embedding.0.weight, time_embedding.0.weight, blocks.N.self_attn.q.weight, ..., "
                     "head.head.weight, head.modulation)")
    if not _is_tensor_dict(sd):
        raise ConversionError(f"{source}: expected a state dict of tensors holding {expected_hint}; "
                              f"got {_describe_keys(sd)}")
    if "head.modulation" not in sd or "patch_embedding.weight" not in sd:
        raise ConversionError(f"{source}: not a Wan model: expected {expected_hint}, but 'head.modulation' / "
                              f"'patch_embedding.weight' are missing. Keys found: {_describe_keys(sd)}")
    top, block = _expected_names()
    layer_ids = sorted({int(m.group(1)) for k in sd for m in [_BLOCK_RE.match(k)] if m})
    if not layer_ids:
        raise ConversionError(f"{source}: not a Wan model: no 'blocks.N.*' parameters (expected {expected_hint})")
    num_layers = layer_ids[-1] + 1
    missing = [k for k in top if k not in sd]
    for i in range(num_layers):
        missing += [f"blocks.{i}.{s}" for s in block if f"blocks.{i}.{s}" not in sd]
    expected = set(top) | {f"blocks.{i}.{s}" for i in range(num_layers) for s in block}
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        per_block = {}
        for k in missing:
            m = _BLOCK_RE.match(k)
            per_block.setdefault(m.group(2) if m else k, []).append(int(m.group(1)) if m else -1)
        detail = "; ".join(
            f"{name}" + (f" (blocks {_ranges(ids)})" if ids[0] >= 0 else "")
            for name, ids in list(per_block.items())[:12])
        problems.append(f"{len(missing)} Wan parameters missing: {detail}")
    if unexpected:
        problems.append(f"{len(unexpected)} parameters a Wan2.1 T2V transformer does not have "
                        f"(image-to-video, VACE, camera and other variants are not supported): "
                        f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise ConversionError(f"{source}: not a complete Wan2.1 T2V model: " + ". ".join(problems))
    try:
        cfg = WanConfig.from_state_dict(sd, num_heads=num_heads)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConversionError(f"{source}: Wan geometry could not be derived: {exc}") from None
    with torch.device("meta"):
        ref = WanModel(cfg).state_dict()
    bad = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in ref.items() if sd[k].shape != v.shape]
    if bad:
        raise ConversionError(f"{source}: Wan parameter shapes are inconsistent: {'; '.join(bad[:6])}")
    return cfg


def _ranges(ids: list[int]) -> str:
    ids = sorted(set(ids))
    out, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


# ----------------------------------------------------------------------------------- base model


def load_wan_state_dict(path: str, key: str = "auto", num_heads: int | None = None) -> tuple[dict, dict]:
    """Read a Wan transformer from ``path`` (training pickle, plain state dict, or safetensors).

    ``key``: 'auto' (generator_ema, then generator, model, state_dict, else the dict itself),
    or the name of the top-level entry to use. Returns (state dict with plain Wan names, info)
    where info has ``source_format``, ``source_key``, ``stripped`` (prefixes / wrapper segments
    removed), ``config`` (the WanConfig as a dict)."""
    path = os.fspath(path)
    obj, st_meta, container = _read_any(path)
    info: dict[str, Any] = {"path": path}
    if container == "safetensors":
        sd = obj
        source_key = None
        source_format = "safetensors"
        if key not in (None, "auto"):
            raise ConversionError(f"{path}: --key {key!r} applies to training pickles; "
                                  "a .safetensors file holds one model")
        if st_meta.get("dummy_forcing"):
            info["input_dummy_forcing"] = st_meta["dummy_forcing"]
    else:
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{path}: expected a dict (training checkpoint or state dict), "
                                  f"got {type(obj).__name__}")
        if _is_tensor_dict(obj):
            if key not in (None, "auto"):
                raise ConversionError(f"{path}: is a plain state dict; it has no {key!r} entry")
            sd, source_key, source_format = obj, None, "state_dict"
        else:
            if key in (None, "auto"):
                source_key = next((k for k in SOURCE_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
                if source_key is None:
                    if "generator_lora" in obj:
                        raise ConversionError(
                            f"{path}: holds only LoRA weights ('generator_lora'); pass the base model as INPUT "
                            f"and this file with --lora")
                    raise ConversionError(
                        f"{path}: expected a Self Forcing / Causal Forcing / CausVid / LongLive checkpoint with a "
                        f"'generator_ema' or 'generator' entry (or a plain Wan state dict); top-level keys are: "
                        f"{_describe_keys(obj)}")
            else:
                if key not in obj:
                    raise ConversionError(f"{path}: has no {key!r} entry; top-level keys are: {_describe_keys(obj)}")
                source_key = key
            sd = obj[source_key]
            if not isinstance(sd, Mapping):
                raise ConversionError(f"{path}: entry {source_key!r} is a {type(sd).__name__}, not a state dict")
            sd = {k: v for k, v in sd.items()}
            source_format = "training_checkpoint"
            info["available_keys"] = [k for k in SOURCE_KEYS if k in obj]
        if not _is_tensor_dict(sd):
            non = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)][:5] if isinstance(sd, Mapping) else []
            raise ConversionError(f"{path}: the model entry is not a state dict of tensors"
                                  + (f" (non-tensor entries: {non})" if non else ""))
    sd, notes = _normalize_wan_keys(sd, path)
    if source_format == "safetensors" and COMFY_PREFIX in notes["stripped"]:
        source_format = "comfyui_safetensors"
    info.update(notes)
    info["source_format"] = source_format
    info["source_key"] = source_key
    cfg = validate_wan_state_dict(sd, path, num_heads=num_heads)
    info["config"] = cfg.to_dict()
    return sd, info


# ----------------------------------------------------------------------------------------- LoRA

_LORA_RE = re.compile(r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_RE = re.compile(r"^(?P<mod>.+?)\.(?:alpha|lora_alpha)$")
_ALPHA_NAMES = ("lora_alpha", "alpha", "network_alpha")
_RANK_NAMES = ("lora_rank", "rank", "r", "network_dim")
_CONFIG_DICTS = ("adapter", "lora_config", "peft_config", "adapter_config", "config", "lora")


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.item())
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _find_number(d: Mapping, names: tuple[str, ...]) -> float | None:
    for n in names:
        if n in d and _number(d[n]) is not None:
            return _number(d[n])
    for c in _CONFIG_DICTS:
        sub = d.get(c)
        if isinstance(sub, Mapping):
            for n in names:
                if n in sub and _number(sub[n]) is not None:
                    return _number(sub[n])
    return None


def load_lora_state_dict(path: str) -> tuple[dict, dict]:
    """Read a LoRA file: LongLive ``{"generator_lora": sd, ...}``, a bare PEFT/kohya state dict
    (pickle or safetensors). Returns (lora state dict, info with ``alpha`` / ``rank`` when the
    file states them)."""
    path = os.fspath(path)
    obj, st_meta, container = _read_any(path)
    info: dict[str, Any] = {"path": path, "alpha": None, "rank": None, "source_key": None}
    if container == "safetensors":
        sd = obj
        info["alpha"] = _find_number(st_meta, _ALPHA_NAMES + ("ss_network_alpha",))
        info["rank"] = _find_number(st_meta, _RANK_NAMES + ("ss_network_dim",))
    else:
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{path}: expected a LoRA dict, got {type(obj).__name__}")
        if "generator_lora" in obj:
            sd = obj["generator_lora"]
            info["source_key"] = "generator_lora"
        elif _is_tensor_dict(obj):
            sd = obj
        elif any(k in obj for k in ("generator", "generator_ema")):
            raise ConversionError(f"{path}: is a full model checkpoint, not a LoRA; pass it as INPUT instead")
        else:
            raise ConversionError(f"{path}: expected a LongLive LoRA file with a 'generator_lora' entry (PEFT "
                                  f"lora_A / lora_B weights); top-level keys are: {_describe_keys(obj)}")
        info["alpha"] = _find_number(obj, _ALPHA_NAMES)
        info["rank"] = _find_number(obj, _RANK_NAMES)
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{path}: the LoRA entry is a {type(sd).__name__}, not a state dict")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not any(_LORA_RE.match(k) for k in sd):
        raise ConversionError(f"{path}: no LoRA weights (names ending in .lora_A.weight / .lora_B.weight) found; "
                              f"keys: {_describe_keys(sd)}")
    return sd, info


def _group_lora(lora_sd: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """{module: {"A": t, "B": t, "alpha": float|None}} keyed by plain Wan module name."""
    groups: dict[str, dict[str, Any]] = {}
    adapters: set[str] = set()
    unknown: list[str] = []
    for k, v in lora_sd.items():
        name = k
        for seg in WRAPPER_SEGMENTS:
            name = name.replace(seg, "")
        m = _LORA_RE.match(name)
        if m:
            mod = _strip_name(m.group("mod"))
            part = "A" if m.group("kind") in ("lora_A", "lora_down") else "B"
            if m.group("adapter"):
                adapters.add(m.group("adapter"))
            g = groups.setdefault(mod, {"A": None, "B": None, "alpha": None, "keys": []})
            if g[part] is not None:
                raise ConversionError(f"LoRA has two {part} matrices for {mod!r} (several adapters in one file?)")
            g[part] = v
            g["keys"].append(k)
            continue
        m = _ALPHA_RE.match(name)
        if m and v.numel() == 1:
            mod = _strip_name(m.group("mod"))
            groups.setdefault(mod, {"A": None, "B": None, "alpha": None, "keys": []})["alpha"] = float(v.item())
            continue
        unknown.append(k)
    if len(adapters) > 1:
        raise ConversionError(f"LoRA holds several adapters ({', '.join(sorted(adapters))}); save one adapter per file")
    return groups, unknown


def merge_lora(sd: dict, lora_sd: Mapping[str, torch.Tensor], alpha: float | None = None,
               rank: int | None = None) -> dict:
    """Merge a LoRA into Wan state dict ``sd`` in place (and return it): W += (alpha/rank) * B @ A.

    ``lora_sd`` may use PEFT names (``base_model.model.blocks.0.self_attn.q.lora_A.weight``,
    optionally with the ``.default`` adapter segment), LongLive/Self-Forcing wrapper prefixes, or
    kohya ``lora_down`` / ``lora_up`` (+ ``.alpha``). ``rank`` defaults to each module's
    ``lora_A`` row count (an explicit value must agree with it); ``alpha`` defaults to a per-module
    ``.alpha`` entry, else to the rank. Any LoRA entry that matches no base weight is an error."""
    groups, unknown = _group_lora(lora_sd)
    if unknown:
        raise ConversionError(f"LoRA has {len(unknown)} entries that are not LoRA matrices: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    incomplete = [m for m, g in groups.items() if g["A"] is None or g["B"] is None]
    if incomplete:
        raise ConversionError(f"LoRA modules without both lora_A and lora_B: {', '.join(incomplete[:5])}")
    unmatched = [m for m in groups if f"{m}.weight" not in sd]
    if unmatched:
        raise ConversionError(
            f"{len(unmatched)} of {len(groups)} LoRA modules match no weight of the base model, e.g. "
            f"{', '.join(repr(m + '.weight') for m in unmatched[:5])} (from keys like "
            f"{groups[unmatched[0]]['keys'][0]!r}); is this LoRA for this model?")
    for mod, g in sorted(groups.items()):
        key = f"{mod}.weight"
        w = sd[key]
        A, B = g["A"], g["B"]
        if A.ndim != 2 or B.ndim != 2:
            raise ConversionError(f"LoRA {mod}: only Linear LoRA (2-D lora_A / lora_B) is supported, "
                                  f"got shapes {tuple(A.shape)} / {tuple(B.shape)}")
        r = A.shape[0]
        if B.shape[1] != r or (B.shape[0], A.shape[1]) != tuple(w.shape):
            raise ConversionError(f"LoRA {mod}: lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} does not fit "
                                  f"the base weight {tuple(w.shape)}")
        if rank is not None and int(rank) != r:
            raise ConversionError(f"LoRA {mod}: rank given as {rank} but lora_A has {r} rows")
        a = g["alpha"] if g["alpha"] is not None else (alpha if alpha is not None else r)
        scale = float(a) / r
        cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
        delta = (B.to(cdt) @ A.to(cdt)) * scale
        sd[key] = (w.to(cdt) + delta).to(w.dtype)
    return sd


# ------------------------------------------------------------------------------------- convert


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == "keep":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ConversionError(f"unknown dtype {dtype!r}: use bf16, fp16, fp32 or keep")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _prepare_for_save(sd: Mapping[str, torch.Tensor]) -> dict:
    """Contiguous CPU tensors, each owning its storage (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        if v.numel():
            storage = v.untyped_storage()
            shared = storage.data_ptr() in seen or storage.nbytes() != v.numel() * v.element_size()
            if shared:
                v = v.clone()
            seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def convert_checkpoint(src: str, dst: str, lora: str | None = None, key: str = "auto", chunk_frames: int = 3,
                       dtype: Any = None, num_heads: int | None = None, lora_alpha: float | None = None,
                       lora_rank: int | None = None, comfy_causal_ar: bool = True) -> dict:
    """Convert ``src`` (+ optional LongLive ``lora``) into ``dst`` (.safetensors). Returns info.

    ``dtype``: None / 'keep' keeps the stored dtype, else 'bf16' / 'fp16' / 'fp32' (floating
    tensors only, after the LoRA merge). ``num_heads`` is recorded in our metadata (default
    dim // 128, as ComfyUI assumes). ``comfy_causal_ar=False`` leaves out ComfyUI's ``config``
    entry (ComfyUI then loads its bidirectional WanModel; this pack drives it causally anyway)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not dst.lower().endswith(".safetensors"):
        raise ConversionError(f"{dst}: the output must be a .safetensors file")
    for inp in [src] + ([os.fspath(lora)] if lora else []):
        if _same_file(inp, dst):
            raise ConversionError(f"{dst}: refusing to overwrite the input file {inp}")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ConversionError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
    out_dtype = _resolve_dtype(dtype)
    out_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(out_dir):
        raise ConversionError(f"{dst}: the output folder {out_dir} does not exist")

    sd, info = load_wan_state_dict(src, key=key, num_heads=num_heads)
    cfg = WanConfig.from_dict(info["config"])
    lora_info: dict[str, Any] = {"lora_merged": False}
    if lora:
        lora = os.fspath(lora)
        lora_sd, linfo = load_lora_state_dict(lora)
        alpha, rank = linfo["alpha"], linfo["rank"]
        if alpha is not None and lora_alpha is not None and float(lora_alpha) != alpha:
            warnings.warn(f"{lora}: the file states alpha={alpha:g}; ignoring --lora-alpha {lora_alpha:g}")
        if rank is not None and lora_rank is not None and int(lora_rank) != int(rank):
            warnings.warn(f"{lora}: the file states rank={rank:g}; ignoring --lora-rank {lora_rank}")
        alpha = alpha if alpha is not None else lora_alpha
        rank = int(rank) if rank is not None else (int(lora_rank) if lora_rank is not None else None)
        try:
            groups, _ = _group_lora(lora_sd)
            merge_lora(sd, lora_sd, alpha=alpha, rank=rank)
        except ConversionError as exc:
            raise ConversionError(f"{lora}: {exc}") from None
        ranks = sorted({int(g["A"].shape[0]) for g in groups.values()})
        eff_alpha = alpha if alpha is not None else (ranks[0] if len(ranks) == 1 else None)
        lora_info = {"lora_merged": True, "lora_file": os.path.basename(lora), "lora_source_key": linfo["source_key"],
                     "lora_modules": len(groups), "lora_rank": ranks[0] if len(ranks) == 1 else ranks,
                     "lora_alpha": eff_alpha,
                     "lora_scale": (eff_alpha / ranks[0]) if (eff_alpha is not None and len(ranks) == 1) else None}
    if out_dtype is not None:
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != out_dtype:
                c = v.to(out_dtype)
                if out_dtype == torch.float16 and not torch.isfinite(c).all():
                    raise ConversionError(f"{src}: {k} overflows float16; use --dtype bf16 or fp32")
                sd[k] = c
    stored = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    ours = {
        "format_version": FORMAT_VERSION,
        "source_format": info["source_format"],
        "source_key": info["source_key"],
        "source_file": os.path.basename(src),
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

    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix="." + os.path.basename(dst) + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_prepare_for_save(sd), tmp, metadata=metadata)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    n_params = sum(v.numel() for v in sd.values())
    return {"output": dst, "metadata": {"config": json.loads(metadata["config"]) if comfy_causal_ar else None,
                                        "dummy_forcing": ours},
            "config": cfg.to_dict(), "num_params": n_params, "num_tensors": len(sd),
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
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            meta[k] = v
    ours = meta.get("dummy_forcing") if isinstance(meta.get("dummy_forcing"), dict) else {}
    if num_heads is None:
        num_heads = ours.get("num_heads")
    sd, _ = _normalize_wan_keys(sd, path)
    cfg = validate_wan_state_dict(sd, path, num_heads=num_heads)
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval(), meta


# ------------------------------------------------------------------------------------------ CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dummy_forcing_core.convert",
        description="Convert a Self Forcing / Causal Forcing / CausVid / LongLive checkpoint (optionally with a "
                    "LongLive LoRA merged in) into one .safetensors that ComfyUI's 'Load Diffusion Model' loads.")
    p.add_argument("input", help="training checkpoint (.pt/.pth), plain state dict, or Wan .safetensors")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--lora", default=None, help="LongLive LoRA file (lora.pt with 'generator_lora') to merge")
    p.add_argument("--key", default="auto", help="which entry of a training checkpoint: auto (generator_ema, then "
                   "generator), generator_ema, generator, or another top-level key")
    p.add_argument("--chunk-frames", type=int, default=3,
                   help="latent frames per AR chunk (3 chunk-wise, 1 frame-wise)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "keep"],
                   help="output weight dtype (default bf16)")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (default dim // 128)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA alpha when the file does not state it (default: equal to the rank, i.e. scale 1)")
    p.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank when the file does not state it (default: read from lora_A shapes)")
    p.add_argument("--no-causal-ar-flag", action="store_true",
                   help="leave out ComfyUI's config {'transformer': {'causal_ar': true}} (for ComfyUI versions "
                        "without CausalWanModel)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = convert_checkpoint(args.input, args.output, lora=args.lora, key=args.key,
                                      chunk_frames=args.chunk_frames, dtype=args.dtype, num_heads=args.num_heads,
                                      lora_alpha=args.lora_alpha, lora_rank=args.lora_rank,
                                      comfy_causal_ar=not args.no_causal_ar_flag)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ours = info["metadata"]["dummy_forcing"]
    cfg = info["config"]
    print(f"wrote {info['output']}")
    print(f"  source: {ours['source_format']}" + (f" [{ours['source_key']}]" if ours["source_key"] else "")
          + (f", stripped {', '.join(info['stripped_prefixes'])}" if info["stripped_prefixes"] else ""))
    print(f"  model: Wan dim {cfg['dim']}, {cfg['num_layers']} layers, {cfg['num_heads']} heads, "
          f"{info['num_params'] / 1e6:.1f}M parameters, {ours['dtype']}")
    if ours["lora_merged"]:
        print(f"  LoRA merged: {ours['lora_modules']} modules, rank {ours['lora_rank']}, alpha {ours['lora_alpha']}")
    print(f"  chunk frames: {ours['chunk_frames']}; ComfyUI causal_ar flag: {info['metadata']['config'] is not None}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
