"""Stub of comfy/samplers.py (ComfyUI 0.27): the custom-sampler path SamplerCustomAdvanced runs.

Mirrors: ``KSAMPLER(sampler_function, extra_options={}, inpaint_options={})`` whose
``sample(model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
disable_pbar=False)`` scales the noise (``noise_scaling``), calls the sampler function with
``**extra_options`` and undoes the scaling; ``ksampler(name, extra_options={},
inpaint_options={})`` (``sample_<name>`` of comfy.k_diffusion.sampling); ``calculate_sigmas``
(scheduler "simple"); ``CFGGuider(model_patcher)`` with ``set_conds``, ``set_cfg`` and
``sample(noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
disable_pbar=False, seed=None)``: the patcher's wrappers are merged into the run's
transformer_options; OUTER_SAMPLE wraps loading (load_models_gpu applies object patches),
pre_run / cleanup and ``inner_sample``, which copies the model options
(``create_model_options_clone``) into ``extra_args = {"model_options", "seed"}`` and runs
``sampler.sample`` inside the SAMPLER_SAMPLE wrappers, then ``process_latent_out``. A model
call goes guider -> ``BaseModel.apply_model`` with the conditioning as ``c_crossattn`` (cfg 1:
the positive only; else positive and negative in one batch, mixed by cfg).
"""
from __future__ import annotations

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
from comfy.patcher_extension import WrapperExecutor, WrappersMP

SCHEDULER_NAMES = ["simple"]


def simple_scheduler(model_sampling, steps):
    s = model_sampling
    step = len(s.sigmas) / steps
    return torch.FloatTensor([float(s.sigmas[-(1 + int(x * step))]) for x in range(steps)] + [0.0])


def calculate_sigmas(model_sampling, scheduler_name, steps):
    if scheduler_name != "simple":
        raise ValueError(f"stub: scheduler {scheduler_name!r} (only 'simple')")
    return simple_scheduler(model_sampling, steps)


class _X0Model:
    """What KSamplerX0Inpaint is to the sampler function: model(x, sigma, **extra_args)."""

    def __init__(self, model_wrap):
        self.inner_model = model_wrap

    def __call__(self, x, sigma, denoise_mask=None, model_options={}, seed=None):
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
        self.sampler_function = sampler_function
        self.extra_options = extra_options
        self.inpaint_options = inpaint_options

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        ms = model_wrap.inner_model.model_sampling
        x = ms.noise_scaling(sigmas[0], noise, latent_image)
        k_callback = None
        if callback is not None:
            k_callback = lambda d: callback(d["i"], d["denoised"], d["x"], len(sigmas) - 1)  # noqa: E731
        samples = self.sampler_function(_X0Model(model_wrap), x, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return ms.inverse_noise_scaling(sigmas[-1], samples)


def ksampler(sampler_name, extra_options={}, inpaint_options={}):
    fn = getattr(comfy.k_diffusion.sampling, f"sample_{sampler_name}")
    return KSAMPLER(fn, extra_options, inpaint_options)


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds):
        for k, v in conds.items():
            self.original_conds[k] = [dict(c[1], cross_attn=c[0]) for c in v]

    def __call__(self, x, sigma, model_options={}, seed=None):
        return self.predict_noise(x, sigma, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        to = comfy.patcher_extension.merge_nested_dicts({}, model_options.get("transformer_options", {}))
        B = x.shape[0]
        pos = self.conds["positive"][0]["cross_attn"]
        if self.cfg == 1.0:
            ctx = pos.repeat(B // pos.shape[0], 1, 1) if pos.shape[0] != B else pos
            return self.inner_model.apply_model(x, timestep, c_crossattn=ctx.to(x.device), transformer_options=to)
        neg = self.conds["negative"][0]["cross_attn"]
        ctx = torch.cat([pos.expand(B, -1, -1), neg.expand(B, -1, -1)]).to(x.device)
        both = self.inner_model.apply_model(torch.cat([x, x]), torch.cat([timestep, timestep]), c_crossattn=ctx,
                                            transformer_options=to)
        c, u = both.chunk(2)
        return u + (c - u) * self.cfg

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [dict(c) for c in v] for k, v in self.original_conds.items()}
        orig = self.model_options
        try:
            self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
            comfy.patcher_extension.merge_nested_dicts(self.model_options.setdefault("transformer_options", {})
                                                       .setdefault("wrappers", {}), self.model_patcher.wrappers,
                                                       copy_dict1=False)
            executor = WrapperExecutor.new_class_executor(
                self.outer_sample, self,
                comfy.patcher_extension.get_all_wrappers(WrappersMP.OUTER_SAMPLE, self.model_options,
                                                         is_model_options=True))
            return executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None):
        comfy.model_management.load_models_gpu([self.model_patcher])
        self.inner_model = self.model_patcher.model
        device = self.model_patcher.load_device
        try:
            self.model_patcher.pre_run()
            return self.inner_sample(noise.to(device, torch.float32), latent_image.to(device, torch.float32), device,
                                     sampler, sigmas.to(device), denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_patcher.cleanup()

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        options = comfy.model_patcher.create_model_options_clone(self.model_options)
        options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": options, "seed": seed}
        executor = WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            comfy.patcher_extension.get_all_wrappers(WrappersMP.SAMPLER_SAMPLE, options, is_model_options=True))
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))
