"""Do the processes of a head-parallel run hold the same inputs? One all-gather of small hashes.

Every rank of a head-parallel video must run the same weights, settings, latent and text:
the ranks compute everything but their own heads' attention alike and add their shares up, so
one rank that differs makes a wrong video silently, or a collective that never matches (a hang
until the backend's timeout). :func:`agree` hashes named items on each rank, all-gathers the
hashes ([items] int64 per rank) and, when any differ, gathers their short descriptions and
raises the same :class:`RankMismatch` on every rank, naming each item that differs and its
value per rank.

Hashes are exact: a tensor's bytes are read as integers and summed with position weights in
int64 (wrapping), on the tensor's own device; the same bytes give the same hash on any device
and in any summation order.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ["RankMismatch", "agree", "digest", "describe"]

_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit constant (golden ratio), as a signed int64
_CHUNK = 1 << 24  # words summed per step: bounds the int64 temporaries


class RankMismatch(ValueError):
    """The ranks of a head-parallel run differ in something they must share (raised on every rank)."""


def _blake(*parts) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\0")
    return int.from_bytes(h.digest(), "little", signed=True)


def _tensor_sum(t: torch.Tensor) -> int:
    """sum(word_i * (i * MIX | 1)) mod 2**64 over the tensor's bytes read as int32 / int16 / uint8 words."""
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return 0
    word = torch.int32 if nbytes % 4 == 0 else torch.int16 if nbytes % 2 == 0 else torch.uint8
    words = t.view(torch.uint8).view(word)
    total = torch.zeros((), dtype=torch.int64, device=t.device)
    for a in range(0, words.numel(), _CHUNK):
        w = words[a:a + _CHUNK].to(torch.int64)
        pos = torch.arange(a, a + w.numel(), dtype=torch.int64, device=t.device)
        total += (w * (pos * _MIX | 1)).sum()
    return int(total)


def digest(obj: Any) -> int:
    """A signed 64-bit hash of ``obj``: tensors by dtype, shape and exact contents; modules by their
    state dict; dataclasses, mappings and sequences by their parts; anything else by its repr
    (an address-bearing repr by its type name only)."""
    if isinstance(obj, torch.Tensor):
        return _blake("tensor", str(obj.dtype), tuple(obj.shape), _tensor_sum(obj))
    if isinstance(obj, torch.nn.Module):
        return _blake("module", *[(k, digest(v)) for k, v in obj.state_dict().items()])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _blake(type(obj).__name__, *[(f.name, digest(getattr(obj, f.name))) for f in dataclasses.fields(obj)])
    if isinstance(obj, Mapping):
        return _blake("map", *[(repr(k), digest(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return _blake(type(obj).__name__, *[digest(v) for v in obj])
    text = repr(obj)
    return _blake(type(obj).__name__ if " at 0x" in text else text)


def describe(obj: Any, limit: int = 60) -> str:
    """A few words for an error message: a tensor's shape and dtype, a module's size, else its repr."""
    if isinstance(obj, torch.Tensor):
        return f"tensor {list(obj.shape)} {str(obj.dtype).removeprefix('torch.')}"
    if isinstance(obj, torch.nn.Module):
        sd = obj.state_dict()
        return f"{type(obj).__name__} with {len(sd)} tensors, {sum(v.numel() for v in sd.values())} values"
    text = repr(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _device_for(group) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather(t: torch.Tensor, group) -> torch.Tensor:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.stack(out).cpu()


def agree(items: Mapping[str, Any], what: str, group=None, device=None, hint: str = "") -> None:
    """Raise :class:`RankMismatch` on every rank of ``group`` unless every rank holds equal ``items``
    ({name for a message: value}). ``what`` says what they are ("settings", "latent", ...);
    ``hint``: how to fix it. ``device``: where the hashes travel (default: CUDA for NCCL, else CPU).
    Two all-gathers of [1 + len(items)] int64; a third (descriptions) only on a mismatch."""
    device = device if device is not None and dist.get_backend(group) == "nccl" else _device_for(group)
    names = list(items)
    mine = torch.tensor([_blake(*names)] + [digest(v) for v in items.values()], dtype=torch.int64)
    sizes = _gather(torch.tensor([mine.numel()], dtype=torch.int64, device=device), group)[:, 0]
    if (sizes != sizes[0]).any():
        raise RankMismatch(f"head-parallel: the processes check different {what} (counts {sizes.tolist()}): they run "
                           f"different versions of the code; install the same version everywhere")
    table = _gather(mine.to(device), group)
    if bool((table == table[0]).all()):
        return
    if (table[:, 0] != table[0, 0]).any():
        raise RankMismatch(f"head-parallel: the processes check different {what}: they run different versions of "
                           f"the code; install the same version everywhere")
    every: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, [describe(v) for v in items.values()], group=group)
    parts = []
    for i, name in enumerate(names):
        col = table[:, i + 1]
        odd = [r for r in range(len(every)) if col[r] != col[0]]
        if not odd:
            continue
        shown = [0] + odd[:3]
        values = [every[r][i] for r in shown]
        same_words = len(set(values)) == 1
        listed = ", ".join(f"rank {r}: {v}" for r, v in zip(shown, values)) + (", ..." if len(odd) > 3 else "")
        parts.append(f"{name} ({listed}" + (", different values)" if same_words else ")"))
    raise RankMismatch(f"head-parallel: the {len(every)} processes do not run the same {what}: " + "; ".join(parts)
                       + (f". {hint}" if hint else ""))
