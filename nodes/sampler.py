"""AR Video Sampler: the core's chunk-by-chunk flow-matching loop on a ComfyUI MODEL."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from dummy_forcing_core.sampler import SamplerSettings, flow_sigmas, generate, plan_chunks

from . import comfy_glue as glue
from . import widgets as w

NAME = "AR Video Sampler"
log = logging.getLogger("dummy_forcing")


class ARVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ARVideoSampler",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Generates a Wan2.1 video latent autoregressively, chunk by chunk, with a KV cache of the frames "
                "already made (Self Forcing / CausVid / LongLive / Causal Forcing checkpoints). Each chunk is "
                "denoised in a few steps while attending to the cached context, then a clean pass writes its "
                "keys/values to the cache. When the model comes through Apply Dummy Forcing, the cache becomes "
                "per-head after ar_start (sink, neighbor and dummy heads): less memory, faster attention. "
                "Returns the latent (decode it with VAE Decode) and the run's statistics for Cache Stats."),
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan2.1 text-to-video diffusion model (Load Diffusion Model), ideally a causal "
                    "/ few-step checkpoint such as Self Forcing. Optionally through Apply Dummy Forcing. LoRAs and "
                    "weight patches applied by other nodes are used."),
                io.Conditioning.Input(
                    "positive", tooltip="The prompt (CLIP Text Encode with a umT5-XXL CLIP of type 'wan'). Only the "
                    "first conditioning entry is used (combined conditionings are not mixed); its batch must be 1 "
                    "or the latent's batch. There is no negative prompt: distilled causal models run without CFG."),
                io.Latent.Input(
                    "latent", tooltip="A Wan video latent [batch, 16, frames, height/8, width/8], e.g. from "
                    "EmptyHunyuanLatentVideo (length 81 -> 21 latent frames). Its shape sets resolution, length and "
                    "batch. Its content is ignored except the first 'start_frames' frames."),
                w.seed(),
                w.denoise_timesteps(),
                w.steps(),
                w.shift(),
                w.frames_per_chunk(),
                io.Combo.Input(
                    "cache", options=list(glue.CACHE_POLICIES), default="full",
                    tooltip="What the KV cache keeps of past frames. 'full' (default): every generated frame (Self "
                    "Forcing's setting; memory grows with the video). 'sink + window': the first 'sink_frames' "
                    "frames forever plus the last 'window_frames' (LongLive-style; bounded memory for long videos). "
                    "With Dummy Forcing this is the cache used until ar_start."),
                io.Int.Input(
                    "sink_frames", default=3, min=0, max=1024,
                    tooltip="'sink + window' only: latent frames at the start of the video that stay in the cache "
                    "forever (attention sink). Default 3 (one chunk), as LongLive. Ignored with 'full'."),
                io.Int.Input(
                    "window_frames", default=12, min=0, max=4096,
                    tooltip="'sink + window' only: most recent latent frames kept in the cache (default 12 = 4 chunks "
                    "of 3). Larger windows remember more but cost memory and time. Ignored with 'full'."),
                io.Int.Input(
                    "context_timestep", default=0, min=0, max=999,
                    tooltip="Timestep of the pass that writes a finished chunk into the cache. 0 (default): the "
                    "clean chunk, as Self Forcing. Some CausVid variants re-noise the context slightly (e.g. 50)."),
                io.Int.Input(
                    "start_frames", default=0, min=0, max=4096,
                    tooltip="Leading latent frames of the input latent taken as given (image-to-video from a VAE-"
                    "encoded image, or continuing a video): they are encoded into the cache and copied to the "
                    "output unchanged; generation starts after them. Default 0: generate everything."),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The video latent (VAE space): decode with VAE Decode."),
                w.DF_STATS.Output(display_name="stats", tooltip="Cache memory, attention cost, head types and "
                                  "seconds per chunk of this run: connect to Cache Stats."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, seed, denoise_timesteps, steps, shift, frames_per_chunk, cache,
                sink_frames, window_frames, context_timestep, start_frames) -> io.NodeOutput:
        with glue.node_errors(NAME):
            geom = glue.wan_geometry(model, NAME)
            df = glue.dummy_forcing_of(model)
            samples = glue.latent_samples(latent, NAME, geom)
            B, C, Fr, Hh, Ww = samples.shape
            contexts = glue.conditioning_contexts(positive, NAME, "positive", glue.text_dim_of(model))
            if len(contexts) > 1:
                log.warning("%s: 'positive' holds %d conditionings; only the first is used", NAME, len(contexts))
            context = contexts[0]
            glue.check_context_batch(context, B, NAME, "positive")
            settings = SamplerSettings(
                chunk_frames=int(frames_per_chunk), timesteps=glue.parse_timesteps(denoise_timesteps, NAME),
                steps=int(steps), shift=float(shift), context_timestep=float(context_timestep),
                retention=glue.retention_of(cache, sink_frames, window_frames, NAME), seed=int(seed))
            sigmas = flow_sigmas(settings)
            _, chunks = plan_chunks(Fr, settings.chunk_frames, int(start_frames))
            progress = glue.Progress(model, len(chunks) * len(sigmas))
            progress.check()
            kv = glue.kv_cache_bytes(model, geom, samples.shape, settings.chunk_frames, settings.retention)
            runner = glue.load_runner(model, (B, C, settings.chunk_frames, Hh, Ww), kv)
            start = glue.to_model_space(model, samples) if start_frames else None
            result = generate(runner, context, (B, C, Fr, Hh, Ww), settings, dummy_forcing=df,
                              start_latent=start, start_frames=int(start_frames), callback=progress)
            out = glue.to_latent_output(model, result.latent, latent)
        return io.NodeOutput(out, result.stats)
