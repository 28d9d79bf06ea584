#!/usr/bin/env python3
"""The pack inside a real ComfyUI (0.21+) on a GPU, under ComfyUI's ways of loading a model.

One child process per mode, each a fresh ComfyUI started as main.py would start it:
  * dynamic: ComfyUI's default on NVIDIA since dynamic VRAM (weights streamed layer by layer);
  * legacy:  --disable-dynamic-vram (the model loaded whole when it fits);
  * novram:  --novram (ComfyUI keeps nearly all weights in host memory: partial loading);
  * dynamic-fp8: dynamic VRAM, Load Diffusion Model weight_dtype fp8_e4m3fn_fast (fp8 weights,
    fp8 products).
Per mode it loads one causal Wan2.1 checkpoint (random weights, Wan2.1 1.3B geometry unless
--geometry tiny; written once with ComfyUI's own key names and the causal_ar flag) with
comfy.sd.load_diffusion_model (what Load Diffusion Model runs), and times, on a 480p latent of
--frames latent frames (chunks of 3, 4 steps, cfg 1):
  * pack_df: Apply Dummy Forcing -> AR Video Sampler (the pack's sampler), given core's sigmas
    (BasicScheduler simple, 4 steps) and NOISE (RandomNoise 0), so it computes what core_df does;
  * core_df: Apply Dummy Forcing -> ComfyUI's own Sampler AR Video (the pack's cache inside it);
  * core:    ComfyUI's own Sampler AR Video with its own dense cache (no pack);
  * pack_df_streamed (dynamic only): pack_df with the non-dynamic delegate turned off, i.e. on
    ComfyUI's streamed weights (what the pack ran before it asked for the delegate).
Each is run once untimed (loading, CUDA graph capture) and once timed. Reported: which engine
the pack ran (fused forward or reference loop, and why), steady FPS (chunks after Dummy
Forcing's switch), clip FPS (wall time of the sampler call / 81 frames), torch's peak GPU
memory (dynamic VRAM's weight buffers are not torch allocations: see nvidia_smi_used_mib),
and each latent's relative difference to the legacy mode's run of the same graph (same
weights, same seed; the streamed run against legacy pack_df), core_df against pack_df.

Usage (GPU): python bench/bench_comfyui.py --comfyui COMFYUI_DIR --out bench/results_comfyui_h200.json
       (CPU smoke test of the harness): python bench/bench_comfyui.py --comfyui DIR --geometry tiny --cpu
ComfyUI's own Python requirements must import (on a bare GPU image: comfy-aimdo, comfy-kitchen,
torchsde, trampoline, simpleeval as wheels); its video types import PyAV, and where that is
missing a placeholder module stands in, since nothing here reads or writes video.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOMETRIES = {"1.3b": dict(dim=1536, ffn_dim=8960, num_layers=30), "tiny": dict(dim=256, ffn_dim=512, num_layers=2)}
LATENT_HW = {"1.3b": (60, 104), "tiny": (8, 8)}
MODES = {"dynamic": [], "legacy": ["--disable-dynamic-vram"], "novram": ["--novram"], "dynamic-fp8": []}
# Load Diffusion Model's weight_dtype per mode (what UNETLoader puts in model_options)
WEIGHT_OPTIONS = {"dynamic-fp8": "fp8_e4m3fn_fast"}


def av_placeholder():
    import importlib.util
    if importlib.util.find_spec("av") is not None:
        return
    av = types.ModuleType("av")
    for sub, names in (("container", ("InputContainer", "OutputContainer")), ("subtitles", ()),
                       ("subtitles.stream", ("SubtitleStream",)), ("error", ("InvalidDataError",))):
        m = types.ModuleType("av." + sub)
        for n in names:
            setattr(m, n, type(n, (Exception,) if n.endswith("Error") else (), {}))
        sys.modules["av." + sub] = m
    av.container, av.error = sys.modules["av.container"], sys.modules["av.error"]
    av.subtitles = sys.modules["av.subtitles"]
    av.subtitles.stream = sys.modules["av.subtitles.stream"]
    av.VideoStream = av.AudioStream = type("Stream", (), {})
    sys.modules["av"] = av


def start_comfy(comfy_dir, comfy_args):
    """Import ComfyUI as main.py starts it (args, dynamic VRAM set-up), without its server."""
    sys.argv = [sys.argv[0]] + comfy_args
    sys.path.insert(0, comfy_dir)
    av_placeholder()
    import comfy.options
    comfy.options.enable_args_parsing()
    from comfy.cli_args import args, enables_dynamic_vram
    import comfy_aimdo.control
    if enables_dynamic_vram():
        try:
            comfy_aimdo.control.init(simple_vram_headroom=None if args.reserve_vram is None
                                     else int(args.reserve_vram * 1024 ** 3))
        except TypeError:
            comfy_aimdo.control.init()
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    dynamic = False
    if enables_dynamic_vram() and mm.is_nvidia() and not mm.is_wsl():
        try:
            ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3))
                                                  for d in mm.get_all_torch_devices())
        except TypeError:
            ok = comfy_aimdo.control.init_devices(d.index for d in mm.get_all_torch_devices())
        if ok:
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
            comfy.memory_management.aimdo_enabled = True
            dynamic = True
    return dynamic


def write_checkpoint(comfy_dir, path, geometry):
    """Random weights with ComfyUI's WanModel key names, flagged causal_ar (CausalWanModel)."""
    start_comfy(comfy_dir, ["--cpu"])
    import torch
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file
    g = GEOMETRIES[geometry]
    with torch.device("meta"):
        model = WanModel(model_type="t2v", dim=g["dim"], ffn_dim=g["ffn_dim"], num_heads=g["dim"] // 128,
                         num_layers=g["num_layers"], in_dim=16, out_dim=16, text_dim=4096, freq_dim=256,
                         dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        if (".norm" in k or "norm_" in k) and k.endswith(".weight"):
            t = torch.ones(v.shape)
        elif k.endswith(".bias"):
            t = torch.zeros(v.shape)
        else:
            fan = v[0].numel() if v.ndim > 1 else v.numel()
            t = torch.randn(v.shape, generator=gen) / max(fan, 1) ** 0.5
        sd[k] = t.to(torch.bfloat16).contiguous()
    save_file(sd, path, metadata={"config": json.dumps({"transformer": {"causal_ar": True}})})


def child(a):
    import torch
    dynamic = start_comfy(a.comfyui, ["--cpu"] if a.cpu else MODES[a.mode])
    import importlib.util
    import comfy.model_management as mm
    import comfy.samplers
    import comfy.sd
    from comfy_extras import nodes_custom_sampler as ncs
    spec = importlib.util.spec_from_file_location("DFPack", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["DFPack"] = pack
    spec.loader.exec_module(pack)
    from DFPack.nodes import core_ar_loop, model_loading
    from DFPack.nodes.apply import ApplyDummyForcing
    from DFPack.nodes.sampler import ARVideoSampler

    engines = []
    real_make = model_loading.make_runner

    def spy(model, *args):  # make_runner(model, attention_8bit, warm)
        r = real_make(model, *args)
        engines.append({"patcher": type(model).__name__, "streams_weights": model_loading.streams_weights(model),
                        "fast_path": r.fast_reason})
        return r

    model_loading.make_runner = spy
    dev = mm.get_torch_device()
    t0 = time.perf_counter()
    options = {}
    if WEIGHT_OPTIONS.get(a.mode) == "fp8_e4m3fn_fast":  # as UNETLoader does
        options = {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    model = comfy.sd.load_diffusion_model(a.ckpt, model_options=options)
    out = {"mode": a.mode, "dynamic_vram": dynamic, "weight_dtype": WEIGHT_OPTIONS.get(a.mode, "default"), "patcher": type(model).__name__,
           "diffusion_model": type(model.model.diffusion_model).__name__,
           "load_s": time.perf_counter() - t0, "model_bytes": model.model_size(), "runs": {}}
    h, w = LATENT_HW[a.geometry]
    gen = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    negative = [[torch.zeros(1, 512, 4096), {}]]
    latent = {"samples": torch.zeros(1, 16, a.frames, h, w)}
    df_args = dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=False, ar_start=1,
                   neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
                   profile_seed=0, long_context_frames=0)

    def apply_df(m):
        return ApplyDummyForcing.execute(model=m, **df_args).args[0]

    def sigmas_of(m):  # BasicScheduler simple, 4 steps
        return comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", 4)

    def pack(m):  # given core's sigmas and NOISE (RandomNoise 0), it computes what core_df computes
        o = ARVideoSampler.execute(model=m, positive=positive, latent=latent, seed=0, denoise_timesteps="",
                                   steps=4, shift=0.0, frames_per_chunk=3, cache="full", sink_frames=3,
                                   window_frames=12, context_timestep=0, start_frames=0, sigmas=sigmas_of(m),
                                   noise=ncs.Noise_RandomNoise(0)).args
        return o[0]["samples"], o[1]

    def core(m):
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)
        sampler = comfy.samplers.ksampler("ar_video", {"num_frame_per_block": 3})
        noise = ncs.Noise_RandomNoise(0)
        x = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas_of(m), seed=0)
        return x, core_ar_loop.last_stats(m)

    def timed(name, fn, m, repeats):
        row = {}
        for i in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            n0 = len(engines)
            t = time.perf_counter()
            x, stats = fn(m)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            row = {"wall_s": time.perf_counter() - t, "engine": engines[n0:] and engines[-1],
                   "first_run_wall_s": row.get("wall_s") if i else None}
            if dev.type == "cuda":
                row["torch_peak_bytes"] = torch.cuda.max_memory_allocated()
            if stats is not None and stats.chunk_seconds:
                start = stats.switch_chunk if stats.switch_chunk is not None else 2
                tail = stats.chunk_seconds[start:] or stats.chunk_seconds
                row["steady_chunk_s"] = statistics.median(tail)
                row["fps_steady"] = 12 / row["steady_chunk_s"]
                row["chunk_seconds"] = stats.chunk_seconds
        frames = 4 * (a.frames - 1) + 1
        row["fps_clip"] = frames / row["wall_s"]
        row["nvidia_smi_used_mib"] = smi_used()
        torch.save(x.float().cpu(), os.path.join(a.work, f"{a.mode}_{name}.pt"))
        out["runs"][name] = row
        print(f"[{a.mode}] {name}: {row['wall_s']:.2f} s ({row['fps_clip']:.1f} FPS clip"
              + (f", {row['fps_steady']:.1f} FPS steady" if "fps_steady" in row else "")
              + f"), engine {row['engine']}", flush=True)

    def streamed(m):  # the pack as it ran before it asked for the delegate
        keep = model_loading._delegate
        model_loading._delegate = lambda _m: None
        try:
            return pack(apply_df(m))
        finally:
            model_loading._delegate = keep

    repeats = 1 if a.mode == "novram" else 2
    only_pack = a.mode in ("novram", "dynamic-fp8")
    cases = [("pack_df", pack, apply_df(model))]
    if a.mode == "dynamic":
        cases.append(("pack_df_streamed", streamed, model))
    if not only_pack:
        cases += [("core_df", core, apply_df(model)), ("core", core, model)]
    for name, fn, m in cases:
        try:
            timed(name, fn, m, repeats)
        except Exception as err:  # noqa: BLE001 - report it, go on with the next graph
            import traceback
            out["runs"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            print(f"[{a.mode}] {name}: FAILED {type(err).__name__}: {err}", flush=True)
    print("RESULT " + json.dumps(out, default=str), flush=True)


def smi_used():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
        return int(r.stdout.split()[0])
    except Exception:  # noqa: BLE001
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True, help="a ComfyUI checkout (0.21+)")
    ap.add_argument("--geometry", default="1.3b", choices=sorted(GEOMETRIES))
    ap.add_argument("--frames", type=int, default=21, help="latent frames (21 = 81 video frames)")
    ap.add_argument("--modes", default="legacy,dynamic,novram,dynamic-fp8")
    ap.add_argument("--cpu", action="store_true", help="harness smoke test on the CPU")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None, help="folder for the checkpoint and latents (default: a temp dir)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        return child(a)
    work = a.work or tempfile.mkdtemp(prefix="df_comfy_bench_")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, f"wan_{a.geometry}_causal.safetensors")
    t0 = time.perf_counter()
    write = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                            f"import bench_comfyui as b; b.write_checkpoint({a.comfyui!r}, {ckpt!r}, {a.geometry!r})"],
                           capture_output=True, text=True)
    if write.returncode:
        sys.exit(f"writing the checkpoint failed:\n{write.stderr[-3000:]}")
    print(f"checkpoint {ckpt} ({os.path.getsize(ckpt) / 2 ** 30:.2f} GiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    import torch
    results = {"meta": {"card": torch.cuda.get_device_name() if torch.cuda.is_available() and not a.cpu else "cpu",
                        "torch": torch.__version__, "geometry": a.geometry, "frames_latent": a.frames,
                        "latent_hw": LATENT_HW[a.geometry], "comfyui": open(os.path.join(a.comfyui, "comfyui_version.py")).read().split('"')[1],
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
               "modes": {}}
    for mode in [m for m in a.modes.split(",") if m]:
        cmd = [sys.executable, __file__, "--comfyui", a.comfyui, "--geometry", a.geometry, "--frames", str(a.frames),
               "--mode", mode, "--ckpt", ckpt, "--work", work] + (["--cpu"] if a.cpu else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("RESULT "):
                results["modes"][mode] = json.loads(line[7:])
            else:
                print(line, flush=True)
        if p.returncode:
            print(f"[{mode}] failed (rc {p.returncode}):\n{p.stderr[-4000:]}", flush=True)
            results["modes"][mode] = {"error": p.stderr[-4000:]}
        else:
            warn = [ln for ln in p.stderr.splitlines() if "Dummy Forcing" in ln]
            if warn:
                results["modes"][mode]["pack_warnings"] = warn
                print("\n".join(f"[{mode}] log: {w}" for w in warn), flush=True)
    def latent(mode, name):
        f = os.path.join(work, f"{mode}_{name}.pt")
        return torch.load(f) if os.path.exists(f) else None

    def rel(x, y):
        return float((x - y).norm() / y.norm())

    for mode, res in results["modes"].items():
        for name, row in res.get("runs", {}).items():
            x, base = latent(mode, name), latent("legacy", "pack_df" if name == "pack_df_streamed" else name)
            if x is not None and base is not None:
                row["rel_diff_vs_legacy"] = rel(x, base)
            if name == "core_df" and latent(mode, "pack_df") is not None:
                row["rel_diff_vs_pack_df"] = rel(x, latent(mode, "pack_df"))
    print(json.dumps(results, indent=1, default=str))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
