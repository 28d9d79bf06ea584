"""The pack's cache inside ComfyUI's own AR loop (SamplerCustomAdvanced + Sampler AR Video), on
the stub of ComfyUI 0.27, whose CausalWanModel and sample_ar_video are written independently
of the pack (tests/comfy_stub). The same checks run against a real ComfyUI 0.27 in
tests/real_comfyui/test_core_ar_path.py."""
from __future__ import annotations

import pytest
import torch

import comfy
import comfy.model_management as mm
import comfy.utils
from node_helpers import ModelSnapshot, cond, pack_nodes, tiny_causal_wan, tiny_wan

if not getattr(comfy, "IS_COMFY_STUB", False):
    pytest.skip("runs on the stub (a real ComfyUI: tests/real_comfyui)", allow_module_level=True)

from comfy.ldm.wan.ar_model import CausalWanModel  # noqa: E402
from comfy_extras import nodes_ar_video as ar  # noqa: E402
from comfy_extras import nodes_custom_sampler as cs  # noqa: E402

DF = dict(dummy_heads=0.5, ar_start=1)
CLOSE = 2e-4  # the stub's CausalWanModel computes in float64 internally, the pack in float32


@pytest.fixture
def N():
    return pack_nodes()


@pytest.fixture
def model(stub_model_patcher):
    return stub_model_patcher(tiny_causal_wan())


def core_run(run_node, model, frames=7, block=1, seed=3, steps=4, positive=None, latent=None):
    """SamplerCustomAdvanced(RandomNoise, CFGGuider cfg 1, Sampler AR Video, BasicScheduler simple)."""
    positive = positive or cond(1)
    noise = run_node(cs.RandomNoise, noise_seed=seed)[0]
    guider = run_node(cs.CFGGuider, model=model, positive=positive, negative=cond(2), cfg=1.0)[0]
    sampler = ar.SamplerARVideo.execute(num_frame_per_block=block)[0]  # a linked value skips the widget's min
    sigmas = run_node(cs.BasicScheduler, model=model, scheduler="simple", steps=steps, denoise=1.0)[0]
    latent = latent or {"samples": torch.zeros(1, 16, frames, 4, 4)}
    out = run_node(cs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                   latent_image=latent)[0]
    return out["samples"], sigmas, noise


def pack_run(run_node, N, model, sigmas, noise, frames=7, block=1, positive=None, **kw):
    args = dict(frames_per_chunk=block, sigmas=sigmas, noise=noise)
    args.update(kw)
    out = run_node(N["ARVideoSampler"], model=model, positive=positive or cond(1),
                   latent={"samples": torch.zeros(1, 16, frames, 4, 4)}, **args)
    return out[0]["samples"], out[1]


def rel(a, b):
    return float((a - b).norm() / b.norm())


def apply(run_node, N, model, **kw):
    return run_node(N["ApplyDummyForcing"], model=model, **{**DF, **kw})[0]


def policy(run_node, N, model, cache="full", sink=3, window=12):
    return run_node(N["ARCachePolicy"], model=model, cache=cache, sink_frames=sink, window_frames=window)[0]


@pytest.mark.parametrize("block", [1, 3])
def test_full_cache_through_the_pack_equals_cores_own_cache(run_node, N, model, block):
    plain, sigmas, noise = core_run(run_node, model, block=block)
    routed, _, _ = core_run(run_node, policy(run_node, N, model), block=block)
    assert rel(routed, plain) < CLOSE  # the pack's cache vs the stub's independent dense one
    ours, stats = pack_run(run_node, N, model, sigmas, noise, block=block)
    assert torch.equal(ours, routed)  # one seed, one video in both samplers
    assert stats.policy == "full"


