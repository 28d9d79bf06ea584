"""fp8 weights and other geometries: fp8-stored layers (plain cast or ComfyUI-style scaled) run in
the reference loop and the fused path, computing in the compute dtype from one layer's weight at
a time; a model with many heads and 14B's ratios runs like the 1.3B one."""
import copy

import pytest
import torch

from helpers import make_tiny_wan, rel

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.fp8 import Fp8Linear, fp8_linear, quantize_fp8
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.geometry import ModelGeometry
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.sampler import SamplerSettings, generate

H_LAT, W_LAT = 4, 6


def ctx(dim=32):
    return torch.randn(1, 5, dim, generator=torch.Generator().manual_seed(3))


def dequantized(model):
    """The same function in plain float32 Linears: fp8 weight * scale, exactly."""
    ref = copy.deepcopy(model)
    for block in ref.blocks:
        for name, mod in list(block.named_modules()):
            if isinstance(mod, Fp8Linear):
                lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
                scale = 1.0 if mod.scale_weight is None else mod.scale_weight
                w = mod.weight.float() * (scale[:, None] if torch.is_tensor(scale) and scale.ndim == 1 else scale)
                lin.weight.data.copy_(w)
                if mod.bias is not None:
                    lin.bias.data.copy_(mod.bias.float())
                parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                setattr(parent, name.rsplit(".", 1)[-1], lin)
    return ref


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("cache", ["full", "window", "df"])
def test_fp8_weights_equal_their_dequantized_model(scaled, fast, cache):
    model = quantize_fp8(make_tiny_wan(layers=3, heads=4, head_dim=16, seed=5, dtype=torch.float32), scaled=scaled)
    assert isinstance(model.blocks[0].self_attn.q, Fp8Linear)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    spec = {"full": CacheSpec(), "window": CacheSpec(Retention(1, 3)),
            "df": CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, profile_sample_fraction=1.0))}[cache]
    st = SamplerSettings(timesteps=(1000, 500), seed=2)
    shape = (1, 16, 12, H_LAT, W_LAT)
    runner = ChunkRunner(model, dtype=torch.float32, fast=fast)
    assert (runner.fast_path is not None) == fast, runner.fast_reason
    got = generate(runner, ctx(), shape, st, spec)
    ref = generate(ChunkRunner(dequantized(model), dtype=torch.float32, fast=False), ctx(), shape, st, spec)
    assert rel(got.latent, ref.latent) < 1e-5
    if fast:  # derived weights stay fp8: no full-precision copy of the block weights is made
        lw = runner.fast_path.layer_weights(0, list(range(4)))
        assert lw.qkv.w.dtype == torch.float8_e4m3fn and lw.o.w.dtype == torch.float8_e4m3fn


