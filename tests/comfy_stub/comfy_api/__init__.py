"""Stub of ComfyUI's comfy_api package (v0.3.64); only comfy_api.latest is provided."""
