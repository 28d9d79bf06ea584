"""The inference fast path (fused kernels' torch fallbacks, grouped weights, one QKV product)
computes the same function as the reference loop: exactly in float64 on the CPU, and the
Triton kernels (through Triton's CPU interpreter, when Triton is installed) match their torch
fallbacks in float32."""
import os
import subprocess
import sys

import gc
import weakref

import pytest
import torch

from helpers import install_fake_graphs, make_tiny_wan
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.fast_kernels import residual_norm_modulate, rms_norm_rope
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.head_program import HeadType
from dummy_forcing_core.kv_cache import KVCache, Retention
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.rope import apply_rope, rope_table
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.geometry import ModelGeometry

H_LAT, W_LAT = 4, 6
SINK, NEIGH, DUMMY = HeadType.SINK, HeadType.NEIGHBOR, HeadType.DUMMY
SCORE_OF = {SINK: (0.6, 0.1, 0.3), NEIGH: (0.1, 0.6, 0.3), DUMMY: (0.01, 0.02, 0.97)}
MIXED = [[SINK, DUMMY, NEIGH, DUMMY], [NEIGH, SINK, DUMMY, SINK], [NEIGH, NEIGH, NEIGH, NEIGH]]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model():
    return make_tiny_wan(layers=3, heads=4, head_dim=16, seed=7)


@pytest.fixture(scope="module")
def ctx():
    return torch.randn(1, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def planted(model):
    scores = torch.tensor([[SCORE_OF[t] for t in layer] for layer in MIXED], dtype=torch.float32)
    return HeadProfile(scores, ModelGeometry.of(model).fingerprint(), {"planted": True})


def test_auto_is_off_on_cpu_and_on_when_asked(model):
    assert ChunkRunner(model).fast_path is None
    assert ChunkRunner(model, fast=True).fast_path is not None
    assert ChunkRunner(model, fast=False).fast_path is None


@pytest.mark.parametrize("opts", [FastOptions(), FastOptions(fuse_qkv=False), FastOptions(group_heads=False),
                                  FastOptions(fused_kernels=False, linear_patch_embed=False, gelu_epilogue=False)])
@pytest.mark.parametrize("case", ["full", "window", "df", "df_nopack", "df_long"])
def test_fast_generation_equals_reference_loop(model, ctx, opts, case):
    ret = Retention(1, 3) if case == "window" else Retention()
    cfg = None
    if case.startswith("df"):
        cfg = DummyForcingConfig(dummy_head_count=5, ar_start=1, context_packing=case != "df_nopack",
                                 long_context_frames=5 if case == "df_long" else 0, head_profile=planted(model))
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=5)
    shape = (1, 16, 15, H_LAT, W_LAT)
    ref = generate(ChunkRunner(model, fast=False), ctx, shape, settings, CacheSpec(ret, cfg))
    got = generate(ChunkRunner(model, fast=opts), ctx, shape, settings, CacheSpec(ret, cfg))
    assert rel(got.latent, ref.latent) < 1e-12
    assert got.stats.kv_bytes == ref.stats.kv_bytes
    assert got.stats.attn_flops == ref.stats.attn_flops


def test_online_profiling_and_start_frames_through_the_fast_path(model, ctx):
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=1)
    start = torch.randn(1, 16, 15, H_LAT, W_LAT, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, ar_start=1, profile_sample_fraction=1.0))
    a = generate(ChunkRunner(model, fast=False), ctx, (1, 16, 15, H_LAT, W_LAT), settings, cfg,
                 start_latent=start, start_frames=2)
    b = generate(ChunkRunner(model, fast=True), ctx, (1, 16, 15, H_LAT, W_LAT), settings, cfg,
                 start_latent=start, start_frames=2)
    assert a.stats.head_types == b.stats.head_types
    assert rel(b.latent, a.latent) < 1e-12


def test_weights_are_rebuilt_when_a_weight_changes(model, ctx):
    m = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=3)
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000,), seed=1)
    shape = (1, 16, 6, H_LAT, W_LAT)
    runner = ChunkRunner(m, fast=True)
    generate(runner, ctx, shape, settings)
    with torch.no_grad():
        m.blocks[1].self_attn.k.weight.mul_(1.5)  # an in-place patch between videos
    got = generate(runner, ctx, shape, settings)
    ref = generate(ChunkRunner(m, fast=False), ctx, shape, settings)
    assert rel(got.latent, ref.latent) < 1e-12


def test_unsupported_modules_keep_the_reference_loop(model):
    m = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=3)
    m.blocks[0].ffn[0].register_forward_hook(lambda *a: None)
    r = ChunkRunner(m, fast=True)
    assert r.fast_path is None and "plain Linear" in r.fast_reason


