"""The warm start at the node level (issue 23): AR Video Sampler's ``warm_start`` and ComfyUI's own
AR loop keep one warm runner (``nodes/model_loading.py``'s slot) between runs of one model; runs
on it equal cold runs; a cancel, an error, ComfyUI unloading the model, ``warm_start`` off and
``DUMMY_FORCING_WARM_START=0`` leave nothing kept; the user's own patcher gets no callback."""
from __future__ import annotations

import gc
import sys

import pytest
import torch

import comfy
import comfy.model_management as mm
import comfy.utils
from node_helpers import ModelSnapshot, cond, load_pack, pack_nodes, tiny_causal_wan, tiny_wan

DF = dict(dummy_heads=0.5, ar_start=1)
EMPTY = {"kv": 0, "text": 0, "graphs": 0, "weights": 0, "total": 0}


@pytest.fixture
def ml():
    load_pack()
    mod = sys.modules["ComfyUI_Dummy_Forcing.nodes.model_loading"]
    mod.drop_warm()
    yield mod
    mod.drop_warm()


@pytest.fixture
def N():
    return pack_nodes()


def latent(frames=7):
    return {"samples": torch.zeros(1, 16, frames, 4, 4)}


def sample(run_node, N, model, seed=1, prompt=1, **kw):
    out = run_node(N["ARVideoSampler"], model=model, positive=cond(prompt), latent=latent(), frames_per_chunk=1,
                   seed=seed, **kw)
    return out[0]["samples"], out[1]


def test_runs_on_the_warm_runner_equal_cold_runs(run_node, N, ml, stub_model_patcher):
    model = stub_model_patcher(tiny_wan())
    df = run_node(N["ApplyDummyForcing"], model=model, **DF)[0]
    snap = ModelSnapshot(model)
    runs = [(1, 1), (2, 1), (2, 3)]  # a new seed, a new prompt
    cold = [sample(run_node, N, df, s, p, warm_start=False) for s, p in runs]
    assert ml.warm_bytes() == EMPTY
    runner, cache = None, None
    for (s, p), (want, want_stats) in zip(runs, cold):
        got, stats = sample(run_node, N, df, s, p)
        assert torch.equal(got, want)
        assert stats.head_types == want_stats.head_types and stats.kv_bytes == want_stats.kv_bytes
        assert ml._SLOT is not None and (runner is None or ml._SLOT.runner is runner), "the runner was not kept"
        runner = ml._SLOT.runner
        assert cache is None or runner._parked is cache
        cache = runner._parked
        held = ml.warm_bytes()
        assert held["kv"] == cache.reserved_bytes() > 0 and held["text"] > 0 and held["total"] >= held["kv"]
    snap.assert_unchanged()  # the user's patcher: no callback, nothing changed
    assert sample(run_node, N, df, 1, 1, warm_start=False)[0].equal(cold[0][0])
    assert ml._SLOT is None and ml.warm_bytes() == EMPTY  # warm_start off frees it


def test_cancel_and_error_drop_the_warm_state(run_node, N, ml, stub_model_patcher, monkeypatch):
    df = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan()), **DF)[0]
    want = sample(run_node, N, df, 4, warm_start=False)[0]
    sample(run_node, N, df, 3)
    runner = ml._SLOT.runner
    assert ml.warm_bytes()["total"] > 0

    calls = []

    def hook(value, total, preview, node_id=None):
        calls.append(value)
        if len(calls) == 9:  # in the middle of the video
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    with pytest.raises(mm.InterruptProcessingException):
        sample(run_node, N, df, 4)
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)
    assert ml._SLOT is None and ml.warm_bytes() == EMPTY
    assert runner.warm_bytes() == EMPTY and runner._parked is None  # the GPU memory it held, freed
    assert torch.equal(sample(run_node, N, df, 4)[0], want)

    from dummy_forcing_core.chunk_runner import ChunkRunner
    real, n = ChunkRunner.forward, []

    def failing(self, *a, **kw):
        n.append(1)
        if len(n) == 12:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(self, *a, **kw)

    monkeypatch.setattr(ChunkRunner, "forward", failing)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        sample(run_node, N, df, 4)
    monkeypatch.undo()
    assert ml._SLOT is None and ml.warm_bytes() == EMPTY