@pytest.mark.parametrize("base", [dict(cache="full"), dict(cache="sink + window", sink=1, window=3)])
@pytest.mark.parametrize("block", [1, 3])
def test_dummy_forcing_in_cores_loop_equals_ar_video_sampler(run_node, N, model, base, block):
    frames = 12 if block == 3 else 7
    df = apply(run_node, N, policy(run_node, N, model, **base))
    snap = ModelSnapshot(df)
    got, sigmas, noise = core_run(run_node, df, frames=frames, block=block)
    snap.assert_unchanged()
    widgets = {"cache": base["cache"], "sink_frames": base.get("sink", 3), "window_frames": base.get("window", 12)}
    ours, stats = pack_run(run_node, N, apply(run_node, N, model), sigmas, noise, frames=frames, block=block,
                           **widgets)
    assert torch.equal(got, ours)
    plain, _, _ = core_run(run_node, model, frames=frames, block=block)
    switch = 2 * block  # chunks 0 and 1 (ar_start) run with the base cache
    if base["cache"] == "full":
        assert rel(got[:, :, :switch], plain[:, :, :switch]) < CLOSE  # before the switch: core's plain video
    assert rel(got[:, :, switch:], plain[:, :, switch:]) > 1e-3  # after it: Dummy Forcing's
    assert stats.switch_chunk == 2


def test_cores_dense_cache_is_not_allocated(run_node, N, model, monkeypatch):
    sizes = []
    real = CausalWanModel.init_kv_caches

    def spy(self, batch_size, max_seq_len, device, dtype):
        caches = real(self, batch_size, max_seq_len, device, dtype)
        sizes.append(sum(c["k"].numel() + c["v"].numel() for c in caches))
        return caches

    monkeypatch.setattr(CausalWanModel, "init_kv_caches", spy)
    core_run(run_node, model)
    assert sizes and sizes[0] == 2 * 2 * 7 * 4 * 4 * 16  # K, V x layers x frames x tokens x heads x dim
    sizes.clear()
    core_run(run_node, apply(run_node, N, model))
    assert sizes == []  # the pack's object patch answered instead


def test_two_runs_equal_two_fresh_runs_and_cancel_leaves_nothing(run_node, N, model, stub_model_patcher):
    df = apply(run_node, N, model)
    first, _, _ = core_run(run_node, df, seed=5)

    def hook(value, total, preview, node_id=None):
        mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(N["ARVideoSampler"], model=df, positive=cond(1), latent={"samples": torch.zeros(1, 16, 7, 4, 4)},
                 frames_per_chunk=1)
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)
    again, _, _ = core_run(run_node, df, seed=5)
    assert torch.equal(first, again)
    assert "dummy_forcing_session" not in df.model_options["transformer_options"]
    mm.unload_all_models()
    fresh = apply(run_node, N, stub_model_patcher(tiny_causal_wan()))
    assert torch.equal(core_run(run_node, fresh, seed=5)[0], first)


def test_an_error_in_cores_loop_ends_the_video(run_node, N, model, monkeypatch):
    df = apply(run_node, N, model)
    calls = {"n": 0}
    real = CausalWanModel.forward_block

    def boom(self, *a, **k):
        raise AssertionError("the pack's session, not core's block forward, must serve")

    monkeypatch.setattr(CausalWanModel, "forward_block", boom)
    import dummy_forcing_core.chunk_runner as cr
    real_forward = cr.ChunkRunner.forward

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory (planted)")
        return real_forward(self, *a, **k)

    monkeypatch.setattr(cr.ChunkRunner, "forward", failing)
    with pytest.raises(RuntimeError, match="planted"):
        core_run(run_node, df)
    monkeypatch.setattr(cr.ChunkRunner, "forward", real_forward)
    monkeypatch.setattr(CausalWanModel, "forward_block", real)
    assert "dummy_forcing_session" not in df.model_options["transformer_options"]
    core_run(run_node, df)  # the next run is fine


