"""Stub of comfy/model_base.py (ComfyUI 0.27): the torch module a ModelPatcher wraps.

Mirrors: ModelType; BaseModel(model_config, model_type=ModelType.EPS, device=None,
unet_model=...) with .diffusion_model, .latent_format, .model_config, .manual_cast_dtype,
.device, .current_patcher, .model_type, .model_sampling (ModelSamplingDiscreteFlow for FLOW:
.shift), .memory_usage_factor, get_dtype() (= diffusion_model.dtype), process_latent_in/out,
memory_required, apply_model(x, t, c_concat=None, c_crossattn=None, control=None,
transformer_options={}, **kwargs) (calls diffusion_model(xc, timestep, context=..., control=...,
transformer_options=...) and returns the denoised x0 like the real one); WAN21(model_config,
model_type=ModelType.FLOW, image_to_video=False, device=None).

Stub-only: keyword `diffusion_model=` to wrap an already-built torch module instead of building
`unet_model(**unet_config)`; StubModelConfig stands in for supported_models.WAN21_T2V
(latent_format Wan21, sampling_settings {"shift": 8.0}); wrap_diffusion_model(...) builds all.
"""
from __future__ import annotations

from enum import Enum

import torch

import comfy.latent_formats
import comfy.model_sampling
import comfy.patcher_extension


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10


class StubModelConfig:
    """Like a supported_models_base.BASE instance (WAN21_T2V values)."""

    def __init__(self, unet_config=None, latent_format=comfy.latent_formats.Wan21, sampling_settings=None,
                 manual_cast_dtype=None, memory_usage_factor=0.9):
        self.unet_config = dict(unet_config or {"image_model": "wan2.1", "model_type": "t2v"})
        self.latent_format = latent_format() if isinstance(latent_format, type) else latent_format
        self.sampling_settings = dict(sampling_settings if sampling_settings is not None else {"shift": 8.0})
        self.manual_cast_dtype = manual_cast_dtype
        self.memory_usage_factor = memory_usage_factor
        self.custom_operations = None
        self.scaled_fp8 = None
        self.optimizations = {"fp8": False}


def model_sampling(model_config, model_type):
    if model_type in (ModelType.FLOW, ModelType.FLUX):
        return comfy.model_sampling.ModelSamplingFlowWan(model_config)
    raise NotImplementedError(f"stub: only flow model sampling ({model_type})")


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None, unet_model=None, *, diffusion_model=None):
        super().__init__()
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.current_patcher = None
        if diffusion_model is None:
            if unet_model is None:
                raise ValueError("stub BaseModel needs unet_model or diffusion_model=")
            diffusion_model = unet_model(**model_config.unet_config)
        self.diffusion_model = diffusion_model
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.adm_channels = 0
        self.concat_keys = ()
        self.memory_usage_factor = model_config.memory_usage_factor
        self.memory_usage_factor_conds = ()

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._apply_model, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                     transformer_options),
        ).execute(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = self.get_dtype_inference()
        xc = xc.to(dtype)
        context = c_crossattn.to(xc.device, dtype) if c_crossattn is not None else None
        timestep = self.model_sampling.timestep(t).float()
        out = self.diffusion_model(xc, timestep, context=context, control=control,
                                   transformer_options=transformer_options, **kwargs).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def get_dtype_inference(self):
        return self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()

    def get_dtype(self):
        dtype = getattr(self.diffusion_model, "dtype", None)
        if dtype is None:
            dtype = next(self.diffusion_model.parameters()).dtype
        return dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def memory_required(self, input_shape, cond_shapes={}):
        n = 1
        for s in input_shape:
            n *= int(s)
        return n * 4 * self.memory_usage_factor * 1024


class WAN21(BaseModel):
    def __init__(self, model_config, model_type=ModelType.FLOW, image_to_video=False, device=None, *,
                 diffusion_model=None, unet_model=None):
        super().__init__(model_config, model_type, device=device, unet_model=unet_model,
                         diffusion_model=diffusion_model)
        self.image_to_video = image_to_video


class WAN21_CausalAR(WAN21):  # noqa: N801 - ComfyUI's name
    """ComfyUI 0.27: a Wan2.1 checkpoint with metadata config {"transformer": {"causal_ar": true}};
    its diffusion model is comfy.ldm.wan.ar_model.CausalWanModel (sampling shift 5)."""


def wrap_diffusion_model(diffusion_model, shift=None, manual_cast_dtype=None, latent_format=None, device=None) -> WAN21:
    """Stub-only: a WAN21 BaseModel around an existing Wan-structured torch module (WAN21_CausalAR,
    shift 5 by default, for a CausalWanModel; WAN21, shift 8, otherwise)."""
    causal = hasattr(type(diffusion_model), "forward_block")
    shift = (5.0 if causal else 8.0) if shift is None else shift
    cfg = StubModelConfig(latent_format=latent_format or comfy.latent_formats.Wan21,
                          sampling_settings={"shift": shift}, manual_cast_dtype=manual_cast_dtype)
    return (WAN21_CausalAR if causal else WAN21)(cfg, device=device, diffusion_model=diffusion_model)
