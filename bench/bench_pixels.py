#!/usr/bin/env python3
"""Pixels out in a real ComfyUI (0.21+) on a GPU: DiT + VAE decode, sequential vs streamed.

Random weights at real geometry: the 1.3B causal Wan2.1 checkpoint of bench_comfyui.py, a Wan2.1
VAE (dim 96, 16 channels) and a TAEHV in bf16 (what ComfyUI's VAE Loader reads as lighttaew2_1),
both loaded through comfy.sd.VAE as VAE Loader does. One child process per part:

* rows (per --res): ComfyUI's own graphs followed by VAE Decode (core Sampler AR Video, core +
  Apply Dummy Forcing, AR Video Sampler + Dummy Forcing), and AR Video Sampler with the VAE
  connected (each chunk decoded on its own CUDA stream while the next is made), for the Wan VAE
  and lighttaew2_1; also the decode alone (VAE.decode, AR Video Decode, cudnn.benchmark,
  channels_last_3d) to see what makes the Wan decode faster. Each graph runs once to warm up and
  once timed; "pixels out" = from the sampler call to every frame on the host.
* fp8: the same pack rows with Load Diffusion Model's fp8_e4m3fn_fast (fp8 products).
* rows-legacy / fp8-legacy: the same with --disable-dynamic-vram (ComfyUI 0.27 otherwise streams
  the VAE's weights through dynamic VRAM).
* long: a 1-minute 480p video (241 latent frames, 961 frames; sink 3 + window 12 base cache and
  Dummy Forcing) written to an mp4 while it is made, IMAGE off: wall time, host RSS sampled every
  50 ms (start, peak, end).
* decodeprof: the Wan decoder's GPU time for 81 frames by kernel kind (convolutions, copies,
  norms / activations), wall time against kernel time: what fusion or graphs could take off.

Usage (GPU): python bench/bench_pixels.py --comfyui COMFYUI_DIR --out bench/results_pixels_h200.json
ComfyUI's requirements that a bare GPU image lacks travel as wheels (see bench_comfyui.py), plus
PyAV (av) for the long part; without PyAV the long part is skipped.
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
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_comfyui as bc  # noqa: E402

ROOT = bc.ROOT
RES = {"480p": (60, 104), "720p": (90, 160)}
PAIRS = [("pack DF + VAE Decode (Wan)", "pack DF, streamed Wan VAE"),
         ("pack DF + VAE Decode (lighttaew2_1)", "pack DF, streamed lighttaew2_1")]
KEEP = {n for pair in PAIRS for n in pair}


def write_vaes(comfy_dir, work, dim=96):
    """Random Wan2.1 VAE and TAEHV state dicts with ComfyUI's key names."""
    bc.start_comfy(comfy_dir, ["--cpu"])
    import torch
    from safetensors.torch import save_file
    import comfy.ldm.wan.vae as wan_vae
    import comfy.taesd.taehv as taehv
    gen = torch.Generator().manual_seed(0)

    def randomised(module, dtype):
        sd = {}
        for k, v in module.state_dict().items():
            if "gamma" in k:
                t = torch.ones(v.shape)
            elif k.endswith("bias"):
                t = torch.zeros(v.shape)
            else:
                fan = v[0].numel() if v.ndim > 1 else v.numel()
                t = torch.randn(v.shape, generator=gen) / max(fan, 1) ** 0.5
            sd[k] = t.to(dtype).contiguous()
        return sd

    wan = wan_vae.WanVAE(dim=dim, z_dim=16, temperal_downsample=[False, True, True])
    save_file(randomised(wan, torch.bfloat16), os.path.join(work, "wan21_vae.safetensors"))
    tae = taehv.TAEHV(latent_channels=16)
    save_file(randomised(tae, torch.bfloat16), os.path.join(work, "lighttaew2_1.safetensors"))


def sample_rss(stop, out):
    import psutil
    p = psutil.Process()
    while not stop.is_set():
        out.append(p.memory_info().rss)
        time.sleep(0.05)


