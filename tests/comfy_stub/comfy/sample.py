"""Stub of comfy/sample.py: prepare_noise(latent_image, seed, noise_inds=None), the start noise
RandomNoise draws (one CPU generator seeded with ``seed`` over the whole latent)."""
import torch


def prepare_noise(latent_image, seed, noise_inds=None):
    generator = torch.manual_seed(seed)
    if noise_inds is not None:
        raise NotImplementedError("stub: batch_index noise")
    return torch.randn(latent_image.size(), dtype=torch.float32, layout=latent_image.layout, generator=generator,
                       device="cpu").to(dtype=latent_image.dtype)


def fix_empty_latent_channels(model, latent_image, downscale_ratio_spacial=None, downscale_ratio_temporal=None):
    return latent_image
