"""Bad input through the nodes: a clear error naming the node and the input, and the input
MODEL unchanged afterwards (options deep-equal, weights checksum, patches)."""
from __future__ import annotations

import os
import re

import pytest
import torch

import comfy.model_management as mm
import comfy.utils
from node_helpers import ModelSnapshot, cond, tiny_wan, video_latent

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.geometry import ModelGeometry


class _NotWan(torch.nn.Module):
    """A diffusion model without Wan's structure (think SD's UNet)."""

    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.Conv2d(4, 8, 3)])
        self.dtype = torch.float32


@pytest.fixture
def df_model(run_node, N, model):
    return run_node(N["ApplyDummyForcing"], model=model)[0]


def fails(run_node, cls, match, snapshot_of=(), exc=ValueError, **inputs):
    snaps = [ModelSnapshot(m) for m in snapshot_of]
    with pytest.raises(exc, match=match) as ei:
        run_node(cls, **inputs)
    for s in snaps:
        s.assert_unchanged()
    return str(ei.value)


SAMPLER = dict(frames_per_chunk=1)


# ------------------------------------------------------------------------------------ MODEL
def test_non_wan_model(run_node, N, stub_model_patcher):
    bad = stub_model_patcher(_NotWan())
    for node, extra in (("ARVideoSampler", dict(positive=cond(), latent=video_latent(), **SAMPLER)),
                        ("ApplyDummyForcing", {}),
                        ("ProfileHeads", dict(conditioning=cond(), latent=video_latent(), frames_per_chunk=1))):
        msg = fails(run_node, N[node], "not a Wan2.1", [bad], model=bad, **extra)
        assert msg.startswith(N[node].GET_SCHEMA().display_name + ": the 'model' input")
        assert "Load a Wan2.1 diffusion model" in msg
    assert getattr(mm, "load_calls", []) == []  # rejected before anything was loaded (stub records loads)


def test_something_that_is_not_a_model(run_node, N):
    msg = fails(run_node, N["ApplyDummyForcing"], "not a ComfyUI diffusion model", model="a string")
    assert msg.startswith("Apply Dummy Forcing: the 'model' input")


# ------------------------------------------------------------------------------------ LATENT
def test_image_latent_instead_of_video(run_node, N, model, df_model):
    image = {"samples": torch.zeros(1, 16, 4, 4)}
    for m in (model, df_model):
        msg = fails(run_node, N["ARVideoSampler"], "image latent", [model, df_model], model=m, positive=cond(),
                    latent=image, **SAMPLER)
        assert msg.startswith("AR Video Sampler: the 'latent' input is an image latent [1, 16, 4, 4]")
        assert "EmptyHunyuanLatentVideo" in msg
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: the 'latent' input is an image latent", [model],
          model=model, conditioning=cond(), latent=image, frames_per_chunk=1)


def test_wrong_channels_and_sizes(run_node, N, model):
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'latent' input has 8 channels but the model takes 16",
          [model], model=model, positive=cond(), latent=video_latent(channels=8), **SAMPLER)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'latent' input height/width 5x4 must be divisible",
          [model], model=model, positive=cond(), latent=video_latent(h=5), **SAMPLER)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'start_frames' = 6 does not fit a 6-frame latent: use 0 to 5", [model],
          model=model, positive=cond(), latent=video_latent(), start_frames=6, **SAMPLER)


# ------------------------------------------------------------------------------------ CONDITIONING
def test_bad_conditioning(run_node, N, model):
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'positive' conditioning has batch 3 but the latent "
          "has batch 2", [model], model=model, positive=cond(batch=3), latent=video_latent(batch=2), **SAMPLER)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'positive' conditioning has 768-dim tokens but the "
          r"model's text embedding takes 32", [model], model=model, positive=cond(dim=768), latent=video_latent(),
          **SAMPLER)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'positive' input is empty", [model], model=model,
          positive=[], latent=video_latent(), **SAMPLER)
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: the 'conditioning' conditioning has batch 2", [model],
          model=model, conditioning=cond(1) + cond(2, batch=2), latent=video_latent(), frames_per_chunk=1)