def child(a):
    import torch
    bc.start_comfy(a.comfyui, ["--cpu"] if a.smoke else (["--disable-dynamic-vram"] if a.part.endswith("-legacy")
                                                          else []))
    a.part = a.part.removesuffix("-legacy")
    import importlib.util
    import comfy.model_management as mm
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import folder_paths
    from comfy_extras import nodes_custom_sampler as ncs
    spec = importlib.util.spec_from_file_location("DFPack", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["DFPack"] = pack
    spec.loader.exec_module(pack)
    from DFPack.nodes import core_ar_loop, pixel_output
    from DFPack.nodes.apply import ApplyDummyForcing
    from DFPack.nodes.decode import ARVideoDecode
    from DFPack.nodes.sampler import ARVideoSampler

    folder_paths.set_output_directory(os.path.join(a.work, "output"))
    opened = []
    real_open = pixel_output.open_pixel_output

    def spy_open(*args, **kw):
        po = real_open(*args, **kw)
        opened.append(po)
        return po

    pixel_output.open_pixel_output = spy_open
    options = {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True} if a.part == "fp8" else {}
    model = comfy.sd.load_diffusion_model(a.ckpt, model_options=options)
    vaes = {name: comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join(a.work, f"{name}.safetensors")))
            for name in ("wan21_vae", "lighttaew2_1")}
    hw = (8, 8) if a.smoke else RES[a.res]
    frames = (25 if a.smoke else 241) if a.part == "long" else (7 if a.smoke else 21)
    gen = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    negative = [[torch.zeros(1, 512, 4096), {}]]
    latent = {"samples": torch.zeros(1, 16, frames, *hw)}
    out = {"part": a.part, "res": a.res, "vae_dtype": {k: str(v.vae_dtype) for k, v in vaes.items()},
           "vae_types": {k: type(v.first_stage_model).__name__ for k, v in vaes.items()}, "rows": {}}
    df = dict(dummy_heads=0.5, dummy_head_count=0, scope="global", normalised_cost=False, ar_start=1,
              neighbor_chunks=1, sink_frames=1, context_packing=True, profile_sample_fraction=0.25,
              profile_seed=0, long_context_frames=0)
    m_df = ApplyDummyForcing.execute(model=model, **df).args[0]

    def sigmas_of(m):
        return comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", 4)

    def pack(m, vae=None, **kw):
        args = dict(model=m, positive=positive, latent=latent, seed=0, denoise_timesteps="", steps=4, shift=0.0,
                    frames_per_chunk=3, cache="full", sink_frames=3, window_frames=12, context_timestep=0,
                    start_frames=0, sigmas=sigmas_of(m), noise=ncs.Noise_RandomNoise(0), vae=vae, live_preview=False)
        args.update(kw)
        o = ARVideoSampler.execute(**args).args
        return o[0]["samples"], o[2]

    def core(m):
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)
        sampler = comfy.samplers.ksampler("ar_video", {"num_frame_per_block": 3})
        x = guider.sample(ncs.Noise_RandomNoise(0).generate_noise(latent), latent["samples"], sampler, sigmas_of(m),
                          seed=0)
        return x, None

    def sync():
        if torch.cuda.is_available() and not a.smoke:
            torch.cuda.synchronize()

    def timed(name, sampler_fn, decode_vae=None, repeats=2):
        """sampler_fn() -> (latent, IMAGE or None); decode_vae: then VAE Decode of the latent."""
        row = {}
        for i in range(repeats):
            opened.clear()
            sync()
            if not a.smoke:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            x, images = sampler_fn()
            sync()
            t1 = time.perf_counter()
            if decode_vae is not None:
                images = decode_vae.decode(x)
                images = images.reshape(-1, *images.shape[-3:])
                sync()
            t2 = time.perf_counter()
            if images is None:
                n = 4 * (frames - 1) + 1
            else:  # IMAGE [N, H, W, 3], or a raw decoder output [B, 3, T, H, W]
                n = int(images.shape[2]) if images.ndim == 5 and images.shape[1] == 3 else int(images.shape[0])
            row = {"sampler_s": t1 - t0, "decode_after_s": t2 - t1 if decode_vae is not None else 0.0,
                   "pixels_out_s": t2 - t0, "frames": n, "fps_pixels_out": n / (t2 - t0),
                   "torch_peak_gib": 0.0 if a.smoke else torch.cuda.max_memory_allocated() / 2 ** 30,
                   "first_run_pixels_out_s": row.get("pixels_out_s") if i else None}
            if opened and opened[-1].stream.first_frame_at is not None:
                row["first_frame_s"] = opened[-1].stream.first_frame_at - t0
            elif decode_vae is not None:
                row["first_frame_s"] = t2 - t0
        out["rows"][name] = row
        if name in KEEP:
            kept[name] = (x.float().cpu(), images.float().cpu())
        print(f"[{a.part} {a.res}] {name}: pixels out {row['pixels_out_s']:.2f} s = {row['fps_pixels_out']:.1f} FPS "
              f"(sampler {row['sampler_s']:.2f} s, decode after {row['decode_after_s']:.2f} s, first frame "
              f"{row.get('first_frame_s', float('nan')):.2f} s), peak {row['torch_peak_gib']:.1f} GiB", flush=True)

    def guarded(name, *args, **kw):
        try:
            timed(name, *args, **kw)
        except Exception as err:  # noqa: BLE001 - report it, go on
            import traceback
            out["rows"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            print(f"[{a.part} {a.res}] {name}: FAILED {type(err).__name__}: {err}", flush=True)

    wan, tae = vaes["wan21_vae"], vaes["lighttaew2_1"]
    kept = {}
    if a.part == "decodeprof":
        out["decode_profile"] = decode_profile(wan, frames, hw, gen, sync, a)
        print("RESULT " + json.dumps(out, default=str), flush=True)
        return
    if a.part == "long":
        rss, stop = [], threading.Event()
        t = threading.Thread(target=sample_rss, args=(stop, rss), daemon=True)
        import gc
        gc.collect()
        t.start()
        time.sleep(0.3)
        rss0 = rss[-1]
        t0 = time.perf_counter()
        for vae_name in ("wan21_vae",):
            opened.clear()
            _, last = pack(m_df, vaes[vae_name], cache="sink + window", return_frames=False, save_video="mp4",
                           filename_prefix=f"long/{vae_name}")
        sync()
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        t.join()
        files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(a.work, "output")) for f in fs]
        out["rows"]["long_wan_mp4"] = {
            "frames": 4 * (frames - 1) + 1, "wall_s": wall, "fps_pixels_out": (4 * (frames - 1) + 1) / wall,
            "first_frame_s": opened[-1].stream.first_frame_at - t0 if opened else None,
            "rss_start_gib": rss0 / 2 ** 30, "rss_peak_gib": max(rss) / 2 ** 30, "rss_end_gib": rss[-1] / 2 ** 30,
            "rss_samples": len(rss), "files": {os.path.basename(f): os.path.getsize(f) for f in files}}
        print(f"[long] {json.dumps(out['rows']['long_wan_mp4'])}", flush=True)
    else:
        if a.part == "rows" and a.res == "480p":
            guarded("core + VAE Decode", lambda: core(model), wan)
            guarded("core + Apply DF + VAE Decode", lambda: core(m_df), wan)
        guarded("pack DF + VAE Decode (Wan)", lambda: pack(m_df), wan)
        guarded("pack DF + VAE Decode (lighttaew2_1)", lambda: pack(m_df), tae)
        guarded("pack DF, streamed Wan VAE", lambda: pack(m_df, wan))
        guarded("pack DF, streamed lighttaew2_1", lambda: pack(m_df, tae))
        guarded("pack DF, latent only", lambda: pack(m_df))
        if a.part == "rows":
            z = torch.randn(1, 16, frames, *hw, generator=gen)
            guarded("decode only: VAE.decode (Wan)", lambda: (z, None), wan)
            guarded("decode only: AR Video Decode (Wan)", lambda: (z, ARVideoDecode.execute(
                samples={"samples": z}, vae=wan, live_preview=False).args[0]))
            guarded("decode only: VAE.decode (lighttaew2_1)", lambda: (z, None), tae)
            torch.backends.cudnn.benchmark = True
            guarded("decode only: VAE.decode (Wan), cudnn.benchmark", lambda: (z, None), wan)
            guarded("pack DF, streamed Wan VAE, cudnn.benchmark", lambda: pack(m_df, wan))
            torch.backends.cudnn.benchmark = False
            try:
                import copy
                fsm = copy.deepcopy(wan.first_stage_model)
                for mod in fsm.modules():
                    w = getattr(mod, "weight", None)
                    if torch.is_tensor(w) and w.ndim == 5:
                        mod.weight.data = w.data.contiguous(memory_format=torch.channels_last_3d)
                zz = z.to(wan.device, wan.vae_dtype).contiguous(memory_format=torch.channels_last_3d)

                def cl():
                    with torch.no_grad():
                        return zz, fsm.decode(zz)
                guarded("decode only: channels_last_3d (Wan, first_stage_model.decode)", cl)
                zz2 = z.to(wan.device, wan.vae_dtype)

                def plain():
                    with torch.no_grad():
                        return zz2, wan.first_stage_model.decode(zz2)
                guarded("decode only: first_stage_model.decode (Wan)", plain)
            except Exception as err:  # noqa: BLE001
                print(f"channels_last: {err}", flush=True)
    for seq, streamed in PAIRS:  # the streamed frames against VAE Decode of the same latent
        if seq in kept and streamed in kept:
            (x1, i1), (x2, i2) = kept[seq], kept[streamed]
            out["rows"][streamed]["latent_equal_to_sequential"] = bool(torch.equal(x1, x2))
            out["rows"][streamed]["frames_max_abs_diff_vs_vae_decode"] = float((i1 - i2).abs().max())
            print(f"[{a.part} {a.res}] {streamed}: latent equal {torch.equal(x1, x2)}, frames max |diff| vs VAE "
                  f"Decode {float((i1 - i2).abs().max()):.3g}", flush=True)
    out["engine_note"] = "pack rows use the fused forward when ComfyUI's delegate loads the weights (see bench_comfyui)"
    print("RESULT " + json.dumps(out, default=str), flush=True)


