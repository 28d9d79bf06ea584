"""A throwaway node pack for the live view checks in a real ComfyUI (custom_nodes/df_test_live_view).

DFTestLiveView writes planted frames through the pack's nodes/live_view.py (loaded by file path
from the linked pack) in chunks, as AR Video Sampler's decode does, then closes it or, with
`cancel`, aborts it. Frame i is one flat colour, `frame_color(i)`, so a JPEG keeps it to a few
levels. Used by test_live_view_real.py (websocket events, /view) and frontend_check.js (the
player in the browser).
"""

PACK_NAME = "df_test_live_view"
NODE_ID = "DFTestLiveView"


def frame_color(i: int) -> tuple[int, int, int]:
    """RGB 0..255 of planted frame i (the same formula is in SOURCE and frontend_check.js)."""
    return ((40 + 67 * i) % 256, (200 + 101 * i) % 256, (90 + 29 * i) % 256)


SOURCE = r'''
import importlib.util
import os
import time

import torch
from comfy_api.latest import ComfyExtension, io

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ComfyUI-Dummy-Forcing",
                     "nodes", "live_view.py")
_spec = importlib.util.spec_from_file_location("df_test_live_view_module", _PATH)
live_view = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(live_view)


def frame_color(i):
    return ((40 + 67 * i) % 256, (200 + 101 * i) % 256, (90 + 29 * i) % 256)


class DFTestLiveView(io.ComfyNode):
    """Test only: planted frames through LiveView, chunk by chunk."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DFTestLiveView", display_name="DF test live view", category="testing/dummy_forcing",
            inputs=[io.Int.Input("frames", default=12, min=1, max=4096),
                    io.Int.Input("chunk", default=4, min=1, max=512),
                    io.Int.Input("height", default=48, min=8, max=2048),
                    io.Int.Input("width", default=80, min=8, max=2048),
                    io.Float.Input("frame_rate", default=8.0, min=0.1, max=120.0),
                    io.Float.Input("delay", default=0.0, min=0.0, max=10.0),
                    io.Boolean.Input("cancel", default=False),
                    io.Boolean.Input("live_preview", default=True),
                    io.Int.Input("nonce", default=0, min=0, max=2 ** 31)],
            outputs=[], hidden=[io.Hidden.unique_id], is_output_node=True)

    @classmethod
    def execute(cls, frames, chunk, height, width, frame_rate, delay, cancel, live_preview, nonce):
        view = live_view.LiveView(cls.hidden.unique_id if live_preview else None, frame_rate)
        colors = torch.tensor([frame_color(i) for i in range(frames)], dtype=torch.float32) / 255
        video = colors.view(1, frames, 1, 1, 3).expand(1, frames, height, width, 3).contiguous()
        for first in range(0, frames, chunk):
            view.write(video[:, first:first + chunk], first)
            if delay:
                time.sleep(delay)
        view.abort() if cancel else view.close()
        return io.NodeOutput()


class _Ext(ComfyExtension):
    async def get_node_list(self):
        return [DFTestLiveView]


async def comfy_entrypoint():
    return _Ext()
'''