# ------------------------------------------------------------------------------------ settings
def test_bad_denoise_list(run_node, N, model):
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'denoise_timesteps' must be a comma-separated list",
          [model], model=model, positive=cond(), latent=video_latent(), denoise_timesteps="1000, fast", **SAMPLER)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'denoise_timesteps' values must be in \(0, 1000\]",
          [model], model=model, positive=cond(), latent=video_latent(), denoise_timesteps="1000,0", **SAMPLER)


def test_ar_start_beyond_the_video(run_node, N, model):
    m = run_node(N["ApplyDummyForcing"], model=model, ar_start=5)[0]
    # the error names the node and widget the setting is on, and says what would fix it
    msg = fails(run_node, N["ARVideoSampler"], r"^Apply Dummy Forcing: this video generates 6 chunk\(s\)", [model, m],
                model=m, positive=cond(), latent=video_latent(frames=6), **SAMPLER)
    assert "'ar_start' = 5" in msg and "needs at least 7 chunks: 7 latent frames (length 25 video frames)" in msg
    assert "Lower 'ar_start' or make the video longer" in msg and msg.endswith("(found while running AR Video Sampler)")
    assert "<= -1" not in msg and "<= 4" not in msg


def test_sink_frames_beyond_the_base_cache(run_node, N, model):
    m = run_node(N["ApplyDummyForcing"], model=model, sink_frames=1)[0]
    fails(run_node, N["ARVideoSampler"], r"^Apply Dummy Forcing: at 'ar_start' = 1 the base cache \(last 1 frame\) no "
          r"longer holds frames \[0\] that sink heads keep \('sink_frames'\)",
          [model, m], model=m, positive=cond(), latent=video_latent(frames=6), frames_per_chunk=1,
          cache="sink + window", sink_frames=0, window_frames=1)


def _base_cache_fixes(msg: str, node: str) -> tuple[int, int]:
    """The base sink / window an error proposes, read from the widget names it gives."""
    m = re.search(rf"raise {node}'s 'sink_frames' to (\d+) or {node}'s 'window_frames' to (\d+)", msg)
    assert m, msg
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("df, base, missing", [
    (dict(sink_frames=1), dict(sink_frames=0, window_frames=1), "sink heads keep"),
    (dict(neighbor_chunks=2, ar_start=2), dict(sink_frames=1, window_frames=1), "neighbor heads keep"),
])
def test_base_cache_errors_name_the_samplers_widgets(run_node, N, model, df, base, missing):
    """The fix for a base cache that lost frames is on AR Video Sampler's own 'sink_frames' /
    'window_frames' (not "a larger base sink / window"); each proposed value is the least that
    works: it runs, one less fails."""
    m = run_node(N["ApplyDummyForcing"], model=model, **df)[0]
    args = dict(model=m, positive=cond(), latent=video_latent(frames=6), frames_per_chunk=1, cache="sink + window")
    msg = fails(run_node, N["ARVideoSampler"], r"^Apply Dummy Forcing: at 'ar_start'", [model, m], **args, **base)
    assert missing in msg and "base sink / window" not in msg
    assert "set AR Video Sampler's 'cache' to 'full'" in msg and msg.endswith("(found while running AR Video Sampler)")
    assert ("or lower 'neighbor_chunks'" in msg) == ("neighbor_chunks" in df)  # sink_frames = 1 cannot go lower
    sink, window = _base_cache_fixes(msg, "AR Video Sampler")
    for fixed in (dict(base, sink_frames=sink), dict(base, window_frames=window)):
        run_node(N["ARVideoSampler"], **args, **fixed)
    for short in (dict(base, sink_frames=sink - 1), dict(base, window_frames=window - 1)):
        fails(run_node, N["ARVideoSampler"], r"^Apply Dummy Forcing: at 'ar_start'", **args, **short)


