"""Prompt switches on the small shipped model: is a switch followed, and is there a seam?

    python -m tiny_model_tools.evaluate_switch [--seeds 0 1 2 3] [--out out/tiny_switch]

Each case is a pair of prompts (the same object in another colour, another shape with another
colour, another direction) for a 24-frame video (8 chunks of 3, the length the model was
trained on); the second prompt starts at latent frame 12 (chunk 4). For every cache setting (full cache, Dummy Forcing 50 %) with the
re-cache on and off, and for Dummy Forcing with the heads kept or re-profiled after the switch:

* ``old_before`` / ``new_before``: share of frames before the switch where the first / second
  prompt's object colour is found (at >= 25% of its area; 1 / 0 is right);
* ``new_after`` / ``old_after``: the same over frames 15.. (one chunk after the switch, so the
  transition chunk is not counted; 1 / 0 is a followed switch);
* ``switch_jump``: the object's centroid step across the switch boundary over its mean step
  inside chunks, the object being every pixel that is not the background colour (so a colour
  change is tracked through; about 1: no seam).
(Frames before the switch equal the single-prompt video by construction: tests/core.)

Writes ``summary.json``, ``summary.md`` and ``switch.gif`` (one case, full cache vs Dummy
Forcing, re-cache on) into ``--out`` (default ``out/tiny_switch``; ``docs/`` only when asked).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.tiny.codec import PixelCodec
from dummy_forcing_core.tiny.model import load_tiny
from dummy_forcing_core.tiny.world import BACKGROUND_COLORS, OBJECT_COLORS, rgb_unit, spec_from_prompt

from .dataset import track_colors
from .demo import side_by_side_gif
from .metrics import expected_area

FRAMES, SWITCH, SETTLE = 24, 12, 15
CASES = {
    "colour": ("a big red circle at center left moving right slowly, on a navy plain background",
               "a big green circle at center left moving right slowly, on a navy plain background"),
    "shape and colour": ("a big yellow square at top left moving down right slowly, on a teal plain background",
                         "a big cyan triangle at top left moving down right slowly, on a teal plain background"),
    "direction": ("a big white circle at center moving right slowly, on a maroon plain background",
                  "a big white circle at center moving left slowly, on a maroon plain background"),
}
DF = dict(dummy_heads=0.5, ar_start=1, neighbor_chunks=1, sink_frames=1, profile_sample_fraction=1.0)
SETTINGS = {
    "full cache, re-cache": (CacheSpec(), True),
    "full cache, no re-cache": (CacheSpec(), False),
    "DF 50%, re-cache, heads kept": (CacheSpec(dummy_forcing=DummyForcingConfig(**DF)), True),
    "DF 50%, re-cache, re-profiled": (CacheSpec(dummy_forcing=DummyForcingConfig(reprofile_on_prompt_switch=True,
                                                                                 **DF)), True),
    "DF 50%, no re-cache": (CacheSpec(dummy_forcing=DummyForcingConfig(**DF)), False),
}


def _found(video: torch.Tensor, prompt: str) -> np.ndarray:
    """[F] bool: the prompt's (first) object colour is found at >= 25% of its expected area."""
    o = spec_from_prompt(prompt)[0]
    area = track_colors(video, rgb_unit(OBJECT_COLORS[o["color"]])[None])["area"][:, 0]
    return area >= 0.25 * expected_area(o.get("shape"), o.get("size"), video.shape[-1])


def _switch_jump(video: torch.Tensor, prompt: str, chunk: int, tol: float = 0.45) -> float:
    bg = next(rgb_unit(c) for n, c in BACKGROUND_COLORS.items() if f"{n} plain background" in prompt)
    v = video.detach().float().cpu()
    m = ((v - torch.as_tensor(bg, dtype=torch.float32).view(3, 1, 1, 1)).norm(dim=0) > tol).float()  # [F, H, W]
    area = m.sum((1, 2))
    ys = torch.arange(m.shape[1], dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(m.shape[2], dtype=torch.float32).view(1, 1, -1)
    cen = torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], -1) / area.clamp(min=1)[:, None]
    cen[area < 1] = float("nan")
    step = np.linalg.norm(np.diff(cen.numpy(), axis=0), axis=-1)  # step f -> f + 1
    inner = [s for f, s in enumerate(step) if (f + 1) % chunk and np.isfinite(s)]
    across = step[SWITCH - 1]
    return float(across / max(np.mean(inner), 1e-6)) if inner and np.isfinite(across) else float("nan")


