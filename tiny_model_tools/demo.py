"""Demo: one prompt through the shipped tiny model, with the full KV cache and with Dummy Forcing.

    python -m tiny_model_tools.demo --prompt "a small yellow square at bottom left moving up right fast, on a maroon plain background" --out out/demo.gif

Writes a side-by-side animation (full cache | Dummy Forcing | 4x difference; .gif, .webp or
.png by the extension of --out) and prints the time per chunk (median of --repeats runs),
the KV cache held, the attention FLOPs and PSNR / SSIM of Dummy Forcing against the full
cache (same prompt, same seed, same noise). Runs on the CPU in well under a minute.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate, plan_run
from dummy_forcing_core.stats import format_bytes
from dummy_forcing_core.tiny.codec import PixelCodec, to_uint8
from dummy_forcing_core.tiny.model import DEFAULT_PATH, load_tiny, read_tiny_metadata
from dummy_forcing_core.tiny.world import DEFAULT_PROMPT, PROMPT_FORM, prompt_warnings

from .metrics import WORLD_KEYS, psnr, ssim, world_metrics

__all__ = ["DEFAULT_PROMPT", "ANIMATION_EXTS", "UsageError", "run_pair", "median_chunk_seconds",
           "side_by_side_gif", "check_out", "check_flags", "main"]

ANIMATION_EXTS = (".gif", ".webp", ".png", ".apng")  # formats Pillow writes as animations
MAX_FRAMES_FACTOR = 4  # --frames up to 4x the trained clip length (RoPE has no limit, but it is untested)
MAX_SCALE = 16


class UsageError(ValueError):
    """A flag value the demo refuses before it generates anything."""


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
    """Write videos ([3, F, H, W] in [-1, 1]) side by side under a label strip, as an
    animation in the format of ``path``'s extension (GIF, WebP, or APNG for .png)."""
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
    # GIF: an adaptive palette per frame keeps the object colours exact; WebP: lossless for the same reason
    extra = {"lossless": True} if path.lower().endswith(".webp") else {"optimize": False}
    out[0].save(path, save_all=True, append_images=out[1:], duration=int(1000 / fps), loop=0, **extra)
    return path


def median_chunk_seconds(runs) -> float:
    """Median steady chunk time (GenerationStats.steady_chunk_seconds) pooled over runs: a
    chunk stalled by a busy CPU moves it far less than it moves one run's numbers."""
    return float(statistics.median(s for st in runs for s in st.steady_chunk_seconds()))


def run_pair(model, text, prompt: str, seed: int = 0, frames: int = 24, df: DummyForcingConfig | None = None,
             settings: SamplerSettings | None = None, device="cpu", dtype=torch.float32, warmup: bool = True,
             repeats: int = 1, switch: tuple[int, str] | None = None):
    """Generate ``prompt`` with the full cache and with Dummy Forcing ``df``, each ``repeats``
    times, alternating (the same video every time): returns a dict with the two decoded
    videos ``full`` / ``df`` [3, F, 32, 32], the first run's GenerationStats (``*_stats``),
    the median clip seconds (``*_seconds``) and median steady chunk seconds (``*_chunk_s``).
    ``switch``: (latent frame, prompt): the video changes to that prompt there (re-cache on)."""
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
    if switch is not None:
        with torch.no_grad():
            ctx = PromptSchedule([(0, ctx), (int(switch[0]), text.encode([switch[1]]).to(device))], name="--switch-prompt")
    out, runs, clips = {"repeats": repeats}, {"full": [], "df": []}, {"full": [], "df": []}
    for _ in range(repeats):
        for name, cfg in (("full", None), ("df", df)):
            t0 = time.perf_counter()
            res = generate(runner, ctx, shape, settings, CacheSpec(dummy_forcing=cfg))
            clips[name].append(time.perf_counter() - t0)
            runs[name].append(res.stats)
            if name not in out:
                out[name] = codec.decode(res.latent.float().cpu())[0]
    for name in runs:
        out[name + "_stats"] = runs[name][0]
        out[name + "_seconds"] = statistics.median(clips[name])
        out[name + "_chunk_s"] = median_chunk_seconds(runs[name])
    return out


# ---------------------------------------------------------------------------------- checks
def check_out(path: str) -> None:
    """--out must name a file of an animation format whose folder exists or can be created."""
    ext = os.path.splitext(path)[1].lower()
    if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a directory; give a file name such as out/demo.gif")
    if ext not in ANIMATION_EXTS:
        raise UsageError(f"--out {path!r}: the file must end in {', '.join(ANIMATION_EXTS)} "
                         f"(an animated image), not {ext or 'no extension'}")
    from PIL import Image

    Image.init()
    if ext not in Image.registered_extensions():
        raise UsageError(f"--out {path!r}: this Pillow cannot write {ext} files; use .gif")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):  # the nearest folder that exists: mkdir starts there
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--out {path!r}: cannot create its folder, {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path!r}: no permission to write in {existing!r}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"--out {path!r} exists and is not writable")


