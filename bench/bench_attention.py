#!/usr/bin/env python3
"""8-bit attention kernels against SDPA at the fused forward's attention shapes (issue #23).

For each resolution (tokens per frame of Wan2.1 at 480p / 720p / 1080p, chunks of 3 latent
frames) and each cache a head group reads (the chunk only: dummy heads; + 1 sink frame; + a
3-frame neighbor window; a full cache at the clip's last chunk), one group of ``--heads``
heads, B = 1, head dim 128: the time of each backend (median, CUDA events via
triton.testing.do_bench; the 8-bit rows include their quantization passes), its TFLOP/s
(4 * H * Lq * Lk * D), and its error against float32 SDPA on the same inputs
(||out - ref|| / ||ref||; inputs: normal q (x2), k with 4 biased channels, v).

Usage (GPU):  python bench/bench_attention.py --out bench/results_attention_h200.json
       (kernel configs):  --sweep
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dummy_forcing_core import attention_8bit as a8  # noqa: E402

TOKENS_PER_FRAME = {"480p": 1560, "720p": 3600, "1080p": 8160}
CACHES = {"dummy (chunk)": 3, "sink 1 + chunk": 4, "neighbor 3 + chunk": 6, "full, last chunk": 21}


def inputs(H, Lq, Lk, D, dev, gen):
    q = torch.randn(1, Lq, H, D, device=dev, generator=gen) * 2
    k = torch.randn(1, H, Lk, D, device=dev, generator=gen)
    k[..., :4] += 4
    v = torch.randn(1, H, Lk, D, device=dev, generator=gen)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def methods():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backend):
        def run(out, q, k, v):
            with sdpa_kernel([backend]):
                return a8.sdpa_into(out, q, k, v)
        return run

    m = {"sdpa cudnn bf16": sdpa(SDPBackend.CUDNN_ATTENTION), "sdpa flash bf16": sdpa(SDPBackend.FLASH_ATTENTION)}
    for qk, pv in (("int8", "fp8"), ("int8", "16"), ("fp8", "fp8")):
        m[f"triton qk {qk} pv {pv}"] = (lambda qk, pv: lambda out, q, k, v: a8.attention_8bit("triton", out, q, k, v,
                                                                                         qk, pv))(qk, pv)
    if a8.sage_available():
        ver = a8.sage_version()
        what = "int8 qk, fp8 pv" if a8.sage_major() >= 2 else "int8 qk, fp16 pv"
        m[f"sageattention {ver} ({what})"] = lambda out, q, k, v: a8.attention_8bit("sage", out, q, k, v)
    return m


def main(argv=None):
    import triton.testing

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", default="480p,720p,1080p")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--sweep", action="store_true", help="try kernel configs at 480p / 720p neighbor shapes")
    ap.add_argument("--methods", default="", help="comma list of substrings: only methods whose name holds one")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    D, H = 128, args.heads
    meta = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel_configs": a8.KERNEL_CONFIGS, "qk": a8.QK, "pv": a8.PV, "smooth_k": a8.SMOOTH_K}
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    print(meta, flush=True)
    rows = []
    ms = methods()
    if args.methods:
        ms = {n: f for n, f in ms.items() if any(w in n for w in args.methods.split(","))}
    for res in [r for r in args.resolutions.split(",") if r]:
        tpf = TOKENS_PER_FRAME[res]
        Lq = 3 * tpf
        for cname, frames in CACHES.items():
            Lk = frames * tpf
            q, k, v = inputs(H, Lq, Lk, D, dev, gen)
            ref = None
            if H * Lq * Lk * 4 <= 12e9:  # float32 scores of every head fit comfortably
                ref = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.float(), v.float()).transpose(1, 2)
            flops = 4 * H * Lq * Lk * D
            for name, fn in ms.items():
                out = torch.full((1, Lq, H, D), float("nan"), device=dev, dtype=torch.bfloat16)
                try:
                    fn(out, q, k, v)
                    torch.cuda.synchronize()
                    err = None if ref is None else ((out.float() - ref).norm() / ref.norm()).item()
                    t = triton.testing.do_bench(lambda: fn(out, q, k, v), warmup=25, rep=100, return_mode="median")
                except Exception as e:  # noqa: BLE001
                    print(f"{res} {cname} {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                row = {"res": res, "cache": cname, "Lq": Lq, "Lk": Lk, "heads": H, "method": name, "ms": t,
                       "tflops": flops / t / 1e9, "rel_err": err, "finite": bool(torch.isfinite(out).all())}
                rows.append(row)
                print(f"{res:5s} {cname:18s} Lk {Lk:6d} {name:36s} {t:7.3f} ms {row['tflops']:6.0f} TFLOP/s "
                      f"err {err if err is None else f'{err:.2e}'}", flush=True)
            del q, k, v, ref
            torch.cuda.empty_cache()
    sweep = []
    if args.sweep:
        for res, frames in (("480p", 6), ("720p", 6), ("720p", 21)):
            tpf = TOKENS_PER_FRAME[res]
            q, k, v = inputs(H, 3 * tpf, frames * tpf, D, dev, gen)
            out = torch.empty((1, 3 * tpf, H, D), device=dev, dtype=torch.bfloat16)
            for pv in ("fp8", "16"):
                base = dict(a8.KERNEL_CONFIGS[pv])
                for warps in (4, 8):
                    for stages in (2, 3, 4):
                        a8.KERNEL_CONFIGS[pv] = {"num_warps": warps, "num_stages": stages}
                        try:
                            t = triton.testing.do_bench(lambda: a8.attention_8bit("triton", out, q, k, v, "int8", pv),
                                                        warmup=25, rep=100, return_mode="median")
                        except Exception as e:  # noqa: BLE001
                            print(f"sweep {res} Lk {frames * tpf} pv {pv} w{warps} s{stages}: {type(e).__name__}",
                                  flush=True)
                            continue
                        tf = 4 * H * 3 * tpf * frames * tpf * D / t / 1e9
                        sweep.append({"res": res, "Lk": frames * tpf, "pv": pv, "num_warps": warps,
                                      "num_stages": stages, "ms": t, "tflops": tf})
                        print(f"sweep {res} Lk {frames * tpf:6d} pv {pv:3s} warps {warps} stages {stages}: "
                              f"{t:.3f} ms {tf:.0f} TFLOP/s", flush=True)
                a8.KERNEL_CONFIGS[pv] = base
    # the quantization passes alone (what the 8-bit rows pay on top of the kernel)
    tpf = TOKENS_PER_FRAME["480p"]
    q, k, v = inputs(H, 3 * tpf, 6 * tpf, D, dev, gen)
    tq = triton.testing.do_bench(lambda: (a8._quantize_triton(q.transpose(1, 2), 128, True, 1.0, False),
                                          a8._quantize_triton(k, 128, True, 1.0, False),
                                          a8._quantize_triton(v, 128, False, 1.0, True)),
                                 warmup=25, rep=100, return_mode="median")
    print(f"quantization of q, k, v (480p neighbor shape): {tq:.3f} ms", flush=True)
    meta["quant_ms_480p_neighbor"] = tq
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "sweep": sweep}, f, indent=1)


if __name__ == "__main__":
    main()
