"""Head-parallel Dummy Forcing on CPU processes (gloo): 2 and 3 ranks give the single-process
video (float64), each rank holds only its heads' K/V, heads are balanced by cost, and ranks that
do not run the same weights / latent / text / settings all stop with one error naming what differs."""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import make_tiny_wan, rel
from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.fused_forward import FastOptions
from dummy_forcing_core.head_parallel import HeadParallelRunner, RankMismatch, assign_heads, rank_stats
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


SLOW = pytest.mark.slow


@pytest.mark.parametrize("world,switch,fast", [(2, False, False), pytest.param(3, False, False, marks=SLOW),
                                               (2, "recache", False), pytest.param(3, "reprofile", False, marks=SLOW),
                                               (2, False, True), pytest.param(3, "recache", True, marks=SLOW),
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


def _makespan(costs, groups):
    return max(sum(costs[h] for h in g) for g in groups)


def _best_makespan(costs, world):
    """Brute force over every assignment of heads to ranks (every rank at least one head)."""
    best = float("inf")
    for ranks in itertools.product(range(world), repeat=len(costs)):
        if len(set(ranks)) == world:
            best = min(best, _makespan(costs, [[h for h, r in enumerate(ranks) if r == q] for q in range(world)]))
    return best


def _cheapest_first(costs, world):
    """The same greedy in the other order: what assign_heads must not be."""
    load, groups = [0] * world, [[] for _ in range(world)]
    for h in sorted(range(len(costs)), key=lambda h: (costs[h], h)):
        r = min(range(world), key=lambda r: (load[r], r))
        groups[r].append(h)
        load[r] += costs[h]
    return groups


def test_assign_heads_costliest_first_beats_cheapest_first():
    # planted: four cheap heads and one costly one. Cheapest first spreads the cheap ones (2 + 2), then
    # the costly one lands on a rank that already has 2: makespan 6. Costliest first puts the costly one
    # alone and the four cheap ones together: 4 + 4, the best split.
    costs = [1, 4, 1, 1, 1]
    assert _makespan(costs, _cheapest_first(costs, 2)) == 6 > _best_makespan(costs, 2) == 4
    got = assign_heads([costs], 2)
    assert sorted(h for r in range(2) for h in got[r][0]) == list(range(5))
    assert _makespan(costs, [got[r][0] for r in range(2)]) == 4
    assert got[0][0] == [1] or got[1][0] == [1]


@pytest.mark.parametrize("world", [2, 3])
def test_assign_heads_within_the_greedy_bound_of_the_best_split(world):
    """Costliest first (LPT) is within (4/3 - 1/(3 world)) of the best split (Graham 1969); checked
    against brute force on random cost rows of Dummy Forcing's shape (a few distinct head sizes)."""
    g = torch.Generator().manual_seed(world)
    bound = 4 / 3 - 1 / (3 * world)
    lpt_not_best = 0
    for _ in range(40):
        n = int(torch.randint(world, 8, (1,), generator=g))
        costs = [int(c) for c in torch.tensor([1, 3, 7, 12])[torch.randint(0, 4, (n,), generator=g)]]
        got = assign_heads([costs], world)
        groups = [got[r][0] for r in range(world)]
        assert sorted(h for grp in groups for h in grp) == list(range(n)) and all(groups)
        best = _best_makespan(costs, world)
        assert _makespan(costs, groups) <= bound * best + 1e-9, (costs, groups, best)
        lpt_not_best += _makespan(costs, groups) > best
    assert lpt_not_best < 40  # mostly the best split


def _mismatch_worker(rank, world, rdv, out_dir):
    # a short timeout: were a mismatch to reach a collective unchecked, the test fails in a minute, not 30
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    got = {}

    def attempt(name, fn):
        try:
            fn()
            got[name] = None
        except RankMismatch as exc:
            got[name] = str(exc)

    try:
        small = dict(layers=2, heads=4, head_dim=8)
        ctx = contexts()[0]
        shape, settings = (1, 16, 9, 4, 4), SamplerSettings(timesteps=(1000,), seed=4, chunk_frames=3)
        df = lambda share: CacheSpec(dummy_forcing=DummyForcingConfig(dummy_heads=share, profile_sample_fraction=1.0))  # noqa: E731
        attempt("weights", lambda: HeadParallelRunner(make_tiny_wan(**small, seed=rank), dtype=torch.float64))
        attempt("heads", lambda: HeadParallelRunner(make_tiny_wan(layers=1, heads=1, head_dim=8), dtype=torch.float64))
        runner = HeadParallelRunner(make_tiny_wan(**small), dtype=torch.float64)
        run = lambda **kw: generate(runner, kw.get("ctx", ctx), kw.get("shape", shape), kw.get("settings", settings),  # noqa: E731
                                    kw.get("spec", df(0.5)))
        attempt("frames", lambda: run(shape=(1, 16, 9 + 3 * rank, 4, 4)))
        attempt("seed", lambda: run(settings=dataclasses.replace(settings, seed=rank)))
        attempt("prompt", lambda: run(ctx=ctx + rank))
        attempt("dummy heads", lambda: run(spec=df(0.25 if rank else 0.5)))
        attempt("same", lambda: run())
        torch.save(got, os.path.join(out_dir, f"mismatch{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_that_differ_all_stop_with_one_error_naming_what(tmp_path):
    mp.spawn(_mismatch_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"mismatch{r}.pt") for r in range(2))
    assert r0 == r1  # every rank raised the same error (or none)
    assert r0["same"] is None
    expected = {"weights": r"model weights \(rank 0: WanModel .*, rank 1: WanModel .*, different values\)",
                "heads": r"2 processes for 1 heads per layer: start at most 1 process",
                "frames": r"latent frames \(rank 0: 9, rank 1: 12\)",
                "seed": r"first pass input \(noise: seed, start latent\) \(rank 0: tensor \[1, 16, 3, 4, 4\] float64, "
                        r"rank 1: tensor \[1, 16, 3, 4, 4\] float64, different values\)",
                "prompt": r"the same prompt: text context",
                "dummy heads": r"the same Dummy Forcing head types: head types at the regroup"}
    for name, pattern in expected.items():
        msg = r0[name]
        assert msg is not None and "\n" not in msg, name
        assert re.search(pattern, msg), (name, msg)
        assert msg.startswith("head-parallel: ") and ("same command line" in msg or name == "heads"), msg


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@SLOW
def test_cli_ranks_started_with_different_settings(tmp_path):
    """Two processes of the command line started by hand with different --dummy-heads: both exit 1
    at once, one line on stderr (rank 0's), nothing written."""
    from helpers import ROOT
    port = _free_port()
    procs = []
    for rank, share in enumerate(("0.5", "0.25")):
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-m", "dummy_forcing_core.head_parallel_cli", "--frames", "9",
                                       "--dummy-heads", share, "--out", str(tmp_path / "x.safetensors")],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [1, 1]
    err0 = outs[0][1].strip().splitlines()
    assert err0 == ["error: head-parallel: the 2 processes do not run the same settings: --dummy-heads (rank 0: 0.5, "
                    "rank 1: 0.25). start every process with the same arguments"], outs[0][1]
    assert outs[1][1].strip() == ""
    assert not (tmp_path / "x.safetensors").exists()


def test_runtime_module_holds_no_command_line():
    """The runner's module imports no command line and no small-model code; head_parallel_cli does."""
    import ast
    from helpers import ROOT

    def imported(path):
        tree = ast.parse(open(os.path.join(ROOT, "dummy_forcing_core", path)).read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
        return names

    runtime, cli = imported("head_parallel.py"), imported("head_parallel_cli.py")
    assert not {n for n in runtime if n in ("argparse", "sys") or "tiny" in n}, runtime
    assert {"argparse", ".head_parallel", ".tiny.model"} <= cli


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


@SLOW
def test_torchrun_entry_point(tmp_path):
    """python -m torch.distributed.run --nproc_per_node 2 -m dummy_forcing_core.head_parallel_cli"""
    from safetensors.torch import load_file
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "latent.safetensors"
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "dummy_forcing_core.head_parallel_cli", "--frames", "9", "--out", str(out)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0: heads per layer" in r.stdout and "rank 1: heads per layer" in r.stdout
    lat = load_file(str(out))["latent"]
    assert lat.shape[2] == 9 and torch.isfinite(lat).all()