def rowwise(model):
    """Every Fp8Linear of ``model`` requantized with one scale per output row (in place): the
    row's amax / 448 times a factor from 0.5 to 2, so rows' scales really differ."""
    for block in model.blocks:
        for mod in block.modules():
            if isinstance(mod, Fp8Linear):
                w = mod.weight.float() * (1.0 if mod.scale_weight is None else mod.scale_weight)
                s = (w.abs().amax(1) / 448).clamp_min(1e-12) * torch.linspace(0.5, 2.0, w.shape[0])
                mod.weight.data = (w / s[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
                mod.scale_weight = s
    return model


# per layer, each head's (sink, neighbor, current) scores by planted type; with 5 dummy heads
# the regroup orders layer 1's heads [1, 3, 2, 0] (sink + dummy heads, then the neighbor head)
_TYPE_SCORES = {"s": (0.6, 0.1, 0.3), "n": (0.1, 0.6, 0.3), "d": (0.01, 0.02, 0.97)}
_PLANTED = ["sdnd", "nsds", "nnnn"]


def df_planted(model) -> CacheSpec:
    """Dummy Forcing with a planted head profile that permutes the heads of two layers."""
    scores = torch.tensor([[_TYPE_SCORES[t] for t in layer] for layer in _PLANTED], dtype=torch.float32)
    prof = HeadProfile(scores, ModelGeometry.of(model).fingerprint(), {"planted": True})
    return CacheSpec(dummy_forcing=DummyForcingConfig(dummy_head_count=5, ar_start=1, normalised_cost=False,
                                                        head_profile=prof))


@pytest.mark.parametrize("opts", [FastOptions(), FastOptions(fuse_qkv=False)])
def test_rowwise_fp8_scales_follow_the_regrouped_heads(opts):
    """Per-output-row scales of q / k / v are permuted with their rows when the regroup
    orders heads (one QKV product or three): the fused forward equals the reference loop."""
    model = rowwise(quantize_fp8(make_tiny_wan(layers=3, heads=4, head_dim=16, seed=5, dtype=torch.float32)))
    assert model.blocks[0].self_attn.q.scale_weight.shape == (64,)
    st = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=5)
    shape = (1, 16, 9, H_LAT, W_LAT)  # chunk 2 runs after the regroup
    runner = ChunkRunner(model, dtype=torch.float32, fast=opts)
    assert runner.fast_path is not None, runner.fast_reason
    got = generate(runner, ctx(), shape, st, df_planted(model))
    ref = generate(ChunkRunner(model, dtype=torch.float32, fast=False), ctx(), shape, st, df_planted(model))
    plain = generate(ChunkRunner(dequantized(model), dtype=torch.float32, fast=False), ctx(), shape, st,
                     df_planted(model))
    assert sorted(runner.fast_path._weights) == [0, 1, 2]
    assert runner.fast_path._weights[1].key[0] == (1, 3, 2, 0)  # the heads really were reordered
    assert rel(ref.latent, plain.latent) < 1e-5
    assert rel(got.latent, ref.latent) < 1e-5


@pytest.mark.parametrize("opts", [FastOptions(), FastOptions(group_heads=False)])
def test_fp8_and_float32_qkv_in_one_block(opts):
    """A block whose k is a float32 Linear and q / v fp8 (row-wise scales): that block keeps
    three products (fp8 and float32 do not make one), the others fuse; equal to the loop."""
    model = rowwise(quantize_fp8(make_tiny_wan(layers=3, heads=4, head_dim=16, seed=5, dtype=torch.float32)))
    model.blocks[1].self_attn.k = torch.nn.Linear(64, 64)
    st = SamplerSettings(chunk_frames=3, timesteps=(1000, 500), seed=5)
    shape = (1, 16, 9, H_LAT, W_LAT)  # chunk 2 runs after the regroup
    runner = ChunkRunner(model, dtype=torch.float32, fast=opts)
    assert runner.fast_path is not None, runner.fast_reason
    got = generate(runner, ctx(), shape, st, df_planted(model))
    ref = generate(ChunkRunner(model, dtype=torch.float32, fast=False), ctx(), shape, st, df_planted(model))
    assert rel(got.latent, ref.latent) < 1e-5
    w = runner.fast_path._weights
    assert w[1].qkv is None and w[1].k.w.dtype == torch.float32 and w[1].q.w.dtype == torch.float8_e4m3fn
    assert w[0].qkv is not None and w[2].qkv is not None


def test_fp8_products_cast_or_fp8_matmul():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=g)
    scale = w.abs().max() / 448
    q = (w / scale).to(torch.float8_e4m3fn)
    x, b = torch.randn(2, 5, 48, generator=g), torch.randn(32, generator=g)
    want = x @ (q.float() * scale).T + b
    assert rel(fp8_linear(x, q, b, scale), want) < 1e-6
    assert rel(fp8_linear(x, q, b, scale.expand(32), fp8_matmul=False), want) < 1e-6  # row-wise scales
    # the fp8 product (torch._scaled_mm; on the GPU where it has one): the input is rounded to e4m3 too
    dev = "cuda" if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9) else "cpu"
    x, q, b, scale, want = (t.to(dev) for t in (x, q, b, scale, want))
    if dev == "cuda":
        x, b = x.bfloat16(), b.bfloat16()
    try:
        one = fp8_linear(x, q, b, scale, fp8_matmul=True)
    except (RuntimeError, NotImplementedError) as err:  # older torch: no fp8 product on the CPU
        pytest.skip(f"torch._scaled_mm on {dev}: {err}")
    assert 1e-4 < rel(one, want) < 0.06
    # row-wise scales: the same product (on the GPU another kernel, bf16 out: rounding apart)
    assert rel(fp8_linear(x, q, b, scale.expand(32), fp8_matmul=True), one) < (1e-2 if dev == "cuda" else 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an fp8 GPU")
def test_fp8_matmul_on_the_gpu_is_close_to_bf16():
    model = quantize_fp8(make_tiny_wan(layers=2, heads=4, head_dim=32, seed=5, dtype=torch.bfloat16)).cuda()
    st = SamplerSettings(timesteps=(1000, 500), seed=2)
    shape = (1, 16, 6, 8, 8)
    c = ctx().cuda()
    runs = {}
    for mm in (True, False):
        runner = ChunkRunner(model, dtype=torch.bfloat16, fast=FastOptions(fp8_matmul=mm))
        assert runner.fast_path is not None, runner.fast_reason
        runs[mm] = generate(runner, c, shape, st).latent
    ref = generate(ChunkRunner(dequantized(model).to("cuda", torch.float32), dtype=torch.float32, fast=False), c.float(),
                   shape, st)
    assert torch.isfinite(runs[True]).all()
    assert rel(runs[False], ref.latent) < 0.03  # bf16 compute of the same fp8 weights
    # fp8 products differ from the cast path (they are really used) yet stay close to it
    assert 1e-4 < rel(runs[True], runs[False]) < 0.1


@pytest.mark.parametrize("fast", [False, True])
def test_a_model_with_many_heads_and_14b_ratios(fast):
    """40 x 40 heads, dim 5120, ffn 13824 in small: 4 layers x 10 heads of dim 8, ffn 2.7 x dim."""
    from dummy_forcing_core.wan_model import WanConfig, WanModel

    cfg = WanConfig(dim=80, ffn_dim=216, num_heads=10, num_layers=4, text_dim=32, freq_dim=32)
    model = WanModel(cfg).init_random(3).double().eval()
    spec = CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, profile_sample_fraction=1.0))
    st = SamplerSettings(timesteps=(1000, 500), seed=1)
    shape = (1, 16, 12, H_LAT, W_LAT)
    got = generate(ChunkRunner(model, fast=fast), ctx().double(), shape, st, spec)
    ref = generate(ChunkRunner(model, fast=False), ctx().double(), shape, st, spec)
    assert got.stats.fingerprint["num_heads"] == 10 and got.stats.fingerprint["head_dim"] == 8
    assert sum(c.dummy for c in got.stats.type_counts()) == 20
    assert rel(got.latent, ref.latent) < 1e-10


