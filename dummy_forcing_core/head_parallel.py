"""One video on several processes: the attention heads split across ranks (torch.distributed).

Every rank runs the same chunk loop on the same inputs (same seed, text and noise), so
everything but self-attention is computed on each rank alike. Until the cache is regrouped
(Dummy Forcing's ``ar_start``, before which heads are profiled) every rank holds the whole
cache. At the regroup the heads of each layer are assigned to ranks by cost
(:func:`assign_heads`: the frames a head attends over, i.e. its attention FLOPs and KV bytes,
balanced per layer because every layer waits for all ranks), rank 0's assignment is broadcast,
and each rank keeps only its heads' K/V (``KVCache.local_heads``). From then on a rank attends
over its heads only and one all-reduce per layer ([B, L, H, D]; the others' heads are 0 in it)
gives every rank the whole layer's output.

Every rank must run the same weights, settings, latent and text; the runner checks that they do
(``rank_agreement.agree``, one all-gather of small hashes) before any work: the weights, compute
dtype and engine when it is made, the latent's shape and the cache settings with each new cache,
the text with each prompt, the first pass's input (noise: the seed) of each cache, and the head
types at the regroup. A difference raises the same :class:`~.rank_agreement.RankMismatch` on
every rank, naming what differs, instead of a wrong video or a hang. A tool that knows its
settings checks them too, before loading anything.

The split works in both engines. The reference loop (``ChunkRunner.attend``) attends over
this rank's heads, leaves the others' outputs 0 and all-reduces [B, L, H, D] per layer. The
fused forward (``fused_forward.py``, a partial layer) computes q / k / v for every head (Wan's
RMSNorm spans all heads), attends over this rank's, multiplies them by their columns of the
output projection and all-reduces that [B, L, C] share, the bias added once: attention and the
output projection are split, the rest runs on every rank. CUDA graphs stay off on a
head-parallel runner (a collective inside a captured pass is not checked here). Backend: NCCL
on GPUs, gloo on CPUs. The command line (torchrun, the shipped small model) is
``head_parallel_cli.py``; this module imports no command line and no small-model code.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from .attention import attend
from .chunk_runner import ChunkRunner
from .kv_cache import FULL, GroupSpec, KVCache, Retention
from .rank_agreement import RankMismatch, agree

__all__ = ["head_costs", "assign_heads", "HeadParallelRunner", "rank_stats", "RankMismatch", "SAME_EVERYWHERE"]

SAME_EVERYWHERE = "start every process with the same command line, model file and inputs"


def head_costs(specs: list[list[GroupSpec]], total_frames: int, chunk_frames: int) -> list[list[int]]:
    """[layer][head] -> frames the head attends over at most (what it keeps plus the chunk):
    its share of a layer's attention FLOPs and of the KV bytes."""
    costs = []
    for layer_specs in specs:
        row: dict[int, int] = {}
        for spec in layer_specs:
            i = 0
            for n, ret in spec.runs:
                for h in spec.heads[i:i + n]:
                    row[h] = ret.capacity_for(total_frames, chunk_frames)
                i += n
        costs.append([row[h] for h in sorted(row)])
    return costs


def assign_heads(costs: list[list[float]], world: int) -> list[list[list[int]]]:
    """Per layer, heads onto ``world`` ranks, costliest first onto the least-loaded rank (ties:
    the lower head / rank index): returns [rank][layer] -> sorted heads. Every rank gets at least
    one head of every layer (needs heads >= world)."""
    if world < 1:
        raise ValueError("need at least one rank")
    out = [[[] for _ in costs] for _ in range(world)]
    for li, row in enumerate(costs):
        if len(row) < world:
            raise ValueError(f"layer {li} has {len(row)} heads for {world} ranks: use at most {len(row)} processes")
        load = [0.0] * world
        for h in sorted(range(len(row)), key=lambda h: (-row[h], h)):
            r = min(range(world), key=lambda r: (load[r], r))
            out[r][li].append(h)
            load[r] += row[h]
        for r in range(world):
            out[r][li].sort()
    return out