def test_unloading_the_model_frees_the_warm_state(run_node, N, ml, stub_model_patcher):
    """ComfyUI unloads (detaches) the pack's clone: its ON_DETACH callback empties the slot; a
    model no longer referenced anywhere empties it too (the finalizer on its BaseModel)."""
    df = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan()), **DF)[0]
    sample(run_node, N, df)
    assert ml.warm_bytes()["total"] > 0
    mm.unload_all_models()
    assert ml._SLOT is None
    sample(run_node, N, df)
    assert ml._SLOT is not None

    def run_and_forget():
        m = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan(seed=2)), **DF)[0]
        sample(run_node, N, m)
        return ml._SLOT.runner

    runner = run_and_forget()
    assert ml._SLOT is not None and ml._SLOT.runner is runner
    mm.reset_stub_state()  # the stub's model list held the patcher (the real one holds a weakref)
    gc.collect()
    assert ml._SLOT is None and runner.warm_bytes() == EMPTY


def test_another_model_or_changed_weights_rebuild(run_node, N, ml, stub_model_patcher):
    a = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan()), **DF)[0]
    b = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan(seed=5)), **DF)[0]
    sample(run_node, N, a)
    first = ml._SLOT.runner
    want_b = sample(run_node, N, b, warm_start=False)[0]
    assert ml._SLOT is None
    sample(run_node, N, a)
    assert torch.equal(sample(run_node, N, b)[0], want_b)
    assert ml._SLOT.runner is not first and first.warm_bytes() == EMPTY  # one slot: a's state freed
    kept = ml._SLOT.runner
    with torch.no_grad():
        b.model.diffusion_model.blocks[0].self_attn.q.weight.mul_(1.1)  # patched in place between runs
    got = sample(run_node, N, b)[0]
    assert ml._SLOT.runner is not kept and kept.warm_bytes() == EMPTY
    assert torch.equal(got, sample(run_node, N, b, warm_start=False)[0]) and not torch.equal(got, want_b)


def test_the_environment_switch_turns_it_off(run_node, N, ml, stub_model_patcher, monkeypatch):
    df = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_wan()), **DF)[0]
    monkeypatch.setenv("DUMMY_FORCING_WARM_START", "0")
    sample(run_node, N, df)
    assert ml._SLOT is None


@pytest.mark.skipif(not getattr(comfy, "IS_COMFY_STUB", False), reason="core's AR loop on the stub")
def test_cores_ar_loop_runs_warm(run_node, N, ml, stub_model_patcher):
    from comfy_extras import nodes_ar_video as ar
    from comfy_extras import nodes_custom_sampler as cs

    df = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(tiny_causal_wan()), **DF)[0]

    def core(seed, prompt):
        noise = run_node(cs.RandomNoise, noise_seed=seed)[0]
        guider = run_node(cs.CFGGuider, model=df, positive=cond(prompt), negative=cond(9), cfg=1.0)[0]
        sampler = ar.SamplerARVideo.execute(num_frame_per_block=1)[0]
        sigmas = run_node(cs.BasicScheduler, model=df, scheduler="simple", steps=3, denoise=1.0)[0]
        return run_node(cs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                        latent_image=latent())[0]["samples"]

    first = core(5, 1)
    runner, cache = ml._SLOT.runner, ml._SLOT.runner._parked
    assert cache is not None
    second = core(6, 2)
    assert ml._SLOT.runner is runner and runner._parked is cache
    ml.drop_warm()
    assert torch.equal(core(6, 2), second)  # on a fresh runner
    ml.drop_warm()
    assert torch.equal(core(5, 1), first)


def test_a_model_straight_from_the_loader_runs_cold(run_node, N, ml, stub_model_patcher):
    """No pack clone, so no unload callback may be put on the patcher: nothing is kept."""
    model = stub_model_patcher(tiny_wan())
    snap = ModelSnapshot(model)
    df = run_node(N["ApplyDummyForcing"], model=model, **DF)[0]
    sample(run_node, N, df)
    assert ml._SLOT is not None
    want = sample(run_node, N, model, warm_start=False)[0]
    got = sample(run_node, N, model)[0]
    assert ml._SLOT is None and ml.warm_bytes() == EMPTY and torch.equal(got, want)
    snap.assert_unchanged()
    assert not any(model.callbacks.values())
