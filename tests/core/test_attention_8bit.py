"""8-bit attention (dummy_forcing_core/attention_8bit.py): the backend choice and its fallbacks,
the block quantizer, the Triton kernels in Triton's interpreter against a float64 reference,
and the fused forward's use of them (CPU: falls back exactly; CUDA: close to bf16 attention)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from dummy_forcing_core import attention_8bit as a8
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.kv_cache import FULL
from dummy_forcing_core.wan_model import WanConfig, WanModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _fresh_log_memory(monkeypatch):
    monkeypatch.setattr(a8, "_said", set())


def _warnings(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and "8-bit attention" in r.getMessage()]


def test_resolve_falls_back_to_exact_attention_with_one_log_line(caplog):
    caplog.set_level(logging.WARNING)
    assert a8.resolve("off", "cpu", 128, torch.bfloat16) == "off"
    assert not _warnings(caplog)
    for _ in range(3):
        assert a8.resolve("triton", "cpu", 128, torch.bfloat16) == "off"
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "CUDA" in msgs[0].getMessage()
    with pytest.raises(ValueError, match="8-bit attention must be one of"):
        a8.resolve("int4", "cpu", 128, torch.bfloat16)


@pytest.mark.parametrize("cap, triton_ok, sage, choice, want", [
    ((9, 0), True, True, "auto", "off"),       # Hopper, sageattention 1: cuDNN bf16 measured faster
    ((9, 0), True, 2, "auto", "sage"),         # Hopper, sageattention 2: faster on long calls
    ((8, 0), True, 2, "auto", "off"),          # Ampere
    ((8, 9), True, False, "auto", "triton"),   # Ada
    ((12, 0), False, True, "auto", "sage"),    # consumer Blackwell without Triton
    ((9, 0), True, False, "triton", "triton"),
    ((7, 5), True, False, "triton", "off"),    # Turing: no int8 products in these kernels
    ((9, 0), True, False, "sage", "off"),      # package missing
    ((9, 0), True, True, "sage", "sage"),
])
def test_resolve_by_gpu_and_packages(monkeypatch, caplog, cap, triton_ok, sage, choice, want):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(a8, "_cuda_capability", lambda device: cap)
    monkeypatch.setattr(a8, "HAVE_TRITON", triton_ok)
    monkeypatch.setattr(a8, "sage_available", lambda: bool(sage))
    monkeypatch.setattr(a8, "sage_major", lambda: 2 if sage == 2 else 1)
    monkeypatch.setattr(a8, "_sage_problem", lambda device: None)
    assert a8.resolve(choice, "cuda", 128, torch.bfloat16) == want
    if want == "off":
        assert len(_warnings(caplog)) == 1
    assert a8.resolve(choice, "cuda", 96, torch.bfloat16) == "off"  # head dim the kernels do not take
    assert a8.resolve(choice, "cuda", 128, torch.float32) == "off"


def test_sage_that_cannot_run_here_falls_back_before_the_video(monkeypatch, caplog):
    """A sageattention build without this GPU's kernels (SageAttention 2 asserts inside sageattn)
    is found by resolve's trial call, not in the middle of a video."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(a8, "_cuda_capability", lambda device: (9, 0))
    monkeypatch.setattr(a8, "sage_available", lambda: True)
    monkeypatch.setattr(a8, "sage_version", lambda: "2.2.0")
    monkeypatch.setattr(a8, "_sage_checked", {})
    calls = []

    def broken(out, q, k, v):
        calls.append("sage")
        raise AssertionError("SM90 kernel is not available")
    monkeypatch.setattr(a8, "_sage_into", broken)
    monkeypatch.setattr(torch, "randn", lambda *a, **kw: torch.zeros(a))  # no CUDA here: stand-ins
    for _ in range(2):
        assert a8.resolve("sage", "cuda", 128, torch.bfloat16) == "off"
    assert calls == ["sage"]  # tried once per device
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "sageattention 2.2.0 did not run" in msgs[0].getMessage()
    assert "SM90 kernel is not available" in msgs[0].getMessage()


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantize_blocks_round_trip_and_padding(kind):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 50, 16, generator=g) * torch.linspace(0.1, 10, 50)[:, None]  # blocks of very different range
    y, s = a8.quantize_blocks(x, 16, kind)
    assert y.shape == (6, 64, 16) and s.shape == (6, 4)
    back = (y.float().view(6, 4, 16, 16) * s[:, :, None, None]).view(6, 64, 16)
    assert torch.all(back[:, 50:] == 0)
    err = (back[:, :50].view(2, 3, 50, 16) - x).abs()
    per_block = s.view(2, 3, 4)[..., :, None].repeat_interleave(16, dim=-2)[:, :, :50]  # scale of each token's block
    bound = 0.5 * per_block if kind == "int8" else per_block * 448 / 16  # half a step / e4m3's 3 mantissa bits
    assert torch.all(err <= bound + 1e-6)
    yt, _ = a8.quantize_blocks(x, 16, kind, transpose=True)
    assert torch.equal(yt.float(), y.float().transpose(1, 2))


