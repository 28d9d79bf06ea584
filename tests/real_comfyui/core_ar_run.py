"""ComfyUI's own AR path with the pack, in-process on a real ComfyUI >= 0.21 (CPU).

    COMFYUI_PYTHON core_ar_run.py COMFYUI_DIR REPO_ROOT WORK_DIR

Builds the tiny causal checkpoint (make_tiny_wan.py --causal), loads it with ComfyUI's own
loader (a CausalWanModel), imports the pack as ComfyUI does, and runs core's custom-sampler
path exactly as SamplerCustomAdvanced does (RandomNoise, CFGGuider cfg 1, BasicScheduler
simple 4 steps, Sampler AR Video) against the pack's AR Video Sampler. ARVideoI2V's output is
reproduced without a VAE: a clone whose transformer_options["ar_config"]["initial_latent"] is a
random VAE-space latent (what ARVideoI2V puts there). Prints one JSON object of measurements;
tests/real_comfyui/test_core_ar_path.py asserts on them.
"""
import importlib.util
import json
import os
import subprocess
import sys

COMFY, REPO, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, COMFY)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
from comfy.ldm.wan.ar_model import CausalWanModel  # noqa: E402
from comfy_extras import nodes_custom_sampler as ncs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ckpt = os.path.join(WORK, "tiny_wan_causal.safetensors")
subprocess.run([sys.executable, os.path.join(HERE, "make_tiny_wan.py"), COMFY, ckpt, "--causal"], check=True,
               capture_output=True, cwd=COMFY)
spec = importlib.util.spec_from_file_location("DFPack", os.path.join(REPO, "__init__.py"),
                                              submodule_search_locations=[REPO])
pack = importlib.util.module_from_spec(spec)
sys.modules["DFPack"] = pack
spec.loader.exec_module(pack)
from DFPack.nodes import core_ar_loop  # noqa: E402
from DFPack.nodes.apply import ApplyDummyForcing, ARCachePolicy  # noqa: E402
from DFPack.nodes.sampler import ARVideoSampler  # noqa: E402

KV_BYTES = []  # what core's init_kv_caches allocated, per call
_real_init = CausalWanModel.init_kv_caches


def _spy(self, batch_size, max_seq_len, device, dtype):
    caches = _real_init(self, batch_size, max_seq_len, device, dtype)
    KV_BYTES.append(sum(c["k"].numel() * c["k"].element_size() * 2 for c in caches))
    return caches


CausalWanModel.init_kv_caches = _spy  # this process only: a measurement, not part of the pack

model = comfy.sd.load_diffusion_model(ckpt)
g = torch.Generator().manual_seed(1)
positive = [[torch.randn(1, 16, 4096, generator=g), {}]]
negative = [[torch.zeros(1, 16, 4096), {}]]


def core(m, frames=6, block=1, seed=3, callback=None):
    """SamplerCustomAdvanced's steps on a latent of ``frames`` latent frames, 8x8."""
    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(positive, negative)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", 4)
    sampler = comfy.samplers.ksampler("ar_video", {"num_frame_per_block": block})
    noise = ncs.Noise_RandomNoise(seed)
    latent = {"samples": torch.zeros(1, 16, frames, 8, 8)}
    before = len(KV_BYTES)
    out = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=noise.seed,
                        callback=callback)
    return out, sigmas, noise, sum(KV_BYTES[before:])


def ours(m, sigmas, noise, frames=6, block=1, **kw):
    args = dict(seed=0, denoise_timesteps="", steps=4, shift=0.0, frames_per_chunk=block, cache="full",
                sink_frames=3, window_frames=12, context_timestep=0, start_frames=0)
    args.update(kw)
    out = ARVideoSampler.execute(model=m, positive=positive, latent={"samples": torch.zeros(1, 16, frames, 8, 8)},
                                 sigmas=sigmas, noise=noise, **args).args
    return out[0]["samples"], out[1]


def dummy_forcing(m, **kw):
    args = dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=False, ar_start=1,
                neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
                profile_seed=0, long_context_frames=0)
    args.update(kw)
    return ApplyDummyForcing.execute(model=m, **args).args[0]


def cache_policy(m, cache="full", sink=3, window=12):
    return ARCachePolicy.execute(model=m, cache=cache, sink_frames=sink, window_frames=window).args[0]


def with_start_image(m, seed=5):
    """What ARVideoI2V returns: a clone carrying a VAE-space start latent [1, 16, 1, 8, 8]."""
    c = m.clone()
    c.model_options.setdefault("transformer_options", {}).setdefault("ar_config", {})["initial_latent"] = \
        torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return c


def rel(a, b):
    return float((a - b).norm() / b.norm())


def maxabs(a, b):
    return float((a - b).abs().max())


