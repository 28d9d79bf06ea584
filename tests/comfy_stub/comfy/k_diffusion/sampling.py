"""Stub of comfy/k_diffusion/sampling.py (ComfyUI 0.27): the autoregressive video sampler.

``sample_ar_video(model, x, sigmas, extra_args=None, callback=None, disable=None,
num_frame_per_block=1)``, written here from its documented behaviour (ComfyUI's AR support,
../shared/reference/comfyui.md):

* errors when ``x`` is not 5-D, or when the diffusion model lacks ``init_kv_caches`` /
  ``init_crossattn_caches``;
* dense caches for the whole video: ``init_kv_caches(B, T * frame_seq_len, device, dtype)``;
* an ARVideoI2V start image (``transformer_options["ar_config"]["initial_latent"]``, VAE space)
  goes through ``process_latent_in`` and one sigma-0 call that writes it, then is copied out;
* per block: one model call per sigma (each writes the block at ``end``; ``end`` is moved back
  after it), fresh noise from ``torch.manual_seed(seed + 1000 * block + i)`` + ``randn_like``
  between steps, then one sigma-0 call that writes the finished block (also after the last);
* ``transformer_options["ar_state"] = {"start_frame", "kv_caches", "crossattn_caches"}`` during
  the calls, removed at the end (also on errors).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def sample_ar_video(model, x, sigmas, extra_args=None, callback=None, disable=None, num_frame_per_block=1):
    extra_args = {} if extra_args is None else extra_args
    to = extra_args.get("model_options", {}).get("transformer_options", {})
    if x.ndim != 5:
        raise ValueError(f"ar_video sampler requires 5-D video latents [B,C,T,H,W], got {x.ndim}-D tensor")
    base = model.inner_model.inner_model
    causal = base.diffusion_model
    if not (hasattr(causal, "init_kv_caches") and hasattr(causal, "init_crossattn_caches")):
        raise TypeError("ar_video sampler requires a Causal-WAN compatible model whose diffusion_model exposes "
                        "init_kv_caches() and init_crossattn_caches()")
    seed = extra_args.get("seed", 0)
    B, C, T, H, W = x.shape
    seq = -(-H // 2) * -(-W // 2)
    dtype = base.get_dtype()
    kv = causal.init_kv_caches(B, T * seq, x.device, dtype)
    cross = causal.init_crossattn_caches(B, x.device, dtype)
    out = torch.zeros_like(x)
    ones = x.new_ones([B])
    start = 0
    blocks = -(-T // num_frame_per_block)
    try:
        initial = to.get("ar_config", {}).get("initial_latent")
        if initial is not None:
            initial = base.process_latent_in(initial).to(device=x.device, dtype=dtype)
            n = initial.shape[2]
            out[:, :, :n] = initial
            to["ar_state"] = {"start_frame": 0, "kv_caches": kv, "crossattn_caches": cross}
            model(initial, sigmas.new_zeros([1]) * ones, **extra_args)
            start = n
            blocks = -(-(T - n) // num_frame_per_block)
        steps = len(sigmas) - 1
        for b in range(blocks):
            bf = min(num_frame_per_block, T - start)
            xb = x[:, :, start:start + bf]
            to["ar_state"] = {"start_frame": start, "kv_caches": kv, "crossattn_caches": cross}
            for i in range(steps):
                denoised = model(xb, sigmas[i] * ones, **extra_args)
                if callback is not None:
                    callback({"x": xb, "i": (b * steps + i) * steps // (blocks * steps), "sigma": sigmas[i],
                              "sigma_hat": sigmas[i], "denoised": denoised})
                if sigmas[i + 1] == 0:
                    xb = denoised
                else:
                    torch.manual_seed(seed + b * 1000 + i)
                    xb = (1.0 - sigmas[i + 1]) * denoised + sigmas[i + 1] * torch.randn_like(denoised)
                    for c in kv:
                        c["end"] -= bf * seq
            out[:, :, start:start + bf] = xb
            for c in kv:
                c["end"] -= bf * seq
            model(xb, sigmas.new_zeros([1]) * ones, **extra_args)
            start += bf
    finally:
        to.pop("ar_state", None)
    return out
