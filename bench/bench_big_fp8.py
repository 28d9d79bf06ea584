#!/usr/bin/env python3
"""14B models and fp8 weights: speed and peak memory of the chunk-by-chunk engine, one card.

Rows (DiT only: VAE decode and text encoder excluded; 21 latent frames = 81 video frames,
chunks of 3, 4 steps + the cache pass, random weights):
  * Wan2.1 1.3B at 480p, Dummy Forcing: bf16 weights, fp8 weights cast to bf16 one layer at
    a time, and fp8 matrix products (ComfyUI's fp8_e4m3fn_fast); latent difference to bf16;
  * Wan2.1 14B geometry (Krea Realtime 14B: dim 5120, 40 layers x 40 heads, FFN 13824) at
    480p and 720p: full cache, sink 3 + window 12 and Dummy Forcing in bf16, then the same
    model quantised to scaled fp8 e4m3 (per-tensor scale, like ComfyUI's scaled fp8 files).

Peak memory is torch.cuda.max_memory_allocated over the run, weights included: what a card
must hold for the DiT. The script stops adding rows past --time-budget seconds.

Usage (GPU):  python bench/bench_big_fp8.py --out bench/results_big_fp8.json --time-budget 400
       (CPU smoke test, tiny geometry):  python bench/bench_big_fp8.py --device cpu --tiny
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

from bench_dit import (LABELS, RESOLUTIONS, TINY, TINY_RESOLUTIONS, WAN21_14B, fmt_bytes, random_model, rel,  # noqa: E402
                       run_variant, sync, warmup)
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.fp8 import fp8_matmul_available, quantize_fp8  # noqa: E402
from dummy_forcing_core.fused_forward import FastOptions  # noqa: E402
from dummy_forcing_core.wan_model import WAN21_1_3B, WanConfig  # noqa: E402

TINY_BIG = WanConfig(dim=128, ffn_dim=352, num_heads=8, num_layers=3, text_dim=32, freq_dim=32)


@contextlib.contextmanager
def memory_trace(runner, dev, events: list):
    """Record (what, first frame, peak bytes since the previous event) for every pass of
    ``runner`` and every KV regroup (the instance's forward and KVCache.regroup are wrapped
    for the duration; bench only)."""
    from dummy_forcing_core.kv_cache import KVCache

    forward, regroup = runner.forward, KVCache.regroup

    def peak():
        if dev.type != "cuda":
            return 0
        sync(dev)
        p = torch.cuda.max_memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return p

    def traced_forward(x, t, start_frame, *a, **k):
        out = forward(x, t, start_frame, *a, **k)
        events.append(("commit" if k.get("commit") else "pass", int(start_frame), peak()))
        return out

    def traced_regroup(self, *a, **k):
        out = regroup(self, *a, **k)
        events.append(("regroup", int(self.history), peak()))
        return out

    runner.forward = traced_forward
    KVCache.regroup = traced_regroup
    try:
        yield events
    finally:
        del runner.forward
        KVCache.regroup = regroup


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--big-resolutions", default="480p,720p")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--big-weights", default="bf16,fp8",
                    help="14B weight sets: 'bf16,fp8' (bf16 rows, then the same model quantised in place), or one "
                         "of them alone in this process (fp8: quantised right after it is drawn, fp8 products)")
    ap.add_argument("--big-variants", default="", help="14B caches per resolution with --big-weights of one set "
                                                        "(default df,full,window)")
    ap.add_argument("--memory-only", action="store_true",
                    help="14B fp8 Dummy Forcing at 480p only, with a per-pass peak-memory trace (graphs on and off)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    dtype = torch.bfloat16
    res_table = TINY_RESOLUTIONS if args.tiny else RESOLUTIONS
    lines, rows = [], []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    def over():
        return args.time_budget and time.perf_counter() - t0 > args.time_budget

    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    meta = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "fp8_matmul_available": fp8_matmul_available(dev),
            "command": "python bench/bench_big_fp8.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    log(f"card: {card} | torch {torch.__version__} | {meta['date']} | fp8 matmul available: {meta['fp8_matmul_available']}")

    def measure(model, label, weights, fast, res, variant, ctx, keep=False, trace=False):
        if over():
            log(f"time budget reached: skipping {label} {weights} {res} {variant}")
            return None
        runner = ChunkRunner(model, dtype=dtype, device=dev, fast=fast)
        hw = res_table[res]
        events = []
        try:
            w = warmup(runner, ctx, hw, [variant], dev, args.frames)
            with (memory_trace(runner, dev, events) if trace else contextlib.nullcontext()):
                row, out = run_variant(runner, ctx, hw, args.frames, variant, dev)
            if trace:
                row["memory_trace"] = events
                if dev.type == "cuda":  # the trace resets the peak at every event: the run's peak is their max
                    row["peak_bytes"] = max(e[2] for e in events)
                log("   peak per step (GiB): " + " ".join(f"{e[0]}@{e[1]}:{e[2] / 2 ** 30:.1f}" for e in events))
        except torch.cuda.OutOfMemoryError:
            row, out, w = {"variant": variant, "error": "OOM"}, None, 0.0
        except Exception as err:  # noqa: BLE001 - report and go on
            log(traceback.format_exc())
            row, out, w = {"variant": variant, "error": type(err).__name__}, None, 0.0
        row.update(model=label, weights=weights, res=res, label=LABELS[variant], fast_path=runner.fast_reason,
                   warmup_s=w)
        if runner.fast_path is not None:
            row["graphs_error"] = runner.fast_path.graphs.error
            runner.fast_path.clear()
        rows.append(row)
        if "error" in row:
            log(f"{label} {weights:10s} {res} {LABELS[variant]:36s} {row['error']}")
        else:
            log(f"{label} {weights:10s} {res} {LABELS[variant]:36s} steady {row['fps_steady']:6.2f} FPS "
                f"({1000 * row['steady_median_s']:.0f} ms/chunk), clip {row['fps_clip']:6.2f} FPS, "
                f"peak {fmt_bytes(row.get('peak_bytes', 0))}, KV {fmt_bytes(row['kv_bytes_end'])}, "
                f"fast path {runner.fast_reason}")
        del runner
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return (row, out.latent if out is not None and keep else None)

    if args.memory_only:
        cfg = TINY_BIG if args.tiny else WAN21_14B
        ctx = torch.randn(1, 16 if args.tiny else 512, cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
        big = quantize_fp8(random_model(cfg, dev, dtype))
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        meta["big_fp8_weight_bytes"] = param_bytes(big)
        log(f"\n## 14B fp8 weights {param_bytes(big) / 2 ** 30:.2f} GiB: peak memory per pass, 480p Dummy Forcing")
        for weights, fast in (("fp8 matmul", FastOptions(fp8_matmul=True)),
                              ("fp8 mm, no graphs", FastOptions(fp8_matmul=True, cuda_graphs=False))):
            measure(big, "14B", weights, fast, "480p", "df", ctx, trace=True)
        del big
        args.skip_small, args.big_resolutions = True, ""

    # -- 1.3B: fp8 products vs bf16 --------------------------------------------------------------
    if not args.skip_small:
        cfg = TINY if args.tiny else WAN21_1_3B
        ctx = torch.randn(1, 16 if args.tiny else 512, cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
        small = random_model(cfg, dev, dtype)
        log(f"\n## 1.3B ({param_bytes(small) / 2 ** 30:.2f} GiB bf16 weights), 480p, Dummy Forcing")
        ref = measure(small, "1.3B", "bf16", None, "480p", "df", ctx, keep=True)
        small8 = quantize_fp8(copy.deepcopy(small))
        del small
        gc.collect()
        for weights, fast in (("fp8 cast", FastOptions(fp8_matmul=False)), ("fp8 matmul", FastOptions(fp8_matmul=True))):
            got = measure(small8, "1.3B", weights, fast, "480p", "df", ctx, keep=True)
            if got and ref and got[1] is not None and ref[1] is not None:
                got[0]["latent_rel_diff_vs_bf16"] = rel(got[1], ref[1])
                log(f"   latent rel diff vs bf16 weights: {got[0]['latent_rel_diff_vs_bf16']:.3e}")
        del small8
        gc.collect()

    # -- 14B: bf16, then the same model in scaled fp8 ---------------------------------------------
    cfg = TINY_BIG if args.tiny else WAN21_14B
    ctx = torch.randn(1, 16 if args.tiny else 512, cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    big_sets = [w for w in args.big_weights.split(",") if w]
    if not over() and args.big_resolutions and len(big_sets) == 1:  # one weight set, fresh from the start
        t = time.perf_counter()
        big = random_model(cfg, dev, dtype)
        if big_sets[0] == "fp8":
            big = quantize_fp8(big)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        meta[f"big_{big_sets[0]}_weight_bytes"] = param_bytes(big)
        log(f"\n## 14B geometry, {big_sets[0]} weights only: {param_bytes(big) / 2 ** 30:.2f} GiB, built in "
            f"{time.perf_counter() - t:.1f} s")
        weights, fast = ("fp8 matmul", FastOptions(fp8_matmul=True)) if big_sets[0] == "fp8" else ("bf16", None)
        for res in [r for r in args.big_resolutions.split(",") if r]:
            for variant in [v for v in (args.big_variants or "df,full,window").split(",") if v]:
                measure(big, "14B", weights, fast, res, variant, ctx)
        del big
        args.big_resolutions = ""
    if not over() and args.big_resolutions:
        t = time.perf_counter()
        big = random_model(cfg, dev, dtype)
        sync(dev)
        meta["big_bf16_weight_bytes"] = param_bytes(big)
        log(f"\n## 14B geometry ({cfg.num_layers} layers x {cfg.num_heads} heads, dim {cfg.dim}, FFN {cfg.ffn_dim}): "
            f"{param_bytes(big) / 2 ** 30:.2f} GiB bf16 weights, built in {time.perf_counter() - t:.1f} s")
        big_res = [r for r in args.big_resolutions.split(",") if r]
        plan = [(r, v) for r in big_res for v in (("df", "full", "window") if r == "480p" else ("df", "full"))]
        for res, variant in plan:
            measure(big, "14B", "bf16", None, res, variant, ctx)
        if not over():
            quantize_fp8(big)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            meta["big_fp8_weight_bytes"] = param_bytes(big)
            log(f"quantised to scaled fp8 e4m3: {param_bytes(big) / 2 ** 30:.2f} GiB weights")
            plan8 = [("fp8 matmul", FastOptions(fp8_matmul=True), "480p", "df"),
                     ("fp8 matmul", FastOptions(fp8_matmul=True), "480p", "full"),
                     ("fp8 cast", FastOptions(fp8_matmul=False), "480p", "df")]
            plan8 += [("fp8 matmul", FastOptions(fp8_matmul=True), r, v) for r in big_res if r != "480p"
                      for v in ("df", "full")]
            for weights, fast, res, variant in plan8:
                measure(big, "14B", weights, fast, res, variant, ctx)
        del big

    md = ["| model | weights | res | variant | FPS steady | FPS clip | peak GPU mem | KV at end | DF vs full |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['weights']} | {r['res']} | {r['label']} | {r['error']} | | | | |")
            continue
        full = next((x for x in rows if x["model"] == r["model"] and x["weights"] == r["weights"]
                     and x["res"] == r["res"] and x["variant"] == "full" and "error" not in x), None)
        sp = f"{r['fps_steady'] / full['fps_steady']:.2f}x" if full and r["variant"] == "df" else ""
        md.append(f"| {r['model']} | {r['weights']} | {r['res']} | {r['label']} | {r['fps_steady']:.2f} | "
                  f"{r['fps_clip']:.2f} | {fmt_bytes(r.get('peak_bytes', 0))} | {fmt_bytes(r['kv_bytes_end'])} | {sp} |")
    table = "\n".join(md)
    meta["elapsed_s"] = time.perf_counter() - t0
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "table_md": table, "log": lines}, f, indent=1, default=str)
    log(f"\n## results: {card}, torch {torch.__version__}, {meta['date']}, random weights, DiT only, "
        f"{args.frames} latent frames; total {meta['elapsed_s']:.0f} s")
    log(table)


if __name__ == "__main__":
    main()
