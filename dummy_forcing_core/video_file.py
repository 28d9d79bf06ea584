"""A video file written frame by frame as frames arrive (a :class:`~.pixel_stream.FrameSink`),
so host memory stays flat for any length.

Each video of the batch goes to its own file. Frames go to a hidden partial file beside the
final one (``.<name>.partial``); :meth:`VideoFileWriter.close` flushes the encoder and renames
it to the final name, :meth:`abort` (a cancelled or failed run) deletes it: a final name
always holds a whole video. A write that fails (a full disk) deletes the partial file and
raises :class:`VideoWriteError` naming the file. Uses PyAV (ComfyUI requires it).
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["VideoFileWriter", "VideoWriteError", "CODECS"]

# container -> (codec, pixel format, options)
CODECS = {
    "mp4": ("libx264", "yuv420p", {"crf": "17", "preset": "medium"}),
    "webm": ("libvpx-vp9", "yuv420p", {"crf": "20", "b": "0"}),
}


class VideoWriteError(OSError):
    """A video file could not be written; nothing is left under its name."""


class VideoFileWriter:
    """paths: one final path per video of the batch; frame_rate: frames per second; the
    container comes from the extension (``CODECS``)."""

    def __init__(self, paths: list[str], frame_rate: float):
        import av  # noqa: PLC0415 - optional: only a run that writes a file needs it
        self._av = av
        self.paths = list(paths)
        self.frame_rate = float(frame_rate)
        self.partials = [os.path.join(os.path.dirname(p), "." + os.path.basename(p) + ".partial") for p in paths]
        for p in self.paths:
            ext = os.path.splitext(p)[1].lstrip(".").lower()
            if ext not in CODECS:
                raise ValueError(f"unsupported video container {ext!r} for {p}: use one of {sorted(CODECS)}")
        self._open: list = []   # (container, stream) per video, opened at the first frames
        self.frames_written = 0
        self.done = False

    def _fail(self, path: str, e: BaseException) -> VideoWriteError:
        self.abort()
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return VideoWriteError(f"writing the video {path} failed ({why}); nothing was saved under that name")

    def _start(self, height: int, width: int) -> None:
        from fractions import Fraction
        rate = Fraction(self.frame_rate).limit_denominator(1001)
        for path, partial in zip(self.paths, self.partials):
            codec, pix_fmt, options = CODECS[os.path.splitext(path)[1].lstrip(".").lower()]
            try:
                container = self._av.open(partial, mode="w", format=os.path.splitext(path)[1].lstrip("."))
                stream = container.add_stream(codec, rate=rate, options=dict(options))
                stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            except Exception as e:
                raise self._fail(path, e) from e
            self._open.append((container, stream))

    def write(self, frames: torch.Tensor, first: int) -> None:
        """frames [B, T, H, W, 3] float 0..1 (B = the number of paths)."""
        if frames.shape[0] != len(self.paths):
            raise ValueError(f"{frames.shape[0]} videos for {len(self.paths)} files")
        if not self._open:
            self._start(int(frames.shape[2]) - int(frames.shape[2]) % 2, int(frames.shape[3]) - int(frames.shape[3]) % 2)
        rgb = (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        for b, (container, stream) in enumerate(self._open):
            try:
                for t in range(rgb.shape[1]):
                    img = np.ascontiguousarray(rgb[b, t, :stream.height, :stream.width])
                    frame = self._av.VideoFrame.from_ndarray(img, format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
            except Exception as e:
                raise self._fail(self.paths[b], e) from e
        self.frames_written += int(rgb.shape[1])

    def close(self) -> None:
        for b, (container, stream) in enumerate(self._open):
            try:
                for packet in stream.encode():
                    container.mux(packet)
                container.close()
            except Exception as e:
                raise self._fail(self.paths[b], e) from e
        for path, partial in zip(self.paths, self.partials):
            if os.path.exists(partial):
                os.replace(partial, path)
        self._open, self.done = [], True

    def abort(self) -> None:
        for container, _ in self._open:
            try:
                container.close()
            except Exception:
                pass
        self._open = []
        for partial in self.partials:
            try:
                os.remove(partial)
            except FileNotFoundError:
                pass
