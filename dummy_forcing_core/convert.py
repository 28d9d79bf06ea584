"""Convert causal Wan2.1 checkpoints (1.3B and 14B) into one ComfyUI-loadable ``.safetensors``.

Usable as functions and as a command::

    python -m dummy_forcing_core.convert INPUT [--lora LORA] [--key auto|generator_ema|generator|...]
        [--chunk-frames 3] [--dtype bf16|fp16|fp32|keep] [--num-heads N]
        [--lora-alpha A] [--lora-rank R] [--no-causal-ar-flag] [--no-progress] -o OUT.safetensors

INPUT is a file (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` pickle, ``.safetensors`` / ``.sft``), a
sharded-safetensors index (``*.safetensors.index.json``), or a folder holding exactly one of those
(a Hugging Face repo folder is also searched in its ``transformer/`` sub-folder).

Inputs understood
-----------------
* Self Forcing / Causal Forcing / CausVid / LongLive training pickles: a dict with ``generator_ema``
  and/or ``generator`` (``auto`` prefers ``generator_ema``), each a state dict of the
  ``WanDiffusionWrapper``: names ``model.<wan name>``, EMA copies of FSDP runs with
  ``_fsdp_wrapped_module.`` segments (also nested inside blocks). Wrapper segments
  (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``) are removed wherever
  they occur, then leading ``model.`` / ``module.`` / ``diffusion_model.`` / ``base_model.model.``.
  14B runs of this trainer (Krea Realtime and GoatWu/Self-Forcing-Plus ``configs/self_forcing_14b_dmd.yaml``
  build on guandeh17/Self-Forcing) save the same dict; only the shapes differ.
* A pickle that is directly a state dict, or ``{"model": sd}`` / ``{"state_dict": sd}``.
* Plain Wan ``.safetensors`` (Wan names, or ComfyUI full checkpoints with ``model.diffusion_model.``;
  VAE / text-encoder entries of such files are dropped). A top-level ``freqs`` RoPE buffer is dropped.
* Krea Realtime 14B (Hugging Face ``krea/krea-realtime-video``; a causal Wan2.1-T2V-14B distilled with
  Self Forcing), both published layouts of the same transformer:
  ``krea-realtime-video-14b.safetensors`` (one file, 28.6 GB, 1095 float16 tensors named
  ``model.<wan name>``) and ``transformer/diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors``
  plus its index json (the same tensors with bare Wan names; the folder's remote-code ``.py`` files are
  not read). Read in krea-ai/realtime-video
  ``release_server.py`` (``load_file`` then ``WanDiffusionWrapper.load_state_dict``, which tests
  ``model.blocks.0.self_attn.k.weight``), daydreamlive/scope ``wan2_1/components/generator.py``
  (strips a leading ``model.``), DiffSynth-Studio ``examples/wanvideo/.../krea-realtime-video.py``
  (file name) and SceneWorks/inference ``mlx-gen-krea-realtime`` ``src/convert.rs`` /
  ``tests/transformer_load.rs`` / ``tests/rehost_real_weights.rs`` (both layouts, 1095 F16 tensors,
  no ``freqs``). The older checkpoint of krea-ai/realtime-video's README (``krea/krea-rt-14b``,
  ``checkpoints/14b_400.safetensors`` in ``configs/self_forcing_server_14b.yaml``) goes through the
  same loader, so it has the same names.
* Diffusers ``WanTransformer3DModel`` names (``blocks.0.attn1.to_q``, ``blocks.0.attn1.to_out.0``,
  ``blocks.0.norm2`` (= Wan ``norm3``), ``blocks.0.ffn.net.0.proj``, ``blocks.0.scale_shift_table``,
  ``condition_embedder.{time,text}_embedder.linear_{1,2}``, ``condition_embedder.time_proj``,
  ``proj_out``, ``scale_shift_table``), mapped back with the table of huggingface/diffusers
  ``scripts/convert_wan_to_diffusers.py``. The causal repackaging ``IPostYellow/krea-realtime-video-diffusers``
  (ModelScope; served by sgl-project/sglang PR #19817, loaded with
  ``WanTransformer3DModel.from_pretrained(..., subfolder="transformer")``) uses them. A
  ``config.json`` next to a sharded index gives the head count (``num_attention_heads``).
* fp8 weights: plain ``float8_e4m3fn`` / ``float8_e5m2`` (cast to ``--dtype``); ComfyUI "scaled fp8"
  (marker ``scaled_fp8``, per layer ``<layer>.scale_weight`` and optional ``<layer>.scale_input``;
  ComfyUI ``comfy/model_detection.py``, ``comfy/ops.py`` ``scaled_fp8_ops``) and ComfyUI's newer
  per-layer quantization (``<layer>.comfy_quant`` = JSON bytes ``{"format": "float8_e4m3fn"}``,
  ``<layer>.weight_scale``, optional ``<layer>.input_scale``, or a ``_quantization_metadata`` entry;
  ``comfy/utils.py`` ``convert_old_quants``, ``comfy/quant_ops.py``). fp8 layers are dequantized as
  ``weight.float() * scale`` (what ComfyUI computes), then cast; activation scales are dropped.
  nvfp4 / mxfp8 / int8 layers are refused.
* LongLive LoRA (``--lora``): the ``lora.pt`` LongLive writes, ``{"generator_lora": sd, ...}`` with
  PEFT names ``base_model.model.blocks.N.<linear>.lora_A.weight`` / ``.lora_B.weight``, raw PEFT names
  (``.lora_A.default.weight``) and kohya ``lora_down`` / ``lora_up`` / ``.alpha``. Merged as
  ``W += (alpha / rank) * B @ A`` in float32 (float64 for float64 weights). ``rank`` is each module's
  ``lora_A`` row count; ``alpha`` comes from the file (per-module ``.alpha`` tensors, or an ``alpha`` /
  ``lora_alpha`` entry, also inside an ``adapter`` / ``lora_config`` / ``peft_config`` dict), else
  from ``--lora-alpha``, else equals the rank (LongLive's released LoRA: rank 256, alpha 256).

Supported geometry: Wan2.1 text-to-video, 16 latent channels in and out, patch (1, 2, 2), any dim /
depth (1.3B: dim 1536, 30 layers; 14B: dim 5120, 40 layers, ffn 13824). Heads default to dim // 128
as ComfyUI assumes (``WanConfig.from_state_dict``). Image-to-video (36 input channels, ``img_emb``),
Wan2.2 TI2V-5B (48 channels), VACE and other variants are refused by name.

Not verified (no real file was downloaded): Krea's key names and F16 dtype come from third-party
code that reads the files, not from the files; the index file name (diffusers' default
``diffusion_pytorch_model.safetensors.index.json``; any ``*.safetensors.index.json`` is accepted) and
whether Krea's ``transformer/config.json`` states the head count; the diffusers repackaging's exact
names (assumed stock ``WanTransformer3DModel``). No published causal 14B ``.pt`` was found (the 14B
Self-Forcing-Plus release, lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill, is bidirectional).

Safety and integrity
--------------------
Pickles are only read with ``torch.load(weights_only=True)``, and not at all with torch < 2.6, whose
``weights_only`` loader can be made to run code (CVE-2025-32434). A file that needs arbitrary
unpickling is refused. Zip-format pickles are checked member by member against their CRC-32
(torch does not check it), streaming; legacy (non-zip) pickles and safetensors carry no checksum.
Weights must be finite, dense, floating point; LoRA factors, ranks and alphas likewise.

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

Tensors are streamed one at a time (bounded memory for 14B) into a temporary file next to the
output, created with the user's umask, fsynced and renamed into place; on any error the temporary
file is removed and nothing is left behind. Everything that can be checked from file headers
(arguments, output path, geometry, LoRA, free disk space) is checked before the long pass.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import secrets
import shutil
import struct
import sys
import warnings
import zipfile
from typing import Any, Callable, Mapping, NamedTuple

import torch

from .wan_model import WanConfig, WanModel

__all__ = [
    "ConversionError",
    "UsageError",
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
SAFETENSORS_EXTS = (".safetensors", ".sft")
MODEL_EXTS = SAFETENSORS_EXTS + (".pt", ".pth", ".ckpt", ".bin")
DROPPED_BUFFERS = ("freqs",)  # RoPE table some Wan forks register as a buffer; recomputed at run time
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16) + FP8
SUPPORTED = "Wan2.1 text-to-video transformers with 16 latent channels and patch (1, 2, 2) (1.3B, 14B)"
_SHARD_RE = re.compile(r"-\d+-of-\d+\.safetensors$")


class ConversionError(ValueError):
    """A checkpoint could not be converted; the message says which file and why."""


class UsageError(ConversionError):
    """An argument does not make sense (bad number, output path, flag for this input); CLI exit 2."""


# ---------------------------------------------------------------------------------------- helpers


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _all_finite(t: torch.Tensor) -> bool:
    """NaN / inf check via min/max (NaN propagates; ~20x faster than isfinite().all())."""
    if t.numel() == 0:
        return True
    if t.dtype in FP8:
        t = t.float()
    lo, hi = torch.aminmax(t)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def _not_finite(source: str, what: str, t: torch.Tensor) -> ConversionError:
    bad = int((~torch.isfinite(t.float())).sum())
    return ConversionError(f"{source}: {what} holds {bad} NaN / infinite value(s) of {t.numel()}; "
                           f"the file is damaged or the run diverged")


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress(total: int, desc: str, enabled: bool | None):
    """A tqdm byte counter on stderr when tqdm is importable and ``enabled`` (None: stderr is a TTY)."""
    if enabled is None:
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
    return _NoBar()


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _describe_keys(obj: Any, n: int = 8) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
        return ", ".join(repr(k) for k in keys[:n]) + more
    return type(obj).__name__


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# ---------------------------------------------------------------------------------------- reading


class _Input(NamedTuple):
    """A resolved input: kind 'pickle' | 'safetensors' | 'sharded'; path (file or index json);
    files: every file that will be read."""
    kind: str
    path: str
    files: list


def _pickle_loading_is_safe() -> bool:
    """torch >= 2.6 (release): earlier weights_only loaders can be bypassed (CVE-2025-32434)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(\.?[A-Za-z]*)", str(torch.__version__))
    if not m:
        return False
    ver = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    return ver > (2, 6, 0) or (ver == (2, 6, 0) and not m.group(4))  # 2.6.0a0 / rc / dev: may predate the fix


