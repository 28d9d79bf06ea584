"""Quality of Dummy Forcing on the shipped tiny model, against the full KV cache.

    python -m dummy_forcing_core.tiny.evaluate            # ~5 min on a CPU; writes docs/tiny_eval.{md,json}
    python -m dummy_forcing_core.tiny.evaluate --quick    # 2 prompts x 1 seed, to try it

Fixed prompts (clips 0..N-1 of the world with seed 2027, 1-3 objects each) x seeds. For every
(prompt, seed) the full-cache video is the reference; each setting below generates with the
same noise and is compared to it:

- Dummy Forcing at 25 / 50 / 75% dummy heads x packing on / off x L = 1 / 2 chunks
  (sink 1 frame, ar_start 1, global greedy head programming, online profiling);
- controls: every head on a sink 1 + window 3 (= L 1) cache; and 50% dummy heads chosen at
  random (a random head profile), the paper's ablation.

Measures: PSNR and SSIM to the full-cache video; the world metrics of
:mod:`.metrics` (persistence, size CV, speed, jerk; ground-truth clips as reference); KV
bytes held at the end; attention FLOPs; median steady chunk time (CPU: indicative only).
Also profiles the model's heads offline over the same prompts (chunk 1's clean pass) and
writes the head map, and measures how stable the online dummy set is across prompts/seeds.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import time

import numpy as np
import torch
from PIL import Image

from ..cache_policy import CacheSpec
from ..chunk_runner import ChunkRunner
from ..dummy_forcing import DummyForcingConfig
from ..head_profile import HeadProfile, ProfilingSpec, profile_heads
from ..head_program import HeadType
from ..heatmap import head_map_image
from ..kv_cache import Retention
from ..sampler import SamplerSettings, generate
from ..stats import format_bytes
from .codec import PixelCodec
from .dataset import ShapesWorld
from .metrics import mean_metrics, psnr, ssim, world_metrics
from .model import DEFAULT_PATH, load_tiny

__all__ = ["EVAL_WORLD_SEED", "eval_prompts", "settings_grid", "evaluate", "main"]

EVAL_WORLD_SEED = 2027
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def eval_prompts(n: int, frames: int = 24, size: int = 32) -> list[tuple[str, torch.Tensor]]:
    w = ShapesWorld(EVAL_WORLD_SEED, frames, size)
    return [(w.spec(i).prompt, w.clip(i)[0]) for i in range(n)]


def random_profile(geometry, seed: int = 0) -> HeadProfile:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(geometry.num_layers, geometry.num_heads, 3, generator=g)
    return HeadProfile(s / s.sum(-1, keepdim=True), geometry, {"random": True, "seed": seed})


def settings_grid(geometry, fractions=(0.25, 0.5, 0.75), Ls=(1, 2), packings=(True, False)) -> list[dict]:
    rows = [{"name": "full cache", "df": None, "retention": Retention()},
            {"name": "all heads: sink 1 + window 3", "df": None, "retention": Retention(sink=1, window=3)}]
    for frac, L, pack in itertools.product(fractions, Ls, packings):
        rows.append({"name": f"DF {frac:.0%} L={L} packing {'on' if pack else 'off'}",
                     "df": DummyForcingConfig(dummy_heads=frac, neighbor_chunks=L, context_packing=pack, sink_frames=1,
                                              ar_start=1),
                     "retention": Retention(), "fraction": frac, "L": L, "packing": pack})
    rows.append({"name": "random 50% dummy L=1 packing on",
                 "df": DummyForcingConfig(dummy_heads=0.5, neighbor_chunks=1, context_packing=True,
                                          head_profile=random_profile(geometry)),
                 "retention": Retention(), "fraction": 0.5, "L": 1, "packing": True, "random": True})
    return rows


def _dummy_overlap(assignments: list[list[list[int]]]) -> float:
    """Mean pairwise |A & B| / |A| of the dummy-head sets of several videos."""
    sets = [{(l, h) for l, row in enumerate(a) for h, t in enumerate(row) if t == HeadType.DUMMY} for a in assignments]
    vals = [len(a & b) / max(len(a), 1) for a, b in itertools.combinations(sets, 2)]
    return float(np.mean(vals)) if vals else float("nan")


@torch.no_grad()
def evaluate(model, text, n_prompts: int = 8, seeds=(0, 1), frames: int = 24, device="cpu", progress=print) -> dict:
    cfg = model.tiny_config
    codec = PixelCodec(cfg["codec"]["factor"])
    size = cfg["data"]["size"]
    C, _, h, w = codec.latent_shape(frames, size, size)
    chunk = cfg["train"]["chunk_frames"]
    runner = ChunkRunner(model, device=device)
    geometry = runner.geometry
    grid = settings_grid(geometry)
    prompts = eval_prompts(n_prompts, frames, size)
    shape = (1, C, frames, h, w)
    gt_world = [world_metrics(v, p, chunk=chunk) for p, v in prompts]
    generate(runner, text.encode([prompts[0][0]]).to(device), (1, C, 2 * chunk, h, w),
             SamplerSettings(chunk_frames=chunk))  # warm-up
    per = {g["name"]: [] for g in grid}
    online_types = []
    t_all = time.perf_counter()
    for pi, (prompt, _) in enumerate(prompts):
        ctx = text.encode([prompt]).to(device)
        for seed in seeds:
            ref = None
            for g in grid:
                st = SamplerSettings(chunk_frames=chunk, seed=int(seed))
                res = generate(runner, ctx, shape, st, CacheSpec(g["retention"], g["df"]))
                video = codec.decode(res.latent.float().cpu())[0]
                if ref is None:
                    ref = video
                s = res.stats
                steady = sorted(s.steady_chunk_seconds())[len(s.steady_chunk_seconds()) // 2]
                row = {"psnr": psnr(video, ref), "ssim": ssim(video, ref), **world_metrics(video, prompt, chunk=chunk),
                       "kv_bytes": s.kv_bytes, "kv_full_bytes": s.kv_full_bytes,
                       "attn_flops_pct": 100.0 * s.attn_flops / max(s.attn_flops_full, 1),
                       "chunk_ms": 1000 * steady}
                # PSNR over the frames generated after the switch to the per-head cache
                if s.switch_chunk is not None:
                    f0 = s.switch_chunk * chunk
                    row["psnr_after_switch"] = psnr(video[:, f0:], ref[:, f0:])
                per[g["name"]].append(row)
                if g["df"] is not None and g.get("fraction") == 0.5 and g.get("L") == 1 and g.get("packing") \
                        and not g.get("random"):
                    online_types.append(s.head_types)
        progress(f"prompt {pi + 1}/{len(prompts)} done ({time.perf_counter() - t_all:.0f} s)")

    table = []
    for g in grid:
        m = mean_metrics(per[g["name"]])
        m["name"] = g["name"]
        m["psnr_min"] = float(min(r["psnr"] for r in per[g["name"]]))
        table.append(m)

    profile = profile_heads(runner, [text.encode([p]).to(device) for p, _ in prompts], shape,
                            SamplerSettings(chunk_frames=chunk), list(seeds), ProfilingSpec.create(geometry))
    assign50 = profile.assign(0.5)
    scores = profile.scores
    return {
        "model": {"path": os.path.relpath(DEFAULT_PATH, ROOT), "steps": model.tiny_metadata.get("steps"),
                  "layers": geometry.num_layers, "heads": geometry.num_heads, "head_dim": geometry.head_dim},
        "setup": {"prompts": [p for p, _ in prompts], "seeds": list(seeds), "frames": frames, "chunk_frames": chunk,
                  "timesteps": list(SamplerSettings().timesteps), "shift": SamplerSettings().shift,
                  "device": str(device), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "seconds": round(time.perf_counter() - t_all, 1)},
        "ground_truth_world": mean_metrics(gt_world),
        "table": table,
        "per_run": per,
        "head_profile": {
            "scores": scores.tolist(),
            "mostly_current_heads": int((scores[..., 2] > 0.8).sum()),
            "mean": [float(x) for x in scores.mean((0, 1))],
            "assign_50": assign50.tolist(),
            "summary": profile.summary(assign50),
            "online_dummy_overlap_50": _dummy_overlap(online_types),
            "online_runs": len(online_types),
        },
        "_profile": profile,
    }


def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def to_markdown(res: dict) -> str:
    s = res["setup"]
    gt = res["ground_truth_world"]
    lines = [
        "# Tiny model: Dummy Forcing vs the full KV cache",
        "",
        f"Generated by `python -m dummy_forcing_core.tiny.evaluate` (model `{res['model']['path']}`, "
        f"{res['model']['steps']} training steps; {res['model']['layers']} layers x {res['model']['heads']} heads). "
        f"{len(s['prompts'])} prompts x {len(s['seeds'])} seeds, {s['frames']} frames (chunks of {s['chunk_frames']}), "
        f"timesteps {s['timesteps']} at shift {s['shift']}; {s['device']} ({s['cpu']}), torch {s['torch']}, "
        f"{s['seconds']:.0f} s.",
        "",
        "PSNR / SSIM: against the full-cache video of the same prompt and seed (same noise); the first "
        f"{2 * s['chunk_frames']} frames are identical by construction (the per-head cache starts at chunk 2); "
        "'PSNR after switch' covers only the frames after it. World metrics track each prompted object by colour: "
        "persistence = share of frames where it is found (>= 25% of its expected area), size CV = variation of its "
        "area, speed = mean centroid step (px/frame), jerk = mean |second difference| (px/frame^2), teleport = share of "
        "steps > 4 px, boundary jump = mean step across chunk boundaries / mean step inside chunks; prompt following: "
        "direction = cosine between each object's motion over frames 0-5 and the prompted direction (0 when it does "
        "not move or is lost), start cell = share of objects found at frame 0 in the prompted 3 x 3 cell. "
        "KV = cache held at the end (the full cache holds 21 frames: the last chunk is never cached). "
        "Times per chunk are in the JSON only: on a CPU shared with other work they are noise, and this model is "
        "too small for attention to dominate its time (see bench/ for speed).",
        "",
        "| setting | PSNR dB | PSNR after switch | min PSNR | SSIM | persistence | size CV | speed | jerk | teleport | boundary jump | direction | start cell | KV held | attn FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| ground-truth clips | | | | | {gt['persistence']:.3f} | {gt['size_cv']:.3f} | {gt['speed']:.3f} | "
        f"{gt['jerk']:.3f} | {gt['teleport']:.3f} | {gt['boundary_jump']:.2f} | {_fmt(gt.get('direction'), '.2f')} | "
        f"{_fmt(gt.get('start_cell'), '.2f')} | | |",
    ]
    for r in res["table"]:
        full = r["name"] == "full cache"
        lines.append(
            f"| {r['name']} | {'ref' if full else _fmt(r['psnr'], '.2f')} | "
            f"{'ref' if full else _fmt(r.get('psnr_after_switch'), '.2f')} | {'' if full else _fmt(r['psnr_min'], '.2f')} | "
            f"{'ref' if full else _fmt(r['ssim'], '.4f')} | {_fmt(r['persistence'], '.3f')} | {_fmt(r['size_cv'], '.3f')} | "
            f"{_fmt(r['speed'], '.3f')} | {_fmt(r['jerk'], '.3f')} | {_fmt(r['teleport'], '.3f')} | "
            f"{_fmt(r['boundary_jump'], '.2f')} | {_fmt(r.get('direction'), '.2f')} | {_fmt(r.get('start_cell'), '.2f')} | "
            f"{format_bytes(r['kv_bytes'])} | {r['attn_flops_pct']:.0f}% |")
    hp = res["head_profile"]
    n_heads = res["model"]["layers"] * res["model"]["heads"]
    lines += [
        "",
        "## Head profile",
        "",
        f"Offline profile over the same prompts and seeds (clean pass of chunk 1, sink = frame 0, neighbor = "
        f"frames 1-2): mean attention sink {hp['mean'][0]:.3f}, neighbor {hp['mean'][1]:.3f}, current "
        f"{hp['mean'][2]:.3f}; {hp['mostly_current_heads']}/{n_heads} heads put > 80% on the current chunk. "
        f"Online dummy sets at 50% overlap {hp['online_dummy_overlap_50']:.2f} between videos "
        f"(mean pairwise |A & B| / |A| over {hp['online_runs']} runs).",
        "",
        "![head map](../assets/tiny_model/head_map.png)",
        "",
        "```",
        hp["summary"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="2 prompts x 1 seed")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs", "tiny_eval.json"))
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "tiny_eval.md"))
    ap.add_argument("--head-map", default=os.path.join(ROOT, "assets", "tiny_model", "head_map.png"))
    ap.add_argument("--head-profile", default=os.path.join(ROOT, "assets", "tiny_model", "head_profile.safetensors"))
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-write the markdown from a results JSON")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            md = to_markdown(json.load(f))
        with open(args.md, "w") as f:
            f.write(md)
        print(md)
        return None
    if args.quick:
        args.prompts, args.seeds = 2, [0]
    model, text = load_tiny(args.model, device=args.device)
    res = evaluate(model, text, args.prompts, args.seeds, args.frames, args.device)
    profile = res.pop("_profile")
    for path in (args.json, args.md, args.head_map, args.head_profile):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.head_profile:
        profile.save(args.head_profile)
    if args.head_map:
        img = head_map_image(profile.scores, torch.tensor(res["head_profile"]["assign_50"]), cell=24)
        Image.fromarray(img).save(args.head_map)
    md = to_markdown(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