class _PackedWeight(torch.Tensor):
    """Stands for ComfyUI's QuantizedTensor: a tensor subclass reporting a plain dtype."""


def test_a_tensor_subclass_weight_keeps_the_module_call():
    model = make_tiny_wan(layers=2, heads=4, head_dim=16, seed=5, dtype=torch.float32)
    q = model.blocks[1].self_attn.q
    q.weight = torch.nn.Parameter(q.weight.data.as_subclass(_PackedWeight), requires_grad=False)
    runner = ChunkRunner(model, dtype=torch.float32, fast=True)
    assert runner.fast_path is None and "block 1" in runner.fast_reason


def test_fp8_products_unavailable_fall_back_and_say_so_once(caplog):
    model = quantize_fp8(make_tiny_wan(layers=2, heads=4, head_dim=16, seed=5, dtype=torch.float32))
    runner = ChunkRunner(model, dtype=torch.float32, fast=FastOptions(fp8_matmul=True))  # the CPU has none
    cast = ChunkRunner(model, dtype=torch.float32, fast=FastOptions(fp8_matmul=False))
    st, shape = SamplerSettings(timesteps=(1000,), seed=1), (1, 16, 6, H_LAT, W_LAT)
    with caplog.at_level("WARNING", logger="dummy_forcing_core.fused_forward"):
        a = generate(runner, ctx(), shape, st)
    assert torch.equal(a.latent, generate(cast, ctx(), shape, st).latent)
    said = [r for r in caplog.records if "fp8 matrix products need" in r.getMessage()]
    assert len(said) == 1 and "cast to float32" in said[0].getMessage()


