"""A prompt schedule: the prompts of a long video and the latent frame where each one starts.

At a switch the sampler swaps the text K/V and (``recache``, LongLive's KV re-cache) recomputes
the K/V of the frames the cache still holds under the new prompt, so the next chunk follows it
without a seam (``VideoSession.switch_prompt``). A prompt asked to start at latent frame ``f``
is used from the generated chunk that holds ``f``: chunks are generated whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .chunk_plan import ChunkPlan
from .errors import SettingError

__all__ = ["PromptSchedule", "PromptSwitch", "latent_frame_of", "VIDEO_FPS"]

VIDEO_FPS = 16  # Wan2.1 video frames per second; 4 video frames per latent frame after the first


def latent_frame_of(seconds: float, fps: int = VIDEO_FPS) -> int:
    """The latent frame holding the video frame at ``seconds`` (Wan VAE: latent frame 0 is video
    frame 0, latent frame k >= 1 holds video frames 4k - 3 .. 4k)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise SettingError("input", "start", f"'start' = {seconds} seconds must be a number >= 0")
    return (round(seconds * fps) + 3) // 4


@dataclass(frozen=True)
class PromptSwitch:
    frame: int              # the latent frame the prompt was asked to start at
    chunk: int              # the generated chunk it is used from
    context: torch.Tensor   # [1 or B, L_text, text_dim]


@dataclass
class PromptSchedule:
    """``entries``: (start latent frame, text context [1 or B, L_text, text_dim]) in order; the
    first starts at frame 0. Errors name the conditioning input (``name``)."""

    entries: list[tuple[int, torch.Tensor]]
    name: str = "positive"

    def __post_init__(self):
        if not self.entries:
            raise SettingError("input", self.name, f"the '{self.name}' input holds no prompt")
        starts = [int(f) for f, _ in self.entries]
        if min(starts) < 0:
            raise SettingError("input", self.name, f"a prompt of '{self.name}' starts at latent frame {min(starts)}: "
                               "frames are numbered from 0")
        if starts[0] != 0:
            raise SettingError("input", self.name, f"the first prompt of '{self.name}' starts at latent frame "
                               f"{starts[0]}: nothing says what frames 0..{starts[0] - 1} show; give the first prompt "
                               "no start (or start 0)")
        for a, b in zip(starts, starts[1:]):
            if b == a:
                raise SettingError("input", self.name, f"two prompts of '{self.name}' start at latent frame {a}: give "
                                   "each prompt its own start")
            if b < a:
                raise SettingError("input", self.name, f"the prompts of '{self.name}' start at latent frames {starts}: "
                                   "out of order; combine them in the order they play (Conditioning Combine keeps "
                                   "its inputs' order)")

    @classmethod
    def of(cls, context) -> "PromptSchedule":
        """A schedule as is, or one prompt for the whole video."""
        return context if isinstance(context, PromptSchedule) else cls([(0, context)])

    @property
    def first(self) -> torch.Tensor:
        return self.entries[0][1]

    def switches(self, plan: ChunkPlan) -> list[PromptSwitch]:
        """Where the later prompts come in, as chunks of ``plan``; refuses switches beyond the
        video, inside given start frames, or two in one chunk."""
        out = []
        for frame, ctx in self.entries[1:]:
            if frame >= plan.total_frames:
                raise SettingError("input", self.name, f"a prompt of '{self.name}' starts at latent frame {frame}, "
                                   f"beyond the video ({plan.total_frames} latent frames, 0..{plan.total_frames - 1})")
            if frame < plan.start_frames:
                raise SettingError("input", self.name, f"a prompt of '{self.name}' starts at latent frame {frame}, "
                                   f"inside the {plan.start_frames} given start frames; start it at frame "
                                   f"{plan.start_frames} or later")
            chunk = next(i for i, (f0, n) in enumerate(plan.chunks) if f0 <= frame < f0 + n)
            if out and out[-1].chunk == chunk:
                f0, n = plan.chunks[chunk]
                raise SettingError("input", self.name, f"prompts of '{self.name}' start at latent frames "
                                   f"{out[-1].frame} and {frame}, both in the chunk of frames {f0}..{f0 + n - 1}: a "
                                   "chunk is generated with one prompt; start them at least a chunk apart")
            out.append(PromptSwitch(frame, chunk, ctx))
        return out
