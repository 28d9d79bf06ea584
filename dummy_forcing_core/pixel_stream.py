"""Pixels out while the video is made: each finished latent chunk is decoded at once and its
frames handed to sinks (IMAGE output, live view, a video file), never the whole video at once.

Phases of a :class:`PixelStream`::

    stream = PixelStream(decoder, sinks, overlap=on_cuda)
    for each chunk, once final:  stream.push(latent_chunk)    # VAE space [B, C, n, H, W]
    stream.finish()        # the decoder's tail, every sink closed (a file takes its final name)
    stream.abort()         # on error / Cancel instead: sinks abort (no partial file is kept)

With ``overlap`` (CUDA), the decode of chunk k runs on its own CUDA stream, driven by a decode
thread, while the caller's stream makes chunk k+1, and a second thread feeds the sinks (a video
encoder never holds up the GPU); at most ``max_pending`` chunks wait in each queue, so memory
stays bounded (``push`` blocks when the decoder falls behind). A decode step never runs while a
CUDA graph is captured (``cuda_graphs.CAPTURE_LOCK``). Without ``overlap`` (CPU), all runs inline. Frames reach the sinks in order, on the host, as float
``[B, T, H, W, 3]`` in 0..1 together with the index of their first frame.

A decoder (:class:`FrameDecoder`) keeps its own causal state between pushes, so the frames
equal one decode of the whole latent (see ``vae_stream.py``).
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Protocol

import torch

from .cuda_graphs import CAPTURE_LOCK

__all__ = ["FrameDecoder", "FrameSink", "PixelStream", "FrameCollector"]


class FrameDecoder(Protocol):
    def push(self, latent: torch.Tensor) -> torch.Tensor | None:
        """latent [B, C, n, H, W] (VAE space) -> the frames now final, [B, T, H', W', 3], or None."""

    def finish(self) -> torch.Tensor | None:
        """The frames held back for later latent frames (the video's tail), or None."""


class FrameSink(Protocol):
    def write(self, frames: torch.Tensor, first: int) -> None:
        """frames [B, T, H, W, 3] float 0..1 on the host; ``first``: index of frames[:, 0]."""

    def close(self) -> None:
        """The video is complete."""

    def abort(self) -> None:
        """The video failed or was cancelled: drop what was written."""


_STOP = object()


class PixelStream:
    def __init__(self, decoder: FrameDecoder, sinks: list, overlap: bool = False, max_pending: int = 2,
                 device: torch.device | str | None = None):
        self.decoder = decoder
        self.sinks = list(sinks)
        self.frames = 0            # frames handed to the sinks so far
        self.decode_seconds = 0.0  # wall time of the decode steps (overlapped: in the decode thread)
        self.first_frame_at: float | None = None  # perf_counter() when the first frames reached the sinks
        self._error: BaseException | None = None
        self._closed = False
        self.overlap = bool(overlap)
        self._device = torch.device(device) if device is not None else None
        self._cuda = self.overlap and self._device is not None and self._device.type == "cuda"
        if self._cuda and self._device.index is None:  # "cuda": the current card, named (the thread sets it)
            self._device = torch.device("cuda", torch.cuda.current_device())
        if self.overlap:  # threads; and on CUDA a stream of its own (on the CPU: order and errors alike)
            self._side = torch.cuda.Stream(device=self._device) if self._cuda else None
            self._jobs: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
            self._host: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
            self._worker = threading.Thread(target=self._work, name="dummy_forcing_decode", daemon=True)
            self._feeder = threading.Thread(target=self._feed, name="dummy_forcing_sinks", daemon=True)
            self._worker.start()
            self._feeder.start()

    # ---------------------------------------------------------------- caller side
    def push(self, latent: torch.Tensor) -> None:
        """Hand over a finished chunk [B, C, n, H, W] (VAE space). The tensor must not be
        written again by the caller (the overlapped decode reads it later)."""
        self._raise_pending()
        if not self.overlap:
            self._decode_and_deliver(latent)
            return
        ready = None
        if self._cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self._device))
        self._put((latent, ready))

    def finish(self) -> None:
        """Decode the tail, wait for every chunk, close the sinks. Raises what a decode or a sink
        raised (after aborting the sinks)."""
        if self._closed:
            return
        try:
            if self.overlap:
                self._put(None)  # the tail
                self._put(_STOP)
                self._worker.join()
                self._feeder.join()
            else:
                self._deliver(self.decoder.finish())
            self._raise_pending()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        for s in self.sinks:
            s.close()

    def abort(self) -> None:
        """Stop decoding, abort every sink (files removed). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self.overlap and self._worker.is_alive():
            self._error = self._error or _Aborted()
            while True:  # unblock and stop the worker
                try:
                    self._jobs.put(_STOP, timeout=0.05)
                    break
                except queue.Full:
                    try:
                        self._jobs.get_nowait()
                    except queue.Empty:
                        pass
            self._worker.join()
            self._feeder.join()
        for s in self.sinks:
            try:
                s.abort()
            except Exception:  # the first error is the one the user needs to see
                pass

    def _put(self, job) -> None:
        while True:
            try:
                self._jobs.put(job, timeout=0.1)
                return
            except queue.Full:
                if not self._worker.is_alive():
                    self._raise_pending()
                    raise RuntimeError("the decode worker stopped")

    def _raise_pending(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            err, self._error = self._error, _Aborted()
            raise err

    # ---------------------------------------------------------------- decode side
    def _work(self) -> None:
        """Decode thread: GPU decode on the side stream, frames to the host, on to the feeder."""
        if self._cuda:
            torch.cuda.set_device(self._device)
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                if self._error is not None:
                    continue  # drain after a failure
                try:
                    t0 = time.perf_counter()
                    with CAPTURE_LOCK, (torch.cuda.stream(self._side) if self._cuda else contextlib.nullcontext()):
                        if job is None:
                            frames = self.decoder.finish()
                        else:
                            latent, ready = job
                            if ready is not None:
                                self._side.wait_event(ready)
                                latent.record_stream(self._side)  # made on the caller's stream, read on this one
                            frames = self.decoder.push(latent)
                        host = None if frames is None else frames.to("cpu")  # waits for this stream only
                    self.decode_seconds += time.perf_counter() - t0
                    self._host.put(host)
                except BaseException as e:  # handed to the caller at its next push / finish
                    self._error = e
        finally:
            self._host.put(_STOP)

    def _feed(self) -> None:
        """Sink thread: hands host frames to the sinks in order (encoding, previews)."""
        while True:
            frames = self._host.get()
            if frames is _STOP:
                return
            if self._error is not None:
                continue
            try:
                self._deliver(frames)
            except BaseException as e:
                self._error = e

    def _decode_and_deliver(self, latent: torch.Tensor) -> None:
        t0 = time.perf_counter()
        frames = self.decoder.push(latent)
        self.decode_seconds += time.perf_counter() - t0
        self._deliver(frames)

    def _deliver(self, frames: torch.Tensor | None) -> None:
        if frames is None or frames.shape[1] == 0:
            return
        frames = frames.to("cpu")
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()
        for s in self.sinks:
            s.write(frames, self.frames)
        self.frames += int(frames.shape[1])


class _Aborted(Exception):
    pass


class FrameCollector:
    """A sink that keeps every frame: the IMAGE output, ``[B * T, H, W, 3]`` (videos one after
    the other, as VAE Decode returns a batch), in ``dtype`` on ``device``."""

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.dtype, self.device = dtype, torch.device(device)
        self.parts: list[torch.Tensor] = []

    def write(self, frames: torch.Tensor, first: int) -> None:
        self.parts.append(frames.to(device=self.device, dtype=self.dtype))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.parts = []

    def images(self) -> torch.Tensor | None:
        if not self.parts:
            return None
        x = torch.cat(self.parts, dim=1)  # [B, T, H, W, 3]
        return x.reshape(-1, *x.shape[2:])
