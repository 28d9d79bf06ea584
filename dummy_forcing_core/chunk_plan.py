"""How one video is cut into pieces: frames given (encoded into the cache as they are) and
chunks generated one after the other.

Every AR loop (the pack's sampler, ComfyUI's ``sample_ar_video``) and every cache policy
reads the same :class:`ChunkPlan`, so a chunk index means the same thing everywhere: the
index of a *generated* chunk (given frames are not counted).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SettingError

__all__ = ["ChunkPlan", "plan_chunks"]


@dataclass(frozen=True)
class ChunkPlan:
    """shape: the video latent (B, C, F, H, W). chunk_frames: frames per generated chunk.
    given: (first frame, frames) of each given piece, written in order before generation.
    chunks: (first frame, frames) of each generated chunk; a last chunk may be shorter."""

    shape: tuple[int, int, int, int, int]
    chunk_frames: int
    given: tuple[tuple[int, int], ...]
    chunks: tuple[tuple[int, int], ...]

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def total_frames(self) -> int:
        return self.shape[2]

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.shape[3], self.shape[4]

    @property
    def start_frames(self) -> int:
        return sum(n for _, n in self.given)

    @property
    def max_piece(self) -> int:
        """The most frames one pass writes (the cache's scratch)."""
        return max(n for _, n in self.given + self.chunks)

    def history_before(self, chunk: int) -> int:
        """Frames cached when generated chunk ``chunk`` starts."""
        return self.chunks[chunk][0]

    def chunk_at(self, start_frame: int) -> int | None:
        """The generated chunk starting at ``start_frame`` (None for a given piece)."""
        for i, (f0, _) in enumerate(self.chunks):
            if f0 == start_frame:
                return i
        return None


def plan_chunks(shape, chunk_frames: int, start_frames: int = 0, given_in_one_piece: bool = False) -> ChunkPlan:
    """The plan of a video latent ``shape`` (B, C, F, H, W). Its first ``start_frames`` frames
    are given: in chunks of ``chunk_frames`` (the pack's start frames) or as one piece
    (``given_in_one_piece``: ComfyUI's ARVideoI2V start image, as core writes it)."""
    shape = tuple(int(s) for s in shape)
    total = shape[2]
    if chunk_frames < 1:
        raise SettingError("sampler", "frames_per_chunk", f"'frames_per_chunk' must be >= 1, got {chunk_frames}")
    if total < 1:
        raise SettingError("input", "latent", "the latent has no frames")
    if not 0 <= start_frames < total:
        raise SettingError("sampler", "start_frames",
                           f"'start_frames' = {start_frames} does not fit a {total}-frame latent: use 0 to "
                           f"{total - 1} (at least one frame must be left to generate)")
    if given_in_one_piece:
        given = ((0, start_frames),) if start_frames else ()
    else:
        given = tuple((f, min(chunk_frames, start_frames - f)) for f in range(0, start_frames, chunk_frames))
    chunks = tuple((f, min(chunk_frames, total - f)) for f in range(start_frames, total, chunk_frames))
    return ChunkPlan(shape, int(chunk_frames), given, chunks)
