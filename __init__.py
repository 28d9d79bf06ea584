"""ComfyUI Dummy Forcing: faster, lighter autoregressive (chunk-by-chunk) Wan2.1 video generation
with per-head KV caching, as ComfyUI nodes (V3 schema API).

ComfyUI loads this file as the pack's module and awaits ``comfy_entrypoint()``. The pack's
folder is appended to ``sys.path`` so that the plain-PyTorch core is imported once, under its
own name (``dummy_forcing_core``), by ComfyUI, by the node tests and by the core tests alike.
``nodes/`` is imported relatively: ComfyUI has a top-level module of that name.
No NODE_CLASS_MAPPINGS here on purpose: it would make ComfyUI skip comfy_entrypoint.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import DummyForcingExtension, comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "DummyForcingExtension", "WEB_DIRECTORY"]
