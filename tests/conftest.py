"""Shared test helpers: tiny random Wan models on CPU."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dummy_forcing_core.wan_model import WanConfig, WanModel  # noqa: E402


def make_tiny_wan(layers=2, heads=4, head_dim=16, seed=0, dtype=torch.float64, text_dim=32, in_dim=16,
                  ffn_mult=2, freq_dim=32) -> WanModel:
    cfg = WanConfig(dim=heads * head_dim, ffn_dim=ffn_mult * heads * head_dim, num_heads=heads, num_layers=layers,
                    in_dim=in_dim, out_dim=in_dim, text_dim=text_dim, freq_dim=freq_dim)
    return WanModel(cfg).init_random(seed).to(dtype).eval()


@pytest.fixture
def tiny_wan():
    return make_tiny_wan()
