"""ComfyUI's dynamic VRAM (0.27's default on NVIDIA) streams the weights layer by layer; the pack
runs such a MODEL through ComfyUI's non-dynamic delegate when the fused forward could read the
weights and they fit, and keeps the user's MODEL as it was."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

import comfy.model_management as mm
import comfy.model_patcher
from node_helpers import ModelSnapshot, cond, load_pack, tiny_wan, video_latent

ARGS = dict(frames_per_chunk=2, seed=3)


@pytest.fixture
def loading(comfy_is_stub, monkeypatch):
    if not comfy_is_stub:
        pytest.skip("the stub's ModelPatcherDynamic plants dynamic VRAM on the CPU")
    load_pack()
    mod = sys.modules["ComfyUI_Dummy_Forcing.nodes.model_loading"]
    monkeypatch.setattr(mod, "_SAID", set())
    used = []
    real = mod.make_runner

    def spy(model, *args):
        used.append(model)
        return real(model, *args)

    monkeypatch.setattr(mod, "make_runner", spy)
    mod.used = used
    return mod


@pytest.fixture
def dynamic_model(stub_model_patcher):
    """A MODEL as UNETLoader makes it under dynamic VRAM; ``loads`` records each (re)load of
    the checkpoint (True: without dynamic VRAM)."""
    loads = []

    def load_diffusion_model(seed, disable_dynamic=False):
        loads.append(disable_dynamic)
        plain = stub_model_patcher(tiny_wan(seed))
        cls = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.ModelPatcherDynamic
        p = cls(plain.model, plain.load_device, plain.offload_device)
        p.cached_patcher_init = (load_diffusion_model, (seed,))
        return p

    m = load_diffusion_model(0)
    m.loads = loads
    return m


def sample(run_node, N, model):
    return run_node(N["ARVideoSampler"], model=model, positive=cond(1), latent=video_latent(), **ARGS)[0]["samples"]


def test_streamed_model_runs_through_a_reused_non_dynamic_delegate(run_node, N, loading, dynamic_model,
                                                                    stub_model_patcher, monkeypatch):
    monkeypatch.setattr(loading, "_fused_forward_possible", lambda model: True)
    snap = ModelSnapshot(dynamic_model)
    out = sample(run_node, N, dynamic_model)
    ran = loading.used[-1]
    assert not ran.is_dynamic() and ran.model is not dynamic_model.model  # a second model, not streamed
    assert dynamic_model.loads == [False, True]  # the checkpoint reloaded once, without dynamic VRAM
    assert torch.equal(out, sample(run_node, N, stub_model_patcher(tiny_wan(0))))  # same weights, same video
    again = sample(run_node, N, dynamic_model)
    assert torch.equal(again, out) and dynamic_model.loads == [False, True]  # the delegate's model is kept
    assert loading.used[-1].model is ran.model
    snap.assert_unchanged()
    assert dynamic_model.is_dynamic() and dynamic_model.non_dynamic_delegate_model is None


def test_apply_dummy_forcing_returns_a_delegate_for_both_samplers(run_node, N, loading, dynamic_model, monkeypatch):
    monkeypatch.setattr(loading, "_fused_forward_possible", lambda model: True)
    snap = ModelSnapshot(dynamic_model)
    m = run_node(N["ApplyDummyForcing"], model=dynamic_model)[0]
    assert not m.is_dynamic() and m.model is not dynamic_model.model
    assert "dummy_forcing" in m.model_options["transformer_options"]
    stats = run_node(N["ARVideoSampler"], model=m, positive=cond(1), latent=video_latent(), **ARGS)[1]
    assert stats.dummy_forcing is not None and loading.used[-1] is m  # no second delegate
    assert dynamic_model.loads == [False, True]
    snap.assert_unchanged()


def test_weights_too_big_keep_streaming_and_say_so(run_node, N, loading, dynamic_model, monkeypatch, caplog):
    monkeypatch.setattr(loading, "_fused_forward_possible", lambda model: True)
    monkeypatch.setattr(mm, "TOTAL_MEMORY", dynamic_model.model_size() + mm.minimum_inference_memory() - 1)
    with caplog.at_level(logging.WARNING, logger="dummy_forcing"):
        sample(run_node, N, dynamic_model)
        sample(run_node, N, dynamic_model)
    assert loading.used[-1] is dynamic_model and dynamic_model.loads == [False]
    said = [r.getMessage() for r in caplog.records if "do not fit" in r.getMessage()]
    assert len(said) == 1 and "reference loop" in said[0]  # once, with what to do


def test_no_delegate_where_the_fused_forward_cannot_run(run_node, N, loading, dynamic_model):
    sample(run_node, N, dynamic_model)  # on the CPU the reference loop runs anyway: nothing to gain
    assert loading.used[-1] is dynamic_model and dynamic_model.loads == [False]


def test_a_loader_without_a_reload_keeps_streaming(run_node, N, loading, dynamic_model, monkeypatch, caplog):
    monkeypatch.setattr(loading, "_fused_forward_possible", lambda model: True)
    dynamic_model.cached_patcher_init = None
    with caplog.at_level(logging.WARNING, logger="dummy_forcing"):
        sample(run_node, N, dynamic_model)
    assert loading.used[-1] is dynamic_model
    assert any("--disable-dynamic-vram" in r.getMessage() for r in caplog.records)