@torch.no_grad()
def evaluate(model, text, seeds=(0, 1, 2, 3), progress=print) -> dict:
    cfg = model.tiny_config
    codec = PixelCodec(cfg["codec"]["factor"])
    size = cfg["data"]["size"]
    C, _, h, w = codec.latent_shape(FRAMES, size, size)
    chunk = cfg["train"]["chunk_frames"]
    runner = ChunkRunner(model)
    shape = (1, C, FRAMES, h, w)
    rows, gif = {}, None
    t0 = time.perf_counter()
    for case, prompts in CASES.items():
        a, b = (text.encode([p]) for p in prompts)
        for name, (spec, recache) in SETTINGS.items():
            for seed in seeds:
                st = SamplerSettings(chunk_frames=chunk, seed=int(seed), recache=recache)
                res = generate(runner, PromptSchedule([(0, a), (SWITCH, b)]), shape, st, spec)
                video = codec.decode(res.latent.float())[0]
                old, new = _found(video, prompts[0]), _found(video, prompts[1])
                sw = res.stats.prompt_switches[0]
                row = {"old_before": float(old[:SWITCH].mean()), "new_before": float(new[:SWITCH].mean()),
                       "new_after": float(new[SETTLE:].mean()), "old_after": float(old[SETTLE:].mean()),
                       "switch_jump": _switch_jump(video, prompts[0], chunk),
                       "recache_passes": sw["recache_passes"], "dummy_overlap": sw.get("dummy_overlap")}
                rows.setdefault((case, name), []).append(row)
                if gif is None and case == "colour" and seed == seeds[0] and name.startswith("full cache, re"):
                    gif = [video]
                elif gif is not None and len(gif) == 1 and case == "colour" and seed == seeds[0] \
                        and name == "DF 50%, re-cache, heads kept":
                    gif.append(video)
        progress(f"case {case!r} done ({time.perf_counter() - t0:.0f} s)")
    table = []
    for (case, name), rs in rows.items():
        mean = {}
        for k in rs[0]:
            vals = [r[k] for r in rs if r[k] is not None and np.isfinite(r[k])]
            mean[k] = float(np.mean(vals)) if vals else None
        table.append({"case": case, "setting": name, **mean})
    return {"frames": FRAMES, "switch_frame": SWITCH, "settle_frame": SETTLE, "seeds": list(seeds),
            "cases": CASES, "table": table, "seconds": time.perf_counter() - t0, "gif": gif}


def to_markdown(res: dict) -> str:
    lines = [f"# Prompt switches on the tiny model ({res['frames']} frames, switch at latent frame "
             f"{res['switch_frame']}, {len(res['seeds'])} seeds)", "",
             "| case | setting | old before | new before | new after | old after | switch jump | re-cache passes | "
             "dummy heads kept |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(v, fmt=".2f"):
        return "" if v is None else format(v, fmt)

    for r in res["table"]:
        lines.append(f"| {r['case']} | {r['setting']} | {f(r['old_before'])} | {f(r['new_before'])} | "
                     f"{f(r['new_after'])} | {f(r['old_after'])} | {f(r['switch_jump'])} | "
                     f"{f(r['recache_passes'], '.0f')} | {f(r['dummy_overlap'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default="out/tiny_switch", help="folder for summary.json, summary.md, switch.gif")
    args = ap.parse_args(argv)
    model, text = load_tiny()
    res = evaluate(model, text, args.seeds, progress=lambda s: print(s, flush=True))
    os.makedirs(args.out, exist_ok=True)
    gif = res.pop("gif")
    if gif and len(gif) == 2:
        side_by_side_gif(os.path.join(args.out, "switch.gif"), [("full cache", gif[0]), ("Dummy F. 50%", gif[1])], 4)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(to_markdown(res))
    print(to_markdown(res))
    print(f"{res['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
