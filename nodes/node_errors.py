"""Errors a ComfyUI user reads: one line naming the node and the widget or input, no reprs.

The core raises :class:`~dummy_forcing_core.errors.SettingError` s that name a setting by
(owner, name); :func:`node_errors` turns them into ``"<node>: <message>"`` where ``<node>`` is
the node that shows the setting (Apply Dummy Forcing's widgets are named as such, also when the
sampler finds them wrong), and every other setting the message points at is named with the node
that shows it. Only those errors are rephrased: any other exception (a bug, ComfyUI's own
errors, out of memory, Cancel) passes unchanged.
"""
from __future__ import annotations

import contextlib

from dummy_forcing_core.errors import SettingError

__all__ = ["NodeError", "node_errors"]

Owners = dict  # owner, or (owner, name) -> the node that shows that setting


class NodeError(ValueError):
    """A ValueError already phrased for the user (names its node)."""

    # ComfyUI shows "<module>.<class>" as the error's type and imports the pack by its folder's
    # path, so this module's own name would be a file path.
    __module__ = "dummy_forcing"


@contextlib.contextmanager
def node_errors(node: str, owners: Owners | None = None):
    """Re-raise SettingErrors as NodeErrors ``"<node>: <message>"``. ``owners`` maps a
    setting's owner, or (owner, name), to the node that shows it (default: ``node``)."""
    try:
        yield
    except SettingError as e:
        table = owners or {}

        def node_of(owner: str, name: str) -> str:
            return table.get((owner, name)) or table.get(owner) or node

        shown = node_of(e.owner, e.name)

        def label(owner: str, name: str) -> str:
            other = node_of(owner, name)
            return f"'{name}'" if other == shown else f"{other}'s '{name}'"

        where = "" if shown == node else f" (found while running {node})"
        raise NodeError(f"{shown}: {e.render(label)}{where}") from e