def test_settings_that_do_not_fit_fail_before_any_pass_naming_the_node(run_node, N, model, monkeypatch):
    import dummy_forcing_core.chunk_runner as cr
    passes = []
    monkeypatch.setattr(cr.ChunkRunner, "forward", lambda self, *a, **k: passes.append(1))
    df = apply(run_node, N, model, ar_start=6)
    with pytest.raises(ValueError, match=r"^Apply Dummy Forcing: this video generates 7 chunk\(s\).*'ar_start' = 6") \
            as e:
        core_run(run_node, df)
    assert "Sampler AR Video" in str(e.value) and passes == []
    with pytest.raises(ValueError, match=r"^CFGGuider: 'cfg' is 3.0: .*set 'cfg' to 1.0 \(found while running Sampler AR Video\)$"):
        guider = run_node(cs.CFGGuider, model=apply(run_node, N, model), positive=cond(1), negative=cond(2), cfg=3.0)[0]
        run_node(cs.SamplerCustomAdvanced, noise=cs.Noise_RandomNoise(0), guider=guider,
                 sampler=run_node(ar.SamplerARVideo, num_frame_per_block=1)[0],
                 sigmas=torch.tensor([1.0, 0.5, 0.0]), latent_image={"samples": torch.zeros(1, 16, 7, 4, 4)})
    assert passes == []


def test_a_non_causal_model_gets_the_fixes_not_cores_error(run_node, N, stub_model_patcher, monkeypatch):
    """A plain (bidirectional) Wan checkpoint in core's AR loop: core would say the model lacks
    init_kv_caches; the pack says what to do: the causal_ar flag, the converter, AR Video Sampler."""
    import dummy_forcing_core.chunk_runner as cr
    passes = []
    monkeypatch.setattr(cr.ChunkRunner, "forward", lambda self, *a, **k: passes.append(1))
    plain = stub_model_patcher(tiny_wan())
    with pytest.raises(TypeError, match="init_kv_caches"):
        core_run(run_node, plain)  # without the pack: core's own error, untouched
    for df in (apply(run_node, N, plain), apply(run_node, N, policy(run_node, N, plain))):
        assert not df.object_patches  # no hooks on a model core's AR loop cannot run
        with pytest.raises(ValueError) as e:
            core_run(run_node, df)
        msg = str(e.value)
        assert msg.startswith("Sampler AR Video: the model (WanModel) is not a causal checkpoint")
        assert "'causal_ar' flag" in msg and "python -m dummy_forcing_core.convert" in msg
        assert "AR Video Sampler instead of SamplerCustomAdvanced" in msg and "init_kv_caches" not in msg
    assert passes == []


def test_an_image_latent_is_asked_to_be_a_video(run_node, N, model):
    """Empty Latent Image reaches core's loop as one latent frame (SamplerCustomAdvanced's
    fix_empty_latent_channels adds the frame axis): the error asks for a video latent, not a
    longer video."""
    image = {"samples": torch.zeros(1, 16, 1, 4, 4)}
    with pytest.raises(ValueError) as e:
        core_run(run_node, apply(run_node, N, model), latent=image)
    msg = str(e.value)
    assert msg.startswith("SamplerCustomAdvanced: the 'latent_image' input is an image latent (one latent frame")
    assert "EmptyARVideoLatent or EmptyHunyuanLatentVideo" in msg and "chunks" not in msg
    with pytest.raises(ValueError, match=r"^SamplerCustomAdvanced: the 'latent_image' input must be a video latent"):
        core_run(run_node, apply(run_node, N, model), latent={"samples": torch.zeros(1, 16, 4, 4)})
    core_run(run_node, policy(run_node, N, model), latent=image)  # no Dummy Forcing: one frame is core's image