def decode_profile(wan, frames, hw, gen, sync, a):
    """Where the Wan decoder's GPU time goes (one 81-frame decode, kernels by kind): how much
    a kernel fusion (torch.compile) or graphs could take off the convolutions' time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    z = torch.randn(1, 16, frames, *hw, generator=gen)
    wan.decode(z)  # loads the VAE on the GPU, warms cuDNN up
    fsm = wan.first_stage_model
    zz = z.to(wan.device, wan.vae_dtype)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        fsm.decode(zz)
    sync()
    wall = time.perf_counter() - t0
    acts = [ProfilerActivity.CUDA] if torch.cuda.is_available() and not a.smoke else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        with torch.no_grad():
            fsm.decode(zz)
        sync()
    kernels = {}
    for e in prof.key_averages():
        t = (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0) if acts[0] == ProfilerActivity.CUDA
             else e.self_cpu_time_total)
        if t and e.key:
            kernels[e.key] = kernels.get(e.key, 0) + t / 1e3
    kinds = {"convolution (cuDNN / implicit GEMM)": 0.0, "copies / cat / pad": 0.0, "norm / activation / other": 0.0}
    for name, ms in kernels.items():
        n = name.lower()
        if any(s in n for s in ("conv", "implicit", "xmma", "cudnn", "sm90", "cutlass", "gemm", "nvjet")):
            kinds["convolution (cuDNN / implicit GEMM)"] += ms
        elif any(s in n for s in ("copy", "cat", "pad", "memcpy", "memset", "fill")):
            kinds["copies / cat / pad"] += ms
        else:
            kinds["norm / activation / other"] += ms
    total = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    print(f"[decodeprof {a.res}] wall {wall:.3f} s, GPU kernels {total / 1e3:.3f} s: "
          + ", ".join(f"{k} {v / 1e3:.3f} s" for k, v in kinds.items()), flush=True)
    for name, ms in top:
        print(f"    {ms:9.1f} ms  {name[:110]}", flush=True)
    return {"wall_s": wall, "gpu_kernels_s": total / 1e3, "kinds_s": {k: v / 1e3 for k, v in kinds.items()},
            "top_ms": top}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--parts", default="rows:480p,fp8:480p,rows:720p,long:480p")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test of the harness (tiny weights)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--res", default="480p", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part:
        return child(a)
    work = a.work or tempfile.mkdtemp(prefix="df_pixels_bench_")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "wan_1.3b_causal.safetensors")
    here = os.path.dirname(os.path.abspath(__file__))
    geometry, vae_dim = ("tiny", 8) if a.smoke else ("1.3b", 96)
    for code in (f"import bench_comfyui as b; b.write_checkpoint({a.comfyui!r}, {ckpt!r}, {geometry!r})",
                 f"import bench_pixels as b; b.write_vaes({a.comfyui!r}, {work!r}, {vae_dim})"):
        w = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); {code}"],
                           capture_output=True, text=True)
        if w.returncode:
            sys.exit(f"writing weights failed:\n{w.stderr[-3000:]}")
    import torch
    results = {"meta": {"card": "cpu (smoke)" if a.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
                        "comfyui": open(os.path.join(a.comfyui, "comfyui_version.py")).read().split('"')[1],
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "weights": "random, real geometry (1.3B DiT, Wan2.1 VAE dim 96, TAEHV 16ch bf16)"},
               "parts": {}}
    for spec in [s for s in a.parts.split(",") if s]:
        part, res = spec.split(":")
        if part == "long":
            import importlib.util
            if importlib.util.find_spec("av") is None:
                print("[long] skipped: PyAV (av) is not installed", flush=True)
                continue
        cmd = [sys.executable, __file__, "--comfyui", a.comfyui, "--part", part, "--res", res, "--ckpt", ckpt,
               "--work", work] + (["--smoke"] if a.smoke else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("RESULT "):
                results["parts"][spec] = json.loads(line[7:])
            else:
                print(line, flush=True)
        if p.returncode:  # ComfyUI's dynamic VRAM has crashed at exit after a complete RESULT: keep it
            print(f"[{spec}] exited with rc {p.returncode}:\n{p.stderr[-1500:]}", flush=True)
            results["parts"].setdefault(spec, {})["exit"] = f"rc {p.returncode}: {p.stderr[-1500:]}"
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print("\n| part | row | pixels out s | FPS | first frame s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for spec, res in results["parts"].items():
        for name, row in res.get("rows", {}).items():
            if "error" in row:
                print(f"| {spec} | {name} | failed: {row['error'][:80]} | | | |")
            elif "pixels_out_s" in row:
                print(f"| {spec} | {name} | {row['pixels_out_s']:.2f} | {row['fps_pixels_out']:.1f} | "
                      f"{row.get('first_frame_s') or float('nan'):.2f} | {row['torch_peak_gib']:.1f} |")
            else:
                print(f"| {spec} | {name} | {row['wall_s']:.2f} | {row['fps_pixels_out']:.1f} | "
                      f"{row.get('first_frame_s') or float('nan'):.2f} | RSS {row['rss_start_gib']:.2f} -> peak "
                      f"{row['rss_peak_gib']:.2f} -> {row['rss_end_gib']:.2f} |")


if __name__ == "__main__":
    main()
