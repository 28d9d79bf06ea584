"""A tiny text encoder for the shapes world's prompts, trained with the video model.

Words -> ids over a fixed vocabulary (the words the dataset's prompts use, a few synonyms,
``<pad>`` / ``<unk>``, and ``,`` which separates objects); filler words ("a", "on",
"moving", ...) are dropped. The encoder is learned word + position embeddings followed by a couple
of small pre-norm transformer layers (so "red" can bind to the "circle" after it) and a
final LayerNorm: ``[B, length] -> [B, length, dim]`` (default ``[B, 32, 64]``), the
``context`` that Wan's ``text_embedding`` (``Linear(text_dim, dim)``) takes in place of umT5.
Pad tokens are ordinary tokens (no mask), as zero-padded umT5 outputs are for Wan.

Its weights ship in the tiny model's safetensors under ``text_encoder.*`` and its vocabulary
in that file's metadata, so old files keep their own word list.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["VOCAB", "FILLER", "SYNONYMS", "TextConfig", "words_of", "tokenize", "TextEncoder"]

# "at" is kept (since the second model): it marks the start position, so "at right moving
# left" ([at, right, left]) and "at left moving right" ([at, left, right]) read apart and
# "at top right falling" differs from "at top moving right". "background" ends every prompt
# and says nothing. Old model files carry their own filler list.
FILLER = {"a", "an", "the", "on", "in", "and", "of", "is", "with", "moving", "background"}
# what the first model dropped (its file has no filler list of its own)
FILLER_V1 = {"a", "an", "the", "at", "on", "in", "and", "of", "is", "with", "moving"}
SYNONYMS = {
    "grey": "gray", "falls": "falling", "down": "falling", "up": "rising", "rises": "rising", "large": "big",
    "tiny": "small", "quickly": "fast", "quick": "fast", "slow": "slowly", "centre": "center", "middle": "center",
    "box": "square", "ball": "circle", "dot": "circle",
}

# Word ids are stable: new words are appended, so a model trained on an older list can be
# fine-tuned on this one (train.py maps embeddings by word).
VOCAB: list[str] = [
    "<pad>", "<unk>", ",",
    "red", "green", "blue", "yellow", "cyan", "white", "circle", "square", "triangle", "small", "big", "slowly",
    "fast", "black", "gray", "navy", "maroon", "olive", "teal", "right", "left", "falling", "rising", "down", "up",
    "top", "center", "bottom", "gradient", "plain", "background",
    "at",
]




@dataclass
class TextConfig:
    dim: int = 64
    length: int = 32
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    vocab: list[str] = field(default_factory=lambda: list(VOCAB))
    filler: list[str] = field(default_factory=lambda: sorted(FILLER))
    synonyms: dict = field(default_factory=lambda: dict(SYNONYMS))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        keys = {"dim", "length", "layers", "heads", "ffn", "vocab", "filler", "synonyms"}
        kw = {k: v for k, v in d.items() if k in keys}
        if "vocab" in kw and "filler" not in kw:  # a first-model file: its own filler list
            kw["filler"] = sorted(FILLER_V1)
        return cls(**kw)


def words_of(prompt: str, filler=None, synonyms=None) -> list[str]:
    """Lower-case words and commas, synonyms mapped, filler dropped. "moving down right"
    -> ["down", "right"]; "falling" stays (the dataset says "falling" for straight down).
    ``filler`` / ``synonyms`` default to this module's (a model file stores its own)."""
    filler = FILLER if filler is None else set(filler)
    synonyms = SYNONYMS if synonyms is None else synonyms
    raw = re.findall(r"[a-z]+|,", prompt.lower())
    out = []
    for i, w in enumerate(raw):
        if w in filler:
            continue
        nxt = raw[i + 1] if i + 1 < len(raw) else ""
        # "moving down"/"moving up" alone mean falling / rising; before left/right they stay
        if w in ("down", "up") and nxt in ("left", "right"):
            out.append(w)
            continue
        out.append(synonyms.get(w, w))
    return out


def tokenize(prompts: list[str] | str, length: int = 32, vocab: list[str] | None = None, filler=None,
             synonyms=None) -> torch.Tensor:
    """-> LongTensor [B, length] (truncated / padded with <pad>)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    vocab = vocab or VOCAB
    index = {w: i for i, w in enumerate(vocab)}
    unk, pad = index["<unk>"], index["<pad>"]
    rows = []
    for p in prompts:
        ids = [index.get(w, unk) for w in words_of(p, filler, synonyms)][:length]
        rows.append(ids + [pad] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or TextConfig()
        self.embed = nn.Embedding(len(cfg.vocab), cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.length, cfg.dim) * 0.02)
        self.layers = nn.ModuleList([_Layer(cfg.dim, cfg.heads, cfg.ffn) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(cfg.dim) * 4)

    def tokenize(self, prompts) -> torch.Tensor:
        c = self.config
        return tokenize(prompts, c.length, c.vocab, c.filler, c.synonyms)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, length] ids -> [B, length, dim]."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def encode(self, prompts, device=None) -> torch.Tensor:
        device = device or self.pos.device
        return self(self.tokenize(prompts).to(device))

    def unknown_words(self, prompt: str) -> list[str]:
        vocab = set(self.config.vocab)
        return [w for w in words_of(prompt, self.config.filler, self.config.synonyms) if w not in vocab]

    def dropped_tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens (words and commas, filler dropped) past ``config.length``:
        :meth:`tokenize` cuts them off, so the model never sees them."""
        return words_of(prompt, self.config.filler, self.config.synonyms)[self.config.length:]
