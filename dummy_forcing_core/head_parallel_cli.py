"""The head-parallel command line: one video of the shipped small model with its attention heads
split across the processes of torchrun (``head_parallel.py`` holds the runner; this is the entry).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m dummy_forcing_core.head_parallel_cli \\
        --prompt "a big red circle at top left moving right fast, on a navy plain background"

Every process checks first that all were started with the same arguments; the runner then
checks the weights, latent and text (``rank_agreement``). A mismatch, or more processes than
heads per layer, is printed once (by rank 0) as one line and every process exits 1. Rank 0
writes the latent (``--out``) and prints the run's stats, every process's share included.
Not imported by the runtime (nodes, ``head_parallel``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from .cache_policy import CacheSpec
from .dummy_forcing import DummyForcingConfig
from .head_parallel import HeadParallelRunner, rank_stats
from .rank_agreement import RankMismatch, agree
from .sampler import SamplerSettings, generate
from .tiny.codec import PixelCodec
from .tiny.model import load_tiny

__all__ = ["main"]

DEFAULT_PROMPT = "a big red circle at top left moving right fast, on a navy plain background"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Generate one video with the heads split across the processes of "
                                 "torchrun (the shipped small model; Dummy Forcing on).")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--frames", type=int, default=24, help="latent frames")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dummy-heads", type=float, default=0.5)
    ap.add_argument("--out", default="out/head_parallel.safetensors", help="latent written by rank 0")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype; bfloat16 on GPUs runs the fused forward")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    try:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        # the settings first, before anything is loaded (--out: only rank 0 writes)
        agree({f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items()) if k != "out"}, "settings",
              hint="start every process with the same arguments")
        return run(args, rank, device)
    except RankMismatch as exc:  # the same error on every rank: said once
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # this rank's own trouble (a file, a setting)
        print(f"error (rank {rank}): {exc}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace, rank: int, device: torch.device) -> int:
    """The video itself, on an initialised process group."""
    model, text_encoder = load_tiny(device=device)
    runner = HeadParallelRunner(model, dtype=getattr(torch, args.dtype), device=device)
    tc = model.tiny_config
    with torch.no_grad():
        ctx = text_encoder.encode([args.prompt]).to(device)
    C, _, h, w = PixelCodec(tc["codec"]["factor"]).latent_shape(args.frames, tc["data"]["size"], tc["data"]["size"])
    spec = CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=args.dummy_heads))
    settings = SamplerSettings(chunk_frames=tc["train"]["chunk_frames"], seed=args.seed)
    res = generate(runner, ctx, (1, C, args.frames, h, w), settings, spec)
    res.stats.ranks = rank_stats(res.stats, runner)
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_file({"latent": res.latent.contiguous().cpu()}, args.out)
        print(res.stats.to_text())
        print(f"latent: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
