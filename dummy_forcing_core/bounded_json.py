"""JSON read from files (shard indexes, model and head-profile metadata) with a bound on nesting.

A crafted or damaged file can nest arrays 100000 deep: ``json.loads`` then raises a bare
RecursionError, and a result just under the decoder's limit breaks whatever walks it later
(``repr``, ``json.dumps``, ``==``). Real files nest a few levels, so anything deeper than
:data:`MAX_DEPTH` is refused with a ValueError the caller words with the file's name."""
from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "NestingError", "loads_bounded"]

MAX_DEPTH = 32


class NestingError(ValueError):
    """JSON nested deeper than the bound."""


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``; NestingError when objects / arrays nest more than ``max_depth`` deep,
    ValueError (json.JSONDecodeError) for text that is not JSON."""
    too_deep = NestingError(f"JSON nested more than {max_depth} levels deep")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise too_deep from None
    stack = [(obj, 1)]
    while stack:  # iterative: the walk itself must not recurse
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise too_deep
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return obj
