"""ComfyUI Dummy Forcing: faster, lighter autoregressive (chunk-by-chunk) Wan2.1 video generation
with per-head KV caching, as ComfyUI nodes (V3 schema API).

ComfyUI loads this file as the pack's module and awaits ``comfy_entrypoint()``. The pack's
folder is appended to ``sys.path`` so that the plain-PyTorch core is imported once, under its
own name (``dummy_forcing_core``), by ComfyUI, by the node tests and by the core tests alike.
``nodes/`` is imported relatively: ComfyUI has a top-level module of that name.
No NODE_CLASS_MAPPINGS here on purpose: it would make ComfyUI skip comfy_entrypoint.

Outside ComfyUI (e.g. pytest >= 8 imports this file as the repo root's package before running
the core tests) there is no ``comfy_api`` and nothing is registered.
"""
import importlib.util
import logging
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import DummyForcingExtension, comfy_entrypoint  # noqa: E402,F401

    __all__ = ["comfy_entrypoint", "DummyForcingExtension", "WEB_DIRECTORY"]
else:
    if importlib.util.find_spec("comfy") is not None:  # a ComfyUI too old for V3 nodes
        logging.warning("ComfyUI Dummy Forcing needs a ComfyUI with comfy_api (V3 nodes, v0.3.64 or newer); "
                        "its nodes are not registered")
    __all__ = ["WEB_DIRECTORY"]
