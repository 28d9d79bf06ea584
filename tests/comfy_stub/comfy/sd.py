"""Stub of comfy/sd.py: the ``VAE`` wrapper (what Load VAE returns), CPU only.

Mirrors the attributes and ``decode`` the pack uses: ``first_stage_model``, ``patcher``,
``device``, ``vae_dtype``, ``latent_channels``, ``process_output``, ``memory_used_decode``,
``vae_output_dtype()``, ``decode(samples) -> [B, T, H, W, 3]``. Stub-only: ``VAE(first_stage_model=m,
latent_channels=n)`` wraps a prebuilt module (default: the stub's Wan2.1 VAE, random weights)."""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None, first_stage_model=None,
                 latent_channels=16, seed=0):
        if first_stage_model is None:
            import comfy.ldm.wan.vae as wan_vae
            torch.manual_seed(seed)
            first_stage_model = wan_vae.WanVAE(z_dim=latent_channels)
        self.first_stage_model = first_stage_model.eval()
        self.latent_channels = latent_channels
        self.device = torch.device(device or "cpu")
        self.vae_dtype = dtype or torch.float32
        self.output_channels = 3
        self.process_output = lambda image: image.add_(1.0).div_(2.0).clamp_(0.0, 1.0)
        self.memory_used_decode = lambda shape, dtype: 2200 * shape[3] * shape[4] * 64 * 4
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=torch.device("cpu"))

    def vae_output_dtype(self):
        return torch.float32

    @torch.no_grad()
    def decode(self, samples_in, vae_options={}):
        comfy.model_management.load_models_gpu([self.patcher])
        out = self.first_stage_model.decode(samples_in.to(self.device, self.vae_dtype))
        out = self.process_output(out.to(self.vae_output_dtype()))
        return out.movedim(1, -1)
