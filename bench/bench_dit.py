#!/usr/bin/env python3
"""DiT speed / memory benchmark of the chunk-by-chunk engine: full cache, sink + window,
Dummy Forcing (packed / unpacked) and long-context mode, in one run on one card.

What it measures (DiT only, VAE decode excluded; text encoder excluded):
  * FPS steady = 12 video frames / median seconds of the chunks after the switch to the
    per-head cache (Dummy Forcing: chunk ar_start + 1 on; baselines: chunks 2..);
  * FPS whole clip = 81 video frames / the clip's DiT seconds (profiling and regroup included);
  * KV bytes held at the end and vs a full cache of the same frames; peak GPU memory
    (torch.cuda.max_memory_allocated, reset per variant); profiling ms and % of the clip;
  * speedup of Dummy Forcing over sink 3 + window 12 (and full) measured in the same run.

Usage (GPU):  python bench/bench_dit.py --out bench/results.json
       (14B, fp8 products):  python bench/bench_dit.py --geometry 14b --weights fp8-matmul --resolutions 480p,720p \
                             --variants full,window,df --long-frames 0
       (CPU smoke test, tiny geometry, seconds):  python bench/bench_dit.py --device cpu --tiny
Weights are random (speed does not depend on their values) unless --checkpoint is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from dummy_forcing_core.cache_policy import CacheSpec  # noqa: E402
from dummy_forcing_core.dummy_forcing import DummyForcingConfig, layer_group_specs  # noqa: E402
from dummy_forcing_core.fp8 import quantize_fp8  # noqa: E402
from dummy_forcing_core.fused_forward import FastOptions  # noqa: E402
from dummy_forcing_core.kv_cache import FULL, Retention  # noqa: E402
from dummy_forcing_core.prompt_schedule import PromptSchedule  # noqa: E402
from dummy_forcing_core.sampler import SamplerSettings, generate  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.wan_model import WAN21_1_3B, WanConfig, WanModel  # noqa: E402

# latent (height, width) per resolution: Wan VAE /8, patch 2x2 -> tokens per frame = h*w/4
RESOLUTIONS = {"480p": (60, 104), "720p": (90, 160), "1080p": (136, 240)}
TINY_RESOLUTIONS = {"480p": (6, 10), "720p": (8, 14), "1080p": (10, 16)}
TINY = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, freq_dim=32)
WAN21_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)  # Wan2.1-14B, Krea Realtime 14B
GEOMETRIES = {"1.3b": WAN21_1_3B, "14b": WAN21_14B}

VARIANTS = ("full", "window", "df", "df_nopack", "long")
LABELS = {"full": "full cache", "window": "sink 3 + window 12", "df": "Dummy Forcing (50%, L=1, packed)",
          "df_nopack": "Dummy Forcing, no packing", "long": "DF long context (neighbor 15 fr)",
          "window_long": "sink 3 + window 12, 120 frames", "df_long": "Dummy Forcing, 120 frames",
          "df_profile": "Dummy Forcing, head profile given"}


def variant_settings(name: str, sample_fraction: float = 0.25):
    """(SamplerSettings, CacheSpec) of a variant."""
    base = SamplerSettings(chunk_frames=3, timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0, seed=0)
    df = dict(dummy_heads=0.5, ar_start=1, neighbor_chunks=1, sink_frames=1, profile_sample_fraction=sample_fraction)
    if name in ("full",):
        return base, CacheSpec()
    if name in ("window", "window_long"):
        return base, CacheSpec(Retention(3, 12))
    if name in ("df", "df_long"):
        return base, CacheSpec(dummy_forcing=DummyForcingConfig(context_packing=True, **df))
    if name == "df_nopack":
        return base, CacheSpec(dummy_forcing=DummyForcingConfig(context_packing=False, **df))
    if name == "long":
        return base, CacheSpec(dummy_forcing=DummyForcingConfig(context_packing=True, long_context_frames=15, **df))
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gib(n):
    return n / 2 ** 30


@torch.no_grad()
def random_model(cfg: WanConfig, dev, dtype, seed=0) -> WanModel:
    """A WanModel with init_random's scheme, drawn on ``dev`` directly in ``dtype`` (a 14B model
    never exists in float32 or on the host)."""
    with torch.device("meta"):
        model = WanModel(cfg)
    model = model.to_empty(device=dev).to(dtype)
    g = torch.Generator(device=dev).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            p.fill_(1.0)
        elif p.ndim == 1:
            p.normal_(0.0, 0.02, generator=g)
        elif name.endswith("modulation"):
            p.normal_(0.0, 0.1, generator=g)
        else:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
    return model.eval().requires_grad_(False)


def build_model(args, dev, dtype):
    if args.checkpoint:
        from dummy_forcing_core.convert import load_wan_state_dict

        sd, _meta = load_wan_state_dict(args.checkpoint)
        cfg = WanConfig.from_state_dict(sd)
        model = WanModel(cfg)
        model.load_state_dict(sd)
        weights = f"checkpoint {os.path.basename(args.checkpoint)}"
    elif args.tiny or args.geometry == "1.3b":
        cfg = TINY if args.tiny else WAN21_1_3B
        model = WanModel(cfg).init_random(seed=0)
        weights = "random weights"
    else:  # drawn on the device: the 14B never exists in float32
        cfg = GEOMETRIES[args.geometry]
        model, weights = random_model(cfg, dev, dtype), "random weights (drawn on the device)"
    model = model.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    if args.weights != "bf16":  # ComfyUI's scaled fp8 (per-tensor scale) in every block's linear layers
        model = quantize_fp8(model)
        weights += f", fp8 e4m3 scaled ({'fp8 products' if args.weights == 'fp8-matmul' else 'cast per layer'})"
    return model, cfg, weights


def steady_seconds(stats, name):
    start = stats.switch_chunk if stats.switch_chunk is not None else 2
    tail = stats.chunk_seconds[start:] or stats.chunk_seconds
    return statistics.median(tail), start


def run_variant(runner, ctx, hw, frames, name, dev, repeat_warm=False, sample_fraction=0.25):
    settings, dfc = variant_settings(name, sample_fraction)
    shape = (1, 16, frames, hw[0], hw[1])
    if dev.type == "cuda":
        gc.collect()  # whatever an earlier variant left unreferenced is gone before measuring
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    res = generate(runner, ctx, shape, settings, dfc)
    sync(dev)
    st = res.stats
    med, start = steady_seconds(st, name)
    total = sum(st.chunk_seconds)
    video_frames = 4 * (frames - 1) + 1
    row = {
        "variant": name, "label": LABELS[name], "frames_latent": frames, "frames_video": video_frames,
        "latent_hw": list(hw), "tokens_per_frame": st.tokens_per_frame,
        "chunk_seconds": st.chunk_seconds, "steady_from_chunk": start,
        "steady_median_s": med, "fps_steady": 4 * settings.chunk_frames / med, "clip_seconds": total,
        "fps_clip": video_frames / total,
        "kv_bytes_end": st.kv_bytes, "kv_full_bytes_end": st.kv_full_bytes,
        "kv_vs_full": (st.kv_full_bytes / st.kv_bytes) if st.kv_bytes else float("inf"),
        "kv_allocated_bytes_end": st.kv_allocated_bytes,
        "attn_flops": st.attn_flops, "attn_flops_full": st.attn_flops_full,
        "profile_ms": 1000 * st.profile_seconds, "profile_pct_clip": 100 * st.profile_seconds / total,
        "regroup_ms": 1000 * st.regroup_seconds, "switch_chunk": st.switch_chunk,
    }
    if st.head_types is not None:
        counts = [sum(t == k for layer in st.head_types for t in layer) for k in range(3)]
        row["head_counts"] = {"sink": counts[0], "neighbor": counts[1], "dummy": counts[2]}
    if dev.type == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated(dev)
        row["peak_over_start_bytes"] = row["peak_bytes"] - before
    return row, res


def given_profile_settings(model):
    """Dummy Forcing with a head profile given (Load Head Profile): the same head types every
    video, no online profiling. Scores drawn once (seeded), as a saved profile would hold them."""
    from dummy_forcing_core.geometry import ModelGeometry
    from dummy_forcing_core.head_profile import HeadProfile

    geom = ModelGeometry.of(model)
    scores = torch.rand(geom.num_layers, geom.num_heads, 3, generator=torch.Generator().manual_seed(0)) ** 3
    profile = HeadProfile(scores / scores.sum(-1, keepdim=True), geom.fingerprint(), {"bench": "drawn"})
    base, dfc = variant_settings("df")
    return base, dfc.with_dummy_forcing(dataclasses.replace(dfc.dummy_forcing, head_profile=profile))


def warm_rows(args, model, ctx, dtype, dev, res_table, fp8mm, log):
    """The warm start (issue 23): per variant, one ChunkRunner(warm=True) runs the same shape
    three times (new seed, then new prompt) after an untimed warm-up on another runner (kernel
    compilation is not counted); each run: clip FPS, its first three chunks, graph captures,
    what the runner keeps afterwards; run 2 against the same video on a fresh runner."""
    hw = res_table[args.warm_resolution]
    rows = []
    ctx2 = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(2)).to(dev, ctx.dtype)
    for name in [v for v in args.warm_variants.split(",") if v]:
        opts = FastOptions(attention=args.attention, fp8_matmul=fp8mm, attention_8bit=args.warm_attention_8bit)
        warmup(ChunkRunner(model, dtype=dtype, device=dev, fast=opts), ctx, hw, ["df" if name == "df_profile" else name],
               dev, args.frames)
        runner = ChunkRunner(model, dtype=dtype, device=dev, fast=opts, warm=True)
        base, dfc = given_profile_settings(model) if name == "df_profile" else variant_settings(name)
        shape = (1, 16, args.frames, hw[0], hw[1])
        video_frames = 4 * (args.frames - 1) + 1
        for run, (seed, c) in enumerate([(0, ctx), (1, ctx), (1, ctx2)], 1):
            g0 = dict(runner.fast_path.graphs.stats) if runner.fast_path is not None else {}
            res = generate(runner, c, shape, dataclasses.replace(base, seed=seed), dfc)
            sync(dev)
            st = res.stats
            total = sum(st.chunk_seconds)
            row = {"variant": name, "res": args.warm_resolution, "run": run, "seed": seed,
                   "prompt": "second" if c is ctx2 else "first", "fps_clip": video_frames / total,
                   "first_chunks_ms": [1000 * x for x in st.chunk_seconds[:3]],
                   "chunk_ms": [1000 * x for x in st.chunk_seconds], "profile_ms": 1000 * st.profile_seconds,
                   "regroup_ms": 1000 * st.regroup_seconds, "head_types_equal_run1": None,
                   "graphs": {k: runner.fast_path.graphs.stats[k] - g0[k] for k in g0} if g0 else None,
                   "kept_bytes": runner.warm_bytes()}
            if run == 1:
                first_types = st.head_types
            row["head_types_equal_run1"] = st.head_types == first_types
            if run == 2:  # the same video on a fresh (cold) runner: bf16 rounding at most
                cold = generate(ChunkRunner(model, dtype=dtype, device=dev, fast=opts), c, shape,
                                dataclasses.replace(base, seed=seed), dfc)
                row["rel_diff_vs_fresh_runner"] = rel(res.latent, cold.latent)
                row["equal_to_fresh_runner"] = bool(torch.equal(res.latent, cold.latent))
            rows.append(row)
            kept = row["kept_bytes"]
            log(f"warm {name:8s} run {run} (seed {seed}, {row['prompt']} prompt): clip {row['fps_clip']:6.2f} FPS, "
                f"chunks {' '.join(f'{x:.0f}' for x in row['chunk_ms'])} ms, graphs {row['graphs']}, "
                f"kept {fmt_bytes(kept['total'])} (KV {fmt_bytes(kept['kv'])}, text {fmt_bytes(kept['text'])}, graphs "
                f"{fmt_bytes(kept['graphs'])}, weights {fmt_bytes(kept['weights'])})"
                + (f", vs fresh runner: rel diff {row['rel_diff_vs_fresh_runner']:.1e}"
                   f"{' (equal)' if row['equal_to_fresh_runner'] else ''}" if run == 2 else "")
                + ("" if row["head_types_equal_run1"] else ", head types differ from run 1"))
        runner.drop_warm()
        del runner
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def warmup(runner, ctx, hw, variants, dev, frames):
    """Untimed: every variant once with one denoising step, so every attention shape (and
    the cuDNN graphs / Triton kernels for it) exists before timing."""
    t0 = time.perf_counter()
    for name in variants:
        settings, dfc = variant_settings(name)
        settings = dataclasses.replace(settings, timesteps=(1000.0,))
        try:
            generate(runner, ctx, (1, 16, frames, hw[0], hw[1]), settings, dfc)
        except torch.cuda.OutOfMemoryError:
            pass
    sync(dev)
    return time.perf_counter() - t0


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------------------------
def micro(dev, dtype, log):
    """Attention backends, GEMMs with/without the GELU epilogue, fused kernels, copy bandwidth."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dummy_forcing_core import fast_kernels as fk
    from dummy_forcing_core.rope import rope_table

    out = {"attention": [], "gemm": [], "kernels": []}

    def timeit(fn, reps=10, warm=2):
        for _ in range(warm):
            fn()
        sync(dev)
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return statistics.median(ts)

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.empty(2 ** 28, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    ms = timeit(lambda: y.copy_(x))
    out["copy_GBps"] = 2 * x.numel() * 2 / ms / 1e6
    log(f"copy: {out['copy_GBps']:.0f} GB/s (read + write)")
    del x, y
    a = torch.randn(8192, 8192, device=dev, dtype=dtype)
    ms = timeit(lambda: a @ a, reps=5)
    out["gemm_8k_TFLOPs"] = 2 * 8192 ** 3 / ms / 1e9
    log(f"bf16 GEMM 8192^3: {out['gemm_8k_TFLOPs']:.0f} TFLOP/s")
    del a

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    shapes = [("480p packed", 1560, 12, 4, 6), ("480p neighbor", 1560, 12, 6, 6), ("480p 18 fr", 1560, 12, 18, 12),
              ("720p packed", 3600, 12, 4, 6), ("720p 18 fr", 3600, 12, 18, 12), ("1080p 18 fr", 8160, 12, 18, 12)]
    for label, tpf, _H, kf, heads in shapes:
        Lq, Lk = 3 * tpf, kf * tpf
        q = torch.randn(1, Lq, heads, 128, device=dev, dtype=dtype).transpose(1, 2)
        k = torch.randn(1, heads, Lk + 1000, 128, device=dev, dtype=dtype)[:, :, :Lk]
        v = torch.randn_like(k)
        ref = None
        for bname, b in backends.items():
            try:
                with sdpa_kernel([b]):
                    t0 = time.perf_counter()
                    o = F.scaled_dot_product_attention(q, k, v)
                    sync(dev)
                    first = 1000 * (time.perf_counter() - t0)
                    ms = timeit(lambda: F.scaled_dot_product_attention(q, k, v))
                if ref is None:
                    ref = o.float()
                err = rel(o.float(), ref)
                fl = 4 * heads * Lq * Lk * 128
                out["attention"].append({"shape": label, "backend": bname, "Lq": Lq, "Lk": Lk, "heads": heads,
                                         "ms": ms, "TFLOPs": fl / ms / 1e9, "first_call_ms": first, "rel_err_vs_first": err})
                log(f"sdpa {label:14s} H={heads:2d} Lq={Lq} Lk={Lk} {bname:9s} {ms:7.3f} ms {fl / ms / 1e9:6.0f} TFLOP/s "
                    f"(first call {first:.0f} ms, rel diff {err:.1e})")
            except Exception as err:  # noqa: BLE001
                log(f"sdpa {label} {bname}: failed: {type(err).__name__}: {str(err)[:120]}")
        del q, k, v

    for M in (4680, 10800, 24480):
        h = torch.randn(M, 1536, device=dev, dtype=dtype)
        for name, N in (("qkv", 4608), ("q", 1536), ("ffn1", 8960)):
            w = torch.randn(N, 1536, device=dev, dtype=dtype) * 0.03
            b = torch.randn(N, device=dev, dtype=dtype)
            ms = timeit(lambda: F.linear(h, w, b))
            rec = {"M": M, "name": name, "N": N, "K": 1536, "ms": ms, "TFLOPs": 2 * M * N * 1536 / ms / 1e9}
            if name == "ffn1":
                ms_g = timeit(lambda: torch._addmm_activation(b, h, w.t(), use_gelu=True))
                ms_s = timeit(lambda: F.gelu(F.linear(h, w, b), approximate="tanh"))
                rec.update(gelu_epilogue_ms=ms_g, gelu_separate_ms=ms_s)
            out["gemm"].append(rec)
            log(f"gemm M={M} {name} N={N}: {ms:.3f} ms {rec['TFLOPs']:.0f} TFLOP/s"
                + (f"; +gelu epilogue {rec['gelu_epilogue_ms']:.3f} ms vs separate {rec['gelu_separate_ms']:.3f} ms"
                   if name == "ffn1" else ""))
        w2 = torch.randn(1536, 8960, device=dev, dtype=dtype) * 0.01
        u = torch.randn(M, 8960, device=dev, dtype=dtype)
        ms = timeit(lambda: F.linear(u, w2))
        out["gemm"].append({"M": M, "name": "ffn2", "N": 1536, "K": 8960, "ms": ms, "TFLOPs": 2 * M * 1536 * 8960 / ms / 1e9})
        log(f"gemm M={M} ffn2: {ms:.3f} ms {2 * M * 1536 * 8960 / ms / 1e9:.0f} TFLOP/s")

        # fused kernels vs the torch ops they replace
        Fr, C = 3, 1536
        x = torch.randn(1, M, C, device=dev, dtype=dtype)
        yv = torch.randn_like(x)
        mod = torch.randn(1, Fr, 6, C, device=dev)
        ln = torch.nn.LayerNorm(C, elementwise_affine=False, eps=1e-6).to(dev)

        def torch_res():
            xx = (x.view(1, Fr, -1, C) + yv.view(1, Fr, -1, C) * mod[:, :, 2:3].to(dtype)).view(1, M, C)
            return (ln(xx).view(1, Fr, -1, C) * (1 + mod[:, :, 4:5].to(dtype)) + mod[:, :, 3:4].to(dtype)).view(1, M, C)

        ms_t = timeit(torch_res)
        xs = x.clone()
        ms_f = timeit(lambda: fk.residual_norm_modulate(xs, Fr, 1e-6, y=yv, gate=mod[:, :, 2], mul=mod[:, :, 4],
                                                          add=mod[:, :, 3]))
        xa, xb = x.clone(), x.clone()
        ha = fk.residual_norm_modulate(xa, Fr, 1e-6, y=yv, gate=mod[:, :, 2], mul=mod[:, :, 4] + 1, add=mod[:, :, 3])
        hb = fk.residual_norm_modulate(xb, Fr, 1e-6, y=yv, gate=mod[:, :, 2], mul=mod[:, :, 4] + 1, add=mod[:, :, 3],
                                       use_triton=False)
        e1 = rel(ha.float(), hb.float())
        rt = rope_table(Fr, M // Fr // 52 if M // Fr % 52 == 0 else 1, 52 if M // Fr % 52 == 0 else M // Fr, 128, 5)
        cos, sin = rt.cos.to(dev), rt.sin.to(dev)
        qkv = torch.randn(M, 3 * C, device=dev, dtype=dtype)
        wq = torch.randn(C, device=dev, dtype=dtype)
        from dummy_forcing_core.rope import RopeTable, apply_rope

        rms = torch.nn.RMSNorm(C, eps=1e-6).to(dev, dtype)

        def torch_rope():
            return apply_rope(rms(qkv[:, :C]).view(1, M, 12, 128), RopeTable(cos, sin))

        ms_rt = timeit(torch_rope)
        ms_rf = timeit(lambda: fk.rms_norm_rope(qkv[:, :C], wq, 1e-6, cos, sin, M))
        rms.weight.data.copy_(wq)
        e2 = rel(fk.rms_norm_rope(qkv[:, :C], wq, 1e-6, cos, sin, M).float(), torch_rope().reshape(M, C).float())
        bytes_res = 4 * M * C * 2
        bytes_rope = 2 * M * C * 2
        out["kernels"].append({"M": M, "res_norm_mod_torch_ms": ms_t, "res_norm_mod_fused_ms": ms_f,
                               "res_norm_mod_fused_GBps": bytes_res / ms_f / 1e6, "res_norm_mod_rel_err": e1,
                               "rms_rope_torch_ms": ms_rt, "rms_rope_fused_ms": ms_rf,
                               "rms_rope_fused_GBps": bytes_rope / ms_rf / 1e6, "rms_rope_rel_err_vs_torch": e2})
        log(f"kernels M={M}: residual+LN+mod torch {ms_t:.3f} ms -> fused {ms_f:.3f} ms ({bytes_res / ms_f / 1e6:.0f} GB/s, "
            f"rel {e1:.1e}); RMSNorm+RoPE torch {ms_rt:.3f} ms -> fused {ms_rf:.3f} ms "
            f"({bytes_rope / ms_rf / 1e6:.0f} GB/s, rel vs torch {e2:.1e})")
        del x, yv, qkv, u, h
    return out


@torch.no_grad()
def prompt_switch_rows(runner, ctx, hw, frames, dev, log, switch_frame=15):
    """The cost of a prompt switch: one switch at latent frame ``switch_frame`` (a new random
    prompt), with and without the re-cache of the kept frames (and, for Dummy Forcing, with
    re-profiling). Each case runs twice (the first builds the re-cache passes' shapes); the
    second is reported: the switch's seconds (GPU-synced), its re-cache passes, and the
    clip's DiT seconds against the same video without a switch."""
    ctx2 = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(2)).to(ctx.device, ctx.dtype)
    schedule = PromptSchedule([(0, ctx), (switch_frame, ctx2)])
    cases = [("full", False, False), ("full", True, False), ("window", False, False), ("window", True, False),
             ("df", False, False), ("df", True, False), ("df", True, True)]
    rows, plain = [], {}
    for name, recache, reprofile in cases:
        settings, spec = variant_settings(name)
        if name not in plain:
            generate(runner, ctx, (1, 16, frames, *hw), settings, spec)
            r = generate(runner, ctx, (1, 16, frames, *hw), settings, spec)
            plain[name] = sum(r.stats.chunk_seconds)
        settings = dataclasses.replace(settings, recache=recache)
        if reprofile:
            spec = dataclasses.replace(spec, dummy_forcing=dataclasses.replace(spec.dummy_forcing,
                                                                               reprofile_on_prompt_switch=True))
        for _ in range(2):
            res = generate(runner, schedule, (1, 16, frames, *hw), settings, spec)
        sync(dev)
        st = res.stats
        sw = st.prompt_switches[0]
        med, _ = steady_seconds(st, name)
        clip = sum(st.chunk_seconds) + sum(x["seconds"] for x in st.prompt_switches)
        row = {"variant": name, "label": LABELS[name], "recache": recache, "reprofile": reprofile,
               "switch_frame": switch_frame, "switch_chunk": sw["chunk"], "recache_passes": sw["recache_passes"],
               "switch_ms": 1000 * sw["seconds"],
               "ms_per_recache_pass": 1000 * sw["seconds"] / sw["recache_passes"] if sw["recache_passes"] else None,
               "steady_chunk_ms": 1000 * med, "clip_s": clip, "clip_s_no_switch": plain[name],
               "clip_overhead_pct": 100 * (clip / plain[name] - 1),
               "reprofiled": bool(sw.get("reprofiled")), "profile_ms": 1000 * sw.get("profile_seconds", 0.0),
               "chunk_seconds": st.chunk_seconds,
               "first_chunk_after_ms": 1000 * st.chunk_seconds[sw["chunk"]],
               "chunks_after_median_ms": 1000 * statistics.median(st.chunk_seconds[sw["chunk"] + 2:] or [float("nan")])}
        rows.append(row)
        log(f"{LABELS[name]:36s} recache {'on ' if recache else 'off'} reprofile {'on ' if reprofile else 'off'}: "
            f"switch {row['switch_ms']:6.1f} ms ({row['recache_passes']} re-cache passes"
            + (f", {row['ms_per_recache_pass']:.1f} ms each" if row["ms_per_recache_pass"] else "")
            + f"), chunks after it {row['first_chunk_after_ms']:.0f} / {1000 * st.chunk_seconds[sw['chunk'] + 1]:.0f} "
            f"/ median {row['chunks_after_median_ms']:.0f} ms (steady {row['steady_chunk_ms']:.0f}), clip {clip:.2f} s vs {plain[name]:.2f} s "
            f"without a switch ({row['clip_overhead_pct']:+.1f}%)")
    return rows


def op_profile(runner, ctx, hw, dev, log, passes=2):
    """Kernel time breakdown of denoising passes in Dummy Forcing's steady layout (random
    head types, 50% dummy), plus host enqueue time vs GPU time per pass."""
    g = runner.geometry
    B, c = 1, 3
    cache = runner.new_cache(B, hw[0], hw[1], 21, c)
    text = runner.encode_text(ctx)
    gen = torch.Generator().manual_seed(0)
    for f0 in (0, 3):
        x = torch.randn(B, 16, c, *hw, generator=gen).to(dev)
        runner.forward(x, torch.zeros(B, device=dev), f0, text, cache, commit=True)
    cfg = DummyForcingConfig(dummy_heads=0.5)
    retentions = cfg.head_retentions(c)
    types = torch.randint(0, 2, (g.num_layers, g.num_heads), generator=gen)
    flat = torch.randperm(g.num_layers * g.num_heads, generator=gen)[: g.num_layers * g.num_heads // 2]
    types.view(-1)[flat] = 2
    cache.regroup([layer_group_specs(t, retentions, cfg.context_packing) for t in types.tolist()])
    x = torch.randn(B, 16, c, *hw, generator=gen).to(dev)
    runner.forward(x, torch.zeros(B, device=dev), 6, text, cache, commit=True)
    t = torch.full((B,), 500.0, device=dev)
    for _ in range(2):
        runner.forward(x, t, 9, text, cache)
    sync(dev)
    res = {}
    enq, gpu = [], []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        runner.forward(x, t, 9, text, cache)
        enq.append(1000 * (time.perf_counter() - t0))
        b.record()
        b.synchronize()
        gpu.append(a.elapsed_time(b))
    res["enqueue_ms_per_pass"] = statistics.median(enq)
    res["gpu_ms_per_pass"] = statistics.median(gpu)
    log(f"DF steady layout, one denoising pass: host enqueue {res['enqueue_ms_per_pass']:.1f} ms, "
        f"GPU {res['gpu_ms_per_pass']:.1f} ms")
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(passes):
                runner.forward(x, t, 9, text, cache)
            sync(dev)
        ka = prof.key_averages()
        rows = []
        for e in ka:
            dt = getattr(e, "device_time_total", None)
            if dt is None:
                dt = getattr(e, "cuda_time_total", 0)
            if dt and e.key and not e.key.startswith("aten::") and not e.key.startswith("cuda"):
                rows.append((dt / passes / 1000, e.count // passes, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        res["kernels"] = [{"ms_per_pass": r[0], "calls_per_pass": r[1], "name": r[2][:160]} for r in rows[:30]]
        res["kernel_ms_per_pass_total"] = total
        log(f"GPU kernel time per pass {total:.1f} ms; top kernels:")
        for r in rows[:18]:
            log(f"  {r[0]:7.2f} ms  {r[1]:4d}x  {r[2][:110]}")
    except Exception as err:  # noqa: BLE001
        log(f"op profile failed: {err}")
    runner.end_video()  # the CUDA graphs captured here hold this cache until dropped
    del cache
    return res


# ---------------------------------------------------------------------------------------------
def fmt_bytes(n):
    return f"{n / 2 ** 20:.0f} MiB" if n < 2 ** 30 else f"{n / 2 ** 30:.2f} GiB"


def table(rows, dev):
    hdr = ("| res | variant | FPS steady | FPS clip | steady ms/chunk | KV at end | KV vs full | peak GPU mem "
           "| profiling ms (% clip) | DF speedup vs window (vs full) |")
    lines = [hdr, "| " + " | ".join(["---"] * 10) + " |"]
    by_res = {}
    for r in rows:
        by_res.setdefault(r["res"], {})[r["variant"]] = r
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['res']} | {r['label']} | {r['error']} | | | | | | | |")
            continue
        w = by_res[r["res"]].get("window")
        f = by_res[r["res"]].get("full")
        sp = ""
        if r["variant"] in ("df", "df_nopack", "long") and w and "error" not in w:
            sp = f"{r['fps_steady'] / w['fps_steady']:.2f}x"
            if f and "error" not in f:
                sp += f" ({r['fps_steady'] / f['fps_steady']:.2f}x)"
        prof = f"{r['profile_ms']:.1f} ({r['profile_pct_clip']:.2f}%)" if r.get("switch_chunk") is not None else "-"
        peak = fmt_bytes(r["peak_bytes"]) if "peak_bytes" in r else "-"
        lines.append(f"| {r['res']} | {r['label']} | {r['fps_steady']:.1f} | {r['fps_clip']:.1f} | "
                     f"{1000 * r['steady_median_s']:.0f} | {fmt_bytes(r['kv_bytes_end'])} | {r['kv_vs_full']:.1f}x | "
                     f"{peak} | {prof} | {sp} |")
    return "\n".join(lines)


def att8_rows(args, model, ctx, dtype, dev, res_table, fp8mm, log, over_budget):
    """The same videos with each 8-bit attention backend; latents compared with 'off' (same noise)."""
    rows, base = [], {}
    backends = [b for b in args.attention_8bit.split(",") if b]
    if "off" in backends:  # the reference first
        backends = ["off"] + [b for b in backends if b != "off"]
    for res in [r for r in args.att8_resolutions.split(",") if r]:
        hw = res_table[res]
        log(f"\n## 8-bit attention, {res} ({hw[0] * hw[1] // 4} tokens/frame)")
        for b in backends:
            if over_budget():
                log(f"time budget reached: skipping {res} {b}")
                continue
            r = ChunkRunner(model, dtype=dtype, device=dev,
                            fast=FastOptions(attention=args.attention, fp8_matmul=fp8mm, attention_8bit=b))
            ran = r.fast_path.attention_backend if r.fast_path is not None else "reference loop"
            variants = [v for v in args.att8_variants.split(",") if v]
            warmup(r, ctx, hw, variants, dev, args.frames)
            for name in variants:
                try:
                    row, out = run_variant(r, ctx, hw, args.frames, name, dev)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    log(f"{res} {name} {b}: OOM")
                    continue
                row.update(res=res, attention_8bit=b, backend_ran=ran)
                if b == "off":
                    base[(res, name)] = out.latent
                elif (res, name) in base:
                    row["latent_rel_diff_vs_off"] = rel(out.latent, base[(res, name)])
                rows.append(row)
                log(f"{res} {LABELS[name]:36s} 8-bit {b:6s} (ran: {ran}) steady {row['fps_steady']:6.2f} FPS "
                    f"({1000 * row['steady_median_s']:.0f} ms/chunk), clip {row['fps_clip']:6.2f} FPS"
                    + (f", latent rel diff vs off {row['latent_rel_diff_vs_off']:.2e}"
                       if "latent_rel_diff_vs_off" in row else ""))
            del r
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny geometry (CPU smoke test)")
    ap.add_argument("--checkpoint", default=None, help="real Wan2.1 weights (.safetensors); default random")
    ap.add_argument("--geometry", default="1.3b", choices=sorted(GEOMETRIES),
                    help="random weights of Wan2.1 1.3B or 14B (Krea Realtime 14B); --tiny for a CPU smoke test")
    ap.add_argument("--resolutions", default="480p,720p,1080p")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--frames", type=int, default=21, help="latent frames (21 = 81 video frames)")
    ap.add_argument("--long-frames", type=int, default=120, help="latent frames of the bounded-memory run (0: skip)")
    ap.add_argument("--long-variants", default="window_long,df_long")
    ap.add_argument("--engine", default="fast", choices=("fast", "reference", "both"),
                    help="fast path, the reference loop, or both (before/after, same run)")
    ap.add_argument("--reference-resolutions", default="480p,720p", help="with --engine both")
    ap.add_argument("--ablate", action="store_true", help="480p: turn each fast-path switch off in turn")
    ap.add_argument("--micro", action="store_true", help="attention backends, GEMMs, fused kernels")
    ap.add_argument("--op-profile", action="store_true", help="kernel breakdown of a DF steady pass at 480p")
    ap.add_argument("--weights", default="bf16", choices=("bf16", "fp8", "fp8-matmul"),
                    help="fp8: every block's linear weights as scaled fp8 e4m3, cast per layer; fp8-matmul: fp8 products")
    ap.add_argument("--prompt-switch", action="store_true", help="480p: the cost of a prompt switch and its re-cache")
    ap.add_argument("--switch-frames", type=int, default=33, help="latent frames of the prompt-switch videos")
    ap.add_argument("--warmup", default="variants", choices=("variants", "short", "none"))
    ap.add_argument("--attention", default="auto", help="SDPA backend of the fast path")
    ap.add_argument("--attention-8bit", default="", help="comma list of 8-bit attention backends (off,triton,sage): "
                    "--att8-variants at --att8-resolutions once per backend, latents compared with 'off'")
    ap.add_argument("--att8-variants", default="df")
    ap.add_argument("--att8-resolutions", default="480p")
    ap.add_argument("--warm", action="store_true", help="warm start: 3 runs of one shape on one warm runner")
    ap.add_argument("--warm-variants", default="df,df_profile,window",
                    help="df_profile: Dummy Forcing with a given head profile (fixed head types)")
    ap.add_argument("--warm-resolution", default="480p")
    ap.add_argument("--warm-attention-8bit", default="off", help="8-bit attention backend of the warm-start runs")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; skip remaining work past it (0: none)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    def over_budget():
        return args.time_budget and time.perf_counter() - t_start > args.time_budget

    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    meta = {
        "card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "dtype": str(dtype).replace("torch.", ""),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        meta["triton"] = None
    model, cfg, weights = build_model(args, dev, dtype)
    meta.update(weights=weights, geometry=cfg.to_dict())
    log(f"card: {card} | torch {torch.__version__} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, triton {meta['triton']}) "
        f"| {meta['date']}")
    log(f"model: Wan2.1 geometry {cfg.num_layers} layers x {cfg.num_heads} heads x {cfg.head_dim}, dim {cfg.dim}, "
        f"{weights}, {meta['dtype']}; DiT time only (VAE decode and text encoder excluded)")
    text_len = 16 if args.tiny else 512
    ctx = torch.randn(1, text_len, cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    results = {"meta": meta, "runs": [], "reference_runs": [], "ablations": [], "long": [], "checks": [],
               "prompt_switch": []}

    if args.micro and dev.type == "cuda":
        log("\n## micro-benchmarks")
        try:
            results["micro"] = micro(dev, dtype, log)
        except Exception as err:  # noqa: BLE001
            log(f"micro failed: {err}\n{traceback.format_exc()}")

    fp8mm = args.weights == "fp8-matmul"
    fast = ChunkRunner(model, dtype=dtype, device=dev, fast=FastOptions(attention=args.attention, fp8_matmul=fp8mm))
    ref = ChunkRunner(model, dtype=dtype, device=dev, fast=False)
    log(f"fast path: {fast.fast_reason}")
    if args.engine != "reference" and fast.fast_path is None and not args.tiny:
        log("WARNING: the fast path is off; the 'fast' rows below are the reference loop")
    meta["fast_path"] = fast.fast_reason
    engines = {"fast": [fast], "reference": [ref], "both": [ref, fast]}[args.engine]
    res_table = TINY_RESOLUTIONS if args.tiny else RESOLUTIONS
    variants = [v for v in args.variants.split(",") if v]
    ref_res = set(args.reference_resolutions.split(","))

    for res in [r for r in args.resolutions.split(",") if r]:
        hw = res_table[res]
        if over_budget():
            log(f"time budget reached: skipping {res}")
            break
        for runner in engines:
            eng = "fast" if runner is fast else "reference"
            if eng == "reference" and args.engine == "both" and res not in ref_res:
                continue
            log(f"\n## {res} (latent {hw[0]}x{hw[1]}, {hw[0] * hw[1] // 4} tokens/frame), engine {eng}")
            if args.warmup != "none":
                w = warmup(runner, ctx, hw, variants if args.warmup == "variants" else variants[-1:], dev,
                           args.frames if args.warmup == "variants" else 9)
                log(f"warm-up {w:.1f} s (untimed)")
            for name in variants:
                if over_budget():
                    log(f"time budget reached: skipping {res} {name}")
                    continue
                g0 = dict(runner.fast_path.graphs.stats) if runner.fast_path is not None else None
                try:
                    row, out = run_variant(runner, ctx, hw, args.frames, name, dev)
                    if g0 is not None:
                        row["graphs"] = {k: runner.fast_path.graphs.stats[k] - g0[k] for k in g0}
                        row["graphs"]["error"] = runner.fast_path.graphs.error
                except torch.cuda.OutOfMemoryError:
                    row, out = {"variant": name, "label": LABELS[name], "error": "OOM"}, None
                    torch.cuda.empty_cache()
                except Exception as err:  # noqa: BLE001 - keep going, report it
                    log(traceback.format_exc())
                    row, out = {"variant": name, "label": LABELS[name], "error": f"{type(err).__name__}"}, None
                row.update(res=res, engine=eng)
                (results["runs"] if eng == "fast" else results["reference_runs"]).append(row)
                if "error" not in row:
                    log(f"{LABELS[name]:36s} steady {row['fps_steady']:6.2f} FPS ({1000 * row['steady_median_s']:.0f} ms/chunk), "
                        f"clip {row['fps_clip']:6.2f} FPS, KV {fmt_bytes(row['kv_bytes_end'])} ({row['kv_vs_full']:.1f}x < full), "
                        f"peak {fmt_bytes(row.get('peak_bytes', 0))}, profiling {row['profile_ms']:.1f} ms, "
                        f"chunks {' '.join(f'{1000 * s:.0f}' for s in row['chunk_seconds'])} ms"
                        + (f", heads {row['head_counts']}" if "head_counts" in row else "")
                        + (f", graphs {row['graphs']}" if "graphs" in row else ""))
                    if args.engine == "both":
                        row["_latent"] = out.latent
                else:
                    log(f"{LABELS[name]:36s} {row['error']}")
        if args.engine == "both" and res in ref_res:  # same function: compare the latents
            fr = {r["variant"]: r for r in results["runs"] if r["res"] == res}
            rr = {r["variant"]: r for r in results["reference_runs"] if r["res"] == res}
            for name in variants:
                if "_latent" in fr.get(name, {}) and "_latent" in rr.get(name, {}):
                    e = rel(fr[name]["_latent"], rr[name]["_latent"])
                    chk = {"res": res, "variant": name, "rel_diff_fast_vs_reference": e,
                           "speedup_fast_vs_reference": fr[name]["fps_steady"] / rr[name]["fps_steady"]}
                    results["checks"].append(chk)
                    log(f"check {res} {name}: fast vs reference latent rel diff {e:.2e}, steady speedup "
                        f"{chk['speedup_fast_vs_reference']:.2f}x")
        for r in results["runs"] + results["reference_runs"]:
            r.pop("_latent", None)

    if args.attention_8bit and not over_budget():
        results["attention_8bit"] = att8_rows(args, model, ctx, dtype, dev, res_table, fp8mm, log, over_budget)

    if args.warm and not over_budget():
        log(f"\n## warm start, {args.warm_resolution}: 3 runs on one warm runner (run 1 cold)")
        try:
            results["warm"] = warm_rows(args, model, ctx, dtype, dev, res_table, fp8mm, log)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())

    if args.ablate and not over_budget():
        hw = res_table["480p"]
        log("\n## ablations, 480p (fast path with one switch off)")
        cases = [("all on", {}, "df"), ("cuda_graphs off", {"cuda_graphs": False}, "df"),
                 ("attention=flash", {"attention": "flash"}, "df"),
                 ("attention=efficient", {"attention": "efficient"}, "df"),
                 ("fused_kernels off", {"fused_kernels": False}, "df"), ("fuse_qkv off", {"fuse_qkv": False}, "df"),
                 ("group_heads off (gathers)", {"group_heads": False}, "df"),
                 ("gelu_epilogue off", {"gelu_epilogue": False}, "df"),
                 ("linear_patch_embed off", {"linear_patch_embed": False}, "df"),
                 ("overlap_groups off", {"overlap_groups": False}, "df"),
                 ("window: all on", {}, "window"), ("window: cuda_graphs off", {"cuda_graphs": False}, "window"),
                 ("window: attention=flash", {"attention": "flash"}, "window")]
        base_latent = {}
        for label, kw, var in cases:
            if over_budget():
                break
            r = ChunkRunner(model, dtype=dtype, device=dev, fast=FastOptions(**kw))
            settings, dfc = variant_settings(var)
            try:
                generate(r, ctx, (1, 16, 9, *hw), dataclasses.replace(settings, timesteps=(1000.0,)), dfc)
                row, out = run_variant(r, ctx, hw, args.frames, var, dev)
            except Exception:  # noqa: BLE001
                log(f"{label}: " + traceback.format_exc())
                continue
            row.update(res="480p", ablation=label)
            base_latent.setdefault(var, out.latent)
            row["rel_diff_vs_all_on"] = rel(out.latent, base_latent[var])
            base_flops = next((a["attn_flops"] for a in results["ablations"] if a["variant"] == var), row["attn_flops"])
            row["attn_flops_equal_all_on"] = row["attn_flops"] == base_flops
            if r.fast_path is not None:
                row["graphs"] = dict(r.fast_path.graphs.stats, error=r.fast_path.graphs.error)
            results["ablations"].append(row)
            log(f"{label:28s} {var:7s} steady {row['fps_steady']:6.2f} FPS ({1000 * row['steady_median_s']:.1f} ms/chunk), "
                f"clip {row['fps_clip']:6.2f} FPS, latent rel diff vs all-on {row['rel_diff_vs_all_on']:.1e} "
                f"(attention FLOPs {'equal' if row['attn_flops_equal_all_on'] else 'DIFFER'}), "
                f"chunks {' '.join(f'{1000 * x:.0f}' for x in row['chunk_seconds'])}")
            del r

    if args.prompt_switch and not over_budget():
        log(f"\n## prompt switch, 480p: one switch at latent frame 15, {args.switch_frames} latent frames")
        try:
            results["prompt_switch"] = prompt_switch_rows(fast, ctx, res_table["480p"], args.switch_frames, dev, log)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())

    if args.op_profile and dev.type == "cuda" and not over_budget():
        log("\n## op profile, 480p, Dummy Forcing layout")
        for key, runner in (("op_profile", fast),
                            ("op_profile_eager", ChunkRunner(model, dtype=dtype, device=dev,
                                                             fast=FastOptions(attention=args.attention, cuda_graphs=False,
                                                                              fp8_matmul=fp8mm)))):
            log(f"-- {'CUDA graphs on' if runner is fast else 'eager (CUDA graphs off)'}")
            try:
                results[key] = op_profile(runner, ctx, res_table["480p"], dev, log)
            except Exception:  # noqa: BLE001
                log(traceback.format_exc())
            if runner is not fast and runner.fast_path is not None:
                runner.fast_path.clear()
            del runner
            gc.collect()
            torch.cuda.empty_cache()

    if args.long_frames and not over_budget():
        hw = res_table["480p"]
        log(f"\n## bounded memory: 480p, {args.long_frames} latent frames ({4 * (args.long_frames - 1) + 1} video frames)")
        for name in [v for v in args.long_variants.split(",") if v]:
            if over_budget():
                break
            row, _ = run_variant(fast, ctx, hw, args.long_frames, name, dev)
            row.update(res="480p", label=LABELS[name].replace("120", str(args.long_frames)))
            short = next((r for r in results["runs"] if r["res"] == "480p"
                          and r["variant"] == {"window_long": "window", "df_long": "df"}[name] and "error" not in r), None)
            if short and "peak_bytes" in row:  # memory the run added over what was allocated when it began
                row["peak_vs_21_frames_bytes"] = row["peak_over_start_bytes"] - short["peak_over_start_bytes"]
            results["long"].append(row)
            extra = (f", peak over start {fmt_bytes(row['peak_over_start_bytes'])} "
                     f"({row['peak_vs_21_frames_bytes'] / 2 ** 20:+.0f} MiB vs the {args.frames}-frame run)"
                     if "peak_vs_21_frames_bytes" in row else "")
            log(f"{row['label']:36s} steady {row['fps_steady']:6.2f} FPS, clip {row['fps_clip']:6.2f} FPS, "
                f"KV {fmt_bytes(row['kv_bytes_end'])} (allocated {fmt_bytes(row['kv_allocated_bytes_end'])}), "
                f"peak {fmt_bytes(row.get('peak_bytes', 0))}{extra}")

    rows = results["runs"] + results["long"]
    md = table(rows, dev)
    results["table_md"] = md
    results["elapsed_s"] = time.perf_counter() - t_start
    if args.engine == "both" and results["reference_runs"]:
        results["reference_table_md"] = table(results["reference_runs"], dev)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if args.engine == "both" and results["reference_runs"]:
        log("\n## reference loop (before)")
        log(results["reference_table_md"])
    log(f"\n## results: {card}, torch {torch.__version__}, {meta['date']}, {weights}, DiT only (VAE excluded), "
        f"{args.frames} latent frames ({4 * (args.frames - 1) + 1} video frames), chunks of 3, 4 steps + cache pass")
    log(f"command: {meta['command']}  (total {results['elapsed_s']:.0f} s)")
    log(md)
    return results


if __name__ == "__main__":
    main()