@pytest.mark.parametrize("patch", ["weight_function", "bias_function", "weight_lowvram_function", "elsewhere", None])
def test_comfys_call_time_weight_patches_keep_the_reference_loop(patch):
    """A ComfyUI layer that only casts its weights (comfy_cast_weights) runs fused; one whose
    call applies a patch (LoRA on the fly: weight_function, dynamic VRAM's lowvram functions) or
    whose weights are not on the device does not."""
    m = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.comfy_cast_weights = True
    lin = m.blocks[1].self_attn.o
    if patch == "elsewhere":
        lin.weight = torch.nn.Parameter(lin.weight.detach().to("meta"), requires_grad=False)
    elif patch == "weight_lowvram_function":
        lin.weight_lowvram_function = lambda w: w
    elif patch is not None:
        setattr(lin, patch, [lambda w: w])
    r = ChunkRunner(m, fast=True)
    assert (r.fast_path is None) == (patch is not None), r.fast_reason


def test_fused_kernel_fallbacks_equal_the_plain_formulas():
    g = torch.Generator().manual_seed(0)
    B, Fr, T, C = 2, 3, 5, 24
    x = torch.randn(B, Fr * T, C, dtype=torch.float64, generator=g)
    y = torch.randn(B, Fr * T, C, dtype=torch.float64, generator=g)
    gate, mul, add = (torch.randn(B, Fr, C, dtype=torch.float64, generator=g) for _ in range(3))
    want_x = (x.view(B, Fr, T, C) + y.view(B, Fr, T, C) * gate[:, :, None]).view(B, -1, C)
    ln = torch.nn.functional.layer_norm(want_x, (C,), eps=1e-6)
    want_h = (ln.view(B, Fr, T, C) * mul[:, :, None] + add[:, :, None]).view(B, -1, C)
    xx = x.clone()
    h = residual_norm_modulate(xx, Fr, 1e-6, y=y, gate=gate, mul=mul, add=add)
    assert torch.allclose(xx, want_x, atol=1e-14) and torch.allclose(h, want_h, atol=1e-12)
    # RMSNorm over all heads, then RoPE per head == RMSNorm module + apply_rope
    H, D = 4, 6
    q = torch.randn(B * Fr * T, H * D, dtype=torch.float64, generator=g)
    w = torch.randn(H * D, dtype=torch.float64, generator=g)
    table = rope_table(Fr, 1, T, D, 11, dtype=torch.float64)
    rms = torch.nn.RMSNorm(H * D, eps=1e-6).double()
    with torch.no_grad():
        rms.weight.copy_(w)
        want = apply_rope(rms(q).view(B, Fr * T, H, D), table).reshape(-1, H * D)
    got = rms_norm_rope(q, w, 1e-6, table.cos, table.sin, Fr * T)
    assert torch.allclose(got, want, atol=1e-12)


def test_cache_capacity_option():
    c = KVCache.create(2, 4, 8, 6, 3, 21, Retention(), capacity_frames=6)
    assert c.layers[0].groups[0].k.shape[2] == 6 * 6
    with pytest.raises(ValueError, match="capacity_frames"):
        KVCache.create(2, 4, 8, 6, 3, 21, Retention(), capacity_frames=2)


_INTERPRETED = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
from dummy_forcing_core import fast_kernels as fk
from dummy_forcing_core.rope import rope_table
assert fk.HAVE_TRITON


def e4m3_equal(got, want):
    # e4m3 tensors equal, except where the interpreter's float32 -> e4m3 cast drops the carry of
    # a round-up to a power of two (127.4 -> 64 instead of 128; the GPU's cast instruction rounds
    # right). Returns the fraction exactly equal.
    a8, b8 = got.float(), want.float()
    carry_bug = (a8 * 2 == b8) & (torch.frexp(b8.abs())[0] == 0.5)
    assert got.dtype == torch.float8_e4m3fn and torch.all((a8 == b8) | carry_bug)
    return (a8 == b8).float().mean()


g = torch.Generator().manual_seed(0)
B, Fr, T, C = 2, 3, 5, 96
x = torch.randn(B, Fr * T, C, generator=g); y = torch.randn(B, Fr * T, C, generator=g)
mod = torch.randn(B, Fr, 6, C, generator=g); w3 = torch.randn(C, generator=g)
for kw in (dict(y=y, gate=mod[:, :, 2], mul=mod[:, :, 1], add=mod[:, :, 0]), dict(y=y, mul=w3, add=w3 * 0.5),
           dict(mul=mod[0, :, 4]), dict(y=y, gate=mod[:, :, 5], mul=mod[:, :, 1], add=mod[:, :, 0], write_x=False)):
    a, b = x.clone(), x.clone()
    ha = fk.residual_norm_modulate(a, Fr, 1e-6, **kw)
    hb = fk.residual_norm_modulate(b, Fr, 1e-6, use_triton=False, **kw)
    assert (a - b).abs().max() < 1e-5 and (ha - hb).abs().max() < 1e-4, kw.keys()
    # e4m3 output (an fp8 product's input): the same values within one e4m3 step, clamped
    h8 = fk.residual_norm_modulate(x.clone(), Fr, 1e-6, e4m3=True, **{**kw, "mul": kw["mul"] * 300})
    h8b = fk.residual_norm_modulate(x.clone(), Fr, 1e-6, e4m3=True, use_triton=False, **{**kw, "mul": kw["mul"] * 300})
    assert h8.float().abs().max() == 448 and e4m3_equal(h8, h8b) > 0.95