def test_a_prompt_start_is_refused_in_cores_loop(run_node, N, model):
    """Core's loop has no prompt schedule: a prompt tagged to start at frame 3 is refused (it
    played from frame 0); a start of 0 is what core's loop does anyway."""
    df = apply(run_node, N, model)
    late = run_node(N["ARPromptStart"], conditioning=cond(1), start=3, unit="latent frames")[0]
    with pytest.raises(ValueError) as e:
        core_run(run_node, df, positive=late)
    msg = str(e.value)
    assert msg.startswith("CFGGuider: the positive prompt is tagged by AR Prompt Start to start at latent frame 3")
    assert "use AR Video Sampler" in msg and msg.endswith("(found while running Sampler AR Video)")
    at0 = run_node(N["ARPromptStart"], conditioning=cond(1), start=0, unit="latent frames")[0]
    assert torch.equal(core_run(run_node, df, positive=at0)[0], core_run(run_node, df)[0])


def test_base_cache_errors_name_ar_cache_policys_widgets(run_node, N, model):
    df = apply(run_node, N, policy(run_node, N, model, cache="sink + window", sink=0, window=1))
    with pytest.raises(ValueError) as e:
        core_run(run_node, df)
    msg = str(e.value)
    assert msg.startswith("Apply Dummy Forcing: at 'ar_start' = 1 the base cache")
    assert "set AR Cache Policy's 'cache' to 'full', raise AR Cache Policy's 'sink_frames' to 1 or AR Cache " \
           "Policy's 'window_frames' to 2" in msg and msg.endswith("(found while running Sampler AR Video)")
    core_run(run_node, apply(run_node, N, policy(run_node, N, model, cache="sink + window", sink=0, window=2)))


