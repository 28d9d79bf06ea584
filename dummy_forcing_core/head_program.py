"""Head types and dynamic head programming: which head becomes a sink, neighbor or dummy head.

With frame attention scores ``F_h = (a_sink, a_neighbor, a_current)`` per head, a head
keeps ``a_sink + a_current`` as a sink head, ``a_neighbor + a_current`` as a neighbor head
and ``a_current`` as a dummy head. Maximising the total kept mass with exactly ``N`` dummy
heads is solved greedily (and optimally): ``cost_h = max(a_sink, a_neighbor)`` is what a
head loses by becoming dummy (the authors, and our default, first divide ``a_sink`` and
``a_neighbor`` by their sums over all heads); the ``N`` cheapest heads become dummy, every other head a sink
head if ``a_sink >= a_neighbor`` else a neighbor head. Ties are broken by the flat head index
``layer * H + head`` (lower first), so the result is deterministic.

This module is the one home of the head-type names (:class:`HeadType`, ``.label``), their
counter (:func:`type_counts`) and the dummy-count check (:func:`resolve_dummy_count`) that
Apply Dummy Forcing and the Dummy Forcing policy both call (through
``DummyForcingConfig.check_model``).
"""
from __future__ import annotations

import math
from enum import IntEnum
from typing import NamedTuple

import torch

from .errors import SettingError

__all__ = ["HeadType", "SCOPES", "TypeCount", "resolve_dummy_count", "program_heads", "type_counts"]

SCOPES = ("global", "per_layer")


class HeadType(IntEnum):
    SINK = 0
    NEIGHBOR = 1
    DUMMY = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class TypeCount(NamedTuple):
    """Heads of each type in one layer."""

    sink: int
    neighbor: int
    dummy: int


def _check_scope(scope: str) -> None:
    # no per-layer quota check is needed: n <= layers x heads means ceil(n / layers) <= heads
    if scope not in SCOPES:
        raise SettingError("dummy_forcing", "scope", f"'scope' must be one of {', '.join(SCOPES)}, got {scope!r}")


def resolve_dummy_count(fraction: float, count: int, num_layers: int, num_heads: int, scope: str = "global") -> int:
    """How many heads become dummy: ``count`` when > 0, else ``fraction`` (in [0, 1]) of all
    ``num_layers x num_heads`` heads, rounded to the nearest count. Checks the range and the
    scope (every count in range fits scope ``per_layer``: ceil(n / layers) <= heads)."""
    total = int(num_layers) * int(num_heads)
    what = f"the model has {num_layers} layers x {num_heads} heads = {total} heads"
    if isinstance(count, bool) or not isinstance(count, int):
        raise SettingError("dummy_forcing", "dummy_head_count", f"'dummy_head_count' must be a whole number, got {count!r}")
    if count < 0 or count > total:
        raise SettingError("dummy_forcing", "dummy_head_count",
                           f"'dummy_head_count' = {count} is out of range: {what}; use 1 to {total}, or 0 to use the "
                           "'dummy_heads' fraction")
    if count > 0:
        n = count
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
                or not 0.0 <= float(fraction) <= 1.0:
            raise SettingError("dummy_forcing", "dummy_heads",
                               f"'dummy_heads' = {fraction!r} is not a fraction in [0, 1]: {what}; use a fraction such "
                               f"as 0.5 (= {total // 2} heads) or set 'dummy_head_count'")
        n = min(total, int(float(fraction) * total + 0.5))
    _check_scope(scope)
    return n


def _costs(scores: torch.Tensor, normalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost [L, H], prefers_sink bool [L, H]) in float64."""
    s = scores.detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError("head scores contain NaN or inf; profile the model again")
    a_sink, a_nb = s[..., 0], s[..., 1]
    if normalise:
        ss, sn = a_sink.sum(), a_nb.sum()
        a_sink = a_sink / ss if ss > 0 else a_sink
        a_nb = a_nb / sn if sn > 0 else a_nb
    return torch.maximum(a_sink, a_nb), a_sink >= a_nb


def _order(costs: list[float], index: list[int]) -> list[int]:
    """Positions of ``costs`` sorted by (cost, flat index)."""
    return sorted(range(len(costs)), key=lambda i: (costs[i], index[i]))


def program_heads(scores: torch.Tensor, num_dummy: int, scope: str = "global", normalise: bool = True) -> torch.Tensor:
    """Head types [L, H] (int64, :class:`HeadType` values) from scores [L, H, 3].

    scope ``"global"``: the ``num_dummy`` cheapest heads over all layers x heads.
    scope ``"per_layer"``: each layer gets ``num_dummy // L`` dummy heads (its cheapest); the
    ``num_dummy % L`` remaining ones go, one each, to the layers whose next-cheapest head is
    cheapest. normalise (default, the authors' rule): divide a_sink and a_neighbor by their
    sums over all heads first; this also drives the sink/neighbor decision. Off: the raw max.
    """
    if scores.ndim != 3 or scores.shape[-1] != 3:
        raise ValueError(f"scores must be [layers, heads, 3] (sink, neighbor, current), got {tuple(scores.shape)}")
    L, H = scores.shape[:2]
    if isinstance(num_dummy, bool) or not isinstance(num_dummy, int) or not 0 <= num_dummy <= L * H:
        raise ValueError(f"num_dummy must be a head count in 0..{L * H} (use resolve_dummy_count), got {num_dummy!r}")
    n = int(num_dummy)
    _check_scope(scope)
    cost, prefers_sink = _costs(scores, normalise)
    assign = torch.where(prefers_sink, int(HeadType.SINK), int(HeadType.NEIGHBOR)).to(torch.long)
    flat_cost = cost.flatten().tolist()
    if scope == "global":
        chosen = _order(flat_cost, list(range(L * H)))[:n]
    else:
        quota, extra = divmod(n, L)
        chosen = []
        candidates = []  # (cost, flat index) of each layer's next-cheapest head
        for layer in range(L):
            idx = list(range(layer * H, (layer + 1) * H))
            order = _order([flat_cost[i] for i in idx], idx)
            chosen += [idx[o] for o in order[:quota]]
            if quota < H:
                nxt = idx[order[quota]]
                candidates.append((flat_cost[nxt], nxt))
        chosen += [i for _, i in sorted(candidates)[:extra]]
    if chosen:
        flat = assign.view(-1)
        flat[torch.tensor(chosen, dtype=torch.long)] = int(HeadType.DUMMY)
    return assign


def type_counts(assign) -> list[TypeCount]:
    """Per layer, the heads of each type in an assignment [L, H] (a tensor or nested lists)."""
    a = torch.as_tensor(assign).detach().cpu()
    if a.ndim != 2:
        raise ValueError(f"head assignment must be [layers, heads], got {tuple(a.shape)}")
    return [TypeCount(*(int((row == int(t)).sum()) for t in HeadType)) for row in a]