_INTERPRETED = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import numpy as np
import triton.runtime.interpreter as it
_orig = it._patch_lang_tensor
def _patched(tensor, scope):  # numpy >= 2.4 refuses int() of the interpreter's 1-element scalars
    _orig(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
it._patch_lang_tensor = _patched
from dummy_forcing_core import attention_8bit as a8
a8._BLOCK_M = a8._BLOCK_N = 32
g = torch.Generator().manual_seed(0)
B, Lq, H, D, Lk = 2, 45, 3, 64, 70   # neither length a multiple of the blocks
q = torch.randn(B, Lq, H, D, generator=g) * 2
k = torch.randn(B, H, Lk, D, generator=g); k[..., :4] += 4
v = torch.randn(B, H, Lk, D, generator=g)
ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2).double(), k.double(), v.double()).transpose(1, 2)
# the quantizer kernel equals the torch reference
y, s = a8._quantize_triton(k, 32, True, 1.0, False)
y0, s0 = a8.quantize_blocks(k, 32, "int8")
assert torch.allclose(s, s0.float(), rtol=1e-5) and (y.int() - y0.int()).abs().max() <= 1, "quantizer"
for qk, pv, tol in (("int8", "16", 0.05), ("int8", "fp8", 0.15)):
    wide = torch.full((B, Lq, H + 2, D), float("nan"))
    out = wide[:, :, 1:1 + H]                       # a slice of a wider tensor, as the fused forward's groups
    a8._triton_attention(out, q, k, v, qk, pv)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(out).all(), (qk, pv, "unwritten")
    assert torch.isnan(wide[:, :, 0]).all() and torch.isnan(wide[:, :, -1]).all(), (qk, pv, "wrote outside")
    assert err < tol, (qk, pv, err)
    print(qk, pv, err)
# a planted behaviour: one key that every query attends to almost alone comes out as its value
k2, v2 = k.clone(), v.clone()
k2[:, :, 7] = q.mean(1) * 10
out = torch.empty(B, Lq, H, D)
a8._triton_attention(out, q, k2, v2, "int8", "16")
want = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2).double(), k2.double(), v2.double()).transpose(1, 2)
assert ((out.double() - want).norm() / want.norm()).item() < 0.05
print("ok")
"""


def test_triton_kernels_against_float64_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", _INTERPRETED, ROOT], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout[-1000:], r.stderr[-3000:])


def _model(head_dim: int, seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    cfg = WanConfig(dim=2 * head_dim, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, freq_dim=16, in_dim=4,
                    out_dim=4)
    return WanModel(cfg).eval()


def _chunks(runner, device, dtype):
    g = torch.Generator().manual_seed(3)
    text = runner.encode_text(torch.randn(1, 5, 16, generator=g).to(device))
    cache = runner.new_cache(1, 4, 6, 9, 3, FULL)
    outs = []
    for f0 in (0, 3, 6):
        x = torch.randn(1, 4, 3, 4, 6, generator=g).to(device)
        t = torch.full((1,), 500.0, device=device)
        outs.append(runner.forward(x, t, f0, text, cache))
        runner.forward(x, t * 0, f0, text, cache, commit=True)
    return torch.cat(outs, 2)


def test_fused_forward_on_cpu_falls_back_to_the_exact_path():
    m = _model(64)
    off = ChunkRunner(m, fast=FastOptions(attention_8bit="off"))
    on = ChunkRunner(m, fast=FastOptions(attention_8bit="triton"))
    assert on.fast_path is not None and on.fast_path.attention_backend == "off"
    assert torch.equal(_chunks(off, "cpu", torch.float32), _chunks(on, "cpu", torch.float32))
    with pytest.raises(ValueError, match="attention_8bit"):
        FastOptions(attention_8bit="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_8bit_attention_is_close_to_bf16_attention_and_captures():
    pytest.importorskip("triton")
    m = _model(128).to("cuda", torch.bfloat16)
    ref = _chunks(ChunkRunner(m, fast=FastOptions(attention_8bit="off")), "cuda", torch.bfloat16).float()
    r8 = ChunkRunner(m, fast=FastOptions(attention_8bit="triton"))
    got = _chunks(r8, "cuda", torch.bfloat16).float()
    assert r8.fast_path.attention_backend == "triton"
    assert torch.isfinite(got).all()
    assert ((got - ref).norm() / ref.norm()).item() < 0.05
    assert r8.fast_path.graphs.error is None


def test_fused_forward_reads_inference_tensor_weights():
    """ComfyUI can hold weights as inference tensors (no version counter): the fused forward's
    derived-weight keys must not need one."""
    with torch.inference_mode():
        m = _model(64).requires_grad_(False)
    assert m.blocks[0].self_attn.q.weight.is_inference()
    plain = _model(64).requires_grad_(False)
    got = _chunks(ChunkRunner(m, fast=FastOptions()), "cpu", torch.float32)
    want = _chunks(ChunkRunner(plain, fast=FastOptions()), "cpu", torch.float32)
    assert torch.equal(got, want)


def test_sage_2_on_hopper_takes_the_long_calls_only(monkeypatch):
    """SageAttention 2 on Hopper lost to cuDNN below 8192 query tokens (480p chunks): those calls
    run exact; longer ones and other GPUs go to sageattn."""
    q = torch.randn(1, 16, 2, 8)
    k, v = torch.randn(1, 2, 24, 8), torch.randn(1, 2, 24, 8)
    sent = []
    monkeypatch.setattr(a8, "_sage_into", lambda out, q, k, v: sent.append(q.shape[1]) or out.fill_(0))
    for cap, major, want_min in (((9, 0), 2, 8192), ((9, 0), 1, 0), ((8, 9), 2, 0), ((12, 0), 2, 0)):
        monkeypatch.setattr(a8, "_cuda_capability", lambda device: cap)
        monkeypatch.setattr(a8, "sage_major", lambda: major)
        monkeypatch.setattr(a8, "_sage_min", {})
        assert a8.sage_min_queries("cuda") == want_min
        monkeypatch.setattr(a8, "_sage_min", {"cpu": want_min})  # the inputs below live on the CPU
        sent.clear()
        out = a8.attention_8bit("sage", torch.full_like(q, float("nan")), q, k, v)
        if want_min > q.shape[1]:  # exact: equals SDPA
            assert sent == [] and torch.allclose(out, a8.sdpa_into(torch.empty_like(q), q, k, v))
        else:
            assert sent == [16] and torch.all(out == 0)