def test_nan_under_online_profiling_names_the_model(run_node, N, stub_model_patcher):
    """NaN weights with Dummy Forcing's online profiling: the run stops at the profiled chunk
    and names the model, as the other caches do at the end of the video."""
    net = tiny_wan()
    with torch.no_grad():
        net.blocks[1].ffn[0].weight[0, 0] = float("nan")
    m = run_node(N["ApplyDummyForcing"], model=stub_model_patcher(net, shift=5.0))[0]
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the model produced NaN or infinite values in the attention "
          r"Dummy Forcing profiled \(chunk 1\): its weights may be damaged", [m], model=m, positive=cond(),
          latent=video_latent(), **SAMPLER)


def test_prompt_start_refuses_a_negative_frame(N):
    """A start from a link skips the widget's min: AR Prompt Start itself refuses a frame
    before the video, naming 'start' (it was accepted, then blamed as 'out of order')."""
    with pytest.raises(ValueError, match=r"^AR Prompt Start: 'start' = -4.0 latent frames is before the video"):
        N["ARPromptStart"].execute(conditioning=cond(2), start=-4.0, unit="latent frames")
    with pytest.raises(ValueError, match=r"^AR Prompt Start: 'start' = -1.0 seconds must be a number >= 0"):
        N["ARPromptStart"].execute(conditioning=cond(2), start=-1.0, unit="seconds")
    assert N["ARPromptStart"].execute(conditioning=cond(2), start=0.0, unit="latent frames")[0][0][1][
        "dummy_forcing_start"] == 0


def test_too_many_dummy_heads(run_node, N, model):
    msg = fails(run_node, N["ApplyDummyForcing"], r"^Apply Dummy Forcing: 'dummy_head_count' = 9 is out of range: the "
                r"model has 2 layers x 4 heads = 8 heads", [model], model=model, dummy_head_count=9)
    assert "use 1 to 8" in msg
    out = run_node(N["ApplyDummyForcing"], model=model, dummy_head_count=8)[0]  # all heads: allowed
    assert out.model_options["transformer_options"]["dummy_forcing"].dummy_forcing.dummy_head_count == 8


def test_profile_for_another_model(run_node, N, model, stub_model_patcher):
    other = stub_model_patcher(tiny_wan(layers=3, heads=2, head_dim=32))
    geom = ModelGeometry.of(other.model.diffusion_model)
    scores = torch.rand(3, 2, 3)
    prof = HeadProfile(scores / scores.sum(-1, keepdim=True), geom.fingerprint())
    msg = fails(run_node, N["ApplyDummyForcing"], r"^Apply Dummy Forcing: the 'head_profile' input does not fit this "
                r"model", [model], model=model, head_profile=prof)
    assert "3 layers x 2 heads" in msg and "2 layers x 4 heads" in msg and "profile it again" in msg
    # a model that carries a foreign profile anyway (options copied by hand): the sampler says so too
    ok = run_node(N["ApplyDummyForcing"], model=other, head_profile=prof)[0]
    smuggled = model.clone()
    smuggled.model_options["transformer_options"]["dummy_forcing"] = \
        ok.model_options["transformer_options"]["dummy_forcing"]
    fails(run_node, N["ARVideoSampler"], r"^Apply Dummy Forcing: the 'head_profile' input does not fit this model: head "
          "profile was made for a model with 3 layers",
          [model, smuggled], model=smuggled, positive=cond(), latent=video_latent(), **SAMPLER)


def test_wrong_object_in_profile_and_stats_inputs(run_node, N, model):
    fails(run_node, N["ApplyDummyForcing"], r"^Apply Dummy Forcing: the 'head_profile' input is a dict", [model],
          model=model, head_profile={"scores": 1})
    fails(run_node, N["CacheStats"], r"^Cache Stats: the 'stats' input is a dict", stats={"a": 1})


