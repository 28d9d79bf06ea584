#!/usr/bin/env python3
"""Build a SageAttention 2 wheel for Hopper (compute capability 9.0) from its source, for the
8-bit attention benchmarks (issue #23).

SageAttention 2's Hopper kernels (int8 q k^T, fp8 p v with float32 sums, wgmma + TMA) exist only
as CUDA source (github.com/thu-ml/SageAttention, Apache 2.0); PyPI has version 1 (Triton). This
script takes a copy of that source (never committed here), and before building it:

* keeps only the extensions an H100 / H200 runs (``_qattn_sm90`` and ``_fused``): the sm80 /
  sm89 ones triple the compile time and ``sageattention`` imports without them;
* launches every kernel on PyTorch's current stream instead of the legacy default stream, so
  that it joins the stream a CUDA graph is captured on (the fused forward replays its passes
  as CUDA graphs) and orders with the fused forward's side stream.

Usage (on the GPU machine, with nvcc):
    python bench/build_sageattention.py SAGE_SRC_DIR OUT_DIR [--jobs 16]
writes OUT_DIR/sageattention-*.whl and prints the build's wall time.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

KERNEL_FILES = ("csrc/qattn/qk_int_sv_f8_cuda_sm90.cu", "csrc/fused/fused.cu")
DROPPED_EXTENSIONS = ("if HAS_SM80 or HAS_SM86 or HAS_SM89 or HAS_SM90 or HAS_SM100 or HAS_SM120 or HAS_SM121:",
                      "if HAS_SM89 or HAS_SM90 or HAS_SM100 or HAS_SM120 or HAS_SM121:")
STREAM = "at::cuda::getCurrentCUDAStream()"


def _top_level_split(text: str) -> list[str]:
    """Split at the commas outside parentheses / braces (``dim3(n, h), 128`` -> two parts)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def on_current_stream(src: str) -> tuple[str, int]:
    """``kernel<<<grid, block[, smem]>>>`` -> ``kernel<<<grid, block, smem, current stream>>>``."""
    def launch(m):
        args = [a.strip() for a in _top_level_split(m.group(1))]
        if len(args) == 2:
            args.append("0")
        if len(args) != 3:
            return m.group(0)  # already names a stream
        return "<<<" + ", ".join(args + [STREAM]) + ">>>"
    out, n = re.subn(r"<<<([^<>]*)>>>", launch, src)
    if "ATen/cuda/CUDAContext.h" not in out:
        out = "#include <ATen/cuda/CUDAContext.h>\n" + out
    return out, n


def patch(tree: str) -> None:
    setup = os.path.join(tree, "setup.py")
    text = open(setup).read()
    for line in DROPPED_EXTENSIONS:
        if line not in text:
            raise SystemExit(f"{setup}: expected {line!r} (another SageAttention version?)")
        text = text.replace(line, "if False:", 1)
    open(setup, "w").write(text)
    for rel in KERNEL_FILES:
        path = os.path.join(tree, rel)
        text, n = on_current_stream(open(path).read())
        if n == 0:
            raise SystemExit(f"{path}: no kernel launch found")
        open(path, "w").write(text)
        print(f"{rel}: {n} launches moved to the current stream", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a copy of github.com/thu-ml/SageAttention (setup.py, csrc/, sageattention/)")
    ap.add_argument("out", help="folder for the wheel")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 8)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "sage")
        shutil.copytree(a.src, tree)
        patch(tree)
        env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS=str(a.jobs), EXT_PARALLEL="2")
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                        os.path.abspath(a.out), "."], cwd=tree, env=env, check=True)
        print(f"built in {time.time() - t0:.0f} s: {sorted(os.listdir(a.out))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
