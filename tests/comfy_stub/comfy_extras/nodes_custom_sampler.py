"""Stub of comfy_extras/nodes_custom_sampler.py (ComfyUI 0.27): the nodes of the custom-sampler
graph ComfyUI's AR template uses. Node ids, inputs and outputs as in ComfyUI:
RandomNoise(noise_seed) -> NOISE (``Noise_RandomNoise``: ``.seed``, ``generate_noise(latent)``),
BasicScheduler(model, scheduler, steps, denoise) -> SIGMAS, CFGGuider(model, positive, negative,
cfg) -> GUIDER, SamplerCustomAdvanced(noise, guider, sampler, sigmas, latent_image) -> (output,
denoised_output)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.samplers


class Noise_RandomNoise:  # noqa: N801 - ComfyUI's name
    def __init__(self, seed):
        self.seed = seed

    def generate_noise(self, input_latent):
        return comfy.sample.prepare_noise(input_latent["samples"], self.seed, input_latent.get("batch_index"))


class RandomNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RandomNoise", category="sampling/custom_sampling/noise",
                         inputs=[io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff,
                                              control_after_generate=True)],
                         outputs=[io.Noise.Output()])

    @classmethod
    def execute(cls, noise_seed):
        return io.NodeOutput(Noise_RandomNoise(noise_seed))


class BasicScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="BasicScheduler", category="sampling/custom_sampling/schedulers",
                         inputs=[io.Model.Input("model"),
                                 io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES),
                                 io.Int.Input("steps", default=20, min=1, max=10000),
                                 io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
                         outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, scheduler, steps, denoise):
        total = steps if denoise >= 1.0 else int(steps / denoise)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
        return io.NodeOutput(sigmas[-(steps + 1):])


class CFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CFGGuider", category="sampling/custom_sampling/guiders",
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"),
                                 io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, positive, negative, cfg):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


class SamplerCustomAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerCustomAdvanced", category="sampling/custom_sampling",
                         inputs=[io.Noise.Input("noise"), io.Guider.Input("guider"), io.Sampler.Input("sampler"),
                                 io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image")],
                         outputs=[io.Latent.Output(display_name="output"),
                                  io.Latent.Output(display_name="denoised_output")])

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image):
        latent = latent_image.copy()
        samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=noise.seed)
        out = latent.copy()
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out, out)
