"""The one error type the core raises for settings that do not fit the model or the video.

A :class:`SettingError` says whose setting it is (``owner``) and which (``name``), so an
adapter can name the node and widget that show it: the core's setting names are the node
widgets' names. It is a ``ValueError``, so callers that catch those keep working.

Owners: ``"dummy_forcing"`` (Apply Dummy Forcing), ``"cache"`` (the base cache: AR Video
Sampler's cache widgets or AR Cache Policy), ``"sampler"`` (AR Video Sampler's schedule and
chunking), ``"profiling"`` (Profile Heads), ``"input"`` (a latent, conditioning or tensor input).
"""
from __future__ import annotations

import math

import torch

__all__ = ["SettingError", "check_finite"]


class SettingError(ValueError):
    def __init__(self, owner: str, name: str, message: str):
        super().__init__(message)
        self.owner = owner
        self.name = name


def check_finite(value, owner: str, name: str) -> None:
    """Refuse NaN / inf in a number or a tensor (a NaN input gives an all-NaN video)."""
    if torch.is_tensor(value):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SettingError(owner, name, f"'{name}' holds NaN or infinite values; check what produced it")
    elif isinstance(value, float) and not math.isfinite(value):
        raise SettingError(owner, name, f"'{name}' = {value} is not a finite number")
