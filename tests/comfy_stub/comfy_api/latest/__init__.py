"""Stub of comfy_api/latest/__init__.py (ComfyUI v0.3.64).

Exposes ComfyExtension (async on_load(), abstract async get_node_list() -> list of
io.ComfyNode classes), io (= _io), ui (= _ui) and the comfy_io alias. A pack registers with
``async def comfy_entrypoint() -> ComfyExtension`` (ComfyUI ignores it when the pack's
__init__ also exports NODE_CLASS_MAPPINGS).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """Returns the node classes this extension provides."""


comfy_io = io

__all__ = ["ComfyExtension", "io", "comfy_io", "ui"]
