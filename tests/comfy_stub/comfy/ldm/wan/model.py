"""Stub of comfy/ldm/wan/model.py: Wan2.1's WanModel.

The pack's standalone WanModel has ComfyUI's parameter names and attributes (dim, num_heads,
freq_dim, patch_size, out_dim, blocks[i].self_attn.q ...), so the stub uses it as ComfyUI's
WanModel; forward(x, timestep, context, ...) is the bidirectional whole-latent pass.
"""
from dummy_forcing_core.wan_model import WanModel as _PackWanModel


class WanModel(_PackWanModel):
    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        return super().forward(x, timestep, context)