def test_load_head_profile_rejects_other_files(run_node, N, comfy_dirs):
    import folder_paths
    from safetensors.torch import save_file
    folder = os.path.join(folder_paths.models_dir, "dummy_forcing_profiles")
    os.makedirs(folder)
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, os.path.join(folder, "a_lora.safetensors"))
    with open(os.path.join(folder, "broken.safetensors"), "wb") as f:
        f.write(b"this is not safetensors")
    msg = fails(run_node, N["LoadHeadProfile"], r"^Load Head Profile: .*a_lora.safetensors is not a Dummy Forcing head "
                "profile", profile_name="a_lora.safetensors")
    assert "Pick a file saved by the Profile Heads node" in msg
    fails(run_node, N["LoadHeadProfile"], r"^Load Head Profile: .*broken.safetensors is not a head profile",
          profile_name="broken.safetensors")


def test_profile_heads_bad_settings(run_node, N, model, comfy_dirs):
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: profiling chunks 1..2 needs a latent of at least 4 chunks",
          [model], model=model, conditioning=cond(), latent=video_latent(frames=3), frames_per_chunk=1,
          chunks_to_profile=2)
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: 'save_name' '\.\./x' is not a plain file name", [model],
          model=model, conditioning=cond(), latent=video_latent(frames=3), frames_per_chunk=1, save_name="../x")
    assert not os.path.exists(os.path.join(comfy_dirs.output, "dummy_forcing"))


# ------------------------------------------------------------------------------------ cancel
@pytest.mark.parametrize("with_df", [False, True])
def test_cancel_between_steps(run_node, N, model, with_df, stub_model_patcher):
    """The user presses Cancel while the sampler runs: ComfyUI's interrupt exception comes out at
    the next step, nothing is returned, the model is unchanged, and the next run is like a fresh one."""
    m = run_node(N["ApplyDummyForcing"], model=model)[0] if with_df else model
    snaps = [ModelSnapshot(model), ModelSnapshot(m)]
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 5:  # the server sets the flag on POST /interrupt
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(N["ARVideoSampler"], model=m, positive=cond(), latent=video_latent(), **SAMPLER)
    assert seen == [1, 2, 3, 4, 5]  # cancelled at the very next step
    for s in snaps:
        s.assert_unchanged()
    assert not mm.processing_interrupted()
    comfy.utils.set_progress_bar_global_hook(None)
    after = run_node(N["ARVideoSampler"], model=m, positive=cond(), latent=video_latent(), **SAMPLER)[0]
    mm.unload_all_models()
    fresh = stub_model_patcher(tiny_wan(), shift=5.0)
    if with_df:
        fresh = run_node(N["ApplyDummyForcing"], model=fresh)[0]
    ref = run_node(N["ARVideoSampler"], model=fresh, positive=cond(), latent=video_latent(), **SAMPLER)[0]
    assert torch.equal(after["samples"], ref["samples"])


def test_cancel_before_start_and_during_profiling(run_node, N, model):
    snap = ModelSnapshot(model)
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(N["ARVideoSampler"], model=model, positive=cond(), latent=video_latent(), **SAMPLER)
    assert getattr(mm, "load_calls", []) == []  # cancelled before loading anything (stub records loads)

    def hook(value, total, preview, node_id=None):
        if value == 2:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(N["ProfileHeads"], model=model, conditioning=cond(), latent=video_latent(), frames_per_chunk=1,
                 save_name="never")
    snap.assert_unchanged()
    import folder_paths
    assert not os.path.exists(os.path.join(folder_paths.get_output_directory(), "dummy_forcing", "profiles",
                                           "never.safetensors"))


def _node_errors_module():
    from node_helpers import load_pack
    load_pack()
    import sys
    return sys.modules["ComfyUI_Dummy_Forcing.nodes.node_errors"]


def test_errors_name_the_node_once():
    """node_errors never double-prefixes a message that already names the node."""
    errors = _node_errors_module()
    with pytest.raises(ValueError) as ei:
        with errors.node_errors("X"):
            with errors.node_errors("X"):
                raise SettingError("input", "latent", "bad")
    assert str(ei.value) == "X: bad"
    assert not re.search(r"X: X:", str(ei.value))