H, D = 4, 24
t = rope_table(Fr, 1, T, D, 7)
qkv = torch.randn(B * Fr * T, 3 * H * D, generator=g); w = torch.randn(H * D, generator=g)
for cs in ((t.cos, t.sin), (None, None)):
    a = fk.rms_norm_rope(qkv[:, H * D:2 * H * D], w, 1e-6, *cs, Fr * T)
    b = fk.rms_norm_rope(qkv[:, H * D:2 * H * D], w, 1e-6, *cs, Fr * T, use_triton=False)
    assert (a - b).abs().max() < 1e-4
# copy_rows: token-major <-> head-major slices (the copies around attention), bitwise
src = torch.randn(2, 7, 6, 16, generator=g).to(torch.bfloat16)
for s_view, d_shape in ((src.transpose(1, 2), (2, 6, 7 + 5, 16)), (src[:, :, 1:4], (2, 7, 9, 16))):
    big = torch.full(d_shape, float("nan"), dtype=torch.bfloat16)
    dst = big[:, :, 2:2 + s_view.shape[2]]
    assert fk.triton_usable(s_view)
    fk.copy_rows(dst, s_view)
    assert torch.equal(dst, s_view) and torch.isnan(big).sum() == big.numel() - dst.numel()
    # into e4m3 (an fp8 product's input), clamped to its range
    d8 = torch.empty(s_view.shape, dtype=torch.float8_e4m3fn)
    wide = s_view.float() * 300 + torch.rand(s_view.shape, generator=g)  # float32: no rounding ties
    fk.copy_rows(d8, wide)
    assert d8.float().abs().max() == 448 and e4m3_equal(d8, wide.clamp(-448, 448).to(torch.float8_e4m3fn)) > 0.9
print("ok")
"""


def test_triton_kernels_match_fallbacks_in_the_interpreter():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", _INTERPRETED, root], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("case", ["df", "window"])
def test_graph_replay_bookkeeping_equals_eager(model, ctx, monkeypatch, case):
    """The CUDA-graph logic (when to capture, static inputs, replayed host bookkeeping) run on
    the CPU with a stand-in graph: same latents and statistics as the eager fast path."""
    captured_caches = []
    install_fake_graphs(monkeypatch, on_capture=lambda cache: captured_caches.append(weakref.ref(cache)))
    ret = Retention(1, 3) if case == "window" else Retention()
    cfg = None if case == "window" else DummyForcingConfig(dummy_head_count=5, ar_start=1, head_profile=planted(model))
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 750, 500), seed=5)
    shape = (1, 16, 24, H_LAT, W_LAT)
    eager = generate(ChunkRunner(model, fast=FastOptions(cuda_graphs=False)), ctx, shape, settings, CacheSpec(ret, cfg))
    runner = ChunkRunner(model, fast=FastOptions(max_graphs=1))
    gc.disable()  # the cache must be freed by reference counting, not by a later collection
    try:
        graphed = generate(runner, ctx, shape, settings, CacheSpec(ret, cfg))
        # a graph keeps the buffers it reads: the session drops them when the video ends, so
        # the cache (GiBs at 1080p) does not outlive the video
        assert not runner.fast_path.graphs._graphs and captured_caches
        assert all(ref() is None for ref in captured_caches)
    finally:
        gc.enable()
    st = runner.fast_path.graphs.stats
    assert st["captures"] >= 1 and st["replays"] > st["captures"] and runner.fast_path.graphs.error is None
    assert rel(graphed.latent, eager.latent) < 1e-12
    assert graphed.stats.attn_flops == eager.stats.attn_flops
    assert graphed.stats.attn_flops_full == eager.stats.attn_flops_full
    assert graphed.stats.kv_bytes == eager.stats.kv_bytes


def test_a_changed_modulation_table_is_seen(ctx):
    """The fused path stacks the blocks' modulation tables once; an in-place change of one (a
    LoRA applied in place, an edit) is seen on the next pass, and the video equals the
    reference loop's."""
    model = make_tiny_wan(layers=3, heads=4, head_dim=16, seed=11, dtype=torch.float64)
    settings = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=4)
    shape = (1, 16, 6, H_LAT, W_LAT)
    runner = ChunkRunner(model, dtype=torch.float64, fast=FastOptions(cuda_graphs=False))
    before = generate(runner, ctx, shape, settings).latent
    with torch.no_grad():
        model.blocks[1].modulation.add_(0.25)
    after = generate(runner, ctx, shape, settings).latent
    ref = generate(ChunkRunner(model, dtype=torch.float64, fast=False), ctx, shape, settings).latent
    assert (after - ref).norm() / ref.norm() < 1e-10 and (after - before).norm() / before.norm() > 1e-4
