"""Headless stand-in for ComfyUI's ``comfy`` package (see tests/comfy_stub/README.md).

Only the modules a node pack imports exist here. Nothing in this package is ComfyUI code:
it mirrors the public interfaces of ComfyUI v0.3.64 so node tests can run without ComfyUI.
"""

IS_COMFY_STUB = True
