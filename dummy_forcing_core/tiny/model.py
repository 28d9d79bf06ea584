"""Saving and loading the tiny model: one safetensors file with the Wan transformer under
its plain Wan parameter names and the text encoder under ``text_encoder.*``.

Metadata (all strings): ``format`` = ``dummy-forcing-tiny/1``, ``config`` (JSON: sections
``model`` (WanConfig), ``text`` (TextConfig incl. vocabulary), ``data``, ``codec``,
``train``), ``steps``, ``final_loss`` and ``train_info`` (JSON). A Wan-only loader that
ignores unknown keys reads the transformer part as is (``num_heads`` must come from the
config: the tiny model's head dim is 32, not Wan's 128).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..wan_model import WanConfig, WanModel
from .text import TextConfig, TextEncoder

__all__ = ["FORMAT", "TEXT_PREFIX", "DEFAULT_PATH", "TinyFile", "save_tiny", "read_tiny_metadata", "read_tiny", "load_tiny",
           "file_size_estimate"]

FORMAT = "dummy-forcing-tiny/1"
TEXT_PREFIX = "text_encoder."
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets")
DEFAULT_PATH = os.path.join(ASSETS, "tiny_model", "model.safetensors")


def save_tiny(path: str, model: WanModel, text: TextEncoder, config: dict, dtype=torch.float16,
              steps: int = 0, final_loss: float | None = None, info: dict | None = None) -> int:
    """Write model + text encoder to ``path`` in ``dtype``; returns the file size in bytes."""
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    for k, v in text.state_dict().items():
        tensors[TEXT_PREFIX + k] = v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
    cfg = dict(config)
    cfg["model"] = model.config.to_dict()
    cfg["text"] = text.config.to_dict()
    meta = {"format": FORMAT, "config": json.dumps(cfg), "steps": str(int(steps)),
            "final_loss": "" if final_loss is None else f"{final_loss:.6f}", "train_info": json.dumps(info or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return os.path.getsize(path)


def read_tiny_metadata(path: str) -> dict:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tiny Dummy Forcing model (format {meta.get('format')!r})")
    out = dict(meta)
    out["config"] = json.loads(meta["config"])
    out["train_info"] = json.loads(meta.get("train_info") or "{}")
    out["steps"] = int(meta.get("steps") or 0)
    return out


@dataclass
class TinyFile:
    """A tiny model file's contents: ``config`` (sections model, text, data, codec, train),
    ``metadata`` (:func:`read_tiny_metadata`), and the state dicts of the Wan transformer
    (``wan``, plain Wan names) and of the text encoder (``text``), as stored (fp16)."""

    path: str
    config: dict
    metadata: dict
    wan: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]

    def text_encoder(self, device="cpu", dtype=torch.float32) -> TextEncoder:
        """The text encoder, in eval mode."""
        text = TextEncoder(TextConfig.from_dict(self.config["text"]))
        text.load_state_dict(self.text, strict=True)
        return text.to(device=device, dtype=dtype).eval()


def read_tiny(path: str | None = None) -> TinyFile:
    """Read a tiny model file (default: the shipped one); no module is built."""
    path = path or DEFAULT_PATH
    if not os.path.exists(path):
        raise FileNotFoundError(f"tiny model not found at {path}")
    meta = read_tiny_metadata(path)
    sd = load_file(path)
    return TinyFile(path, meta["config"], meta, {k: v for k, v in sd.items() if not k.startswith(TEXT_PREFIX)},
                    {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)})


def load_tiny(path: str | None = None, device="cpu", dtype=torch.float32) -> tuple[WanModel, TextEncoder]:
    """Load the shipped tiny model (default ``assets/tiny_model/model.safetensors``):
    -> (WanModel, TextEncoder), both in eval mode. ``model.tiny_config`` holds the config."""
    f = read_tiny(path)
    model = WanModel(WanConfig.from_dict(f.config["model"]))
    model.load_state_dict(f.wan, strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    model.tiny_config = f.config
    model.tiny_metadata = f.metadata
    return model, f.text_encoder(device, dtype)


def file_size_estimate(model: torch.nn.Module, text: torch.nn.Module, bytes_per_param: int = 2) -> int:
    n = sum(p.numel() for p in model.state_dict().values()) + sum(p.numel() for p in text.state_dict().values())
    return n * bytes_per_param
