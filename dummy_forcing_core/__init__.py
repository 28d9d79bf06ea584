"""Dummy Forcing core: chunk-by-chunk causal Wan2.1 video generation with per-head KV caching.

Plain PyTorch; never imports ComfyUI. Main entry points::

    from dummy_forcing_core import ChunkRunner, SamplerSettings, Retention, DummyForcingConfig, generate

See docs/DESIGN.md for where each concept lives.
"""
__version__ = "0.1.0"

from .kv_cache import FULL, KVCache, Retention  # noqa: F401
from .transformer import ChunkRunner, ModelGeometry  # noqa: F401
from .sampler import SamplerSettings, generate  # noqa: F401
from .dummy_forcing import DummyForcingConfig, profile_heads  # noqa: F401
from .profile import HeadProfile  # noqa: F401
from .wan_model import WanConfig, WanModel  # noqa: F401
