"""The nodes that attach cache settings to a clone of a MODEL: Apply Dummy Forcing and AR
Cache Policy. Both paths read them: AR Video Sampler, and ComfyUI's own SamplerARVideo
(through ``core_ar_loop``)."""
from __future__ import annotations

from comfy_api.latest import io

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.dummy_forcing import CUSTOM, PRESETS, WARMUP_CACHES, DummyForcingConfig
from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.head_program import SCOPES

from . import comfy_glue as glue
from . import widgets as w
from .model_loading import ATTENTION_8BIT_CHOICES
from .node_errors import node_errors

NAME = "Apply Dummy Forcing"
POLICY_NAME = "AR Cache Policy"


class ApplyDummyForcing(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyDummyForcing",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Turns on Dummy Forcing for AR Video Sampler and for ComfyUI's own Sampler AR Video (SamplerCustomAdvanced): once per video (at chunk ar_start) the attention of "
                "every head is profiled, then each head gets its own KV cache: sink heads keep the first frames, "
                "neighbor heads the recent chunks, and 'dummy' heads (those that look almost only at the current "
                "chunk) keep next to nothing. Less KV memory and faster attention at nearly the same quality "
                "(paper: 1.4x at 480p, 2x at 1080p). With a HEAD_PROFILE (Profile Heads / Load Head Profile) the "
                "online profiling is skipped. Returns a clone of the model; the input model is not changed. In ComfyUI's AR "
                "loop the pack's per-head cache replaces core's dense full-length one. The defaults are the authors' "
                "method (Self Forcing settings); 'preset' sets the authors' settings of a model family."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1 diffusion model (Load Diffusion Model). A clone carrying the "
                               "Dummy Forcing settings is returned; the input is left as it was."),
                w.HEAD_PROFILE.Input(
                    "head_profile", optional=True,
                    tooltip="Optional head profile from Profile Heads or Load Head Profile, made on this same model. "
                    "When connected, heads are assigned from it and no online profiling runs (the sampler uses it "
                    "at ar_start). Leave unconnected to profile each video online (a few ms)."),
                io.Float.Input(
                    "dummy_heads", default=0.5, min=0.0, max=1.0, step=0.01,
                    tooltip="Fraction of all heads (layers x heads) made dummy heads, used when dummy_head_count is 0. "
                    "Default 0.5 (180 of 360 heads on Wan 1.3B, the authors' setting). ~0.25 is nearly lossless; "
                    "higher saves more memory and time but the video may lose long-range consistency. 0 keeps every "
                    "head (only sink / neighbor typing)."),
                io.Int.Input(
                    "dummy_head_count", default=0, min=0, max=100000,
                    tooltip="Exact number of dummy heads; 0 (default) uses the 'dummy_heads' fraction instead. Must "
                    "not exceed layers x heads of the model (360 for Wan2.1 1.3B)."),
                io.Combo.Input(
                    "scope", options=list(SCOPES), default="global",
                    tooltip="How dummy heads are picked. 'global' (default, the authors' choice): the cheapest heads "
                    "over all layers, so some layers get many and some none. 'per_layer': the same number in every "
                    "layer (more even, a little less accurate)."),
                io.Boolean.Input(
                    "normalised_cost", default=True,
                    tooltip="On (default, the authors' rule): a head's cost of becoming dummy is max(sink attention, "
                    "neighbor attention), each first divided by its sum over all heads (favours keeping heads that "
                    "are special relative to the others). Off: the raw max (gave no sink heads on the models tried)."),
                io.Int.Input(
                    "ar_start", default=1, min=1, max=10000,
                    tooltip="The generated chunk whose clean pass is profiled; the per-head cache is used from the "
                    "next chunk on. Default 1 (Self Forcing, Causal Forcing); the authors use 2 for LongLive. Must be "
                    "at most (chunks in the video - 2)."),
                io.Int.Input(
                    "neighbor_chunks", default=1, min=1, max=1000,
                    tooltip="L: chunks of recent history a neighbor head keeps (default 1, the paper). 2 recovers "
                    "motion on long videos at a little more cost. Ignored when long_context_frames > 0."),
                io.Int.Input(
                    "sink_frames", default=1, min=1, max=1000,
                    tooltip="Latent frames a sink head keeps from the start of the video (default 1, the paper). With "
                    "context packing, dummy heads keep this many most recent frames. Must not exceed the frames "
                    "cached at ar_start."),
                io.Boolean.Input(
                    "context_packing", default=True,
                    tooltip="On (default): dummy heads also see the last sink_frames frames (short-range continuity) "
                    "and share one attention call with sink heads: two calls per layer. Off: dummy heads see only the "
                    "current chunk (three calls; slightly less quality)."),
                io.Float.Input(
                    "profile_sample_fraction", default=0.25, min=0.01, max=1.0, step=0.01,
                    tooltip="Share of the current chunk's queries sampled when profiling online (default 0.25, the "
                    "paper). Higher is a steadier estimate at a little more cost at ar_start. Unused with a profile."),
                io.Int.Input(
                    "profile_seed", default=0, min=0, max=w.SEED_MAX,
                    tooltip="Seed of the query sampling when profiling online (default 0), so a run is reproducible. "
                    "Unused with a head profile."),
                io.Int.Input(
                    "long_context_frames", default=0, min=0, max=100000,
                    tooltip="Long-context mode: > 0 gives neighbor heads this many most recent latent frames instead "
                    "of neighbor_chunks chunks, spending the memory freed by dummy heads on more history (the paper "
                    "reaches ~6.6x longer context at the same speed). Needs a base cache that still holds those "
                    "frames at ar_start (use 'full'). Default 0 = off."),
                io.Boolean.Input(
                    "reprofile_on_prompt_switch", default=False, optional=True,
                    tooltip="With several prompts (AR Prompt Start) and re-cache on: profile the first chunk after each "
                    "switch again, over the re-cached frames, and re-program the heads for the new prompt. Off "
                    "(default): keep the head types of the first profile (the authors' choice; dummy heads overlap "
                    "~76% across prompts)."),
                io.Boolean.Input(
                    "neighbor_skips_sink", default=True, optional=True,
                    tooltip="On (default, the authors'): a neighbor head's window of the last L chunks never holds "
                    "the first sink_frames frames (only sink heads keep them). Off: it holds frame 0 while frame 0 "
                    "lies inside the window (L >= 2 or long_context_frames on short histories)."),
                io.Combo.Input(
                    "warmup_cache", options=list(WARMUP_CACHES), default="base", optional=True,
                    tooltip="The cache of every head until ar_start. 'base' (default): the sampler's / AR Cache "
                    "Policy's cache widgets. 'sink + L chunks': the authors' (the first sink_frames frames + the "
                    "neighbor window; the same as a full cache at ar_start 1 with 3-frame chunks, less from "
                    "ar_start 2 on, as their LongLive runs)."),
                io.Int.Input(
                    "profile_sink_frames", default=0, min=0, max=1000, optional=True,
                    tooltip="The 'sink' region profiled at ar_start. 0 (default): the frames a sink head keeps "
                    "(sink_frames). N > 0: the first N frames of the cached context, whatever their index (the "
                    "authors' LongLive: 3, one chunk, while sink heads keep 1 frame)."),
                io.Combo.Input(
                    "preset", options=list(PRESETS), default=CUSTOM, optional=True,
                    tooltip="'custom' (default): the widgets above apply as set. A model family: the authors' "
                    "settings for it replace dummy_heads (0.5, dummy_head_count 0), scope (global), normalised_cost "
                    "(on), ar_start (1; LongLive 2), neighbor_chunks (1), sink_frames (1), context_packing (on), "
                    "neighbor_skips_sink (on), warmup_cache ('sink + L chunks') and profile_sink_frames (0; "
                    "LongLive 3); the other widgets (profile rows and seed, long_context_frames, head_profile, "
                    "re-profiling) still apply. CausVid and Krea Realtime 14B were not published by the authors: "
                    "they get Self Forcing's settings (our choice). To edit a preset's value, pick 'custom'."),
                io.Combo.Input(
                    "attention_8bit", options=list(ATTENTION_8BIT_CHOICES), default="comfyui", optional=True,
                    tooltip="Self-attention in 8 bits (int8 q.k, 16-bit p.v; about 2% off bf16 attention, a latent "
                    "about 2% off). 'comfyui' (default): on (sageattention) when ComfyUI was started with "
                    "--use-sage-attention, else off. 'off': exact bf16 attention. 'auto': the pack's Triton kernel "
                    "on GeForce-class GPUs (RTX 40 / 50); on Hopper (H100 / H200) SageAttention 2 when installed "
                    "(1.1-1.2x at 720p / 1080p on an H200; 480p chunks stay exact, where cuDNN is faster); else off. "
                    "'triton' / 'sage': that kernel. One that cannot run here "
                    "(CPU, older GPU, package missing) falls back to exact attention with one log line."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the model that AR Video Sampler runs "
                                     "with Dummy Forcing.")],
        )

    @classmethod
    def execute(cls, model, dummy_heads, dummy_head_count, scope, normalised_cost, ar_start, neighbor_chunks,
                sink_frames, context_packing, profile_sample_fraction, profile_seed, long_context_frames,
                head_profile=None, reprofile_on_prompt_switch=False, neighbor_skips_sink=True, warmup_cache="base",
                profile_sink_frames=0, preset=CUSTOM, attention_8bit="comfyui") -> io.NodeOutput:
        with node_errors(NAME):
            geom = glue.wan_geometry(model)
            cfg = DummyForcingConfig(
                dummy_heads=float(dummy_heads), dummy_head_count=int(dummy_head_count), scope=scope,
                normalised_cost=bool(normalised_cost), ar_start=int(ar_start), neighbor_chunks=int(neighbor_chunks),
                sink_frames=int(sink_frames), context_packing=bool(context_packing),
                profile_sample_fraction=float(profile_sample_fraction), profile_seed=int(profile_seed),
                long_context_frames=int(long_context_frames), head_profile=head_profile,
                reprofile_on_prompt_switch=bool(reprofile_on_prompt_switch),
                neighbor_skips_sink=bool(neighbor_skips_sink), warmup_cache=warmup_cache,
                profile_sink_frames=int(profile_sink_frames)).with_preset(preset)
            cfg.check_model(geom)
            if attention_8bit not in ATTENTION_8BIT_CHOICES:
                raise SettingError("dummy_forcing", "attention_8bit", f"'attention_8bit' must be one of "
                                   f"{list(ATTENTION_8BIT_CHOICES)}, got {attention_8bit!r}")
            spec = (glue.cache_spec_of(model) or CacheSpec()).with_dummy_forcing(cfg).with_attention_8bit(attention_8bit)
            return io.NodeOutput(glue.with_cache_spec(model, spec))


