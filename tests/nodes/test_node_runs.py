"""Each node runs on a tiny Wan model wrapped as a ComfyUI MODEL (stub), and gives what the core gives."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import comfy.model_management as mm
from node_helpers import ModelSnapshot, cond, tiny_wan, video_latent

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.stats import GenerationStats
from dummy_forcing_core.chunk_runner import ChunkRunner

FAST = dict(frames_per_chunk=1)  # 6 latent frames -> 6 chunks of 1 frame


def sample(run_node, N, model, positive=None, latent=None, **kw):
    args = dict(FAST)
    args.update(kw)
    out = run_node(N["ARVideoSampler"], model=model, positive=positive or cond(), latent=latent or video_latent(),
                   **args)
    return out[0], out[1]


def apply(run_node, N, model, **kw):
    return run_node(N["ApplyDummyForcing"], model=model, **kw)[0]


def core_reference(model, ctx, shape, settings, df=None, start=None, start_frames=0, base=None):
    """What the sampler must return: the core run on the same module, in VAE space."""
    fmt = model.model.latent_format
    runner = ChunkRunner(model.model.diffusion_model)
    st = fmt.process_in(start) if start is not None else None
    res = generate(runner, ctx, shape, settings, CacheSpec(base, df), start_latent=st, start_frames=start_frames)
    return fmt.process_out(res.latent), res.stats


# ------------------------------------------------------------------------------------ sampler
def test_sampler_without_dummy_forcing_matches_core(run_node, N, model, progress_events):
    snap = ModelSnapshot(model)
    positive = cond(3)
    lat, stats = sample(run_node, N, model, positive=positive, seed=7)
    snap.assert_unchanged()
    x = lat["samples"]
    assert x.shape == (1, 16, 6, 4, 4) and x.dtype == torch.float32
    assert x.device == mm.intermediate_device()
    ref, _ = core_reference(model, positive[0][0], (1, 16, 6, 4, 4),
                            SamplerSettings(chunk_frames=1, timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0,
                                            seed=7))
    assert torch.equal(x, ref.float())  # VAE space: process_out applied exactly once
    assert isinstance(stats, GenerationStats)
    assert stats.dummy_forcing is None and stats.policy == "full"
    assert len(stats.chunk_seconds) == 6
    # one progress update per denoising step, with a cheap latent preview
    assert [e[0] for e in progress_events] == list(range(1, 25)) and {e[1] for e in progress_events} == {24}
    fmt, img, size = progress_events[-1][2]
    assert fmt == "JPEG" and img.size == (4, 4) and size == 512
    if hasattr(mm, "load_calls"):  # the stub records loads
        assert mm.load_calls and mm.load_calls[-1] == [model]  # loaded through model management


def test_sampler_with_dummy_forcing_online_profiling(run_node, N, model):
    snap = ModelSnapshot(model)
    df_model = apply(run_node, N, model, dummy_heads=0.5, ar_start=1)
    snap.assert_unchanged()
    assert df_model is not model and df_model.model is model.model
    spec = df_model.model_options["transformer_options"]["dummy_forcing"]
    cfg = spec.dummy_forcing
    assert isinstance(spec, CacheSpec) and spec.base is None
    assert isinstance(cfg, DummyForcingConfig) and cfg.dummy_heads == 0.5 and cfg.head_profile is None
    assert "dummy_forcing" not in model.model_options["transformer_options"]
    df_snap = ModelSnapshot(df_model)
    positive = cond(1)
    lat, stats = sample(run_node, N, df_model, positive=positive, seed=3)
    df_snap.assert_unchanged()
    assert stats.dummy_forcing["head_profile"] == "online" and stats.switch_chunk == 2
    assert sum(c[2] for c in stats.type_counts()) == 4  # half of the 8 heads are dummy
    assert stats.kv_bytes < stats.kv_full_bytes
    ref, _ = core_reference(model, positive[0][0], (1, 16, 6, 4, 4),
                            SamplerSettings(chunk_frames=1, shift=5.0, seed=3), df=cfg)
    assert torch.equal(lat["samples"], ref.float())
    plain, _ = sample(run_node, N, model, positive=positive, seed=3)
    assert not torch.equal(plain["samples"], lat["samples"])  # Dummy Forcing changed the attention


def test_apply_count_scope_and_options(run_node, N, model):
    m = apply(run_node, N, model, dummy_head_count=3, dummy_heads=0.9, scope="per_layer", normalised_cost=True,
              ar_start=2, neighbor_chunks=2, sink_frames=2, context_packing=False, profile_sample_fraction=0.5,
              profile_seed=9, long_context_frames=4)
    cfg = m.model_options["transformer_options"]["dummy_forcing"].dummy_forcing
    assert cfg == DummyForcingConfig(dummy_heads=0.9, dummy_head_count=3, scope="per_layer", normalised_cost=True,
                                     ar_start=2, neighbor_chunks=2, sink_frames=2, context_packing=False,
                                     profile_sample_fraction=0.5, profile_seed=9, long_context_frames=4)
    # a FLOAT widget sent as a JSON integer (e.g. 1) stays a fraction, not a head count
    cfg1 = apply(run_node, N, model, dummy_heads=1).model_options["transformer_options"]["dummy_forcing"].dummy_forcing
    assert cfg1.dummy_heads == 1.0 and isinstance(cfg1.dummy_heads, float) and cfg1.dummy_head_count == 0
    _, stats = sample(run_node, N, m, latent=video_latent(frames=8))
    assert sum(c[2] for c in stats.type_counts()) == 3


def test_apply_preset_sets_what_it_defines(run_node, N, model):
    widgets = dict(dummy_head_count=3, dummy_heads=0.9, scope="per_layer", normalised_cost=False, ar_start=1,
                   neighbor_chunks=2, sink_frames=2, context_packing=False, profile_sample_fraction=0.5,
                   profile_seed=9, long_context_frames=0, neighbor_skips_sink=False, profile_sink_frames=1)
    cfg_of = lambda m: m.model_options["transformer_options"]["dummy_forcing"].dummy_forcing  # noqa: E731
    custom = cfg_of(apply(run_node, N, model, preset="custom", **widgets))
    assert custom == DummyForcingConfig(**widgets)  # 'custom': the widgets as set
    m = apply(run_node, N, model, preset="LongLive", **widgets)
    cfg = cfg_of(m)
    assert cfg == DummyForcingConfig(**widgets).with_preset("LongLive")
    assert (cfg.ar_start, cfg.neighbor_chunks, cfg.sink_frames, cfg.dummy_heads, cfg.dummy_head_count) == (2, 1, 1, 0.5, 0)
    assert cfg.normalised_cost and cfg.warmup_cache == "sink + L chunks" and cfg.profile_sink_frames == 3
    assert (cfg.profile_sample_fraction, cfg.profile_seed) == (0.5, 9)  # not a preset's: as set
    _, stats = sample(run_node, N, m)  # 6 chunks of 1 frame: profiled at chunk 2, per-head from 3
    assert stats.switch_chunk == 3 and sum(c[2] for c in stats.type_counts()) == 4
    with pytest.raises(Exception, match="preset"):  # ComfyUI's combo check, or ours
        apply(run_node, N, model, preset="Wan 2.2")


def test_apply_on_a_model_without_transformer_options(run_node, N, model):
    model.model_options = {}
    snap = ModelSnapshot(model)
    m = apply(run_node, N, model)
    snap.assert_unchanged()
    assert model.model_options == {}
    assert "dummy_forcing" in m.model_options["transformer_options"]


def test_sampler_batch_two_and_per_video_prompts(run_node, N, model):
    snap = ModelSnapshot(model)
    lat, stats = sample(run_node, N, model, latent=video_latent(batch=2), seed=5)
    assert lat["samples"].shape == (2, 16, 6, 4, 4)
    assert not torch.equal(lat["samples"][0], lat["samples"][1])
    two = cond(2, batch=2)
    lat2, _ = sample(run_node, N, apply(run_node, N, model), positive=two, latent=video_latent(batch=2), seed=5)
    assert lat2["samples"].shape == (2, 16, 6, 4, 4)
    snap.assert_unchanged()


def test_sampler_start_frames_are_kept(run_node, N, model):
    given = video_latent(frames=6, fill="randn", seed=4)
    lat, stats = sample(run_node, N, model, latent=given, start_frames=2)
    x = lat["samples"]
    assert torch.allclose(x[:, :, :2], given["samples"][:, :, :2], atol=1e-5)  # copied through process_in/out
    assert not torch.allclose(x[:, :, 2:], given["samples"][:, :, 2:], atol=1e-2)
    assert len(stats.chunk_seconds) == 4
    ref, _ = core_reference(model, cond()[0][0], (1, 16, 6, 4, 4), SamplerSettings(chunk_frames=1),
                            start=given["samples"], start_frames=2)
    assert torch.equal(x, ref.float())


def test_sampler_sink_window_cache_and_steps(run_node, N, model, progress_events):
    lat, stats = sample(run_node, N, model, cache="sink + window", sink_frames=1, window_frames=2,
                        denoise_timesteps="", steps=2, latent=video_latent(frames=7))
    assert stats.policy == "sink 1 + window 2"
    assert len(progress_events) == 7 * 2  # empty denoise_timesteps -> 'steps' steps per chunk
    ref, _ = core_reference(model, cond()[0][0], (1, 16, 7, 4, 4),
                            SamplerSettings(chunk_frames=1, timesteps=None, steps=2), base=Retention(1, 2))
    assert torch.equal(lat["samples"], ref.float())
    # sink_frames / window_frames are ignored with the full cache
    a, _ = sample(run_node, N, model, sink_frames=1, window_frames=1)
    b, _ = sample(run_node, N, model, sink_frames=5, window_frames=7)
    assert torch.equal(a["samples"], b["samples"])


def test_sampler_keeps_other_latent_keys(run_node, N, model):
    latent = video_latent()
    latent["batch_index"] = [0]
    lat, _ = sample(run_node, N, model, latent=latent)
    assert lat["batch_index"] == [0] and lat is not latent and latent["samples"].abs().sum() == 0


def test_two_runs_on_one_model_equal_two_fresh_runs(run_node, N, stub_model_patcher):
    """No state leaks: settings A then B on one loaded model == A and B each on a fresh model."""
    A = dict(seed=1, frames_per_chunk=1, cache="full")
    B = dict(seed=2, frames_per_chunk=2, cache="sink + window", sink_frames=1, window_frames=2, shift=3.0,
             denoise_timesteps="1000,500")
    shared = stub_model_patcher(tiny_wan())
    df_shared = apply(run_node, N, shared, dummy_heads=0.25)
    runs = [sample(run_node, N, df_shared, **A), sample(run_node, N, shared, **B),
            sample(run_node, N, df_shared, **B), sample(run_node, N, shared, **A)]
    fresh = []
    for m_df, kw in ((True, A), (False, B), (True, B), (False, A)):
        mm.unload_all_models()
        m = stub_model_patcher(tiny_wan())
        if m_df:
            m = apply(run_node, N, m, dummy_heads=0.25)
        fresh.append(sample(run_node, N, m, **kw))
    for (lat, st), (lat_f, st_f) in zip(runs, fresh):
        assert torch.equal(lat["samples"], lat_f["samples"])
        assert st.head_types == st_f.head_types and st.kv_bytes_layers == st_f.kv_bytes_layers


# ------------------------------------------------------------------------------------ profiles
def test_profile_save_load_apply_without_online_profiling(run_node, N, model, comfy_dirs):
    snap = ModelSnapshot(model)
    two_prompts = cond(1) + cond(2)
    out = run_node(N["ProfileHeads"], model=model, conditioning=two_prompts, latent=video_latent(frames=4),
                   frames_per_chunk=1, runs_per_prompt=2, ar_start=1, chunks_to_profile=2, save_name="tiny")
    snap.assert_unchanged()
    profile, image = out[0], out[1]
    assert isinstance(profile, HeadProfile) and profile.scores.shape == (2, 4, 3)
    assert profile.settings["prompts"] == 2 and profile.settings["seeds"] == [0, 1] and profile.settings["runs"] == 4
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    saved = os.path.join(comfy_dirs.output, "dummy_forcing", "profiles", "tiny.safetensors")
    assert os.path.isfile(saved)
    ui = out.ui
    assert ui["text"][0].startswith(f"saved to {saved}") and "head profile: 2 layers x 4 heads" in ui["text"][0]
    assert ui["images"] and ui["images"][0]["type"] == "temp"

    # saving again never overwrites: a counter suffix is added
    run_node(N["ProfileHeads"], model=model, conditioning=cond(1), latent=video_latent(frames=3),
             frames_per_chunk=1, save_name="tiny.safetensors")
    assert os.path.isfile(saved.replace("tiny.", "tiny_2."))
    assert torch.equal(HeadProfile.load(saved).scores, profile.scores)

    names = N["LoadHeadProfile"].GET_SCHEMA().inputs[0].options
    assert "tiny.safetensors" in names and "tiny_2.safetensors" in names
    loaded = run_node(N["LoadHeadProfile"], profile_name="tiny.safetensors")[0]
    assert torch.equal(loaded.scores, profile.scores) and loaded.fingerprint == profile.fingerprint

    m = run_node(N["ApplyDummyForcing"], model=model, head_profile=loaded, dummy_heads=0.5)[0]
    snap.assert_unchanged()
    lat, stats = sample(run_node, N, m, seed=4)
    assert stats.dummy_forcing["head_profile"] == "given"
    assert stats.profile_seconds == 0.0  # no online profiling ran
    assert stats.head_scores == profile.scores.tolist()
    assert torch.equal(torch.tensor(stats.head_types), profile.assign(0.5))
    # the in-memory profile from Profile Heads gives the same video as the loaded file
    m2 = run_node(N["ApplyDummyForcing"], model=model, head_profile=profile, dummy_heads=0.5)[0]
    lat2, _ = sample(run_node, N, m2, seed=4)
    assert torch.equal(lat["samples"], lat2["samples"])


def test_load_head_profile_from_models_folder(run_node, N, model, comfy_dirs):
    import folder_paths
    from dummy_forcing_core.geometry import ModelGeometry
    geom = ModelGeometry.of(model.model.diffusion_model)
    scores = torch.rand(2, 4, 3)
    prof = HeadProfile(scores / scores.sum(-1, keepdim=True), geom.fingerprint(), {"made": "by hand"})
    folder = os.path.join(folder_paths.models_dir, "dummy_forcing_profiles", "sub")
    os.makedirs(folder)
    prof.save(os.path.join(folder, "hand.safetensors"))
    open(os.path.join(folder, "notes.txt"), "w").write("not listed")
    names = N["LoadHeadProfile"].GET_SCHEMA().inputs[0].options
    assert "sub/hand.safetensors" in names and not any(n.endswith(".txt") for n in names)
    got = run_node(N["LoadHeadProfile"], profile_name="sub/hand.safetensors")[0]
    assert torch.equal(got.scores, prof.scores)
    fp1 = N["LoadHeadProfile"].fingerprint_inputs(profile_name="sub/hand.safetensors")
    os.utime(os.path.join(folder, "hand.safetensors"), ns=(1, 1))
    assert N["LoadHeadProfile"].fingerprint_inputs(profile_name="sub/hand.safetensors") != fp1


def test_profile_without_saving_writes_nothing(run_node, N, model, comfy_dirs):
    out = run_node(N["ProfileHeads"], model=model, conditioning=cond(), latent=video_latent(frames=3),
                   frames_per_chunk=1, denoise_timesteps="1000")
    assert not os.path.exists(os.path.join(comfy_dirs.output, "dummy_forcing"))
    assert "saved to" not in out.ui["text"][0]


# ------------------------------------------------------------------------------------ stats
def test_cache_stats_text_and_plots(run_node, N, model):
    _, stats = sample(run_node, N, apply(run_node, N, model), latent=video_latent(frames=5))
    out = run_node(N["CacheStats"], stats=stats)
    text, image = out[0], out[1]
    assert text == stats.to_text() and "dummy forcing: dummy heads 0.5" in text
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 300 and image.shape[2] >= 600
    ui = out.ui
    assert ui["text"] == (text,)
    assert len(ui["images"]) == 1 and ui["images"][0]["filename"].endswith(".png")
    # an output node: ComfyUI runs it and shows its ui
    assert N["CacheStats"].GET_SCHEMA().is_output_node

    _, plain = sample(run_node, N, model)
    out2 = run_node(N["CacheStats"], stats=plain)
    assert "dummy forcing: off" in out2[0]
    assert not np.array_equal(out2[1].numpy().shape, image.numpy().shape) or not torch.equal(out2[1], image)


def test_sampler_asks_model_management_for_room(run_node, N, model, monkeypatch):
    """load_models_gpu gets the KV cache (plus a chunk's activations) as memory_required, so
    ComfyUI can offload other models first."""
    calls = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
            force_full_load=False):
        calls.append((list(models), memory_required, minimum_memory_required))
        return real(models, memory_required=memory_required, minimum_memory_required=minimum_memory_required)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    sample(run_node, N, model, latent=video_latent(batch=2, frames=6))
    (models, need, minimum), = calls
    # full cache: 2 (K, V) x 2 layers x batch 2 x 4 heads x 16 dims x (5 past + 1 chunk) frames x 4 tokens x 4 bytes
    kv = 2 * 2 * 2 * 4 * 16 * 6 * 4 * 4
    assert models == [model] and need >= kv and minimum == need
    calls.clear()
    sample(run_node, N, model, latent=video_latent(batch=2, frames=6), cache="sink + window", sink_frames=1,
           window_frames=1)
    assert kv / 3 <= calls[0][1] - (need - kv) < kv  # sink 1 + window 1 + 1 chunk = 3 frames instead of 6


def test_compute_dtype_follows_comfyui(stub_model_patcher):
    """manual_cast_dtype (set by ComfyUI for fp8 / low-precision storage) wins over the weights'
    dtype; storage-only dtypes never become the compute dtype."""
    import sys
    from node_helpers import load_pack
    load_pack()
    glue = sys.modules["ComfyUI_Dummy_Forcing.nodes.model_loading"]
    assert glue.compute_dtype(stub_model_patcher(tiny_wan())) == torch.float32
    assert glue.compute_dtype(stub_model_patcher(tiny_wan(), manual_cast_dtype=torch.bfloat16)) == torch.bfloat16
    net = tiny_wan().to(torch.float8_e4m3fn)
    net.dtype = torch.float8_e4m3fn
    assert glue.compute_dtype(stub_model_patcher(net)) == torch.float32  # on the CPU; bf16 on CUDA


def test_fp8_fast_weight_dtype_asks_for_fp8_products(stub_model_patcher):
    import sys
    from node_helpers import load_pack
    load_pack()
    fp8_fast = sys.modules["ComfyUI_Dummy_Forcing.nodes.model_loading"].fp8_fast
    m = stub_model_patcher(tiny_wan(), shift=5.0)
    assert not fp8_fast(m)
    m.model_options["fp8_optimizations"] = True  # UNETLoader weight_dtype fp8_e4m3fn_fast
    assert fp8_fast(m)
    m2 = stub_model_patcher(tiny_wan(), shift=5.0)
    m2.model.model_config.optimizations["fp8"] = True
    assert fp8_fast(m2)


def test_both_samplers_get_fp8_products_from_one_place(stub_model_patcher, monkeypatch):
    """model_loading.make_runner (AR Video Sampler and core's Sampler AR Video alike) turns
    weight_dtype fp8_e4m3fn_fast into the fused forward's fp8 products where it can run."""
    import sys
    from node_helpers import load_pack
    load_pack()
    ml = sys.modules["ComfyUI_Dummy_Forcing.nodes.model_loading"]
    core_loop = sys.modules["ComfyUI_Dummy_Forcing.nodes.core_ar_loop"]
    assert core_loop.model_loading is ml  # core's loop builds its runner here too
    m = stub_model_patcher(tiny_wan(), shift=5.0)
    m.model_options["fp8_optimizations"] = True
    assert ml.make_runner(m).fast_path is None  # on the CPU: the reference loop, as auto says
    monkeypatch.setattr(ml, "_fused_forward_possible", lambda model: True)
    r = ml.make_runner(m)
    assert r.fast_path is not None and r.fast_path.opts.fp8_matmul
    m.model_options["fp8_optimizations"] = False
    r = ml.make_runner(m)  # no fp8 ask: the fused forward (where it can run) without fp8 products
    assert r.fast_path is not None and not r.fast_path.opts.fp8_matmul
