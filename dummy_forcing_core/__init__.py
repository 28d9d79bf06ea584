"""Dummy Forcing core: chunk-by-chunk causal Wan2.1 video generation with per-head KV caching.

Plain PyTorch; never imports ComfyUI. Main entry points::

    from dummy_forcing_core import ChunkRunner, SamplerSettings, CacheSpec, Retention, DummyForcingConfig, generate

    runner = ChunkRunner(wan_model)
    spec = CacheSpec(Retention(3, 12), DummyForcingConfig(dummy_heads=0.5))
    result = generate(runner, text_context, (1, 16, 21, 60, 104), SamplerSettings(), spec)

See docs/DESIGN.md for where each concept lives and the direction of imports.
"""
__version__ = "0.2.0"

from .cache_policy import CacheSpec  # noqa: F401
from .chunk_runner import ChunkRunner  # noqa: F401
from .dummy_forcing import DummyForcingConfig  # noqa: F401
from .errors import SettingError  # noqa: F401
from .geometry import ModelGeometry  # noqa: F401
from .head_profile import HeadProfile, profile_heads  # noqa: F401
from .kv_cache import FULL, KVCache, Retention  # noqa: F401
from .sampler import SamplerSettings, generate  # noqa: F401
from .video_session import VideoSession  # noqa: F401
from .wan_model import WanConfig, WanModel  # noqa: F401