class ARCachePolicy(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ARCachePolicy",
            display_name=POLICY_NAME,
            category=w.CATEGORY,
            description=(
                "Sets what the KV cache keeps for ComfyUI's own autoregressive sampler (SamplerCustomAdvanced + "
                "Sampler AR Video): a full cache, or sink + window (the first frames plus a rolling window: bounded "
                "memory for long videos, which core's own dense cache does not offer). Combine with Apply Dummy "
                "Forcing (this is then the cache used until ar_start). AR Video Sampler has the same widgets; "
                "a model from this node must agree with them. Returns a clone of the model."),
            inputs=[
                io.Model.Input("model", tooltip="A causal Wan2.1 diffusion model (Load Diffusion Model), optionally "
                               "through Apply Dummy Forcing. A clone is returned; the input is left as it was."),
                w.cache_policy(),
                w.base_sink_frames(),
                w.window_frames(),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the model whose AR sampling uses "
                                     "this cache.")],
        )

    @classmethod
    def execute(cls, model, cache, sink_frames, window_frames) -> io.NodeOutput:
        with node_errors(POLICY_NAME):
            glue.wan_geometry(model)
            spec = (glue.cache_spec_of(model) or CacheSpec()).with_base(glue.retention_of(cache, sink_frames,
                                                                                          window_frames))
            return io.NodeOutput(glue.with_cache_spec(model, spec))
