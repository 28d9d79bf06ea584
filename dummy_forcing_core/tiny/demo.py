"""Demo: one prompt through the shipped tiny model, with the full KV cache and with Dummy Forcing.

    python -m dummy_forcing_core.tiny.demo --prompt "a big green circle at top right moving left fast, on a teal gradient background" --out out/demo.gif

Writes a side-by-side GIF (full cache | Dummy Forcing | 4x difference) and prints the time
per chunk, the KV cache held, the attention FLOPs and PSNR / SSIM of Dummy Forcing against
the full cache (same prompt, same seed, same noise). Runs on the CPU in seconds.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ..cache_policy import CacheSpec
from ..dummy_forcing import DummyForcingConfig
from ..sampler import SamplerSettings, generate
from ..stats import format_bytes
from ..chunk_runner import ChunkRunner
from .codec import PixelCodec, to_uint8
from .metrics import WORLD_KEYS, psnr, ssim, world_metrics
from .model import load_tiny

__all__ = ["DEFAULT_PROMPT", "run_pair", "side_by_side_gif", "main"]

DEFAULT_PROMPT = "a big green circle at top right moving left fast, on a teal gradient background"


def _label_strip(width: int, labels: list[str], cell_w: int, height: int = 14) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (20, 20, 20))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, s in enumerate(labels):
        d.text((i * cell_w + 3, 1), s, fill=(235, 235, 235), font=font)
    return np.asarray(img)


def side_by_side_gif(path: str, videos: list[tuple[str, torch.Tensor]], scale: int = 4, fps: float = 8.0,
                     gap: int = 2) -> str:
    """Write a GIF of videos ([3, F, H, W] in [-1, 1]) side by side with a label strip."""
    from PIL import Image

    frames = [to_uint8(v) for _, v in videos]  # each [F, H, W, 3]
    Fr = min(f.shape[0] for f in frames)
    H, W = frames[0].shape[1] * scale, frames[0].shape[2] * scale
    cell_w = W + gap
    total_w = cell_w * len(frames) - gap
    strip = _label_strip(total_w, [n for n, _ in videos], cell_w)
    out = []
    for t in range(Fr):
        row = np.full((H, total_w, 3), 255, np.uint8)
        for i, f in enumerate(frames):
            row[:, i * cell_w:i * cell_w + W] = f[t].repeat(scale, 0).repeat(scale, 1)
        out.append(Image.fromarray(np.concatenate([strip, row], 0)))
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    # an adaptive palette per frame keeps the object colours exact
    out[0].save(path, save_all=True, append_images=out[1:], duration=int(1000 / fps), loop=0, optimize=False)
    return path


def run_pair(model, text, prompt: str, seed: int = 0, frames: int = 24, df: DummyForcingConfig | None = None,
             settings: SamplerSettings | None = None, device="cpu", dtype=torch.float32, warmup: bool = True):
    """Generate ``prompt`` with the full cache and with Dummy Forcing ``df``: returns a dict with
    the two decoded videos [3, F, 32, 32], their GenerationStats and wall-clock seconds."""
    codec = PixelCodec(model.tiny_config["codec"]["factor"])
    size = model.tiny_config["data"]["size"]
    C, _, h, w = codec.latent_shape(frames, size, size)
    runner = ChunkRunner(model, dtype=dtype, device=device)
    with torch.no_grad():
        ctx = text.encode([prompt]).to(device)
    settings = settings or SamplerSettings(chunk_frames=model.tiny_config["train"]["chunk_frames"], seed=seed)
    df = df or DummyForcingConfig()
    shape = (1, C, frames, h, w)
    if warmup:  # first calls pay for allocator / kernel set-up: keep them out of the timing
        generate(runner, ctx, (1, C, 2 * settings.chunk_frames, h, w), settings)
    out = {}
    for name, cfg in (("full", None), ("df", df)):
        t0 = time.perf_counter()
        res = generate(runner, ctx, shape, settings, CacheSpec(dummy_forcing=cfg))
        out[name + "_seconds"] = time.perf_counter() - t0
        out[name + "_stats"] = res.stats
        out[name] = codec.decode(res.latent.float().cpu())[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--out", default="out/demo.gif")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=24, help="frames to generate (the model was trained on 24)")
    ap.add_argument("--dummy-heads", type=float, default=0.5, help="fraction of all heads made dummy")
    ap.add_argument("--neighbor-chunks", type=int, default=1, help="L: chunks a neighbor head keeps")
    ap.add_argument("--sink-frames", type=int, default=1)
    ap.add_argument("--ar-start", type=int, default=1)
    ap.add_argument("--no-packing", action="store_true")
    ap.add_argument("--model", default=None, help="tiny model file (default: the shipped one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", type=int, default=4, help="GIF pixels per video pixel")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model, text = load_tiny(args.model, device=args.device)
    unknown = text.unknown_words(args.prompt)
    if unknown:
        print(f"note: words the tiny model does not know (ignored as <unk>): {', '.join(unknown)}")
    df = DummyForcingConfig(dummy_heads=args.dummy_heads, ar_start=args.ar_start, neighbor_chunks=args.neighbor_chunks,
                            sink_frames=args.sink_frames, context_packing=not args.no_packing)
    r = run_pair(model, text, args.prompt, args.seed, args.frames, df, device=args.device)
    full, dfv = r["full"], r["df"]
    diff = ((dfv - full).abs() * 4 - 1).clamp(-1, 1)
    pct = f"{args.dummy_heads:.0%}"
    side_by_side_gif(args.out, [("full cache", full), (f"Dummy F. {pct}", dfv), ("|diff| x4", diff)], args.scale)

    fs, ds = r["full_stats"], r["df_stats"]
    cf = model.tiny_config["train"]["chunk_frames"]
    f_steady = sorted(fs.steady_chunk_seconds())[len(fs.steady_chunk_seconds()) // 2]
    d_steady = sorted(ds.steady_chunk_seconds())[len(ds.steady_chunk_seconds()) // 2]
    counts = ds.type_counts()
    tot = [sum(c[k] for c in counts) for k in range(3)] if counts else [0, 0, 0]
    wm_full, wm_df = world_metrics(full, args.prompt, chunk=cf), world_metrics(dfv, args.prompt, chunk=cf)
    print(f"prompt: {args.prompt}")
    print(f"model: tiny causal Wan2.1, {model.num_layers} layers x {model.num_heads} heads, {args.frames} frames "
          f"of {full.shape[-1]}x{full.shape[-2]} px, chunks of {cf}, device {args.device}")
    print(f"Dummy Forcing: {pct} dummy heads, L={args.neighbor_chunks}, sink {args.sink_frames}, "
          f"packing {'off' if args.no_packing else 'on'}; head types sink/neighbor/dummy = {tot[0]}/{tot[1]}/{tot[2]}")
    print(f"{'':14s}{'clip s':>8s}{'chunk ms':>10s}{'FPS':>8s}{'KV held':>12s}{'attn FLOPs':>12s}")
    for name, st, secs, med in (("full cache", fs, r["full_seconds"], f_steady), ("Dummy Forcing", ds, r["df_seconds"], d_steady)):
        print(f"{name:14s}{secs:8.2f}{1000 * med:10.1f}{cf / med:8.1f}{format_bytes(st.kv_bytes):>12s}"
              f"{st.attn_flops / 1e9:10.2f} G")
    print(f"speed-up (steady chunk): {f_steady / d_steady:.2f}x; KV cache {fs.kv_bytes / max(ds.kv_bytes, 1):.1f}x smaller; "
          f"attention FLOPs {100 * ds.attn_flops / max(fs.attn_flops, 1):.0f}% of full")
    print(f"quality vs full cache: PSNR {psnr(dfv, full):.2f} dB, SSIM {ssim(dfv, full):.4f}")
    print("world metrics (full -> DF): " + ", ".join(
        f"{k} {wm_full[k]:.3f} -> {wm_df[k]:.3f}" for k in WORLD_KEYS))
    print(f"wrote {args.out}")
    return r


if __name__ == "__main__":
    main()