res = {"diffusion_model": type(model.model.diffusion_model).__name__}
plain, sig, noise, dense = core(model)
res["sigmas"] = sig.tolist()
res["core_dense_kv_bytes"] = dense
full = cache_policy(model)
routed, _, _, dense_routed = core(full)
res["full_routed_vs_core_rel"] = rel(routed, plain)
res["pack_run_core_kv_bytes"] = dense_routed
res["pack_run_kv_allocated_bytes"] = core_ar_loop.last_stats(full).kv_allocated_bytes
lat, st = ours(model, sig, noise)
res["ar_video_sampler_vs_routed_maxabs"] = maxabs(lat, routed)

df = dummy_forcing(model)
got, _, _, dense_df = core(df)
mine, st_df = ours(dummy_forcing(model), sig, noise)
res["df_core_vs_ours_maxabs"] = maxabs(got, mine)
res["df_before_switch_vs_plain_rel"] = rel(got[:, :, :2], plain[:, :, :2])
res["df_after_switch_vs_plain_rel"] = rel(got[:, :, 2:], plain[:, :, 2:])
res["df_core_kv_bytes"] = dense_df
stats = core_ar_loop.last_stats(df)
res["df_stats"] = {"loop": stats.loop, "switch_chunk": stats.switch_chunk, "kv_allocated": stats.kv_allocated_bytes,
                   "kv_held": stats.kv_bytes, "kv_full": stats.kv_full_bytes}

window = dummy_forcing(cache_policy(model, "sink + window", 1, 3))
got_w, _, _, _ = core(window, frames=8)
mine_w, _ = ours(dummy_forcing(model), sig, noise, frames=8, cache="sink + window", sink_frames=1, window_frames=3)
res["df_window_core_vs_ours_maxabs"] = maxabs(got_w, mine_w)

got_c, sig_c, noise_c, _ = core(df, frames=12, block=3)
mine_c, _ = ours(dummy_forcing(model), sig_c, noise_c, frames=12, block=3)
res["df_chunkwise_core_vs_ours_maxabs"] = maxabs(got_c, mine_c)

i2v_plain, _, _, _ = core(with_start_image(model))
i2v_routed, _, _, _ = core(with_start_image(cache_policy(model)))
res["i2v_full_routed_vs_core_rel"] = rel(i2v_routed, i2v_plain)
i2v_df, _, _, _ = core(with_start_image(df))
i2v_mine, st_i2v = ours(with_start_image(dummy_forcing(model)), sig, noise)
res["i2v_df_core_vs_ours_maxabs"] = maxabs(i2v_df, i2v_mine)
res["i2v_changes_video_rel"] = rel(i2v_df[:, :, 1:], got[:, :, 1:])
res["i2v_chunks"] = len(st_i2v.chunk_seconds)

again, _, _, _ = core(df)
res["df_second_run_equal"] = bool(torch.equal(again, got))


def cancel(_step, _x0, _x, _total):
    raise mm.InterruptProcessingException()


try:
    core(df, callback=cancel)
    res["cancel_raised"] = False
except mm.InterruptProcessingException:
    res["cancel_raised"] = True
after, _, _, _ = core(df)
res["df_after_cancel_equal"] = bool(torch.equal(after, got))


def fused_vs_reference(m):
    """The core's fused forward on a model from ComfyUI's loader against its reference loop
    (ComfyUI's own layer calls), float32 on the CPU."""
    from DFPack.dummy_forcing_core.chunk_runner import ChunkRunner
    from DFPack.dummy_forcing_core.sampler import SamplerSettings, generate
    dm = m.model.diffusion_model
    fast = ChunkRunner(dm, dtype=torch.float32, device="cpu", fast=True)
    if fast.fast_path is None:
        return fast.fast_reason, None
    ctx = positive[0][0]
    shape, st = (1, 16, 6, 8, 8), SamplerSettings(chunk_frames=1, timesteps=(1000.0, 500.0), seed=1)
    a = generate(fast, ctx, shape, st).latent
    b = generate(ChunkRunner(dm, dtype=torch.float32, device="cpu", fast=False), ctx, shape, st).latent
    return fast.fast_reason, rel(a, b)


res["fused_default_reason"], res["fused_default_rel"] = fused_vs_reference(model)
fp8 = comfy.sd.load_diffusion_model(ckpt, model_options={"dtype": torch.float8_e4m3fn})  # weight_dtype fp8_e4m3fn
res["fp8_param_dtypes"] = sorted({str(p.dtype) for p in fp8.model.diffusion_model.blocks.parameters()})
res["fused_fp8_reason"], res["fused_fp8_rel"] = fused_vs_reference(fp8)
print(json.dumps(res))
