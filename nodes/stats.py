"""Cache Stats: a run's statistics as text and plots, shown on the node."""
from __future__ import annotations

from comfy_api.latest import io, ui

from dummy_forcing_core.plots import stats_image
from dummy_forcing_core.stats import GenerationStats

from . import widgets as w
from .profiles import image_tensor

NAME = "Cache Stats"


class CacheStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CacheStats",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Shows what a generation's KV cache held and cost, on the node: KV memory at the end vs a full "
                "cache, self-attention FLOPs, seconds per chunk and FPS (DiT only, VAE excluded), and with Dummy "
                "Forcing the sink / neighbor / dummy heads of every layer. The plots: KV memory per layer (full vs "
                "actual), the head-type map, seconds per chunk with the switch to the per-head cache marked."),
            inputs=[
                w.DF_STATS.Input("stats", tooltip="The 'stats' output of AR Video Sampler (one generation's cache, "
                                "attention and timing figures)."),
            ],
            outputs=[
                io.String.Output(display_name="text", tooltip="The statistics as a readable table."),
                io.Image.Output(display_name="plots", tooltip="KV memory per layer, head types, seconds per chunk."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, stats) -> io.NodeOutput:
        if not isinstance(stats, GenerationStats):
            raise ValueError(f"{NAME}: the 'stats' input is a {type(stats).__name__}; connect the 'stats' output of "
                             "AR Video Sampler")
        text = stats.to_text()
        image = image_tensor(stats_image(stats))
        shown = {**ui.PreviewText(text).as_dict(), **ui.PreviewImage(image, cls=cls).as_dict()}
        return io.NodeOutput(text, image, ui=shown)
