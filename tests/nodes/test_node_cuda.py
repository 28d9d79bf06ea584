"""The nodes on a CUDA device (skipped without one): bf16 and fp16 weights (the core's fast path),
the result back on ComfyUI's intermediate device, previews from GPU tensors. (A manual cast
dtype needs ComfyUI's casting ops, which the stub's plain modules are not; see test_node_runs.)"""
from __future__ import annotations

import pytest
import torch

import comfy.model_management as mm
from node_helpers import ModelSnapshot, cond, pack_nodes, tiny_wan, video_latent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda(comfy_is_stub):
    if not comfy_is_stub:
        pytest.skip("sets the stub's torch device")
    mm.set_torch_device("cuda")
    yield torch.device("cuda")


@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float16])
def test_sampler_profile_and_stats_on_cuda(cuda, stub_model_patcher, run_node, progress_events, weights, comfy_dirs):
    N = pack_nodes()
    net = tiny_wan().to(weights)
    net.dtype = weights
    model = stub_model_patcher(net)
    assert model.load_device.type == "cuda"
    snap = ModelSnapshot(model)
    prof = run_node(N["ProfileHeads"], model=model, conditioning=cond(1) + cond(2), latent=video_latent(frames=4),
                    frames_per_chunk=1, save_name="cuda")[0]
    df = run_node(N["ApplyDummyForcing"], model=model, head_profile=prof)[0]
    out = run_node(N["ARVideoSampler"], model=df, positive=cond(), latent=video_latent(batch=2, frames=6),
                   frames_per_chunk=1)
    lat, stats = out[0], out[1]
    snap.assert_unchanged()
    x = lat["samples"]
    assert x.device == mm.intermediate_device() and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert next(net.parameters()).device.type == "cuda"  # loaded by model management
    assert stats.dummy_forcing["head_profile"] == "given"
    assert progress_events and progress_events[-1][2][0] == "JPEG"
    text, image = run_node(N["CacheStats"], stats=stats).args
    assert "KV cache at end" in text and image.shape[-1] == 3
