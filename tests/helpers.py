"""Helpers shared by the test folders (import as ``from helpers import ...``; tests/ is on
sys.path through tests/conftest.py, so any subset of the tests can run alone)."""
from __future__ import annotations

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dummy_forcing_core.wan_model import WanConfig, WanModel  # noqa: E402


def make_tiny_wan(layers=2, heads=4, head_dim=16, seed=0, dtype=torch.float64, text_dim=32, in_dim=16,
                  ffn_mult=2, freq_dim=32) -> WanModel:
    """A small random Wan2.1 model (the pack's standalone WanModel), deterministic from ``seed``."""
    cfg = WanConfig(dim=heads * head_dim, ffn_dim=ffn_mult * heads * head_dim, num_heads=heads, num_layers=layers,
                    in_dim=in_dim, out_dim=in_dim, text_dim=text_dim, freq_dim=freq_dim)
    return WanModel(cfg).init_random(seed).to(dtype).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference |a - b| / |b| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
