"""A tiny Wan model whose heads are made, by their weights, to look at chosen frames.

Every self-attention head gets zero q/k weights and constant q/k biases, so before RoPE
all tokens share one query and one key vector (the RMSNorm over the whole dim is given
weights that undo its rescaling exactly). The vectors live only in the first two
time-axis rotary pairs (angular speeds 1 and 0.464 per frame at head dim 64); the key's
pairs are turned by ``w_j * peak`` so the logit is

    amplitude^2 / sqrt(D) * sum_j cos(w_j * (dt - peak)),   dt = t_query - t_key,

which depends only on the frame distance and is highest at ``dt = peak``: every other
|dt - peak| <= 8 is at least 0.565 * amplitude^2 / sqrt(D) lower (2.5 nats for the default
amplitude 6, which leaves 2-5 % of each head's mass on nearby frames). With chunks of 3
frames, sink_frames = 3 and profiling at ar_start = 2 (queries in frames 6..8):

* ``"dummy"``    peak 0: each query looks at its own frame (current chunk);
* ``"neighbor"`` peak 3: frames 3..5, the previous chunk (neighbor frames);
* ``"sink"``     peak 6: frames 0..2 (sink frames).

Everything else in the model (values, FFN, cross-attention) stays random: it does not
change the logits of any layer, so the masses do not depend on the input latent.
"""
from __future__ import annotations

import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dummy_forcing_core.head_program import HeadType  # noqa: E402
from dummy_forcing_core.attention_profiler import AttentionProfiler  # noqa: E402
from dummy_forcing_core.rope import rope_axes  # noqa: E402
from dummy_forcing_core.chunk_runner import ChunkRunner  # noqa: E402
from dummy_forcing_core.wan_model import WanConfig, WanModel  # noqa: E402

KIND_TYPE = {"sink": HeadType.SINK, "neighbor": HeadType.NEIGHBOR, "dummy": HeadType.DUMMY}
KIND_REGION = {"sink": 0, "neighbor": 1, "dummy": 2}  # index into (a_sink, a_neighbor, a_current)

# default layout: 3 layers x 4 heads, dummy heads per layer 2, 1, 1 (4 in all)
DEFAULT_KINDS = [["dummy", "sink", "dummy", "neighbor"],
                 ["neighbor", "dummy", "sink", "sink"],
                 ["sink", "neighbor", "neighbor", "dummy"]]


def peaks(chunk_frames: int = 3, ar_start: int = 2) -> dict[str, int]:
    """Frame distance each kind attends to, for sink_frames = chunk_frames."""
    if ar_start < 2:
        raise ValueError("planted sink/neighbor heads need ar_start >= 2 (sink and previous chunk distinct)")
    return {"dummy": 0, "neighbor": chunk_frames, "sink": ar_start * chunk_frames}


def planted_types(kinds=DEFAULT_KINDS) -> torch.Tensor:
    return torch.tensor([[int(KIND_TYPE[k]) for k in row] for row in kinds], dtype=torch.long)


@torch.no_grad()
def make_planted_wan(kinds=DEFAULT_KINDS, head_dim: int = 64, amplitude: float = 6.0, pairs: int = 2,
                     chunk_frames: int = 3, ar_start: int = 2, seed: int = 0, dtype=torch.float64,
                     text_dim: int = 32, in_dim: int = 16) -> WanModel:
    L, H = len(kinds), len(kinds[0])
    cfg = WanConfig(dim=H * head_dim, ffn_dim=2 * H * head_dim, num_heads=H, num_layers=L, in_dim=in_dim,
                    out_dim=in_dim, text_dim=text_dim, freq_dim=32)
    model = WanModel(cfg).init_random(seed).to(dtype).eval()
    t_dims = rope_axes(head_dim)[0]
    if pairs > t_dims // 2:
        raise ValueError(f"head dim {head_dim} has only {t_dims // 2} time rotary pairs")
    w = 1.0 / 10000.0 ** (torch.arange(0, t_dims, 2, dtype=torch.float64)[:pairs] / t_dims)
    peak = peaks(chunk_frames, ar_start)
    for layer, row in enumerate(kinds):
        sa = model.blocks[layer].self_attn
        qb = torch.zeros(cfg.dim, dtype=torch.float64)
        kb = torch.zeros(cfg.dim, dtype=torch.float64)
        for h, kind in enumerate(row):
            base = h * head_dim
            for j in range(pairs):
                qb[base + 2 * j] = amplitude  # q pair = amplitude * e^{i0}
                ang = float(w[j]) * peak[kind]  # k pair = amplitude * e^{i w peak}
                kb[base + 2 * j] = amplitude * math.cos(ang)
                kb[base + 2 * j + 1] = amplitude * math.sin(ang)
        for lin, norm, b in ((sa.q, sa.norm_q, qb), (sa.k, sa.norm_k, kb)):
            lin.weight.zero_()
            lin.bias.copy_(b)
            # RMSNorm(b) * weight == b exactly
            norm.weight.fill_(math.sqrt(float(b.pow(2).mean()) + norm.eps))
    return model


@torch.no_grad()
def profile_planted(model: WanModel, sink_frames: int = 3, ar_start: int = 2, chunk_frames: int = 3,
                    height: int = 8, width: int = 8, sample_fraction: float = 0.5, seed: int = 0,
                    latent_seed: int = 1, profiler: AttentionProfiler | None = None) -> AttentionProfiler:
    """Runs the real chunk runtime over ar_start + 1 chunks of a random clean latent at t = 0
    (committing each), with the profiler as the probe at chunk ``ar_start``."""
    runner = ChunkRunner(model)
    g = runner.geometry
    if profiler is None:
        profiler = AttentionProfiler(g.num_layers, g.num_heads, sink_frames, sample_fraction, seed)
    frames = (ar_start + 1) * chunk_frames
    gen = torch.Generator().manual_seed(latent_seed)
    latent = torch.randn(1, g.in_dim, frames, height, width, generator=gen, dtype=torch.float64).to(runner.dtype)
    ctx = torch.randn(1, 8, model.text_dim, generator=gen, dtype=torch.float64).to(runner.dtype)
    cache = runner.new_cache(1, height, width, frames, chunk_frames)
    text = runner.encode_text(ctx)
    t = torch.zeros(1, dtype=runner.dtype)
    for c in range(ar_start + 1):
        s = c * chunk_frames
        runner.forward(latent[:, :, s:s + chunk_frames], t, s, text, cache, commit=True,
                       probe=profiler if c == ar_start else None)
    return profiler
