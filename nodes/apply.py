"""Apply Dummy Forcing: attach a DummyForcingConfig to a clone of the MODEL."""
from __future__ import annotations

from comfy_api.latest import io

from dummy_forcing_core.dummy_forcing import SCOPES, DummyForcingConfig
from dummy_forcing_core.head_program import resolve_dummy_count
from dummy_forcing_core.profile import HeadProfile

from . import comfy_glue as glue
from . import widgets as w

NAME = "Apply Dummy Forcing"


class ApplyDummyForcing(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyDummyForcing",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Turns on Dummy Forcing for AR Video Sampler: once per video (at chunk ar_start) the attention of "
                "every head is profiled, then each head gets its own KV cache: sink heads keep the first frames, "
                "neighbor heads the recent chunks, and 'dummy' heads (those that look almost only at the current "
                "chunk) keep next to nothing. Less KV memory and faster attention at nearly the same quality "
                "(paper: 1.4x at 480p, 2x at 1080p). With a HEAD_PROFILE (Profile Heads / Load Head Profile) the "
                "online profiling is skipped. Returns a clone of the model; the input model is not changed."),
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
                    "normalised_cost", default=False,
                    tooltip="Off (default): a head's cost of becoming dummy is max(attention on sink, attention on "
                    "neighbors). On: the authors' code variant, which first divides sink and neighbor attention by "
                    "their sums over all heads (favours keeping heads that are special relative to the others)."),
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
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the model that AR Video Sampler runs "
                                     "with Dummy Forcing.")],
        )

    @classmethod
    def execute(cls, model, dummy_heads, dummy_head_count, scope, normalised_cost, ar_start, neighbor_chunks,
                sink_frames, context_packing, profile_sample_fraction, profile_seed, long_context_frames,
                head_profile=None) -> io.NodeOutput:
        with glue.node_errors(NAME):
            geom = glue.wan_geometry(model, NAME)
            total = geom.num_layers * geom.num_heads
            count = int(dummy_head_count)
            if count > total:
                raise ValueError(f"dummy_head_count = {count} but the model has {geom.num_layers} layers x "
                                 f"{geom.num_heads} heads = {total} heads; use at most {total} (or 0 to use the "
                                 "dummy_heads fraction)")
            value = count if count > 0 else float(dummy_heads)
            n = resolve_dummy_count(value, geom.num_layers, geom.num_heads)
            if scope == "per_layer" and -(-n // geom.num_layers) > geom.num_heads:
                raise ValueError(f"{n} dummy heads with scope 'per_layer' need more than {geom.num_heads} in a layer")
            if head_profile is not None:
                if not isinstance(head_profile, HeadProfile):
                    raise ValueError(f"the 'head_profile' input is a {type(head_profile).__name__}, not a head profile")
                try:
                    head_profile.check_compatible(geom)
                except ValueError as e:
                    raise ValueError(f"the 'head_profile' input does not fit this model: {e}") from e
            cfg = DummyForcingConfig(
                dummy_heads=value, scope=scope, normalise=bool(normalised_cost), ar_start=int(ar_start),
                neighbor_chunks=int(neighbor_chunks), sink_frames=int(sink_frames), packing=bool(context_packing),
                sample_fraction=float(profile_sample_fraction), profile_seed=int(profile_seed),
                long_context_frames=int(long_context_frames), profile=head_profile)
            return io.NodeOutput(glue.with_dummy_forcing(model, cfg))