def test_only_the_packs_setting_errors_become_node_errors():
    """A ValueError that is not the pack's SettingError (a bug, torch's or ComfyUI's own) comes out
    as it was raised, not dressed up as the node's message."""
    errors = _node_errors_module()
    for raised in (ValueError("expected 4D input (got 3D input)"), RuntimeError("CUDA out of memory"),
                   mm.InterruptProcessingException()):
        with pytest.raises(type(raised)) as ei:
            with errors.node_errors("AR Video Sampler", {"dummy_forcing": "Apply Dummy Forcing"}):
                raise raised
        assert ei.value is raised
    with pytest.raises(errors.NodeError, match=r"^Apply Dummy Forcing: 'ar_start' too late \(found while running X\)$"):
        with errors.node_errors("X", {"dummy_forcing": "Apply Dummy Forcing"}):
            raise SettingError("dummy_forcing", "ar_start", "'ar_start' too late")


def test_widget_names_come_from_owner_and_name():
    """A message that points at other settings names each with the node that shows it: the
    (owner, name) of the reference picks the node, no message text is edited."""
    errors = _node_errors_module()
    e = SettingError("dummy_forcing", "sink_frames", "{setting} vs {w} vs {p} vs {c}",
                     refs={"w": ("cache", "window_frames"), "p": ("input", "positive"), "c": ("dummy_forcing", "scope")})
    assert str(e) == "'sink_frames' vs the base cache's 'window_frames' vs the input's 'positive' vs 'scope'"
    owners = {"dummy_forcing": "Apply Dummy Forcing", "cache": "AR Cache Policy", ("input", "positive"): "CFGGuider"}
    with pytest.raises(errors.NodeError) as ei:
        with errors.node_errors("Sampler AR Video", owners):
            raise e
    assert str(ei.value) == ("Apply Dummy Forcing: 'sink_frames' vs AR Cache Policy's 'window_frames' vs CFGGuider's "
                             "'positive' vs 'scope' (found while running Sampler AR Video)")
    plain = SettingError("input", "latent", "{braces} stay as written")  # no refs: not a template
    assert str(plain) == "{braces} stay as written"
    import pickle
    back = pickle.loads(pickle.dumps(e))
    assert (back.owner, back.name, str(back), back.refs) == (e.owner, e.name, str(e), e.refs)


def test_exception_type_is_no_file_path():
    """ComfyUI shows an error's type as ``<class module>.<class qualname>`` (execution.py's
    full_type_name) and imports a pack by its folder's path, so a class of the pack's own module
    would show that path; the pack's error type names the pack instead."""
    errors = _node_errors_module()
    with pytest.raises(errors.NodeError) as ei:
        with errors.node_errors("X"):
            raise SettingError("input", "latent", "bad")
    typ = type(ei.value)
    shown = typ.__qualname__ if typ.__module__ == "builtins" else typ.__module__ + "." + typ.__qualname__
    assert shown == "dummy_forcing.NodeError"
    assert isinstance(ei.value, ValueError)


# ------------------------------------------------------------------------------------ hardening
def test_non_finite_inputs_are_named(run_node, N, model):
    bad = cond()
    bad[0][0][0, 0, 0] = float("nan")
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'positive' holds NaN or infinite values", [model],
          model=model, positive=bad, latent=video_latent(), **SAMPLER)
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: 'conditioning' holds NaN", [model], model=model,
          conditioning=bad, latent=video_latent(), frames_per_chunk=1)
    start = video_latent(fill="randn")
    start["samples"][0, 0, 1, 0, 0] = float("inf")
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'latent' holds NaN or infinite values", [model],
          model=model, positive=cond(), latent=start, start_frames=2, **SAMPLER)
    # NaN floats pass ComfyUI's min/max validation (comparisons with NaN are false): refused by name
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'shift' = nan is not a finite number", [model],
          model=model, positive=cond(), latent=video_latent(), shift=float("nan"), **SAMPLER)
    fails(run_node, N["ApplyDummyForcing"], r"^Apply Dummy Forcing: 'dummy_heads' = nan is not a finite number",
          [model], model=model, dummy_heads=float("nan"))
    fails(run_node, N["ApplyDummyForcing"], r"^Apply Dummy Forcing: 'profile_sample_fraction' = nan", [model],
          model=model, profile_sample_fraction=float("nan"))
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: 'sample_fraction' = nan", [model], model=model,
          conditioning=cond(), latent=video_latent(), frames_per_chunk=1, sample_fraction=float("nan"))
    assert getattr(mm, "load_calls", []) == []  # all refused before the model was loaded
    run_node(N["ARVideoSampler"], model=model, positive=cond(), latent=start, start_frames=1, **SAMPLER)  # not given


