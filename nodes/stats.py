"""Cache Stats: a run's statistics as text and plots, shown on the node."""
from __future__ import annotations

from comfy_api.latest import io, ui

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.plots import stats_image
from dummy_forcing_core.stats import GenerationStats

from . import comfy_glue as glue
from . import core_ar_loop
from . import widgets as w
from .node_errors import node_errors

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
                "actual), the head-type map, seconds per chunk with the switch to the per-head cache marked. Connect "
                "AR Video Sampler's 'stats', or, for ComfyUI's own Sampler AR Video, the MODEL from Apply Dummy "
                "Forcing / AR Cache Policy and SamplerCustomAdvanced's output latent."),
            inputs=[
                w.DF_STATS.Input("stats", optional=True, tooltip="The 'stats' output of AR Video Sampler (one "
                                 "generation's cache, attention and timing figures)."),
                io.Model.Input("model", optional=True, tooltip="For ComfyUI's own AR sampler: the MODEL from Apply "
                               "Dummy Forcing or AR Cache Policy that SamplerCustomAdvanced ran (its last video's "
                               "statistics are shown). Unused when 'stats' is connected."),
                io.Latent.Input("latent", optional=True, tooltip="For ComfyUI's own AR sampler: SamplerCustomAdvanced's "
                                "output, so this node runs after it and checks the statistics are of that video."),
            ],
            outputs=[
                io.String.Output(display_name="text", tooltip="The statistics as a readable table."),
                io.Image.Output(display_name="plots", tooltip="KV memory per layer, head types, seconds per chunk."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, stats=None, model=None, latent=None) -> io.NodeOutput:
        with node_errors(NAME):
            stats = _stats_of(stats, model, latent)
        text = stats.to_text()
        image = glue.image_tensor(stats_image(stats))
        shown = {**ui.PreviewText(text).as_dict(), **ui.PreviewImage(image, cls=cls).as_dict()}
        return io.NodeOutput(text, image, ui=shown)


def _stats_of(stats, model, latent) -> GenerationStats:
    if stats is not None:
        if not isinstance(stats, GenerationStats):
            raise SettingError("input", "stats", f"the 'stats' input is a {type(stats).__name__}; connect the 'stats' "
                               "output of AR Video Sampler")
        return stats
    if model is None:
        raise SettingError("input", "stats", "connect 'stats' (AR Video Sampler) or 'model' + 'latent' (ComfyUI's "
                           "Sampler AR Video with a model from Apply Dummy Forcing / AR Cache Policy)")
    found = core_ar_loop.last_stats(model)
    if found is None:
        raise SettingError("input", "model", "this MODEL has made no video in ComfyUI's AR sampler yet: connect the "
                           "model from Apply Dummy Forcing / AR Cache Policy that SamplerCustomAdvanced ran, and its "
                           "output latent to 'latent'")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is not None and (tuple(samples.shape[2:]) != (found.frames, *found.latent_hw)
                                or samples.shape[0] != found.batch):
        raise SettingError("input", "latent", f"the 'latent' input {list(samples.shape)} is not the last video this "
                           f"model made ({found.batch} x {found.frames} frames of {found.latent_hw[0]}x"
                           f"{found.latent_hw[1]})")
    return found
