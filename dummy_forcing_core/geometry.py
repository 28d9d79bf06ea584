"""What a KV cache, a head profile and a latent check depend on: a Wan transformer's shape.

Read from any module with Wan2.1's structure (ComfyUI's ``WanModel`` / ``CausalWanModel``,
the pack's :class:`~dummy_forcing_core.wan_model.WanModel`); heads and dims come from the
model, so 1.3B (30 x 12 heads) and 14B (40 x 40 heads) are driven alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SettingError

__all__ = ["ModelGeometry", "WAN_KEYS", "check_latent"]

WAN_KEYS = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head")


@dataclass(frozen=True)
class ModelGeometry:
    num_layers: int
    num_heads: int
    head_dim: int
    dim: int
    in_dim: int
    out_dim: int
    patch_size: tuple[int, int, int]
    freq_dim: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelGeometry":
        missing = [k for k in WAN_KEYS if not hasattr(model, k)]
        if missing:
            raise TypeError(f"{type(model).__name__} is not a Wan2.1 transformer: it has no {', '.join(missing)}. "
                            "Load a Wan2.1 text-to-video diffusion model.")
        dim = int(model.dim)
        heads = int(model.num_heads)
        in_dim = int(model.in_dim) if hasattr(model, "in_dim") else int(model.patch_embedding.weight.shape[1])
        return cls(len(model.blocks), heads, dim // heads, dim, in_dim, int(model.out_dim),
                   tuple(int(p) for p in model.patch_size), int(model.freq_dim))

    def fingerprint(self) -> dict:
        return {"num_layers": self.num_layers, "num_heads": self.num_heads, "head_dim": self.head_dim, "dim": self.dim}

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of ``height`` x ``width`` latent pixels."""
        _, ph, pw = self.patch_size
        return (height // ph) * (width // pw)

    def describe(self) -> str:
        return f"{self.num_layers} layers x {self.num_heads} heads (head dim {self.head_dim})"


def check_latent(shape, geom: ModelGeometry, name: str = "latent") -> None:
    """Refuse a latent shape [B, C, F, H, W] the model cannot generate chunk by chunk; the
    error names the input (``name``) and says what would fix it."""
    shape = tuple(int(s) for s in shape)
    what = f"the '{name}' input"
    if len(shape) != 5:
        raise SettingError("input", name, f"{what} must be a video latent [B, C, frames, H, W] (5 dims), got shape "
                           f"{list(shape)}; an image latent [B, C, H, W] cannot be generated chunk by chunk: use a "
                           "video latent (EmptyHunyuanLatentVideo / EmptyARVideoLatent)")
    B, C, Fr, Hh, Ww = shape
    if min(B, Fr, Hh, Ww) < 1:
        raise SettingError("input", name, f"{what} has shape {list(shape)}: batch, frames, height and width must all "
                           "be at least 1 (a width, height or length of 0 makes an empty latent)")
    if C != geom.in_dim:
        raise SettingError("input", name, f"{what} has {C} channels but the model takes {geom.in_dim} (a Wan2.1 "
                           "latent has 16)")
    _, ph, pw = geom.patch_size
    if Hh % ph or Ww % pw:
        raise SettingError("input", name, f"{what} height/width {Hh}x{Ww} must be divisible by the patch {ph}x{pw} "
                           f"(image width and height divisible by {8 * ph})")
