"""Stub of comfy/model_sampling.py (ComfyUI v0.3.64): flow-matching sampling used by Wan.

Mirrors: time_snr_shift(alpha, t); CONST (calculate_input, calculate_denoised, noise_scaling,
inverse_noise_scaling); ModelSamplingDiscreteFlow(model_config=None) with .shift, .multiplier,
.sigmas buffer, sigma_min/sigma_max, timestep(sigma) = sigma * multiplier, sigma(timestep),
percent_to_sigma(percent), set_parameters(shift=1.0, timesteps=1000, multiplier=1000).
(The core ModelSamplingSD3 node replaces model_sampling with one whose shift it sets.)
"""
import torch


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def _bcast(sigma, ndim):
    sigma = torch.as_tensor(sigma)
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1)) if sigma.ndim else sigma


class CONST:
    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _bcast(sigma, model_output.ndim)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        s = _bcast(sigma, noise.ndim)
        return s * noise + (1.0 - s) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - _bcast(sigma, latent.ndim))


class ModelSamplingDiscreteFlow(torch.nn.Module):
    def __init__(self, model_config=None):
        super().__init__()
        settings = getattr(model_config, "sampling_settings", None) or {}
        self.set_parameters(shift=settings.get("shift", 1.0), multiplier=settings.get("multiplier", 1000))

    def set_parameters(self, shift=1.0, timesteps=1000, multiplier=1000):
        self.shift = shift
        self.multiplier = multiplier
        ts = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)
        self.register_buffer("sigmas", ts)

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


class ModelSamplingFlowWan(ModelSamplingDiscreteFlow, CONST):
    """What model_base.model_sampling() builds for ModelType.FLOW (a class mixing both)."""