def test_a_model_that_makes_nan_is_named(run_node, N, stub_model_patcher):
    net = tiny_wan()
    with torch.no_grad():
        net.blocks[1].ffn[0].weight[0, 0] = float("nan")
    m = stub_model_patcher(net, shift=5.0)
    fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the model produced NaN or infinite values: its weights",
          [m], model=m, positive=cond(), latent=video_latent(), **SAMPLER)


def test_empty_latents_and_bad_lists_get_a_node_error(run_node, N, model):
    for shape in ((0, 16, 6, 4, 4), (1, 16, 6, 0, 4), (1, 16, 6, 4, 0), (1, 16, 0, 4, 4)):
        fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: the 'latent' input has shape .* must all be at "
              "least 1", [model], model=model, positive=cond(), latent={"samples": torch.zeros(shape)}, **SAMPLER)
    for bad in ("1000,,500", "1000, ,500", ",1000", "1000;;500"):
        fails(run_node, N["ARVideoSampler"], r"^AR Video Sampler: 'denoise_timesteps' must be a comma-separated list .* "
              "it has an empty item", [model], model=model, positive=cond(), latent=video_latent(),
              denoise_timesteps=bad, **SAMPLER)


def test_no_internal_reprs_in_errors(run_node, N, model):
    msg = fails(run_node, N["ARVideoSampler"], "base cache", [model],
                model=run_node(N["ApplyDummyForcing"], model=model, sink_frames=1)[0], positive=cond(),
                latent=video_latent(), frames_per_chunk=1, cache="sink + window", sink_frames=0, window_frames=1)
    assert "Retention(" not in msg and "last 1 frame" in msg


def test_profile_heads_save_checks_run_before_the_work(run_node, N, model, comfy_dirs, monkeypatch):
    import dummy_forcing_core.chunk_runner as cr
    passes = []
    real = cr.ChunkRunner.forward
    monkeypatch.setattr(cr.ChunkRunner, "forward", lambda self, *a, **k: (passes.append(1), real(self, *a, **k))[1])
    args = dict(model=model, conditioning=cond(), latent=video_latent(frames=3), frames_per_chunk=1)
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: 'save_name' is \d+ bytes long; file names may have at most",
          [model], save_name="x" * 300, **args)
    os.makedirs(comfy_dirs.output, exist_ok=True)
    with open(os.path.join(comfy_dirs.output, "dummy_forcing"), "w") as f:  # a file where the folder must go
        f.write("in the way")
    fails(run_node, N["ProfileHeads"], r"^Profile Heads: cannot create the profile folder .*something in its path is "
          "a file", [model], save_name="fine", **args)
    assert passes == []  # refused before any pass
    os.remove(os.path.join(comfy_dirs.output, "dummy_forcing"))
    folder = os.path.join(comfy_dirs.output, "dummy_forcing", "profiles")
    os.makedirs(folder)
    os.symlink(os.path.join(folder, "gone.safetensors"), os.path.join(folder, "p.safetensors"))  # dangling
    out = run_node(N["ProfileHeads"], save_name="p", **args)  # used to loop forever
    assert out.ui["text"][0].startswith(f"saved to {os.path.join(folder, 'p_2.safetensors')}")
    assert os.path.islink(os.path.join(folder, "p.safetensors")) and not os.path.exists(os.path.join(folder,
                                                                                                     "gone.safetensors"))
    mode = os.stat(os.path.join(folder, "p_2.safetensors")).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # a normal file, not mkstemp's 0600
