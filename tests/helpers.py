"""Helpers shared by the test folders (import as ``from helpers import ...``; tests/ is on
sys.path through tests/conftest.py, so any subset of the tests can run alone)."""
from __future__ import annotations

import contextlib
import os
import sys
import weakref

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


class _FakeStream:
    def wait_stream(self, other):
        pass


class _Replay:
    """Stands in for a captured CUDA graph on the CPU: a replay recomputes the captured pass
    into its static output and, like a real replay, leaves no host-side bookkeeping behind."""

    def __init__(self, entry, cache):  # weak, as a real graph holds no Python objects
        self.entry, self.cache = weakref.ref(entry), weakref.ref(cache)

    def replay(self):
        c, entry = self.cache(), self.entry()
        flops = (c.flops.done, c.flops.full)
        tokens = [(g, g.chunk_tokens) for layer in c.layers for g in layer.groups]
        out, _ = entry.fn()
        entry.out.copy_(out)
        c.flops.done, c.flops.full = flops
        for g, n in tokens:
            g.chunk_tokens = n


def install_fake_graphs(monkeypatch, on_capture=None) -> None:
    """The fused forward's CUDA-graph logic (when to capture, static inputs, replayed host
    bookkeeping) on the CPU: streams and graphs are stand-ins; ``on_capture(cache)`` after each
    capture."""
    from dummy_forcing_core import cuda_graphs, fused_forward

    stream = _FakeStream()
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", lambda g, stream=None, **kw: contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None, raising=False)
    real = cuda_graphs.PassGraphs._capture

    def capture(self, key, x, timesteps, rope, cache, text, eager, keep):
        entry = real(self, key, x, timesteps, rope, cache, text, eager, keep)
        entry.graph = _Replay(entry, cache)
        if on_capture is not None:
            on_capture(cache)
        return entry

    monkeypatch.setattr(cuda_graphs.PassGraphs, "_capture", capture)
    monkeypatch.setattr(fused_forward.FusedForward, "_use_graphs", lambda self: self.opts.cuda_graphs)