def _sniff(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip format / legacy pickle protocol >= 2
        return "pickle"
    if head[:4] == b"GGUF":
        raise ConversionError(f"{path}: GGUF files are not supported; convert from the original .safetensors "
                              f"or .pt checkpoint")
    if path.lower().endswith(SAFETENSORS_EXTS):
        return "safetensors"  # let the reader say what is wrong with it
    raise ConversionError(f"{path}: could not be read: neither a PyTorch checkpoint (.pt/.pth) nor a "
                          f".safetensors file")


def _read_index(path: str) -> dict:
    """The ``weight_map`` {tensor name: shard file name} of a sharded-safetensors index json."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: could not be read as a safetensors index json ({exc})") from None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise ConversionError(f"{path}: not a safetensors index: expected a 'weight_map' of tensor names to "
                              f"shard files")
    odd = sorted({v for v in wmap.values() if os.path.basename(v) != v or v in (".", "..")})
    if odd:
        raise ConversionError(f"{path}: shard names must be plain file names next to the index, got {odd[:3]}")
    return wmap


def _candidates(folder: str) -> list[str]:
    names = sorted(os.listdir(folder))
    found = [os.path.join(folder, n) for n in names if n.endswith(".safetensors.index.json")]
    found += [os.path.join(folder, n) for n in names if n.lower().endswith(MODEL_EXTS) and not _SHARD_RE.search(n)
              and os.path.isfile(os.path.join(folder, n))]
    return found


def _resolve_input(path: str) -> _Input:
    """File, index json or folder -> _Input. A folder must hold exactly one model (an index counts as
    one); a repo folder is also searched in ``transformer/``."""
    if os.path.isdir(path):
        found = _candidates(path)
        sub = os.path.join(path, "transformer")
        if os.path.isdir(sub):
            found += [c for c in _candidates(sub) if c.endswith(".index.json")]
        if len(found) != 1:
            listed = ", ".join(os.path.relpath(c, path) for c in found) or "none"
            raise ConversionError(f"{path}: expected a folder holding one checkpoint (a .safetensors / .pt file or "
                                  f"a sharded *.safetensors.index.json), found {listed}; pass one of them")
        path = found[0]
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if path.endswith(".json"):
        folder = os.path.dirname(path)
        shards = sorted(set(_read_index(path).values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise ConversionError(f"{path}: {len(missing)} of {len(shards)} shards are missing next to the index: "
                                  f"{', '.join(missing[:4])} (incomplete download?)")
        return _Input("sharded", path, [path] + [os.path.join(folder, s) for s in shards])
    return _Input(_sniff(path), path, [path])


def _check_zip_crc(path: str, want: Callable[[str], bool] = lambda name: True, progress: bool | None = False):
    """Read the chosen members of a zip-format .pt to their end, 1 MiB at a time: zipfile verifies
    each member's CRC-32 as it streams (torch.load does not)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if want(i.filename)]
            with _progress(sum(i.file_size for i in infos), "checking " + os.path.basename(path), progress) as bar:
                for info in infos:
                    with zf.open(info) as member:
                        while chunk := member.read(1 << 20):
                            bar.update(len(chunk))
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ConversionError(f"{path}: corrupt file ({exc}): it was damaged on disk or in transfer; "
                              f"download it again") from None


def _is_data_member(name: str) -> bool:
    return re.search(r"/data/[^/]+$", name) is not None


def _torch_load(path: str) -> Any:
    """torch.load with weights_only=True only (torch >= 2.6), mmap where the format allows; the small
    members (pickle, version) of a zip are CRC-checked first, the tensor data later (the long pass)."""
    if not _pickle_loading_is_safe():
        raise ConversionError(f"{path}: refusing to read a pickle with torch {torch.__version__}: before torch 2.6 "
                              f"torch.load(weights_only=True) can be made to run code (CVE-2025-32434); upgrade "
                              f"torch or convert from a .safetensors file")
    if zipfile.is_zipfile(path):
        _check_zip_crc(path, lambda n: not _is_data_member(n))
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
    """(tensors, metadata); tensors are memory-mapped by safetensors, so this reads only the header."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"{path}: could not be read as a .safetensors file ({exc})") from None
    return sd, metadata


def _read_sharded(index_path: str) -> tuple[dict, dict]:
    """All shards of an index as one dict; every shard must hold exactly the names the index gives it."""
    wmap, folder = _read_index(index_path), os.path.dirname(index_path)
    sd: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    for shard in sorted(set(wmap.values())):
        part, part_meta = _read_safetensors(os.path.join(folder, shard))
        listed = {k for k, v in wmap.items() if v == shard}
        missing, extra = sorted(listed - part.keys()), sorted(part.keys() - listed)
        if missing or extra:
            raise ConversionError(f"{os.path.join(folder, shard)}: does not match {os.path.basename(index_path)}: "
                                  f"{len(missing)} listed tensors missing ({', '.join(missing[:3])}), {len(extra)} "
                                  f"unlisted ({', '.join(extra[:3])}); incomplete or mixed download?")
        sd.update(part)
        meta.update(part_meta)
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                heads = json.load(f).get("num_attention_heads") or None
        except (OSError, ValueError, AttributeError):
            heads = None
        if isinstance(heads, int) and heads > 0:
            meta["_config_num_heads"] = str(heads)
    return sd, meta


def _read_input(inp: _Input) -> tuple[Any, dict]:
    if inp.kind == "sharded":
        return _read_sharded(inp.path)
    if inp.kind == "safetensors":
        return _read_safetensors(inp.path)
    return _torch_load(inp.path), {}


# ------------------------------------------------------------------------------------------ names


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


# diffusers WanTransformer3DModel module -> Wan module (inverse of diffusers' convert_wan_to_diffusers.py)
_DIFFUSERS_TOP = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
                  "condition_embedder.time_embedder.linear_2": "time_embedding.2",
                  "condition_embedder.text_embedder.linear_1": "text_embedding.0",
                  "condition_embedder.text_embedder.linear_2": "text_embedding.2",
                  "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head"}
_DIFFUSERS_BLOCK = {"attn1.to_out.0": "self_attn.o", "attn2.to_out.0": "cross_attn.o",
                    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
                    **{f"attn{i}.{a}": f"{n}.{b}" for i, n in ((1, "self_attn"), (2, "cross_attn"))
                       for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("norm_q", "norm_q"),
                                    ("norm_k", "norm_k"))}}


def _is_diffusers_naming(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k or k.endswith("scale_shift_table")
               for k in keys)


def _diffusers_to_wan(name: str) -> str:
    """``blocks.3.attn1.to_q.weight`` -> ``blocks.3.self_attn.q.weight`` etc.; unknown names unchanged."""
    if name == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if m:
        if m.group(2) == "scale_shift_table":
            return f"blocks.{m.group(1)}.modulation"
        mod, _, leaf = m.group(2).rpartition(".")
        return f"blocks.{m.group(1)}.{_DIFFUSERS_BLOCK[mod]}.{leaf}" if mod in _DIFFUSERS_BLOCK else name
    mod, _, leaf = name.rpartition(".")
    return f"{_DIFFUSERS_TOP[mod]}.{leaf}" if mod in _DIFFUSERS_TOP else name


def _normalize_wan_keys(sd: Mapping[str, torch.Tensor], path: str) -> tuple[dict, dict]:
    """Strip wrappers / prefixes (and map diffusers names) so names become plain Wan names.
    Returns (sd, notes)."""
    notes: dict[str, Any] = {}
    keys = list(sd.keys())
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        dropped = [k for k in keys if not k.startswith(COMFY_PREFIX)]
        if dropped:
            notes["dropped_non_diffusion_keys"] = len(dropped)
        keys = [k for k in keys if k.startswith(COMFY_PREFIX)]
    removed: set[str] = set()
    stripped = {k: _strip_name(k, removed) for k in keys}
    diffusers = _is_diffusers_naming(stripped.values())
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, new in stripped.items():
        new = _diffusers_to_wan(new) if diffusers else new
        if new in DROPPED_BUFFERS:
            notes.setdefault("dropped_buffers", []).append(k)
            continue
        if new in out:
            raise ConversionError(f"{path}: keys {origin[new]!r} and {k!r} both map to the Wan name {new!r}; "
                                  "the file holds two copies of the model")
        out[new] = sd[k]
        origin[new] = k
    notes["stripped"] = sorted(removed)
    notes["naming"] = "diffusers" if diffusers else "wan"
    return out, notes


# ----------------------------------------------------------------------------------- quantization


class _Quant(NamedTuple):
    scale: torch.Tensor  # float32, numel 1 or broadcastable to the weight
    kind: str            # 'comfy_scaled_fp8' | 'comfy_quant'


def _comfy_quant_format(v: torch.Tensor) -> str | None:
    try:
        return json.loads(bytes(v.to(torch.uint8).tolist()).decode("utf-8")).get("format")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def _split_quantization(sd: dict, meta: Mapping[str, str], source: str) -> tuple[dict, dict[str, _Quant]]:
    """Take ComfyUI's fp8 scale entries out of ``sd``. Returns (weights, {weight name: _Quant}).

    Old format: ``scaled_fp8`` marker + ``<layer>.scale_weight`` [+ ``.scale_input``]. New format:
    ``<layer>.comfy_quant`` (JSON bytes) or metadata ``_quantization_metadata`` + ``<layer>.weight_scale``
    [+ ``.input_scale``]; its fp8 weights may be stored as uint8 (viewed as the format's dtype)."""
    formats: dict[str, str] = {}
    if "_quantization_metadata" in meta:
        try:
            layers = json.loads(meta["_quantization_metadata"]).get("layers", {})
            formats.update({_strip_name(k): v.get("format") for k, v in layers.items() if isinstance(v, dict)})
        except (ValueError, AttributeError):
            raise ConversionError(f"{source}: unreadable _quantization_metadata entry") from None
    out, scales = {}, {}
    for k, v in sd.items():
        layer, _, leaf = k.rpartition(".")
        if k == "scaled_fp8" or leaf in ("scale_input", "input_scale"):
            continue  # a marker / activation scales: not needed to rebuild the weights
        if leaf == "comfy_quant":
            formats[layer] = _comfy_quant_format(v)
        elif leaf in ("scale_weight", "weight_scale"):
            kind = "comfy_scaled_fp8" if leaf == "scale_weight" else "comfy_quant"
            scales[f"{layer}.weight"] = (v, kind)
        else:
            out[k] = v
    quant: dict[str, _Quant] = {}
    for layer, fmt in formats.items():
        if fmt not in ("float8_e4m3fn", "float8_e5m2"):
            raise ConversionError(f"{source}: layer {layer!r} uses ComfyUI quantization format {fmt!r}, which this "
                                  f"converter cannot dequantize (supported: float8_e4m3fn, float8_e5m2 with a "
                                  f"weight_scale); convert from a bf16 / fp16 / fp32 or fp8 checkpoint")
        w = out.get(f"{layer}.weight")
        if w is not None and w.dtype == torch.uint8:
            out[f"{layer}.weight"] = w.view(getattr(torch, fmt))
    for wkey, (s, kind) in scales.items():
        w = out.get(wkey)
        if w is None:
            raise ConversionError(f"{source}: scale for {wkey!r} but no such weight")
        if not s.is_floating_point() or s.layout != torch.strided or not _all_finite(s):
            raise ConversionError(f"{source}: the fp8 scale of {wkey!r} is not a finite float tensor")
        s = s.float()
        if s.numel() != 1 and (s.ndim != w.ndim or any(a not in (1, b) for a, b in zip(s.shape, w.shape))):
            raise ConversionError(f"{source}: the fp8 scale of {wkey!r} has shape {tuple(s.shape)}, which does not "
                                  f"broadcast to the weight {tuple(w.shape)}")
        quant[wkey] = _Quant(s.reshape(()) if s.numel() == 1 else s, kind)
    return out, quant


def _dequantize(t: torch.Tensor, q: _Quant | None) -> torch.Tensor:
    """fp8 * scale in float32 (what ComfyUI's scaled ops compute); unscaled tensors unchanged."""
    return t if q is None else t.float() * q.scale


# ------------------------------------------------------------------------------------- validation

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


def _check_variant(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse, by name, Wan variants whose parameters look like T2V's but mean something else."""
    pe = sd.get("patch_embedding.weight")
    i2v = "img_emb.proj.0.weight" in sd or any(".k_img." in k or ".add_k_proj." in k for k in sd)
    in_dim = int(pe.shape[1]) if pe is not None and pe.ndim == 5 else None
    if i2v or in_dim == 36:
        raise ConversionError(f"{source}: an image-to-video (I2V / FLF2V) Wan model is not supported (it has "
                              f"img_emb / k_img parameters or 36 input channels: latent + mask + image; this one "
                              f"has {in_dim}); supported: {SUPPORTED}")
    if any(k.startswith(("vace_blocks.", "vace_patch_embedding")) for k in sd):
        raise ConversionError(f"{source}: a VACE Wan model is not supported; supported: {SUPPORTED}")
    if pe is None or "head.head.weight" not in sd:
        return  # the name check reports it
    patch = tuple(int(s) for s in pe.shape[2:])
    out_dim = int(sd["head.head.weight"].shape[0]) // max(1, math.prod(patch))
    if pe.ndim != 5 or patch != (1, 2, 2) or in_dim != 16 or out_dim != 16:
        hint = " (Wan2.2 TI2V-5B, which uses the 48-channel Wan2.2 VAE)" if in_dim == 48 else ""
        raise ConversionError(f"{source}: a Wan model with {in_dim} input / {out_dim} output latent channels and "
                              f"patch {patch}{hint} is not supported; supported: {SUPPORTED}")


def _check_tensor_kinds(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Dense floating-point tensors of a dtype we can convert; names the first offender."""
    for k, v in sd.items():
        if v.layout != torch.strided or v.is_quantized:
            kind = "a quantized" if v.is_quantized else f"a {str(v.layout).replace('torch.', '')}"
            raise ConversionError(f"{source}: {k} is {kind} tensor; Wan weights must be dense (strided) tensors")
        if v.dtype not in WEIGHT_DTYPES:
            raise ConversionError(f"{source}: {k} has dtype {str(v.dtype).replace('torch.', '')}; supported weight "
                                  f"dtypes: float32, float16, bfloat16, float64, float8_e4m3fn, float8_e5m2 (also "
                                  f"ComfyUI scaled fp8)")


def _config_from(sd: Mapping[str, torch.Tensor], source: str, num_heads: int | None) -> WanConfig:
    dim = int(sd["head.modulation"].shape[-1])
    if num_heads is not None and (dim % num_heads or (dim // num_heads) % 2):
        raise UsageError(f"{source}: --num-heads {num_heads} does not split dim {dim} into heads of an even "
                         f"size (Wan uses head size 128: {dim // 128 or 'no'} heads for dim {dim})")
    try:
        return WanConfig.from_state_dict(sd, num_heads=num_heads)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConversionError(f"{source}: Wan geometry could not be derived: {exc}") from None


def validate_wan_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint",
                            num_heads: int | None = None) -> WanConfig:
    """Check ``sd`` holds exactly a supported Wan2.1 T2V transformer with plain names. Returns its config.

    Checks names, variant (I2V, Wan2.2 5B, VACE), tensor kinds (dense, floating dtypes), heads and
    shapes, from metadata only (no tensor data is read). Raises :class:`ConversionError` naming
    ``source``, what was expected and what is missing, unexpected or of the wrong shape."""
    expected_hint = ("a Wan2.1 text-to-video diffusion transformer (parameters patch_embedding.weight, "
                     "text_embedding.0.weight, time_embedding.0.weight, blocks.N.self_attn.q.weight, ..., "
                     "head.head.weight, head.modulation)")
    shard_hint = (" (this looks like one shard of a sharded checkpoint: pass its .index.json or its folder)"
                  if _SHARD_RE.search(source) else "")
    if not _is_tensor_dict(sd):
        raise ConversionError(f"{source}: expected a state dict of tensors holding {expected_hint}; "
                              f"got {_describe_keys(sd)}")
    _check_variant(sd, source)
    if "head.modulation" not in sd or "patch_embedding.weight" not in sd:
        raise ConversionError(f"{source}: not a Wan model{shard_hint}: expected {expected_hint}, but "
                              f"'head.modulation' / 'patch_embedding.weight' are missing. Keys found: "
                              f"{_describe_keys(sd)}")
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
        per_block: dict[str, list[int]] = {}
        for k in missing:
            m = _BLOCK_RE.match(k)
            per_block.setdefault(m.group(2) if m else k, []).append(int(m.group(1)) if m else -1)
        detail = "; ".join(
            f"{name}" + (f" (blocks {_ranges(ids)})" if ids[0] >= 0 else "")
            for name, ids in list(per_block.items())[:12])
        problems.append(f"{len(missing)} Wan parameters missing{shard_hint}: {detail}")
    if unexpected:
        problems.append(f"{len(unexpected)} parameters a Wan2.1 T2V transformer does not have "
                        f"(image-to-video, VACE, camera and other variants are not supported): "
                        f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise ConversionError(f"{source}: not a complete Wan2.1 T2V model: " + ". ".join(problems))
    _check_tensor_kinds(sd, source)
    cfg = _config_from(sd, source, num_heads)
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


# ------------------------------------------------------------------------------------- base model


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


# ------------------------------------------------------------------------------------------- LoRA

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
    file states them; both checked to be finite and positive)."""
    path = os.fspath(path)
    inp = _resolve_input(path)
    if inp.kind == "pickle" and zipfile.is_zipfile(inp.path):
        _check_zip_crc(inp.path)
    obj, st_meta = _read_input(inp)
    info: dict[str, Any] = {"path": path, "alpha": None, "rank": None, "source_key": None}
    if inp.kind != "pickle":
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
            raise UsageError(f"{path}: is a full model checkpoint, not a LoRA; pass it as INPUT instead")
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
    for name in ("alpha", "rank"):
        v = info[name]
        if v is not None and (not _finite_positive(v) or (name == "rank" and v != int(v))):
            raise ConversionError(f"{path}: the file states LoRA {name} = {v:g}; it must be a finite positive "
                                  f"{'integer' if name == 'rank' else 'number'}")
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


def _check_factor(mod: str, part: str, t: torch.Tensor) -> None:
    if t.layout != torch.strided or not t.is_floating_point() or t.dtype in FP8:
        raise ConversionError(f"LoRA {mod}: lora_{part} must be a dense float32 / float16 / bfloat16 tensor, got "
                              f"{str(t.dtype).replace('torch.', '')} ({str(t.layout).replace('torch.', '')})")
    if not _all_finite(t):
        raise _not_finite("LoRA", f"{mod} lora_{part}", t)


def _lora_plan(shapes: Mapping[str, torch.Size], lora_sd: Mapping[str, torch.Tensor], alpha: float | None = None,
               rank: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Check a LoRA against base weight shapes. Returns {weight name: (A [r, in], B [out, r], scale)}."""
    groups, unknown = _group_lora(lora_sd)
    if unknown:
        raise ConversionError(f"LoRA has {len(unknown)} entries that are not LoRA matrices: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    incomplete = [m for m, g in groups.items() if g["A"] is None or g["B"] is None]
    if incomplete:
        raise ConversionError(f"LoRA modules without both lora_A and lora_B: {', '.join(incomplete[:5])}")
    unmatched = [m for m in groups if f"{m}.weight" not in shapes]
    if unmatched:
        raise ConversionError(
            f"{len(unmatched)} of {len(groups)} LoRA modules match no weight of the base model, e.g. "
            f"{', '.join(repr(m + '.weight') for m in unmatched[:5])} (from keys like "
            f"{groups[unmatched[0]]['keys'][0]!r}); is this LoRA for this model?")
    plan = {}
    for mod, g in sorted(groups.items()):
        shape = tuple(shapes[f"{mod}.weight"])
        A, B = g["A"], g["B"]
        if A.ndim != 2 or B.ndim != 2:
            raise ConversionError(f"LoRA {mod}: only Linear LoRA (2-D lora_A / lora_B) is supported, "
                                  f"got shapes {tuple(A.shape)} / {tuple(B.shape)}")
        r = A.shape[0]
        if r == 0:
            raise ConversionError(f"LoRA {mod}: rank 0 (lora_A has no rows)")
        if B.shape[1] != r or (B.shape[0], A.shape[1]) != shape:
            raise ConversionError(f"LoRA {mod}: lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} does not fit "
                                  f"the base weight {shape}")
        if rank is not None and int(rank) != r:
            raise ConversionError(f"LoRA {mod}: rank given as {rank} but lora_A has {r} rows")
        a = g["alpha"] if g["alpha"] is not None else (alpha if alpha is not None else r)
        if not _finite_positive(a):
            raise ConversionError(f"LoRA {mod}: alpha = {a} must be a finite positive number")
        _check_factor(mod, "A", A)
        _check_factor(mod, "B", B)
        plan[f"{mod}.weight"] = (A, B, float(a) / r)
    return plan


def _apply_lora(w: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in float32 (float64 for float64 weights); returns the compute dtype."""
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    return w.to(cdt) + (B.to(cdt) @ A.to(cdt)) * scale


def merge_lora(sd: dict, lora_sd: Mapping[str, torch.Tensor], alpha: float | None = None,
               rank: int | None = None) -> dict:
    """Merge a LoRA into Wan state dict ``sd`` in place (and return it): W += (alpha/rank) * B @ A.

    ``lora_sd`` may use PEFT names (``base_model.model.blocks.0.self_attn.q.lora_A.weight``,
    optionally with the ``.default`` adapter segment), LongLive/Self-Forcing wrapper prefixes, or
    kohya ``lora_down`` / ``lora_up`` (+ ``.alpha``). ``rank`` defaults to each module's
    ``lora_A`` row count (an explicit value must agree with it); ``alpha`` defaults to a per-module
    ``.alpha`` entry, else to the rank. Any LoRA entry that matches no base weight is an error, and
    so are rank 0, non-finite factors and an alpha that is not a finite positive number."""
    for key, (A, B, scale) in _lora_plan({k: v.shape for k, v in sd.items()}, lora_sd, alpha, rank).items():
        sd[key] = _apply_lora(sd[key], A, B, scale).to(sd[key].dtype)
    return sd


# ---------------------------------------------------------------------------------------- writing

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_WRITE_CHUNK = 64 << 20


class _Spec(NamedTuple):
    name: str
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _header(specs: list[_Spec], metadata: Mapping[str, str]) -> bytes:
    """8-byte little-endian length + JSON header (space-padded to 8 bytes), tensors back to back."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": _ST_DTYPES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.write(fd, view[:_WRITE_CHUNK])
        view = view[n:]


def _tensor_bytes(t: torch.Tensor):
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _create_temp(dst: str) -> tuple[str, int]:
    """A new file next to ``dst``, mode 0666 & ~umask (not mkstemp's 0600)."""
    folder, base = os.path.split(os.path.abspath(dst))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_safetensors(dst: str, specs: list[_Spec], produce: Callable[[str], torch.Tensor],
                       metadata: Mapping[str, str], progress: bool | None = None) -> None:
    """Stream ``produce(name)`` (a tensor of that spec's shape and dtype) for every spec into ``dst``.

    Largest elements first, so every tensor starts aligned to its element size. The temporary file is
    fsynced, its header re-read, then renamed over ``dst``; on any error it is removed."""
    if sys.byteorder != "little":
        raise ConversionError("writing .safetensors needs a little-endian machine")
    specs = sorted(specs, key=lambda s: (-s.dtype.itemsize, s.name))
    tmp, fd = _create_temp(dst)
    try:
        with _progress(sum(s.nbytes for s in specs), "writing " + os.path.basename(dst), progress) as bar:
            _write_all(fd, _header(specs, metadata))
            for s in specs:
                t = produce(s.name)
                if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                    raise RuntimeError(f"internal error: {s.name} came out {t.dtype} {tuple(t.shape)}, planned "
                                       f"{s.dtype} {s.shape}")
                _write_all(fd, _tensor_bytes(t))
                bar.update(s.nbytes)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        written, meta = _read_safetensors(tmp)
        if set(written) != {s.name for s in specs} or meta != dict(metadata):
            raise RuntimeError(f"internal error: {tmp} does not read back as written")
        del written
        os.replace(tmp, dst)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))


# ---------------------------------------------------------------------------------------- convert


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


# -------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dummy_forcing_core.convert",
        description="Convert a Self Forcing / Causal Forcing / CausVid / LongLive / Krea Realtime checkpoint "
                    "(optionally with a LongLive LoRA merged in) into one .safetensors that ComfyUI's 'Load "
                    "Diffusion Model' loads.")
    p.add_argument("input", help="training checkpoint (.pt/.pth), state dict, Wan .safetensors, sharded "
                                 "*.safetensors.index.json, or a folder holding one of them")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (shown on a terminal with tqdm)")
    return p


def _fail(message: Any, code: int) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """The command. Exit codes: 0 done, 2 bad arguments, 1 unreadable / unsupported input or I/O
    error, 130 interrupted. Errors are one ``error: ...`` line on stderr, never a traceback."""
    try:
        args = _build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc, 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = convert_checkpoint(args.input, args.output, lora=args.lora, key=args.key,
                                      chunk_frames=args.chunk_frames, dtype=args.dtype, num_heads=args.num_heads,
                                      lora_alpha=args.lora_alpha, lora_rank=args.lora_rank,
                                      comfy_causal_ar=not args.no_causal_ar_flag,
                                      progress=False if args.no_progress else None)
    except UsageError as exc:
        return _fail(exc, 2)
    except ConversionError as exc:
        return _fail(exc, 1)
    except OSError as exc:
        return _fail(f"{exc.filename or args.output}: {exc.strerror or exc}; no output was written", 1)
    except MemoryError:
        return _fail("out of memory; close other programs or convert on a machine with more RAM", 1)
    except KeyboardInterrupt:
        return _fail("interrupted; no output was written", 130)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, with what it was
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
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
