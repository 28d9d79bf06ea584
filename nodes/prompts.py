"""AR Prompt Start: tags a conditioning with the moment its prompt starts, for prompt schedules.

Chain CLIP Text Encode -> AR Prompt Start -> Conditioning (Combine) for each later prompt; the
first prompt needs no tag (it starts at frame 0). AR Video Sampler then switches prompt at
each start, re-caching the frames it holds under the new prompt (LongLive-style).
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_glue as glue
from . import widgets as w
from .node_errors import node_errors

NAME = "AR Prompt Start"
UNITS = ["seconds", "latent frames"]


class ARPromptStart(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ARPromptStart",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Says when a prompt starts in a long video made by AR Video Sampler. Tag every prompt after the first "
                "with its start, combine all of them with Conditioning (Combine) in the order they play, and connect "
                "the result to the sampler's 'positive'. At each start the sampler swaps the text and re-encodes the "
                "frames its cache holds under the new prompt (re-cache), so the next chunk follows it without a seam. "
                "A prompt is used from the chunk that holds its start frame."),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt (CLIP Text Encode) that starts here."),
                io.Float.Input("start", default=5.0, min=0.0, max=100000.0, step=0.25,
                               tooltip="When the prompt starts: seconds of video (16 fps, as Wan2.1 makes) or a latent "
                               "frame index (4 video frames each; frame 0 is the first video frame). Default 5 s = "
                               "latent frame 20. Must lie inside the video and at least a chunk after the previous "
                               "prompt's start."),
                io.Combo.Input("unit", options=UNITS, default="seconds",
                               tooltip="'seconds' (default) or 'latent frames' for 'start'."),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING", tooltip="The conditioning, tagged with its "
                                            "start: combine it with the others.")],
        )

    @classmethod
    def execute(cls, conditioning, start, unit) -> io.NodeOutput:
        with node_errors(NAME):
            return io.NodeOutput(glue.tag_prompt_start(conditioning, float(start), unit))
