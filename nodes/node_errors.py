"""Errors a ComfyUI user reads: one line naming the node and the widget or input, no reprs.

The core raises :class:`~dummy_forcing_core.errors.SettingError` s that name a setting and its
owner; :func:`node_errors` turns them into ``"<node>: <message>"`` where ``<node>`` is the
node that shows the setting (Apply Dummy Forcing's widgets are named as such, also when the
sampler finds them wrong).
"""
from __future__ import annotations

import contextlib

from dummy_forcing_core.errors import SettingError

__all__ = ["NodeError", "node_errors"]


class NodeError(ValueError):
    """A ValueError already phrased for the user (names its node)."""


@contextlib.contextmanager
def node_errors(node: str, owners: dict[str, str] | None = None, renames: dict[str, str] | None = None):
    """Re-raise ValueErrors as NodeErrors ``"<node>: <message>"``. ``owners`` maps a
    SettingError's owner to the node that shows it (default: ``node``); ``renames`` maps a
    core setting name to the widget name this node uses. Interrupts and other errors pass."""
    try:
        yield
    except NodeError:
        raise
    except ValueError as e:
        msg = str(e)
        owner = node
        if isinstance(e, SettingError):
            owner = (owners or {}).get(e.owner, node)
            for old, new in (renames or {}).items():
                msg = msg.replace(f"'{old}'", f"'{new}'")
        where = "" if owner == node else f" (found while running {node})"
        raise NodeError(f"{owner}: {msg}{where}") from e
