"""Live view: the frames decoded so far play on the sampler node in the browser (web/live_view.js).

A :class:`LiveView` is a ``FrameSink`` (dummy_forcing_core/pixel_stream.py). Each ``write`` saves
the chunk's frames (video 0 of the batch, longer side <= ``max_side``) as one JPEG sprite sheet,
frames stacked top to bottom, in ComfyUI's temp folder, and sends one small JSON event through
``PromptServer.send_sync`` to the client that queued the prompt; the browser fetches the sheet
through ``/view``. Events (``EVENT``), every one with ``node`` (the node id) and ``run`` (one id
per LiveView, i.e. per video):

    {"state": "frames", "filename", "subfolder", "type": "temp", "first", "count",
     "width", "height", "frame_rate", ...}    # frames first .. first + count - 1, one sheet
    {"state": "complete", "frames": total}     # close(): the video is whole
    {"state": "cancelled", "frames": total}    # abort(): cancelled or failed

Without a PromptServer (tests, scripts) or without a node id it does nothing. A preview that
cannot be saved or sent never breaks the generation: it is logged once and the view stops.
``write`` may run on a PixelStream worker thread: ``send_sync`` is thread-safe.
"""
from __future__ import annotations

import logging
import os
import re
import uuid

import numpy as np
import torch
from PIL import Image

import folder_paths

try:  # ComfyUI's server module; absent (or something else) outside ComfyUI
    from server import PromptServer
except Exception:  # noqa: BLE001
    PromptServer = None

EVENT = "dummy_forcing.live"
SUBFOLDER = "dummy_forcing_live"
SHEET_MAX_PX = 8192  # a sheet taller than this is split (browsers and JPEG have size limits)
JPEG_QUALITY = 85

log = logging.getLogger(__name__)


class LiveView:
    def __init__(self, node_id: str | None, frame_rate: float, max_side: int = 512):
        self.node_id = None if node_id is None else str(node_id)
        self.frame_rate = float(frame_rate)
        self.max_side = max(16, int(max_side))
        self.run_id = uuid.uuid4().hex[:12]
        self.frames = 0  # frames sent so far (first index after the last sheet)
        self._server = getattr(PromptServer, "instance", None) if self.node_id else None
        self._sid = getattr(self._server, "client_id", None)
        self._failed = False
        self._done = False
        # file names: <node>_<run>_<first>.jpg; a node's earlier runs are removed when the next starts
        self._prefix = re.sub(r"[^A-Za-z0-9]+", "-", self.node_id or "") + "_"
        if self.active:
            self._guard(self._remove_old_runs)

    @property
    def active(self) -> bool:
        return self._server is not None and not self._failed

    def write(self, frames: torch.Tensor, first: int) -> None:
        """frames [B, T, H, W, 3] float 0..1 on the host; ``first``: index of frames[:, 0]."""
        if not self.active or self._done:
            return
        self._guard(self._write, frames, int(first))

    def close(self) -> None:
        self._finish("complete")

    def abort(self) -> None:
        self._finish("cancelled")

    # ------------------------------------------------------------------ internals
    def _finish(self, state: str) -> None:
        if self._server is None or self._done:
            return
        self._done = True
        self._guard(self._send, {"state": state, "frames": self.frames})

    def _write(self, frames: torch.Tensor, first: int) -> None:
        video = _preview_frames(frames[0], self.max_side)  # [T, h, w, 3] uint8
        t, fh, fw = video.shape[:3]
        per_sheet = max(1, SHEET_MAX_PX // fh)
        for start in range(0, t, per_sheet):
            part = video[start:start + per_sheet]
            name = f"{self._prefix}{self.run_id}_{first + start:07d}.jpg"
            path = os.path.join(self._folder(), name)
            Image.fromarray(part.reshape(-1, fw, 3)).save(path, quality=JPEG_QUALITY)
            self._send({"state": "frames", "filename": name, "subfolder": SUBFOLDER, "type": "temp",
                        "first": first + start, "count": len(part), "width": fw, "height": fh,
                        "frame_rate": self.frame_rate})
            self.frames = max(self.frames, first + start + len(part))

    def _send(self, data: dict) -> None:
        self._server.send_sync(EVENT, {"node": self.node_id, "run": self.run_id, **data}, self._sid)

    def _folder(self) -> str:
        d = os.path.join(folder_paths.get_temp_directory(), SUBFOLDER)
        os.makedirs(d, exist_ok=True)
        return d

    def _remove_old_runs(self) -> None:
        d = self._folder()
        for name in os.listdir(d):
            if name.startswith(self._prefix) and name.endswith(".jpg"):
                os.remove(os.path.join(d, name))

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 -- a preview must never break the generation
            if not self._failed:
                log.warning("Dummy Forcing live view off for node %s: %s: %s", self.node_id, type(e).__name__, e)
            self._failed = True


def _preview_frames(video: torch.Tensor, max_side: int) -> np.ndarray:
    """[T, H, W, 3] float 0..1 -> [T, h, w, 3] uint8, longer side <= max_side (never enlarged).

    Scaled in torch before the float -> uint8 pass (it runs beside the generation: ~3x less CPU
    than converting the full frames and resizing them with PIL): a box filter for the integer
    part of the factor, then bilinear for the rest (< 2x), so large factors do not alias."""
    t, h, w = video.shape[:3]
    x = video.detach().float()
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = x.permute(0, 3, 1, 2)  # [T, 3, H, W], channels-last in memory
        k = int(1 / scale)
        if k > 1:
            x = torch.nn.functional.avg_pool2d(x, k, ceil_mode=True)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = x.permute(0, 2, 3, 1)
    x = torch.nan_to_num(x.mul(255), nan=0.0)  # NaN after the resize: on the small frames
    return x.add_(0.5).clamp_(0, 255).to(torch.uint8).contiguous().numpy()
