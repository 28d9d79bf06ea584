"""Reading INPUT: a file, a sharded-safetensors index or a folder resolved to the files it names,
then read as (object, metadata) with tensor data left on disk (mmap) where the format allows.

Safety and integrity
--------------------
Pickles are only read with ``torch.load(weights_only=True)``, and not at all with torch < 2.6, whose
``weights_only`` loader can be made to run code (CVE-2025-32434). A file that needs arbitrary
unpickling is refused. Zip-format pickles are checked member by member against their CRC-32
(torch does not check it), streaming; legacy (non-zip) pickles and safetensors carry no checksum.
Weights must be finite, dense, floating point; LoRA factors, ranks and alphas likewise."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Callable, NamedTuple

import torch

from ..bounded_json import loads_bounded
from .common import ConversionError, _progress

SAFETENSORS_EXTS = (".safetensors", ".sft")
MODEL_EXTS = SAFETENSORS_EXTS + (".pt", ".pth", ".ckpt", ".bin")
_SHARD_RE = re.compile(r"-\d+-of-\d+\.safetensors$")


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
            index = loads_bounded(f.read())
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
                parsed = loads_bounded(f.read())
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{config}: could not be read as JSON ({exc}); fix or remove it (the converter "
                                  f"reads only its num_attention_heads)") from None
        heads = (parsed.get("num_attention_heads") or None) if isinstance(parsed, dict) else None
        if isinstance(heads, int) and heads > 0:
            meta["_config_num_heads"] = str(heads)
    return sd, meta


def _read_input(inp: _Input) -> tuple[Any, dict]:
    if inp.kind == "sharded":
        return _read_sharded(inp.path)
    if inp.kind == "safetensors":
        return _read_safetensors(inp.path)
    return _torch_load(inp.path), {}
