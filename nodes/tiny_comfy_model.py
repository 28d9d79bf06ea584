"""The shipped small model as ComfyUI objects: its latent format and its MODEL.

The MODEL is what Load Diffusion Model makes of a Wan2.1 checkpoint, built from the tiny
model file's own config instead of ComfyUI's detector (which assumes umT5's 4096-dim text,
head dim 128 and frequency dim 256, none of which the tiny model has): a ``ModelPatcher``
over ComfyUI's Wan2.1 text-to-video ``BaseModel``, whose ``diffusion_model`` is ComfyUI's
own ``CausalWanModel`` where the ComfyUI has one (0.21+, the class a checkpoint flagged
``causal_ar`` loads as: ComfyUI's Sampler AR Video runs it, Apply Dummy Forcing routes it
through the pack) and its ``WanModel`` before that (AR Video Sampler drives either). Flow
sampling with shift 5, as the model was trained; float32 weights (6 M parameters).

:class:`TinyLatent` tells ComfyUI the latents are the pixel codec's: 12 channels, 2x2
pixels per latent pixel, one latent frame per frame, no scaling; its RGB factors are the
codec's exact average of each colour's four sub-pixels, so previews are the frames.
"""
from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models

from dummy_forcing_core.tiny.codec import CODEC
from dummy_forcing_core.tiny.model import TinyFile

__all__ = ["TinyLatent", "unet_config", "comfy_model"]

TRAINED_SHIFT = 5.0  # the fallback when a model file does not say its own


class TinyLatent(comfy.latent_formats.LatentFormat):
    """The tiny model's pixel codec as a ComfyUI latent format (model space = codec space)."""

    scale_factor = 1.0
    latent_channels = CODEC.latent_channels
    latent_dimensions = 3
    spacial_downscale_ratio = CODEC.factor
    temporal_downscale_ratio = 1
    # channel c * factor^2 + k holds colour c of one of a pixel block's sub-pixels (codec.py)
    latent_rgb_factors = [[1.0 / CODEC.factor ** 2 if ch // CODEC.factor ** 2 == c else 0.0 for c in range(3)]
                          for ch in range(CODEC.latent_channels)]
    latent_rgb_factors_bias = [0.0, 0.0, 0.0]
    taesd_decoder_name = None


def unet_config(model_config: dict) -> dict:
    """ComfyUI's Wan2.1 ``unet_config`` (the keyword arguments of its WanModel) for the tiny
    file's ``config["model"]`` (a WanConfig dict)."""
    m = model_config
    return {"image_model": "wan2.1", "model_type": "t2v", "dim": int(m["dim"]), "ffn_dim": int(m["ffn_dim"]),
            "num_heads": int(m["num_heads"]), "num_layers": int(m["num_layers"]), "in_dim": int(m["in_dim"]),
            "out_dim": int(m["out_dim"]), "text_dim": int(m["text_dim"]), "freq_dim": int(m["freq_dim"]),
            "patch_size": tuple(int(p) for p in m["patch_size"]), "eps": float(m["eps"]),
            "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True}


def _model_config(f: TinyFile):
    """ComfyUI's Wan2.1 T2V model config (the causal AR one where it exists) with the tiny
    model's geometry, latent format and shift."""
    cls = getattr(comfy.supported_models, "WAN21_CausalAR_T2V", None) or comfy.supported_models.WAN21_T2V
    cfg = cls(unet_config(f.config["model"]))
    cfg.latent_format = TinyLatent()
    cfg.sampling_settings = {"shift": float(f.config.get("train", {}).get("shift", TRAINED_SHIFT))}
    cfg.set_inference_dtype(torch.float32, None)
    return cfg


def comfy_model(f: TinyFile):
    """A ComfyUI MODEL (ModelPatcher) of the tiny model file ``f``, weights loaded strictly."""
    mm = comfy.model_management
    base = _model_config(f).get_model({})
    base.diffusion_model.load_state_dict(f.wan, strict=True)
    base.diffusion_model.to(torch.float32)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())

