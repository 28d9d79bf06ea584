"""The command ``python -m dummy_forcing_core.convert``: argparse (errors as one line), then
:func:`convert_checkpoint`; a summary on stdout, warnings and one ``error: ...`` line on stderr."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from .common import ConversionError, UsageError
from .conversion import convert_checkpoint


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dummy_forcing_core.convert",
        description="Convert a Self Forcing / Causal Forcing / CausVid / LongLive / Krea Realtime checkpoint "
                    "(optionally with a LongLive LoRA merged in) into one .safetensors that ComfyUI's 'Load "
                    "Diffusion Model' loads.")
    p.add_argument("input", help="training checkpoint (.pt/.pth), state dict, Wan .safetensors, sharded "
                                 "*.safetensors.index.json, or a folder holding one of them")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--lora", default=None, help="LongLive LoRA file (lora.pt with 'generator_lora') to merge")
    p.add_argument("--key", default="auto", help="which entry of a training checkpoint: auto (generator_ema, then "
                   "generator), generator_ema, generator, or another top-level key")
    p.add_argument("--chunk-frames", type=int, default=3,
                   help="latent frames per AR chunk (3 chunk-wise, 1 frame-wise)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "keep"],
                   help="output weight dtype (default bf16)")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (default dim // 128)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA alpha when the file does not state it (default: equal to the rank, i.e. scale 1)")
    p.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank when the file does not state it (default: read from lora_A shapes)")
    p.add_argument("--no-causal-ar-flag", action="store_true",
                   help="leave out ComfyUI's config {'transformer': {'causal_ar': true}} (for ComfyUI versions "
                        "without CausalWanModel)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (shown on a terminal with tqdm)")
    return p


def _fail(message: Any, code: int) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """The command. Exit codes: 0 done, 2 bad arguments, 1 unreadable / unsupported input or I/O
    error, 130 interrupted. Errors are one ``error: ...`` line on stderr, never a traceback."""
    try:
        args = _build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc, 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = convert_checkpoint(args.input, args.output, lora=args.lora, key=args.key,
                                      chunk_frames=args.chunk_frames, dtype=args.dtype, num_heads=args.num_heads,
                                      lora_alpha=args.lora_alpha, lora_rank=args.lora_rank,
                                      comfy_causal_ar=not args.no_causal_ar_flag,
                                      progress=False if args.no_progress else None)
    except UsageError as exc:
        return _fail(exc, 2)
    except ConversionError as exc:
        return _fail(exc, 1)
    except OSError as exc:
        return _fail(f"{exc.filename or args.output}: {exc.strerror or exc}; no output was written", 1)
    except MemoryError:
        return _fail("out of memory; close other programs or convert on a machine with more RAM", 1)
    except KeyboardInterrupt:
        return _fail("interrupted; no output was written", 130)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, with what it was
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    ours = info["metadata"]["dummy_forcing"]
    cfg = info["config"]
    print(f"wrote {info['output']}")
    print(f"  source: {ours['source_format']}" + (f" [{ours['source_key']}]" if ours["source_key"] else "")
          + (f", stripped {', '.join(info['stripped_prefixes'])}" if info["stripped_prefixes"] else ""))
    print(f"  model: Wan dim {cfg['dim']}, {cfg['num_layers']} layers, {cfg['num_heads']} heads, "
          f"{info['num_params'] / 1e6:.1f}M parameters, {ours['dtype']}")
    if ours["lora_merged"]:
        print(f"  LoRA merged: {ours['lora_modules']} modules, rank {ours['lora_rank']}, alpha {ours['lora_alpha']}")
    print(f"  chunk frames: {ours['chunk_frames']}; ComfyUI causal_ar flag: {info['metadata']['config'] is not None}")
    return 0
