"""The pack's ComfyUI nodes (V3 schema API). Imported relatively by the pack's __init__.py;
the core is imported absolutely as ``dummy_forcing_core``."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import ApplyDummyForcing, ARCachePolicy
from .decode import ARVideoDecode
from .head_profiles import LoadHeadProfile, ProfileHeads
from .prompts import ARPromptStart
from .sampler import ARVideoSampler
from .stats import CacheStats
from .tiny_nodes import TinyDecode, TinyEmptyLatent, TinyModelLoader, TinyTextEncode

NODES = [ARVideoSampler, ApplyDummyForcing, ARCachePolicy, ARPromptStart, ProfileHeads, LoadHeadProfile, CacheStats,
         TinyModelLoader, TinyTextEncode, TinyEmptyLatent, TinyDecode, ARVideoDecode]


class DummyForcingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DummyForcingExtension:
    return DummyForcingExtension()


__all__ = ["NODES", "DummyForcingExtension", "comfy_entrypoint", "ARVideoSampler", "ARVideoDecode", "ApplyDummyForcing",
           "ARCachePolicy", "ARPromptStart", "ProfileHeads", "LoadHeadProfile", "CacheStats", "TinyModelLoader",
           "TinyTextEncode", "TinyEmptyLatent", "TinyDecode"]