def _activations(device, dtype):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(37, 96, generator=g) * 40
    x[0, :4] = torch.tensor([1000.0, -1e4, 448.0, -449.0])  # beyond e4m3's range: clamped, never NaN
    return x.to(device, dtype)


def test_quantize_e4m3_clamps_and_takes_the_gelu():
    from dummy_forcing_core.fast_kernels import quantize_e4m3
    x = _activations("cpu", torch.float32)
    q = quantize_e4m3(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert q[0, :4].float().tolist() == [448.0, -448.0, 448.0, -448.0]
    assert torch.equal(q, x.clamp(-448, 448).to(torch.float8_e4m3fn))
    gq = quantize_e4m3(x, gelu=True)
    assert torch.equal(gq, torch.nn.functional.gelu(x, approximate="tanh").clamp(-448, 448).to(torch.float8_e4m3fn))
    # the cast path of a product with gelu_input multiplies GELU(x)
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(1)).to(torch.float8_e4m3fn)
    want = torch.nn.functional.gelu(x, approximate="tanh") @ w.float().T
    assert rel(fp8_linear(x, w, None, None, gelu_input=True), want) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on CUDA")
def test_quantize_e4m3_triton_kernel_matches_torch():
    from dummy_forcing_core.fast_kernels import quantize_e4m3
    x = _activations("cuda", torch.bfloat16)
    got = quantize_e4m3(x)
    assert torch.equal(got, quantize_e4m3(x, use_triton=False))  # both round the same value once (RNE)
    gelu = quantize_e4m3(x, gelu=True).float()
    exact = torch.nn.functional.gelu(x.float(), approximate="tanh").clamp(-448, 448)
    # one rounding to e4m3 (3 mantissa bits) of the float32 GELU: within half a step (2^-4 relative)
    assert ((gelu - exact).abs() <= exact.abs() * 2 ** -4 + 2 ** -9).all()
    assert gelu[0, :2].tolist() == [448.0, 0.0]  # GELU(1000) clamps, GELU(-1e4) is 0


class _CastLinear(torch.nn.Linear):
    """Like ComfyUI's manual_cast layers: parameters cast to the input's dtype at call time."""
    comfy_cast_weights = True

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class _CastLayerNorm(torch.nn.LayerNorm):
    comfy_cast_weights = True

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, w, b, self.eps)


class _CastRMSNorm(torch.nn.RMSNorm):
    comfy_cast_weights = True

    def forward(self, x):
        return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def comfy_fp8_weight_dtype(model):
    """What Load Diffusion Model's weight_dtype fp8_e4m3fn makes of a model: every parameter of
    the blocks and the head in fp8 (biases, norms and modulation too), cast-on-call layers."""
    swap = {torch.nn.Linear: _CastLinear, torch.nn.LayerNorm: _CastLayerNorm, torch.nn.RMSNorm: _CastRMSNorm}
    for part in list(model.blocks) + [model.head]:
        for mod in part.modules():
            if type(mod) in swap:
                mod.__class__ = swap[type(mod)]
        for p in part.parameters(recurse=True):
            p.data = p.data.to(torch.float8_e4m3fn)
    return model


