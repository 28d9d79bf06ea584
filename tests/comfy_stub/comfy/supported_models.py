"""Stub of comfy/supported_models.py (ComfyUI 0.27): the Wan2.1 text-to-video model configs.

Mirrors: ``WAN21_T2V(unet_config)`` and ``WAN21_CausalAR_T2V(unet_config)`` (0.21+) as
supported_models_base.BASE makes them: ``unet_config`` (a copy; the causal one drops
``causal_ar``), ``latent_format`` (an instance of the class attribute), ``sampling_settings``
(shift 8.0; causal 5.0), ``manual_cast_dtype``, ``custom_operations``, ``optimizations``,
``memory_usage_factor`` (dim / 2222), ``set_inference_dtype(dtype, manual_cast_dtype)`` (sets
``unet_config["dtype"]``) and ``get_model(state_dict, prefix="", device=None)`` -> WAN21 /
WAN21_CausalAR whose diffusion model is built from ``unet_config`` (ComfyUI's WanModel keyword
arguments; here the stub's WanModel / CausalWanModel, which take a WanConfig).
"""
from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_base


class WAN21_T2V:  # noqa: N801 - ComfyUI's name
    unet_config = {"image_model": "wan2.1", "model_type": "t2v"}
    sampling_settings = {"shift": 8.0}
    latent_format = comfy.latent_formats.Wan21
    memory_usage_factor = 0.9
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    manual_cast_dtype = None
    custom_operations = None
    optimizations = {"fp8": False}

    def __init__(self, unet_config):
        self.unet_config = unet_config.copy()
        self.sampling_settings = self.sampling_settings.copy()
        self.latent_format = self.latent_format()
        self.optimizations = self.optimizations.copy()
        self.memory_usage_factor = self.unet_config.get("dim", 2000) / 2222

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype

    def _diffusion_model(self, cls):
        from dummy_forcing_core.wan_model import WanConfig  # the stub's Wan modules are the pack's WanModel

        u = self.unet_config
        names = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim",
                 "patch_size", "eps")
        net = cls(WanConfig(**{k: (tuple(u[k]) if k == "patch_size" else u[k]) for k in names if k in u}))
        return net.to(u.get("dtype") or torch.float32).eval()

    def get_model(self, state_dict, prefix="", device=None):
        from comfy.ldm.wan.model import WanModel
        return comfy.model_base.WAN21(self, device=device, diffusion_model=self._diffusion_model(WanModel))


class WAN21_CausalAR_T2V(WAN21_T2V):  # noqa: N801 - ComfyUI's name
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "causal_ar": True}
    sampling_settings = {"shift": 5.0}

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.unet_config.pop("causal_ar", None)

    def get_model(self, state_dict, prefix="", device=None):
        from comfy.ldm.wan.ar_model import CausalWanModel
        return comfy.model_base.WAN21_CausalAR(self, device=device,
                                               diffusion_model=self._diffusion_model(CausalWanModel))
