#!/usr/bin/env python3
"""Head-parallel Dummy Forcing on several GPUs of one host: steady FPS and peak memory per GPU.

Run under torchrun, one process per GPU (NCCL; NVLink multicast is kept off):

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/bench_head_parallel.py \\
        --geometry 14b --resolutions 480p,720p --out bench/results_head_parallel.json
    (the 1-GPU baseline: the same with --nproc_per_node 1)
    (CPU smoke test, gloo, tiny geometry):  ... --nproc_per_node 2 bench/bench_head_parallel.py --device cpu --tiny

Every rank draws the same random model on its device (same seed), runs the same Dummy Forcing
clip (21 latent frames, chunks of 3, 4 steps + the cache pass, 50% dummy heads) with a
``HeadParallelRunner`` (fused forward, CUDA graphs off), and reports its steady chunk time
and torch peak memory; rank 0 prints the table and writes the JSON. With one process it also
times the ordinary single-GPU runner (CUDA graphs on): the number a split must beat.
DiT only; the text encoder and VAE are excluded.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast on shared hosts
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench_dit import GEOMETRIES, RESOLUTIONS, TINY, TINY_RESOLUTIONS, random_model, variant_settings  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.fp8 import quantize_fp8  # noqa: E402
from dummy_forcing_core.fused_forward import FastOptions  # noqa: E402
from dummy_forcing_core.head_parallel import HeadParallelRunner, rank_stats  # noqa: E402
from dummy_forcing_core.rank_agreement import RankMismatch, agree  # noqa: E402
from dummy_forcing_core.sampler import generate  # noqa: E402


def clip(runner, ctx, hw, frames, dev):
    """One warm-up clip (one step), then the timed clip: (steady chunk s, stats, peak bytes, latent)."""
    settings, spec = variant_settings("df")
    shape = (1, 16, frames, *hw)
    generate(runner, ctx, shape, dataclasses.replace(settings, timesteps=(1000.0,)), spec)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    res = generate(runner, ctx, shape, settings, spec)
    st = res.stats
    tail = st.chunk_seconds[st.switch_chunk:] if st.switch_chunk is not None else st.chunk_seconds
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    return statistics.median(tail), st, peak, res.latent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--geometry", default="14b", choices=sorted(GEOMETRIES))
    ap.add_argument("--weights", default="bf16", choices=("bf16", "fp8-matmul"))
    ap.add_argument("--resolutions", default="480p,720p")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--out", default=None)
    ap.add_argument("--one-gpu", action="store_true",
                    help="a check, not a speed: every rank on cuda:0 with gloo (the split's CUDA path on one card)")
    ap.add_argument("--check", action="store_true", help="rank 0 also runs one process's runner: latent rel diff")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda and not args.one_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = 0 if args.one_gpu else int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    try:  # every rank the same arguments (the runner checks weights, latent and text itself)
        agree({f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items()) if k != "out"}, "settings",
              hint="start every process with the same arguments")
    except RankMismatch as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        dist.destroy_process_group()
        return 1
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = TINY if args.tiny else GEOMETRIES[args.geometry]
    model = random_model(cfg, dev, dtype)
    fast = FastOptions(fp8_matmul=args.weights == "fp8-matmul")
    if args.weights != "bf16":
        model = quantize_fp8(model)
    ctx = torch.randn(1, 16 if args.tiny else 512, cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    table = TINY_RESOLUTIONS if args.tiny else RESOLUTIONS
    rows = []
    try:
        for res in [r for r in args.resolutions.split(",") if r]:
            hw = table[res]
            runner = HeadParallelRunner(model, dtype=dtype, device=dev, fast=fast if cuda else True)
            s, st, peak, latent = clip(runner, ctx, hw, args.frames, dev)
            shares = rank_stats(st, runner)
            peaks = [None] * world
            dist.all_gather_object(peaks, peak)
            row = {"res": res, "world": world, "engine": runner.fast_reason, "steady_chunk_s": s,
                   "fps_steady": 12 / s, "peak_bytes_per_rank": peaks, "ranks": shares,
                   "chunk_seconds": st.chunk_seconds}
            if world == 1 or (args.check and rank == 0):  # the ordinary runner, CUDA graphs on
                s1, _, p1, one = clip(ChunkRunner(model, dtype=dtype, device=dev, fast=fast if cuda else True), ctx,
                                      hw, args.frames, dev)
                row.update(single_runner_fps_steady=12 / s1, single_runner_peak_bytes=p1,
                           latent_rel_diff_vs_single=float((latent.double() - one.double()).norm() / one.double().norm()))
            if args.check:
                dist.barrier()
            rows.append(row)
            if rank == 0:
                print(f"{res} world {world}: {row['fps_steady']:.2f} FPS steady, peak per GPU "
                      f"{', '.join(f'{p / 2 ** 30:.1f}' for p in peaks)} GiB, heads per layer "
                      f"{[r['heads_per_layer'][0] for r in shares]}, engine {runner.fast_reason}"
                      + (f"; single-GPU runner {row['single_runner_fps_steady']:.2f} FPS, latent rel diff "
                         f"{row['latent_rel_diff_vs_single']:.1e}" if "single_runner_fps_steady" in row else ""),
                      flush=True)
            del runner
    finally:
        if rank == 0 and args.out:
            meta = {"card": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__,
                    "world": world, "geometry": "tiny" if args.tiny else args.geometry, "weights": args.weights,
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