def test_nan_in_cores_loop_names_the_model_or_the_input(run_node, N, stub_model_patcher):
    net = tiny_causal_wan()
    with torch.no_grad():
        net.blocks[1].ffn[0].weight[0, 0] = float("nan")
    df = apply(run_node, N, stub_model_patcher(net))
    with pytest.raises(ValueError, match=r"^SamplerCustomAdvanced: the model produced NaN or infinite values in the "
                       r"attention Dummy Forcing profiled \(chunk 1\).*\(found while running Sampler AR Video\)$"):
        core_run(run_node, df)
    bad = cond(1)
    bad[0][0][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^CFGGuider: 'positive' holds NaN or infinite values"):
        core_run(run_node, apply(run_node, N, stub_model_patcher(tiny_causal_wan())), positive=bad)


def test_chunking_and_start_image_errors_name_cores_widgets(run_node, N, model):
    df = apply(run_node, N, model)
    with pytest.raises(ValueError, match=r"^Sampler AR Video: 'num_frame_per_block' must be >= 1, got 0"):
        core_run(run_node, df, block=0)
    i2v = df.clone()
    i2v.model_options["transformer_options"]["ar_config"] = {"initial_latent": torch.zeros(1, 16, 1, 4, 4)}
    with pytest.raises(ValueError, match=r"^SamplerCustomAdvanced: the 'latent_image' input has 1 latent frame\(s\) "
                       "and the ARVideoI2V start image fills 1"):
        core_run(run_node, i2v, latent={"samples": torch.zeros(1, 16, 1, 4, 4)})
    i2v.model_options["transformer_options"]["ar_config"] = {"initial_latent": torch.full((1, 16, 1, 4, 4), 
                                                                                           float("nan"))}
    with pytest.raises(ValueError, match=r"^ARVideoI2V: 'start_image' holds NaN"):
        core_run(run_node, i2v)


@pytest.mark.parametrize("outcome", ["finished", "cancelled", "failed", "refused"])
def test_transformer_options_hold_nothing_of_the_pack_afterwards(run_node, N, model, monkeypatch, outcome):
    """The run's transformer_options (what every model call and wrapper sees) lose the pack's
    session when the video ends, whichever way; the MODEL's own options are as they were."""
    import ComfyUI_Dummy_Forcing.nodes.core_ar_loop as loop
    df = apply(run_node, N, model, ar_start=6 if outcome == "refused" else 1)
    snap = ModelSnapshot(df)
    seen = []
    real = loop.CoreARHooks._open

    def spy(self, sampler, guider, sigmas, to, shape):  # the run's transformer_options as the pack gets them
        seen.append((to, set(to)))
        return real(self, sampler, guider, sigmas, to, shape)

    monkeypatch.setattr(loop.CoreARHooks, "_open", spy)
    in_run = []
    real_predict = loop.VideoSession.predict

    def predict(self, *a, **k):
        in_run.append(1)
        if outcome == "cancelled" and len(in_run) == 3:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        if outcome == "failed" and len(in_run) == 3:
            raise RuntimeError("out of memory (planted)")
        return real_predict(self, *a, **k)

    monkeypatch.setattr(loop.VideoSession, "predict", predict)
    raised = {"finished": None, "cancelled": mm.InterruptProcessingException, "failed": RuntimeError,
              "refused": ValueError}[outcome]
    if raised is None:
        core_run(run_node, df)
    else:
        with pytest.raises(raised):
            core_run(run_node, df)
    (to, keys_before), = seen
    assert set(to) == keys_before and loop.SESSION_KEY not in to
    assert not any(isinstance(v, (loop._CoreLoopDriver, loop.VideoSession)) for v in to.values())
    snap.assert_unchanged()
    assert (outcome == "refused") == (in_run == [])
class _VAE:
    """Stands in for a Wan VAE: 8x8 pixel blocks -> 16 channels, one latent frame per image."""

    def encode(self, pixels):
        x = pixels.movedim(-1, 1)  # [1, 3, H, W]
        lat = torch.nn.functional.avg_pool2d(x, 8).repeat(1, 6, 1, 1)[:, :16]
        return lat[:, :, None] * 2 - 1


@pytest.mark.parametrize("with_df", [False, True])
def test_start_image_i2v_in_both_samplers(run_node, N, model, with_df):
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    base = apply(run_node, N, model) if with_df else policy(run_node, N, model)
    i2v, latent = run_node(ar.ARVideoI2V, model=base, vae=_VAE(), start_image=image, width=32, height=32, length=25,
                           batch_size=1).args
    got, sigmas, noise = core_run(run_node, i2v, latent=latent)
    ours, stats = pack_run(run_node, N, i2v, sigmas, noise, frames=7)
    assert torch.equal(got, ours)
    start = _VAE().encode(image)
    assert torch.allclose(ours[:, :, :1], start, atol=1e-5)  # the start image is the first frame
    assert len(stats.chunk_seconds) == 6  # one given frame, six generated
    if not with_df:
        plain_i2v = run_node(ar.ARVideoI2V, model=model, vae=_VAE(), start_image=image, width=32, height=32,
                             length=25, batch_size=1)[0]
        plain, _, _ = core_run(run_node, plain_i2v, latent=latent)
        assert rel(got, plain) < CLOSE
        without, _ = pack_run(run_node, N, model, sigmas, noise, frames=7)
        assert rel(without[:, :, 1:], ours[:, :, 1:]) > 1e-3  # the start image changed the video


def test_cache_stats_of_a_core_run(run_node, N, model):
    df = apply(run_node, N, model)
    out, _, _ = core_run(run_node, df)
    text = run_node(N["CacheStats"], model=df, latent={"samples": out})[0]
    assert "loop: ComfyUI Sampler AR Video" in text and "per-head cache from chunk 2" in text
    with pytest.raises(ValueError, match=r"^Cache Stats: the 'latent' input \[1, 16, 5, 4, 4\] is not the last video"):
        run_node(N["CacheStats"], model=df, latent={"samples": torch.zeros(1, 16, 5, 4, 4)})
    with pytest.raises(ValueError, match=r"^Cache Stats: this MODEL has made no video"):
        run_node(N["CacheStats"], model=apply(run_node, N, model, dummy_heads=0.25))