def check_flags(args, trained_frames: int, chunk: int) -> None:
    """The numeric flags, against the model's clip length and chunk size."""
    most = MAX_FRAMES_FACTOR * trained_frames
    if not 1 <= args.frames <= most:
        raise UsageError(f"--frames must be 1 to {most} (the model was trained on {trained_frames}), got {args.frames}")
    if getattr(args, "switch_prompt", None) is not None and not chunk <= args.switch_frame < args.frames:
        raise UsageError(f"--switch-frame must be {chunk} to {args.frames - 1} (after the first chunk, inside the "
                         f"video), got {args.switch_frame}")
    if not 0.0 <= args.dummy_heads <= 1.0:  # also refuses NaN
        raise UsageError(f"--dummy-heads is a fraction of all heads, 0 to 1, got {args.dummy_heads}")
    for flag in ("neighbor_chunks", "sink_frames", "ar_start", "scale", "repeats"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.scale > MAX_SCALE:
        raise UsageError(f"--scale must be at most {MAX_SCALE}, got {args.scale}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    a = args.ar_start
    need = (a + 1) * chunk + 1  # chunk a is profiled, chunk a + 1 is the first per-head one
    if args.frames < need:
        raise UsageError(f"--ar-start {a} needs --frames >= {need}: Dummy Forcing profiles chunk {a} and uses "
                         f"per-head caching from chunk {a + 1} (chunks of {chunk} frames); lower --ar-start or "
                         f"raise --frames")
    if args.sink_frames > (a + 1) * chunk:
        raise UsageError(f"--sink-frames {args.sink_frames} exceeds the {(a + 1) * chunk} frames cached at "
                         f"--ar-start {a}; lower --sink-frames or raise --ar-start")


def _model_config(path: str) -> dict:
    """The model file's config (metadata only: no weights are read)."""
    if not os.path.isfile(path):
        raise UsageError(f"--model {path!r}: no such file")
    try:
        return read_tiny_metadata(path)["config"]
    except Exception as e:  # a file safetensors cannot read, or not a tiny model
        raise UsageError(f"--model {path!r}: {e}") from None


def _check_device(name: str) -> None:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: this torch has no CUDA device; use --device cpu")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...``, exit code 2), without the usage block."""

    def error(self, message):
        fail(message)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m tiny_model_tools.demo", description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=PROMPT_FORM)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="what to generate, in the tiny world's prompt form")
    ap.add_argument("--out", default="out/demo.gif", help="the side-by-side animation: .gif, .webp or .png")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (>= 0)")
    ap.add_argument("--frames", type=int, default=24, help="frames to generate (the model was trained on 24)")
    ap.add_argument("--dummy-heads", type=float, default=0.5, help="fraction of all heads made dummy, 0 to 1")
    ap.add_argument("--neighbor-chunks", type=int, default=1, help="L: chunks a neighbor head keeps (>= 1)")
    ap.add_argument("--sink-frames", type=int, default=1, help="frames a sink head keeps (>= 1)")
    ap.add_argument("--ar-start", type=int, default=1, help="chunk profiled; per-head caching from the next (>= 1)")
    ap.add_argument("--no-packing", action="store_true", help="turn context packing off")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting; times are their medians")
    ap.add_argument("--switch-prompt", default=None, help="a second prompt the video changes to at --switch-frame "
                    "(the frames the cache holds are re-encoded under it)")
    ap.add_argument("--switch-frame", type=int, default=12, help="latent frame where --switch-prompt starts "
                    "(used from the chunk holding it)")
    ap.add_argument("--model", default=DEFAULT_PATH, help="tiny model file")
    ap.add_argument("--device", default="cpu", help="torch device")
    ap.add_argument("--scale", type=int, default=4, help=f"animation pixels per video pixel, 1 to {MAX_SCALE}")
    return ap


def _busy_cpu_note() -> str:
    """A note when other work shares the CPU: then even medians of a few runs are unreliable."""
    if not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f" (the CPU is busy: load {load:.1f} on {cores} cores, times unreliable)" if load > cores + 0.5 else ""


def _report(args, model, r) -> None:
    full, dfv = r["full"], r["df"]
    fs, ds = r["full_stats"], r["df_stats"]
    cf = model.tiny_config["train"]["chunk_frames"]
    f_chunk, d_chunk = r["full_chunk_s"], r["df_chunk_s"]
    counts = ds.type_counts()
    tot = [sum(c[k] for c in counts) for k in range(3)] if counts else [0, 0, 0]
    wm_full, wm_df = world_metrics(full, args.prompt, chunk=cf), world_metrics(dfv, args.prompt, chunk=cf)
    print(f"prompt: {args.prompt}")
    print(f"model: tiny causal Wan2.1, {model.num_layers} layers x {model.num_heads} heads, {args.frames} frames "
          f"of {full.shape[-1]}x{full.shape[-2]} px, chunks of {cf}, device {args.device}")
    print(f"Dummy Forcing: {args.dummy_heads:.0%} dummy heads, L={args.neighbor_chunks}, sink {args.sink_frames}, "
          f"packing {'off' if args.no_packing else 'on'}; head types sink/neighbor/dummy = {tot[0]}/{tot[1]}/{tot[2]}")
    runs = "one run: a single, noisy CPU figure" if r["repeats"] == 1 else f"median of {r['repeats']} runs"
    busy = _busy_cpu_note() if args.device == "cpu" else ""
    print(f"{'':14s}{'clip s':>8s}{'chunk ms':>10s}{'FPS':>8s}{'KV held':>12s}{'attn FLOPs':>12s}")
    for name, st, secs, med in (("full cache", fs, r["full_seconds"], f_chunk),
                                ("Dummy Forcing", ds, r["df_seconds"], d_chunk)):
        print(f"{name:14s}{secs:8.2f}{1000 * med:10.1f}{cf / med:8.1f}{format_bytes(st.kv_bytes):>12s}"
              f"{st.attn_flops / 1e9:10.2f} G")
    print(f"speed-up (steady chunk time, {runs}): {f_chunk / d_chunk:.2f}x; KV cache "
          f"{fs.kv_bytes / max(ds.kv_bytes, 1):.1f}x smaller; attention FLOPs "
          f"{100 * ds.attn_flops / max(fs.attn_flops, 1):.0f}% of full{busy}")
    print(f"quality vs full cache: PSNR {psnr(dfv, full):.2f} dB, SSIM {ssim(dfv, full):.4f}")
    for sw in ds.prompt_switches:
        print(f"prompt switch at latent frame {sw['frame']} (chunk {sw['chunk']}): {args.switch_prompt}; "
              f"re-cache {sw['recache_passes']} pass(es) with Dummy Forcing, "
              f"{fs.prompt_switches[0]['recache_passes']} with the full cache; world metrics below are the first prompt's")
    print("world metrics (full -> DF): " + ", ".join(
        f"{k} {wm_full[k]:.3f} -> {wm_df[k]:.3f}" for k in WORLD_KEYS))
    print(f"wrote {args.out}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:  # every check before the weights are loaded or anything is generated
        cfg = _model_config(args.model)
        check_out(args.out)
        check_flags(args, cfg["data"]["frames"], cfg["train"]["chunk_frames"])
        _check_device(args.device)
    except UsageError as e:
        fail(str(e))
    torch.manual_seed(0)
    model, text = load_tiny(args.model, device=args.device)
    for message in prompt_warnings(args.prompt, text, cfg["data"].get("max_objects", 3)):
        warn(message)
    if args.frames > cfg["data"]["frames"]:
        warn(f"--frames {args.frames}: the model was trained on {cfg['data']['frames']} frames; "
             "later ones are untested")
    df = DummyForcingConfig(dummy_heads=args.dummy_heads, ar_start=args.ar_start, neighbor_chunks=args.neighbor_chunks,
                            sink_frames=args.sink_frames, context_packing=not args.no_packing)
    codec = PixelCodec(cfg["codec"]["factor"])
    size = cfg["data"]["size"]
    try:  # the core's own checks of these settings against this video (cheap: plans, runs nothing)
        plan_run(ChunkRunner(model, device=args.device).geometry, (1, *codec.latent_shape(args.frames, size, size)),
                 SamplerSettings(chunk_frames=cfg["train"]["chunk_frames"]), CacheSpec(dummy_forcing=df))
    except SettingError as e:
        fail(f"--{e.name.replace('_', '-')}: {e}")
    switch = None if args.switch_prompt is None else (args.switch_frame, args.switch_prompt)
    if switch is not None:
        for message in prompt_warnings(args.switch_prompt, text, cfg["data"].get("max_objects", 3)):
            warn("--switch-prompt: " + message)
    r = run_pair(model, text, args.prompt, args.seed, args.frames, df, device=args.device, repeats=args.repeats,
                 switch=switch)
    diff = ((r["df"] - r["full"]).abs() * 4 - 1).clamp(-1, 1)
    side_by_side_gif(args.out, [("full cache", r["full"]), (f"Dummy F. {args.dummy_heads:.0%}", r["df"]),
                                ("|diff| x4", diff)], args.scale)
    _report(args, model, r)
    return r


if __name__ == "__main__":
    main()
