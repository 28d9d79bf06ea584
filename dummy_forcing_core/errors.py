"""The one error type the core raises for settings that do not fit the model or the video.

A :class:`SettingError` says whose setting it is (``owner``) and which (``name``), so an
adapter can name the node and widget that show it: the core's setting names are the node
widgets' names. It is a ``ValueError``, so callers that catch those keep working.

A message that points at *other* settings (e.g. Apply Dummy Forcing's ``sink_frames`` against
the base cache's ``window_frames``) names them as ``{fields}`` of a template, each mapped to
its (owner, name) in ``refs``; ``{setting}`` is the error's own. ``str(e)`` shows them in the
core's words; :meth:`SettingError.render` lets an adapter say which node shows each one, so
no adapter edits message text.

Owners: ``"dummy_forcing"`` (Apply Dummy Forcing), ``"cache"`` (the base cache: AR Video
Sampler's cache widgets or AR Cache Policy), ``"sampler"`` (AR Video Sampler's schedule and
chunking), ``"profiling"`` (Profile Heads), ``"input"`` (a latent, conditioning or tensor input).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["SettingError", "check_finite", "model_not_finite"]

OWNER_WORDS = {"dummy_forcing": "Dummy Forcing", "cache": "the base cache", "sampler": "the sampler",
               "profiling": "profiling", "input": "the input"}

Label = Callable[[str, str], str]  # (owner, name) -> how a message names that setting


class SettingError(ValueError):
    def __init__(self, owner: str, name: str, message: str, refs: dict[str, tuple[str, str]] | None = None):
        self.owner = owner
        self.name = name
        self.template = message
        self.refs = None if refs is None else {"setting": (owner, name), **refs}
        super().__init__(self.render())

    def __reduce__(self):  # picklable (e.g. across processes), refs and all
        refs = None if self.refs is None else {k: v for k, v in self.refs.items() if k != "setting"}
        return type(self), (self.owner, self.name, self.template, refs)

    def render(self, label: Label | None = None) -> str:
        """The message with every referenced setting named by ``label(owner, name)`` (default:
        ``'name'`` for this error's owner, ``<owner>'s 'name'`` for another's)."""
        if self.refs is None:
            return self.template
        label = label or self._core_label
        return self.template.format(**{k: label(o, n) for k, (o, n) in self.refs.items()})

    def _core_label(self, owner: str, name: str) -> str:
        return f"'{name}'" if owner == self.owner else f"{OWNER_WORDS.get(owner, owner)}'s '{name}'"


def check_finite(value, owner: str, name: str) -> None:
    """Refuse NaN / inf in a number or a tensor (a NaN input gives an all-NaN video)."""
    if torch.is_tensor(value):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SettingError(owner, name, f"'{name}' holds NaN or infinite values; check what produced it")
    elif isinstance(value, float) and not math.isfinite(value):
        raise SettingError(owner, name, f"'{name}' = {value} is not a finite number")


def model_not_finite(where: str = "") -> SettingError:
    """The model made NaN / inf from finite inputs (``where``: e.g. " while profiling ...")."""
    return SettingError("input", "model", f"the model produced NaN or infinite values{where}: its weights may be "
                        "damaged (a broken or wrongly converted file), or the compute dtype overflows (fp16: try bf16)")