class HeadParallelRunner(ChunkRunner):
    """A ChunkRunner whose caches split their heads across the ranks of ``group`` after the
    regroup (see the module docstring). ``fast``: as ChunkRunner's (None: the fused forward on
    CUDA in bf16 / fp16), always without CUDA graphs."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None, device=None, group=None,
                 fast=None):
        super().__init__(model, dtype=dtype, device=device, fast=fast)
        if self.fast_path is not None:
            self.fast_path.opts = dataclasses.replace(self.fast_path.opts, cuda_graphs=False)
            self.fast_path.reduce = self._reduce
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._agree({"model weights": model, "compute dtype": self.dtype,
                     "engine": "fused forward" if self.fast_path is not None else "reference loop"}, "model")
        if self.geometry.num_heads < self.world:  # the same on every rank now: one error each, no hang
            raise RankMismatch(f"head-parallel: {self.world} processes for {self.geometry.num_heads} heads per layer: "
                               f"start at most {self.geometry.num_heads} processes (--nproc_per_node)")
        self.assignment: list[list[list[int]]] | None = None  # [rank][layer] -> heads, of the last regroup
        self._check_next_pass = False

    def _agree(self, items: dict, what: str) -> None:
        agree(items, what, group=self.group, device=self.device, hint=SAME_EVERYWHERE)

    def new_cache(self, batch: int, height: int, width: int, total_frames: int, chunk_frames: int,
                  retention: Retention = FULL, capacity_frames: int | None = None) -> KVCache:
        self._agree({"batch": batch, "latent height": height, "latent width": width, "latent frames": total_frames,
                     "chunk frames": chunk_frames, "cache retention": retention, "cache capacity frames": capacity_frames},
                    "latent and cache")
        cache = super().new_cache(batch, height, width, total_frames, chunk_frames, retention, capacity_frames)
        cache.shard_heads = lambda specs: self._shard(specs, cache.total_frames, cache.max_chunk_frames)
        self._check_next_pass = True
        return cache

    def encode_text(self, context: torch.Tensor):
        self._agree({"text context": context}, "prompt")
        return super().encode_text(context)

    def forward(self, x, timesteps, start_frame, text, cache, commit=False, probe=None, position=None):
        if self._check_next_pass:  # the first pass of a cache: its noise (the seed) and timesteps
            self._check_next_pass = False
            self._agree({"first pass input (noise: seed, start latent)": x, "timesteps": timesteps,
                         "start frame": start_frame}, "video")
        return super().forward(x, timesteps, start_frame, text, cache, commit=commit, probe=probe, position=position)

    def _shard(self, specs, total_frames: int, chunk_frames: int) -> list[list[int]]:
        # the specs (head types: the Dummy Forcing settings and the profiled scores) must match; rank 0's
        # assignment is then the one all use
        self._agree({"head types at the regroup": specs}, "Dummy Forcing head types")
        obj = [assign_heads(head_costs(specs, total_frames, chunk_frames), self.world) if self.rank == 0 else None]
        dist.broadcast_object_list(obj, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        self.assignment = obj[0]
        return self.assignment[self.rank]

    def _reduce(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, group=self.group)

    def attend(self, cache: KVCache, layer: int, q, k, v, probe=None) -> torch.Tensor:
        out = attend(cache, layer, q, k, v, probe)
        if cache.layers[layer].partial:
            dist.all_reduce(out, group=self.group)
        return out


def rank_stats(cache_stats, runner: HeadParallelRunner) -> list[dict]:
    """Every rank's share (heads per layer, KV bytes held / allocated, attention FLOPs),
    gathered on all ranks in rank order. ``cache_stats``: this rank's GenerationStats."""
    heads = ([len(layer) for layer in runner.assignment[runner.rank]] if runner.assignment is not None
             else [runner.geometry.num_heads] * runner.geometry.num_layers)
    mine = {"rank": runner.rank, "heads_per_layer": heads, "kv_bytes": cache_stats.kv_bytes,
            "kv_allocated_bytes": cache_stats.kv_allocated_bytes, "attn_flops": cache_stats.attn_flops}
    every = [None] * runner.world
    dist.all_gather_object(every, mine, group=runner.group)
    return every


if __name__ == "__main__":  # the command line moved out of the runtime module
    raise SystemExit("the head-parallel command line is dummy_forcing_core.head_parallel_cli: python -m "
                     "torch.distributed.run --nproc_per_node 2 -m dummy_forcing_core.head_parallel_cli --prompt ...")