def test_comfyui_fp8_weight_dtype_runs_the_fused_path():
    """ComfyUI stores biases, norm weights and modulation in fp8 too: the fused path casts them
    once (no longer a reason for the reference loop) and computes what the reference loop does."""
    model = comfy_fp8_weight_dtype(make_tiny_wan(layers=2, heads=4, head_dim=16, seed=5, dtype=torch.float32))
    assert model.blocks[0].norm3.bias.dtype == torch.float8_e4m3fn and model.blocks[0].modulation.dtype == torch.float8_e4m3fn
    spec = CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, profile_sample_fraction=1.0))
    st = SamplerSettings(timesteps=(1000, 500), seed=2)
    shape = (1, 16, 12, H_LAT, W_LAT)
    fast = ChunkRunner(model, dtype=torch.float32, fast=True)
    assert fast.fast_path is not None, fast.fast_reason
    ref = generate(ChunkRunner(model, dtype=torch.float32, fast=False), ctx(), shape, st, spec)
    got = generate(fast, ctx(), shape, st, spec)
    assert rel(got.latent, ref.latent) < 1e-5
    # a changed parameter is seen (the cast copies are rebuilt)
    with torch.no_grad():
        model.blocks[1].norm3.bias.copy_((model.blocks[1].norm3.bias.float() + 0.5).to(torch.float8_e4m3fn))
    ref2 = generate(ChunkRunner(model, dtype=torch.float32, fast=False), ctx(), shape, st, spec)
    got2 = generate(fast, ctx(), shape, st, spec)
    assert rel(got2.latent, ref2.latent) < 1e-5 and rel(got2.latent, got.latent) > 1e-4


def test_norms_write_fp8_product_inputs_as_e4m3(monkeypatch):
    """With fp8 products the norms before the QKV, cross-attention q, FFN and head products write
    their output as e4m3 (rounded once from float32) instead of a second cast pass: the video
    stays within e4m3 rounding of the separate casts, and fewer casts run. Run on the CPU, whose
    torch._scaled_mm stands in for the GPU's (where this torch has one)."""
    from dummy_forcing_core import fast_kernels, fp8, fused_forward

    try:  # row-wise scales too (the fused QKV's); torch 2.11's CPU product takes per-tensor ones only
        torch._scaled_mm(torch.zeros(16, 16).to(torch.float8_e4m3fn), torch.zeros(16, 16).to(torch.float8_e4m3fn).t(),
                         scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._scaled_mm on the CPU: {str(err)[:200]}")
    monkeypatch.setattr(fused_forward, "fp8_matmul_available", lambda device: True)
    casts = []
    real_cast = fast_kernels.quantize_e4m3
    monkeypatch.setattr(fp8, "quantize_e4m3", lambda x, **kw: casts.append(x.shape) or real_cast(x, **kw))
    model = quantize_fp8(make_tiny_wan(layers=2, heads=4, head_dim=16, seed=5, dtype=torch.float32))
    st = SamplerSettings(timesteps=(1000, 500), seed=2)
    shape = (1, 16, 6, H_LAT, W_LAT)
    runs, n_casts = {}, {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(fused_forward.FusedForward, "_e4m3_input", lambda self, m: False)
        casts.clear()
        runner = ChunkRunner(model, dtype=torch.float32, fast=FastOptions(fp8_matmul=True))
        assert runner.fast_path is not None and runner.fast_path._fp8_matmul(), runner.fast_reason
        runs[fused], n_casts[fused] = generate(runner, ctx(), shape, st).latent, len(casts)
    # per layer: QKV, cross q and FFN inputs come from the norms (the head is not fp8 here)
    assert n_casts[True] < n_casts[False] and n_casts[False] - n_casts[True] >= 3 * 2, n_casts
    assert torch.isfinite(runs[True]).all() and rel(runs[True], runs[False]) < 0.05


def test_residual_norm_modulate_e4m3_output():
    from dummy_forcing_core.fast_kernels import quantize_e4m3, residual_norm_modulate

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1, 12, 32, generator=g), torch.randn(1, 12, 32, generator=g)
    mul = torch.randn(3, 32, generator=g) * 200  # some values beyond e4m3's 448: clamped
    h8 = residual_norm_modulate(x.clone(), 3, 1e-6, y=y, mul=mul, e4m3=True)
    h = residual_norm_modulate(x.clone(), 3, 1e-6, y=y, mul=mul)
    assert h8.dtype == torch.float8_e4m3fn and h.abs().max() > 448
    assert torch.equal(h8.float(), quantize_e4m3(h).float())  # float32 h: the same single rounding
