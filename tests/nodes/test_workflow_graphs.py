"""The shipped workflows run end to end: each workflows/*.json is converted to an API prompt
(tests/test_workflows.py to_api), ComfyUI's core nodes are replaced by small stand-ins
(tiny Wan for UNETLoader, random text for CLIPTextEncode, a 32x32 video for
EmptyHunyuanLatentVideo, ...), our nodes run for real, in topological order, through the stub's
validate + execute path; every MODEL a node receives must be unchanged after it ran."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

import pytest
import torch

from node_helpers import ModelSnapshot, TEXT_DIM, pack_nodes, tiny_causal_wan, tiny_wan

from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.stats import GenerationStats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _workflow_tools():
    mod = sys.modules.get("df_test_workflows")
    if mod is None:
        spec = importlib.util.spec_from_file_location("df_test_workflows", os.path.join(ROOT, "tests",
                                                                                         "test_workflows.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def _VAE():
    """The stub's Wan2.1 VAE (comfy.sd.VAE: a small causal decoder, 4x frames, the VAE the pack's
    streamed decode reads) with an encode for ARVideoI2V: 8x8 pixel blocks -> 16 channels, one frame."""
    import comfy.sd

    class VAE(comfy.sd.VAE):
        def encode(self, pixels):
            return _encode(pixels)

    return VAE()


def _encode(pixels):
    x = pixels.movedim(-1, 1)
    return (torch.nn.functional.avg_pool2d(x, 8).repeat(1, 6, 1, 1)[:, :16] * 2 - 1)[:, :, None]


class CoreStandIns:
    """Minimal stand-ins for the ComfyUI core nodes the workflows use (CPU, tiny). ComfyUI's AR
    nodes (ARVideoI2V, Sampler AR Video, CFGGuider, ...) are the stub's own, run like ours."""

    STUB_NODES = ("SamplerARVideo", "EmptyARVideoLatent", "RandomNoise", "BasicScheduler", "CFGGuider",
                  "SamplerCustomAdvanced")

    def __init__(self, make_model, run_node):
        self.make_model = make_model
        self.run_node = run_node
        self.models = {}
        self.saved_videos = []

    def __getattr__(self, name):
        if name in self.STUB_NODES:
            from comfy_extras import nodes_ar_video, nodes_custom_sampler
            cls = getattr(nodes_ar_video, name, None) or getattr(nodes_custom_sampler, name)
            return lambda **kw: tuple(self.run_node(cls, **kw).args)
        raise AttributeError(name)

    def UNETLoader(self, unet_name, weight_dtype):
        if unet_name not in self.models:  # ComfyUI caches the loaded model between runs
            net = (tiny_causal_wan if "causal" in unet_name else tiny_wan)(seed=len(self.models))
            self.models[unet_name] = self.make_model(net)
        return (self.models[unet_name],)

    def ARVideoI2V(self, width, height, **kw):  # the real node at 32x32 pixels (latent 4x4), as above
        from comfy_extras import nodes_ar_video
        return tuple(self.run_node(nodes_ar_video.ARVideoI2V, width=32, height=32, **kw).args)

    def LoadImage(self, image):
        return (torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(len(image))), torch.zeros(1, 32, 32))

    def CLIPLoader(self, clip_name, type, device):
        assert type == "wan"
        return ({"clip": clip_name},)

    def CLIPTextEncode(self, text, clip):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        t = torch.randn(1, 8, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
        return ([[t, {"pooled_output": None}]],)

    def ConditioningCombine(self, conditioning_1, conditioning_2):
        return (conditioning_1 + conditioning_2,)

    def EmptyHunyuanLatentVideo(self, width, height, length, batch_size):
        # the real node: [B, 16, (length - 1) // 4 + 1, height // 8, width // 8]; here 32x32 pixels
        return ({"samples": torch.zeros(batch_size, 16, (length - 1) // 4 + 1, 4, 4)},)

    def VAELoader(self, vae_name):
        return (_VAE(),)

    def VAEDecode(self, samples, vae):
        x = samples["samples"]
        assert x.ndim == 5 and x.shape[1] == 16
        frames = 4 * (x.shape[2] - 1) + 1
        img = torch.sigmoid(x[0, :3]).permute(1, 2, 3, 0)  # [F, h, w, 3]
        img = img.repeat_interleave(4, 0)[-frames:].repeat_interleave(8, 1).repeat_interleave(8, 2)
        return (img.contiguous(),)

    def PreviewImage(self, images):
        self.previewed = images
        return ()

    def CreateVideo(self, images, fps, audio=None):
        return ({"images": images, "fps": fps},)

    def SaveVideo(self, video, filename_prefix, format, codec):
        self.saved_videos.append((filename_prefix, video["images"].shape, video["fps"]))
        return ()


def execute(prompt: dict, ours: dict, core: CoreStandIns, run_node):
    """Run an API prompt in topological order; returns {node id: outputs} and {node id: ui}."""
    results, uis, order = {}, {}, []
    pending = dict(prompt)
    while pending:
        ready = [nid for nid, p in pending.items()
                 if all(v[0] in results for v in p["inputs"].values() if isinstance(v, list))]
        assert ready, f"cycle or missing input among {sorted(pending)}"
        for nid in sorted(ready, key=int):
            p = pending.pop(nid)
            args = {k: (results[v[0]][v[1]] if isinstance(v, list) else v) for k, v in p["inputs"].items()}
            snaps = [ModelSnapshot(v) for v in args.values() if hasattr(v, "model_options") and hasattr(v, "model")]
            if p["class_type"] in ours:
                out = run_node(ours[p["class_type"]], **args)
                results[nid] = tuple(out.args)
                if out.ui is not None:
                    uis[nid] = out.ui
            else:
                results[nid] = getattr(core, p["class_type"])(**args)
            for s in snaps:
                s.assert_unchanged()
            order.append(p["class_type"])
    return results, uis, order


def of_type(prompt, results, class_type):
    return [results[nid] for nid, p in prompt.items() if p["class_type"] == class_type]


@pytest.fixture
def env(stub_model_patcher, comfy_dirs, run_node):
    tools = _workflow_tools()
    specs = tools.all_specs()
    return tools, specs, pack_nodes(), CoreStandIns(stub_model_patcher, run_node)


def load(tools, name):
    return tools.load_workflows()[name]


def test_text_to_video_workflow_end_to_end(env, run_node):
    tools, specs, ours, core = env
    prompt = tools.to_api(load(tools, "text_to_video_dummy_forcing.json"), specs)
    results, uis, order = execute(prompt, ours, core, run_node)
    assert order.index("ApplyDummyForcing") < order.index("ARVideoSampler") < order.index("CacheStats")
    (latent, stats, images), = of_type(prompt, results, "ARVideoSampler")
    assert latent["samples"].shape == (1, 16, 21, 4, 4)
    torch.testing.assert_close(images, core.VAELoader("wan")[0].decode(latent["samples"])[0])  # = VAE Decode
    assert isinstance(stats, GenerationStats) and stats.dummy_forcing["head_profile"] == "online"
    assert stats.switch_chunk == 2 and stats.chunk_frames == 3 and len(stats.chunk_seconds) == 7
    assert core.saved_videos == [("video/dummy_forcing", (81, 32, 32, 3), 16)]
    (text, plots), = of_type(prompt, results, "CacheStats")
    assert text == stats.to_text() and plots.shape[0] == 1
    ui = next(u for nid, u in uis.items() if prompt[nid]["class_type"] == "CacheStats")
    assert ui["text"] == (text,) and ui["images"]


def test_long_video_workflow_end_to_end(env, run_node, comfy_dirs):
    tools, specs, ours, core = env
    prompt = tools.to_api(load(tools, "long_video_sink_window.json"), specs)
    results, _, _ = execute(prompt, ours, core, run_node)
    (latent, stats, last), = of_type(prompt, results, "ARVideoSampler")
    assert latent["samples"].shape[2] == 61 and len(stats.chunk_seconds) == 21
    assert stats.policy == "sink 3 + window 12"
    assert stats.dummy_forcing["long_context_frames"] == 36 and stats.switch_chunk == 3
    assert stats.kv_bytes < stats.kv_full_bytes
    assert last.shape == (1, 32, 32, 3) and core.previewed is last  # IMAGE off: only the last frame
    videos = [os.path.join(d, f) for d, _, fs in os.walk(comfy_dirs.output) for f in fs]
    assert [os.path.relpath(v, comfy_dirs.output) for v in videos] == [os.path.join("video",
                                                                                   "dummy_forcing_long_00001_.mp4")]
    av = pytest.importorskip("av")
    with av.open(videos[0]) as c:
        assert sum(1 for _ in c.decode(video=0)) == 241  # written while it was made


def test_profile_and_reuse_workflow_first_and_later_runs(env, run_node, comfy_dirs):
    tools, specs, ours, core = env
    wf = load(tools, "profile_and_reuse.json")
    # 1st run as shipped: the reuse group is muted
    prompt = tools.to_api(wf, specs)
    results, uis, _ = execute(prompt, ours, core, run_node)
    (profile, head_map), = of_type(prompt, results, "ProfileHeads")
    assert isinstance(profile, HeadProfile) and profile.settings["prompts"] == 3
    saved = os.path.join(comfy_dirs.output, "dummy_forcing", "profiles", "self_forcing_480p.safetensors")
    assert os.path.isfile(saved)
    (latent, stats, _), = of_type(prompt, results, "ARVideoSampler")
    assert stats.dummy_forcing["head_profile"] == "given" and stats.profile_seconds == 0.0
    assert len(core.saved_videos) == 1

    # later run: the user enables the reuse group; Load Head Profile reads the file of the 1st run
    prompt = tools.to_api(wf, specs, include_muted=True)
    results, uis, _ = execute(prompt, ours, core, run_node)
    assert os.path.isfile(saved.replace(".safetensors", "_2.safetensors"))  # never overwritten
    (loaded,), = of_type(prompt, results, "LoadHeadProfile")
    assert torch.equal(loaded.scores, HeadProfile.load(saved).scores)
    runs = of_type(prompt, results, "ARVideoSampler")
    assert len(runs) == 2 and all(st.dummy_forcing["head_profile"] == "given" for _, st, _ in runs)
    assert sorted(st.dummy_forcing["dummy_heads"] for _, st, _ in runs) == [0.4, 0.5]
    assert len(core.saved_videos) == 3
    assert len(core.models) == 1  # one loaded model shared by every branch


def test_causal_forcing_i2v_workflow_end_to_end(env, run_node):
    """ComfyUI's AR template with Apply Dummy Forcing: the stub's SamplerCustomAdvanced + Sampler AR
    Video run the pack's per-head cache; Cache Stats shows that run."""
    tools, specs, ours, core = env
    prompt = tools.to_api(load(tools, "causal_forcing_i2v_dummy_forcing.json"), specs)
    results, uis, order = execute(prompt, ours, core, run_node)
    assert order.index("SamplerCustomAdvanced") < order.index("CacheStats")
    (out, _), = of_type(prompt, results, "SamplerCustomAdvanced")
    assert out["samples"].shape == (1, 16, 21, 4, 4)
    (text, _), = of_type(prompt, results, "CacheStats")
    assert "loop: ComfyUI Sampler AR Video" in text and "per-head cache from chunk 2" in text
    assert "dummy forcing: dummy heads 0.5" in text
    assert core.saved_videos and core.saved_videos[0][0] == "video/causal_forcing_i2v_dummy_forcing"


def test_prompt_switch_workflow_end_to_end(env, run_node):
    tools, specs, ours, core = env
    prompt = tools.to_api(load(tools, "long_video_prompt_switch.json"), specs)
    results, _, _ = execute(prompt, ours, core, run_node)
    (latent, stats, _), = of_type(prompt, results, "ARVideoSampler")
    assert latent["samples"].shape[2] == 61
    # 5 s and 10 s = latent frames 20 and 40: used from the chunks of 3 holding them (6 and 13)
    assert [(s["chunk"], s["frame"]) for s in stats.prompt_switches] == [(6, 18), (13, 39)]
    assert all(s["recache_passes"] >= 2 for s in stats.prompt_switches)  # sink frames and the window
    (text, _), = of_type(prompt, results, "CacheStats")
    assert "prompt switch" in text
