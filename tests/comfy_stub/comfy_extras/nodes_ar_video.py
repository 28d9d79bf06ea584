"""Stub of comfy_extras/nodes_ar_video.py (ComfyUI 0.27): EmptyARVideoLatent(width, height,
length, batch_size) -> LATENT [B, 16, (length - 1) // 4 + 1, height // 8, width // 8];
SamplerARVideo(num_frame_per_block, default 1) -> SAMPLER (``ksampler("ar_video", ...)``);
ARVideoI2V(model, vae, start_image, width, height, length, batch_size) -> a clone of the MODEL
with ``transformer_options["ar_config"]["initial_latent"]`` = the VAE-encoded first image, and
an empty LATENT."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.samplers
import comfy.utils


def _empty(width, height, length, batch_size):
    return torch.zeros([batch_size, 16, ((length - 1) // 4) + 1, height // 8, width // 8],
                       device=comfy.model_management.intermediate_device())


class EmptyARVideoLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="EmptyARVideoLatent", category="model/latent/autoregressive",
                         inputs=[io.Int.Input("width", default=832, min=16, max=8192, step=16),
                                 io.Int.Input("height", default=480, min=16, max=8192, step=16),
                                 io.Int.Input("length", default=81, min=1, max=1024, step=4),
                                 io.Int.Input("batch_size", default=1, min=1, max=64)],
                         outputs=[io.Latent.Output(display_name="LATENT")])

    @classmethod
    def execute(cls, width, height, length, batch_size):
        return io.NodeOutput({"samples": _empty(width, height, length, batch_size)})


class SamplerARVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerARVideo", display_name="Sampler AR Video", category="model/sampling/samplers",
                         inputs=[io.Int.Input("num_frame_per_block", default=1, min=1, max=64)],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, num_frame_per_block):
        return io.NodeOutput(comfy.samplers.ksampler("ar_video", {"num_frame_per_block": num_frame_per_block}))


class ARVideoI2V(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ARVideoI2V", category="model/conditioning/autoregressive",
                         inputs=[io.Model.Input("model"), io.Vae.Input("vae"), io.Image.Input("start_image"),
                                 io.Int.Input("width", default=832, min=16, max=8192, step=16),
                                 io.Int.Input("height", default=480, min=16, max=8192, step=16),
                                 io.Int.Input("length", default=81, min=1, max=1024, step=4),
                                 io.Int.Input("batch_size", default=1, min=1, max=64)],
                         outputs=[io.Model.Output(display_name="MODEL"), io.Latent.Output(display_name="LATENT")])

    @classmethod
    def execute(cls, model, vae, start_image, width, height, length, batch_size):
        image = comfy.utils.common_upscale(start_image[:1].movedim(-1, 1), width, height, "bilinear", "center")
        initial = vae.encode(image.movedim(1, -1)[:, :, :, :3])
        m = model.clone()
        m.model_options.setdefault("transformer_options", {}).setdefault("ar_config", {})["initial_latent"] = initial
        return io.NodeOutput(m, {"samples": _empty(width, height, length, batch_size)})
