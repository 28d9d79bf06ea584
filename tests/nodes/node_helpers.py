"""Helpers shared by the node tests (tests/nodes/*.py and tests/test_workflows.py):
importing the pack as ComfyUI does, small inputs, and a snapshot of what a node must leave
unchanged on its input MODEL."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os

import torch

import comfy_stub_tools
from helpers import ROOT, make_tiny_wan

PACK_MODULE = "ComfyUI_Dummy_Forcing"
TEXT_DIM = 32  # tiny geometry: 2 layers x 4 heads, head dim 16, latent 4x4 (4 tokens/frame), 16 channels


def load_pack():
    """Import the pack the way ComfyUI's nodes.load_custom_node does (spec_from_file_location)."""
    return comfy_stub_tools.import_pack(ROOT, PACK_MODULE)


def pack_nodes() -> dict:
    classes, _ = comfy_stub_tools.load_pack_nodes(load_pack())
    return classes


def tiny_wan(seed=0, layers=2, heads=4, head_dim=16):
    """helpers.make_tiny_wan with in_dim 16, float32."""
    return make_tiny_wan(layers=layers, heads=heads, head_dim=head_dim, seed=seed,
                                          dtype=torch.float32, text_dim=TEXT_DIM, in_dim=16)


def tiny_causal_wan(seed=0, layers=2, heads=4, head_dim=16):
    """The stub's CausalWanModel (ComfyUI 0.27's causal AR model) with tiny_wan's weights."""
    from comfy.ldm.wan.ar_model import CausalWanModel
    net = tiny_wan(seed, layers, heads, head_dim)
    causal = CausalWanModel(net.config)
    causal.load_state_dict(net.state_dict())
    return causal.eval()


def cond(seed=0, batch=1, tokens=8, dim=TEXT_DIM):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dim, generator=g), {"pooled_output": None}]]


def video_latent(batch=1, frames=6, h=4, w=4, channels=16, fill=None, seed=0):
    if fill is None:
        x = torch.zeros(batch, channels, frames, h, w)
    else:
        x = torch.randn(batch, channels, frames, h, w, generator=torch.Generator().manual_seed(seed))
    return {"samples": x}


def deep_equal(a, b) -> bool:
    """== that also compares tensors, dataclasses (e.g. DummyForcingConfig with a HeadProfile)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(deep_equal(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    return a == b


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.model.diffusion_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


class ModelSnapshot:
    """Everything a node must leave as it was on its input MODEL."""

    def __init__(self, model):
        self.model = model
        self.options = copy.deepcopy(model.model_options)
        self.options_id = id(model.model_options)
        self.to_id = id(model.model_options.get("transformer_options"))
        self.digest = weights_digest(model)
        self.object_patches = dict(model.object_patches)
        self.patches = {k: list(v) for k, v in model.patches.items()}

    def assert_unchanged(self):
        m = self.model
        assert deep_equal(m.model_options, self.options), "model_options changed"
        assert id(m.model_options) == self.options_id
        assert id(m.model_options.get("transformer_options")) == self.to_id
        assert weights_digest(m) == self.digest, "weights changed"
        assert m.object_patches == self.object_patches
        assert {k: list(v) for k, v in m.patches.items()} == self.patches
