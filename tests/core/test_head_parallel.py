"""Head-parallel Dummy Forcing on CPU processes (gloo): 2 and 3 ranks give the single-process
video (float64), each rank holds only its heads' K/V, and heads are balanced by cost."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import make_tiny_wan, rel
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.head_parallel import HeadParallelRunner, assign_heads, rank_stats
from dummy_forcing_core.kv_cache import GroupSpec, Retention
from dummy_forcing_core.prompt_schedule import PromptSchedule
from dummy_forcing_core.sampler import SamplerSettings, generate

SHAPE = (1, 16, 12, 4, 4)
SETTINGS = SamplerSettings(timesteps=(1000, 500), seed=4, chunk_frames=3)


def model():
    return make_tiny_wan(layers=3, heads=6, head_dim=8, seed=2)


def contexts():
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 5, 32, generator=g, dtype=torch.float64), torch.randn(1, 5, 32, generator=g, dtype=torch.float64)


def video_input(switch: bool):
    a, b = contexts()
    return PromptSchedule([(0, a), (6, b)]) if switch else a


def spec(switch=False):
    return CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=0.5, profile_sample_fraction=1.0,
                                                      reprofile_on_prompt_switch=switch == "reprofile"))


def _worker(rank, world, rdv, out_dir, switch, fast=False):
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        opts = {False: False, True: True, "gather": FastOptions(group_heads=False)}[fast]  # gather: unpermuted weights
        runner = HeadParallelRunner(model(), dtype=torch.float64, fast=opts)
        assert (runner.fast_path is not None) == (fast is not False), runner.fast_reason
        res = generate(runner, video_input(switch), SHAPE, SETTINGS, spec(switch))
        ranks = rank_stats(res.stats, runner)
        torch.save({"latent": res.latent, "ranks": ranks, "assignment": runner.assignment},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(world, tmp_path, switch=False, fast=False):
    mp.spawn(_worker, args=(world, str(tmp_path / "rdv"), str(tmp_path), switch, fast), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("world,switch,fast", [(2, False, False), (3, False, False), (2, "recache", False),
                                               (3, "reprofile", False), (2, False, True), (3, "recache", True),
                                               (2, False, "gather")])
def test_ranks_make_the_single_process_video(world, switch, fast, tmp_path):
    """Reference loop and fused forward (split attention + output projection) alike."""
    single = generate(ChunkRunner(model(), dtype=torch.float64), video_input(switch), SHAPE, SETTINGS, spec(switch))
    outs = run_ranks(world, tmp_path, switch, fast)
    for o in outs:  # every rank ends with the whole video
        assert rel(o["latent"], single.latent) < 1e-12
    ranks = outs[0]["ranks"]
    assert [r["rank"] for r in ranks] == list(range(world))
    # each layer's heads split across the ranks exactly once, and only those heads' K/V kept
    assignment = outs[0]["assignment"]
    for layer in range(3):
        got = sorted(h for r in range(world) for h in assignment[r][layer])
        assert got == list(range(6))
        assert all(assignment[r][layer] for r in range(world))
    assert [r["heads_per_layer"] for r in ranks] == [[len(layer) for layer in assignment[r]] for r in range(world)]
    # the K/V the ranks hold add up to the single process's cache
    assert sum(r["kv_bytes"] for r in ranks) == single.stats.kv_bytes
    assert all(r["kv_bytes"] < single.stats.kv_bytes for r in ranks)


def test_assign_heads_balances_each_layer_by_cost():
    costs = [[10, 1, 1, 1, 1, 10, 1, 1], [4, 4, 4, 4, 4, 4, 4, 4]]
    a = assign_heads(costs, 2)
    assert (0 in a[0][0]) != (5 in a[0][0])  # the two costly heads on different ranks
    assert sum(costs[0][h] for h in a[0][0]) == sum(costs[0][h] for h in a[1][0]) == 13
    for layer, row in enumerate(costs):
        loads = [sum(row[h] for h in a[r][layer]) for r in range(2)]
        assert max(loads) - min(loads) <= max(row)
    assert [len(a[r][1]) for r in range(2)] == [4, 4]
    with pytest.raises(ValueError, match="at most 8 processes"):
        assign_heads(costs, 9)


def test_restricted_regroup_keeps_only_the_local_heads():
    from dummy_forcing_core.kv_cache import KVCache, FULL
    from dummy_forcing_core.attention import attend
    cache = KVCache.create(1, 4, 8, 4, 3, 9, FULL)
    k = torch.randn(1, 12, 4, 8)
    attend(cache, 0, k, k, k)
    cache.commit()
    cache.shard_heads = lambda specs: [[1, 3]]
    cache.regroup([[GroupSpec([0, 1], [(2, Retention(1, 0))]), GroupSpec([2, 3], [(2, Retention(0, 3))])]])
    layer = cache.layers[0]
    assert layer.partial and sorted(h for g in layer.groups for h in g.head_list) == [1, 3]
    q = torch.randn(1, 12, 4, 8)
    out = attend(cache, 0, q, q, q)
    assert torch.equal(out[:, :, [0, 2]], torch.zeros_like(out[:, :, [0, 2]]))  # held by another process
    assert out[:, :, [1, 3]].abs().sum() > 0


def test_torchrun_entry_point(tmp_path):
    """python -m torch.distributed.run --nproc_per_node 2 -m dummy_forcing_core.head_parallel"""
    import subprocess
    import sys
    from safetensors.torch import load_file
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "latent.safetensors"
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "dummy_forcing_core.head_parallel", "--frames", "9", "--out", str(out)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0: heads per layer" in r.stdout and "rank 1: heads per layer" in r.stdout
    lat = load_file(str(out))["latent"]
    assert lat.shape[2] == 9 and torch.isfinite(lat).all()
