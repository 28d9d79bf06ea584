"""The ``.safetensors`` writer: tensors streamed one at a time (bounded memory for 14B) into a
temporary file next to the output, created with the user's umask, fsynced, its header read back and
renamed into place; on any error the temporary file is removed and nothing is left behind.

Layout written: 8-byte little-endian header length, JSON header (space-padded to 8 bytes) with
``__metadata__`` and per tensor ``dtype`` / ``shape`` / ``data_offsets``, then the tensors back to
back, largest element size first (so each starts aligned to its element size)."""
from __future__ import annotations

import json
import math
import os
import secrets
import struct
import sys
from typing import Any, Callable, Mapping, NamedTuple

import torch

from .common import ConversionError, _progress
from .reading import _read_safetensors


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
