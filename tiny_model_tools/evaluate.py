"""Quality of Dummy Forcing on the shipped tiny model, against the full KV cache.

    python -m tiny_model_tools.evaluate                # 256 videos -> out/tiny_eval.{md,json}, out/tiny_head_*
    python -m tiny_model_tools.evaluate --quick        # 2 prompts x 1 seed (32 videos), to try it
    python -m tiny_model_tools.evaluate --write-docs   # the shipped docs/tiny_eval.*, assets/tiny_model/head_*

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
A 24-frame video takes about 1.7 s on two idle CPU cores, many times that on a busy one.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from PIL import Image

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.head_profile import HeadProfile, ProfilingSpec, profile_heads
from dummy_forcing_core.head_program import HeadType
from dummy_forcing_core.heatmap import head_map_image
from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.stats import format_bytes
from dummy_forcing_core.tiny.codec import PixelCodec
from dummy_forcing_core.tiny.model import DEFAULT_PATH, load_tiny

from .dataset import ShapesWorld
from .metrics import mean_metrics, psnr, ssim, world_metrics

__all__ = ["EVAL_WORLD_SEED", "Progress", "eval_prompts", "settings_grid", "evaluate", "output_paths", "main"]

EVAL_WORLD_SEED = 2027
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Progress:
    """Progress over ``total`` steps on stderr: a tqdm bar when tqdm is installed, else a plain
    flushed line at the first step and then at most every ``every`` seconds, with the time
    spent and an estimate of the time left."""

    def __init__(self, total: int, desc: str = "", every: float = 15.0, stream=None):
        self.total, self.done, self.every, self.stream = total, 0, every, stream or sys.stderr
        self.t0, self.last = time.perf_counter(), -math.inf
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True)

    def step(self, note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            return
        spent = time.perf_counter() - self.t0
        if spent - self.last >= self.every or self.done == self.total:
            self.last = spent
            left = spent / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {note} ({spent:.0f} s, about {left:.0f} s left)", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
def evaluate(model, text, n_prompts: int = 8, seeds=(0, 1), frames: int = 24, device="cpu",
             progress: bool = False) -> dict:
    """Run the settings grid and the head profile; with ``progress``, a :class:`Progress`
    line (or bar) on stderr steps once per video generated."""
    runner = ChunkRunner(model, device=device)
    grid = settings_grid(runner.geometry)
    bar = Progress(n_prompts * len(seeds) * (len(grid) + 1), "tiny evaluate") if progress else None
    try:
        return _evaluate(model, text, runner, grid, n_prompts, seeds, frames, device,
                         bar.step if bar else lambda note: None)
    finally:
        if bar:
            bar.close()


def _evaluate(model, text, runner, grid, n_prompts, seeds, frames, device, step) -> dict:
    cfg = model.tiny_config
    codec = PixelCodec(cfg["codec"]["factor"])
    size = cfg["data"]["size"]
    C, _, h, w = codec.latent_shape(frames, size, size)
    chunk = cfg["train"]["chunk_frames"]
    geometry = runner.geometry
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
                step(f"prompt {pi + 1}/{len(prompts)} seed {seed}: {g['name']}")
                if g["df"] is not None and g.get("fraction") == 0.5 and g.get("L") == 1 and g.get("packing") \
                        and not g.get("random"):
                    online_types.append(s.head_types)

    table = []
    for g in grid:
        m = mean_metrics(per[g["name"]])
        m["name"] = g["name"]
        m["psnr_min"] = float(min(r["psnr"] for r in per[g["name"]]))
        table.append(m)

    started = []

    def profiling_step(ev):  # a profiling video may stop early, so step as the next one starts
        if ev.chunk == 0 and ev.step == 0:
            if started:
                step("profiling heads")
            started.append(ev)

    profile = profile_heads(runner, [text.encode([p]).to(device) for p, _ in prompts], shape,
                            SamplerSettings(chunk_frames=chunk), list(seeds), ProfilingSpec.create(geometry),
                            callback=profiling_step)
    step("profiling heads")
    assign50 = profile.assign(0.5)
    scores = profile.scores
    return {
        "model": {"path": os.path.relpath(DEFAULT_PATH, ROOT), "steps": model.tiny_metadata.get("steps"),
                  "layers": geometry.num_layers, "heads": geometry.num_heads, "head_dim": geometry.head_dim},
        "setup": {"prompts": [p for p, _ in prompts], "seeds": list(seeds), "frames": frames, "chunk_frames": chunk,
                  "timesteps": list(SamplerSettings().timesteps), "shift": SamplerSettings().shift,
                  "device": str(device), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "seconds": round(time.perf_counter() - t_all, 1),
                  "date": time.strftime("%Y-%m-%d", time.gmtime()), "dummy_forcing_defaults": df_defaults()},
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


def df_defaults() -> dict:
    """The Dummy Forcing settings the grid leaves at their defaults (the cost, the neighbor window)."""
    d = DummyForcingConfig()
    return {"normalised_cost": d.normalised_cost, "neighbor_skips_sink": d.neighbor_skips_sink,
            "scope": d.scope, "warmup_cache": d.warmup_cache, "profile_sample_fraction": d.profile_sample_fraction}


def _defaults_text(d: dict | None) -> str:
    if not d:
        return ""
    return (f" Dummy Forcing rows: {'normalised' if d['normalised_cost'] else 'raw'} cost, {d['scope']} choice, "
            f"neighbor windows {'without' if d['neighbor_skips_sink'] else 'with'} the sink frame, "
            f"{d['profile_sample_fraction']:.0%} of the query rows profiled.")


def _fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def to_markdown(res: dict, head_map: str = "../assets/tiny_model/head_map.png") -> str:
    """The results as markdown; ``head_map``: the head map image's link from the markdown file."""
    s = res["setup"]
    gt = res["ground_truth_world"]
    lines = [
        "# Tiny model: Dummy Forcing vs the full KV cache",
        "",
        f"Generated by `python -m tiny_model_tools.evaluate` (model `{res['model']['path']}`, "
        f"{res['model']['steps']} training steps; {res['model']['layers']} layers x {res['model']['heads']} heads). "
        f"{len(s['prompts'])} prompts x {len(s['seeds'])} seeds, {s['frames']} frames (chunks of {s['chunk_frames']}), "
        f"timesteps {s['timesteps']} at shift {s['shift']}; {s['device']} ({s['cpu']}), torch {s['torch']}, "
        f"{s['seconds']:.0f} s" + (f", run {s['date']}." if s.get("date") else ".")
        + _defaults_text(s.get("dummy_forcing_defaults")),
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
        f"(mean pairwise |A & B| / |A| over {hp['online_runs']} runs). In the summary, sink- / neighbor-leaning "
        "compares a head's raw masses; its type (50% dummy) comes from the cost Apply Dummy Forcing uses by "
        "default, which compares each head's share of all heads' sink and of all heads' neighbor attention.",
        "",
        f"![head map]({head_map})",
        "",
        "```",
        hp["summary"],
        "```",
        "",
    ]
    return "\n".join(lines)


