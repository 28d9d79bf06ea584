"""Dynamic head programming: which head becomes a sink, neighbor or dummy head.

With frame attention scores ``F_h = (a_sink, a_neighbor, a_current)`` per head, a head
keeps ``a_sink + a_current`` as a sink head, ``a_neighbor + a_current`` as a neighbor head
and ``a_current`` as a dummy head. Maximising the total kept mass with exactly ``N`` dummy
heads is solved greedily (and optimally): ``cost_h = max(a_sink, a_neighbor)`` is what a
head loses by becoming dummy; the ``N`` cheapest heads become dummy, every other head a sink
head if ``a_sink >= a_neighbor`` else a neighbor head. Ties are broken by the flat head index
``layer * H + head`` (lower first), so the result is deterministic.
"""
from __future__ import annotations

import numbers
from enum import IntEnum

import torch

__all__ = ["HeadType", "resolve_dummy_count", "program_heads", "type_counts", "SCOPES"]

SCOPES = ("global", "per_layer")


class HeadType(IntEnum):
    SINK = 0
    NEIGHBOR = 1
    DUMMY = 2


def resolve_dummy_count(value, num_layers: int, num_heads: int) -> int:
    """The ``dummy_heads`` setting as a head count: an int is a count of heads (0..L*H), a
    float a fraction of all heads in [0, 1] (rounded to the nearest count)."""
    total = int(num_layers) * int(num_heads)
    what = f"the model has {num_layers} layers x {num_heads} heads = {total} heads"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"dummy_heads must be a head count (int) or a fraction of all heads (float in [0, 1]), "
                         f"got {value!r}")
    if isinstance(value, numbers.Integral):
        n = int(value)
        if n < 0 or n > total:
            raise ValueError(f"dummy_heads = {n} heads is out of range: {what}; use a count from 0 to {total} "
                             f"or a fraction such as 0.5 (= {total // 2} heads)")
        return n
    f = float(value)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"dummy_heads = {value} is not a fraction in [0, 1]: {what}; use a fraction such as 0.5 "
                         f"or a whole head count (int) from 0 to {total}")
    return min(total, int(f * total + 0.5))


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


def program_heads(scores: torch.Tensor, num_dummy: int, scope: str = "global", normalise: bool = False) -> torch.Tensor:
    """Head types [L, H] (int64, :class:`HeadType` values) from scores [L, H, 3].

    scope ``"global"``: the ``num_dummy`` cheapest heads over all layers x heads.
    scope ``"per_layer"``: each layer gets ``num_dummy // L`` dummy heads (its cheapest); the
    ``num_dummy % L`` remaining ones go, one each, to the layers whose next-cheapest head is
    cheapest. normalise: divide a_sink and a_neighbor by their sums over all heads first
    (the authors' variant); this also drives the sink/neighbor decision.
    """
    if scores.ndim != 3 or scores.shape[-1] != 3:
        raise ValueError(f"scores must be [layers, heads, 3] (sink, neighbor, current), got {tuple(scores.shape)}")
    if scope not in SCOPES:
        raise ValueError(f"head programming scope must be one of {SCOPES}, got {scope!r}")
    L, H = scores.shape[:2]
    if isinstance(num_dummy, bool) or not isinstance(num_dummy, numbers.Integral):
        raise ValueError(f"num_dummy must be a head count (int); use resolve_dummy_count for fractions, "
                         f"got {num_dummy!r}")
    n = int(num_dummy)
    if not 0 <= n <= L * H:
        raise ValueError(f"dummy_heads = {n} is out of range: the model has {L} layers x {H} heads = {L * H} heads; "
                         f"use 0..{L * H}")
    cost, prefers_sink = _costs(scores, normalise)
    assign = torch.where(prefers_sink, int(HeadType.SINK), int(HeadType.NEIGHBOR)).to(torch.long)
    flat_cost = cost.flatten().tolist()
    if scope == "global":
        chosen = _order(flat_cost, list(range(L * H)))[:n]
    else:
        quota, extra = divmod(n, L)
        if quota > H or (quota == H and extra):
            raise ValueError(f"dummy_heads = {n} with scope per_layer needs {quota + (1 if extra else 0)} dummy heads "
                             f"in some layer but a layer has only {H} heads")
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


def type_counts(assign: torch.Tensor) -> list[dict[str, int]]:
    """Per layer: ``{"sink": n, "neighbor": n, "dummy": n}`` of an assignment [L, H]."""
    if assign.ndim != 2:
        raise ValueError(f"head assignment must be [layers, heads], got {tuple(assign.shape)}")
    a = assign.detach().cpu()
    return [{t.name.lower(): int((row == int(t)).sum()) for t in HeadType} for row in a]
