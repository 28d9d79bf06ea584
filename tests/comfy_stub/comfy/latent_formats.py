"""Stub of comfy/latent_formats.py (ComfyUI v0.3.64): LatentFormat and Wan21.

Interface as in ComfyUI: attributes scale_factor, latent_channels, latent_dimensions,
latent_rgb_factors, latent_rgb_factors_bias, taesd_decoder_name; process_in(latent) (VAE space
-> model space) and process_out(latent) (model space -> VAE space). Wan21 works per channel on
[B, 16, T, H, W]: process_in(x) = (x - mean) * scale_factor / std.

The per-channel constants below are made up for tests (NOT the real Wan VAE statistics) and
are deliberately far from identity, so a test catches a missing or doubled process_in/out.
"""
import torch


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors = None
    latent_rgb_factors_bias = None
    taesd_decoder_name = None

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


def _stub_mean(channels):
    c = torch.arange(channels, dtype=torch.float32)
    return 0.15 * (c - (channels - 1) / 2) * torch.where(c % 2 == 0, 1.0, -1.0) + 0.3


def _stub_std(channels):
    c = torch.arange(channels, dtype=torch.float32)
    return 0.6 + 0.17 * c


class Wan21(LatentFormat):
    latent_channels = 16
    latent_dimensions = 3
    latent_rgb_factors = [[((c * 7 + j * 3) % 11 - 5) / 20.0 for j in range(3)] for c in range(16)]
    latent_rgb_factors_bias = [0.05, -0.02, 0.01]

    def __init__(self):
        self.scale_factor = 1.0
        self.latents_mean = _stub_mean(self.latent_channels).view(1, self.latent_channels, 1, 1, 1)
        self.latents_std = _stub_std(self.latent_channels).view(1, self.latent_channels, 1, 1, 1)
        self.taesd_decoder_name = None

    def process_in(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent):
        mean = self.latents_mean.to(latent.device, latent.dtype)
        std = self.latents_std.to(latent.device, latent.dtype)
        return latent * std / self.scale_factor + mean