def output_paths(write_docs: bool) -> dict:
    """Where results go: out/ (under the working directory), or the shipped docs and assets."""
    if write_docs:
        return {"json": os.path.join(ROOT, "docs", "tiny_eval.json"), "md": os.path.join(ROOT, "docs", "tiny_eval.md"),
                "head_map": os.path.join(ROOT, "assets", "tiny_model", "head_map.png"),
                "head_profile": os.path.join(ROOT, "assets", "tiny_model", "head_profile.safetensors")}
    return {"json": os.path.join("out", "tiny_eval.json"), "md": os.path.join("out", "tiny_eval.md"),
            "head_map": os.path.join("out", "tiny_head_map.png"),
            "head_profile": os.path.join("out", "tiny_head_profile.safetensors")}


def _markdown(args, res: dict) -> str:
    """The markdown, linking the head map relative to where the markdown goes."""
    link = os.path.relpath(os.path.abspath(args.head_map), os.path.dirname(os.path.abspath(args.md)))
    return to_markdown(res, link.replace(os.sep, "/"))


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _write(args, res: dict, profile: HeadProfile) -> str:
    for path in (args.head_map, args.head_profile):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    profile.save(args.head_profile)
    img = head_map_image(profile.scores, torch.tensor(res["head_profile"]["assign_50"]), cell=24)
    Image.fromarray(img).save(args.head_map)
    md = _markdown(args, res)
    _write_text(args.json, json.dumps(res, indent=1))
    _write_text(args.md, md)
    return md


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tiny_model_tools.evaluate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="evaluation prompts: clips 0..N-1 of the eval world (8)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds per prompt (0 1)")
    ap.add_argument("--frames", type=int, default=24, help="frames per video (24)")
    ap.add_argument("--quick", action="store_true", help="2 prompts x 1 seed")
    ap.add_argument("--model", default=None, help="tiny model file (the shipped one)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu)")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the shipped docs/tiny_eval.{md,json} and assets/tiny_model/head_map.png, "
                         "head_profile.safetensors instead of out/tiny_eval.{md,json}, out/tiny_head_*")
    for name in ("json", "md", "head-map", "head-profile"):
        ap.add_argument(f"--{name}", default=None, help=f"write the {name} here instead")
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-write the markdown from a results JSON")
    return ap


def main(argv=None):
    t0 = time.perf_counter()
    args = _parser().parse_args(argv)
    for key, path in output_paths(args.write_docs).items():
        if getattr(args, key) is None:
            setattr(args, key, path)
    if args.render:
        with open(args.render) as f:
            md = _markdown(args, json.load(f))
        _write_text(args.md, md)
        print(md)
        return None
    if args.quick:
        args.prompts, args.seeds = 2, [0]
    print(f"tiny evaluate: {args.prompts} prompts x {len(args.seeds)} seeds, {args.frames} frames; every setting "
          f"of the grid, then head profiling; results -> {args.md}", file=sys.stderr, flush=True)
    model, text = load_tiny(args.model, device=args.device)
    res = evaluate(model, text, args.prompts, args.seeds, args.frames, args.device, progress=True)
    md = _write(args, res, res.pop("_profile"))
    print(md)
    print(f"wrote {args.md}, {args.json}, {args.head_map}, {args.head_profile}; "
          f"total {_duration(time.perf_counter() - t0)}", file=sys.stderr, flush=True)
    return res


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


if __name__ == "__main__":
    main()
