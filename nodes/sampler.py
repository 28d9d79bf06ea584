"""AR Video Sampler: the pack's chunk-by-chunk flow-matching loop on a ComfyUI MODEL."""
from __future__ import annotations

from comfy_api.latest import io

from dummy_forcing_core.cache_policy import CacheSpec
from dummy_forcing_core.errors import SettingError, check_finite
from dummy_forcing_core.sampler import SamplerSettings, generate

from . import comfy_glue as glue
from . import model_loading
from . import pixel_output as px
from . import widgets as w
from .core_ar_loop import frames_per_latent
from .node_errors import node_errors

NAME = "AR Video Sampler"
OWNERS = {"dummy_forcing": "Apply Dummy Forcing"}
NOISE_LAYOUTS = ["pack", "comfy"]


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
                "per-head after ar_start (sink, neighbor and dummy heads): less memory, faster attention. An "
                "ARVideoI2V start image on the model is used as the first frame. Returns the latent and the run's "
                "statistics for Cache Stats; with a VAE connected also the frames, each chunk decoded while the next "
                "is made, played live on the node and optionally written to a video file as they come."),
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan2.1 text-to-video diffusion model (Load Diffusion Model), ideally a causal "
                    "/ few-step checkpoint such as Self Forcing. Optionally through Apply Dummy Forcing, ARVideoI2V "
                    "(start image) or ModelSamplingSD3 (shift). LoRAs and weight patches applied by other nodes are "
                    "used."),
                io.Conditioning.Input(
                    "positive", tooltip="The prompt (CLIP Text Encode with a umT5-XXL CLIP of type 'wan'); its batch "
                    "must be 1 or the latent's batch. Several prompts for a long video: tag the later ones with AR "
                    "Prompt Start and combine them (Conditioning Combine); otherwise only the first entry is used. "
                    "There is no negative prompt: distilled causal models run without CFG."),
                io.Latent.Input(
                    "latent", tooltip="A Wan video latent [batch, 16, frames, height/8, width/8], e.g. from "
                    "EmptyHunyuanLatentVideo or EmptyARVideoLatent (length 81 -> 21 latent frames). Its shape sets "
                    "resolution, length and batch. Its content is ignored except the first 'start_frames' frames."),
                io.Sigmas.Input(
                    "sigmas", optional=True,
                    tooltip="Optional SIGMAS (e.g. BasicScheduler, simple, 4 steps on the same model) used as every "
                    "chunk's denoising schedule, as core's Sampler AR Video does. When connected, "
                    "denoise_timesteps, steps and shift are not used."),
                io.Noise.Input(
                    "noise", optional=True,
                    tooltip="Optional NOISE (RandomNoise): its seed and noise replace 'seed' and the noise layout is "
                    "core's (as 'noise_layout' comfy), so one RandomNoise seed gives the same video here and in "
                    "SamplerCustomAdvanced + Sampler AR Video."),
                w.seed(),
                w.denoise_timesteps(),
                w.steps(),
                w.shift(),
                w.frames_per_chunk(),
                w.cache_policy(),
                w.base_sink_frames(),
                w.window_frames(),
                io.Int.Input(
                    "context_timestep", default=0, min=0, max=999,
                    tooltip="Timestep of the pass that writes a finished chunk into the cache. 0 (default): the "
                    "clean chunk, as Self Forcing. Some CausVid variants re-noise the context slightly (e.g. 50)."),
                io.Int.Input(
                    "start_frames", default=0, min=0, max=4096,
                    tooltip="Leading latent frames of the input latent taken as given (image-to-video from a VAE-"
                    "encoded image, or continuing a video): they are encoded into the cache and copied to the "
                    "output unchanged; generation starts after them. Default 0. Leave 0 with ARVideoI2V, whose start "
                    "image is used instead."),
                io.Combo.Input(
                    "noise_layout", options=NOISE_LAYOUTS, default="pack", optional=True,
                    tooltip="How the seed becomes noise. 'pack' (default): one CPU generator drawn in a fixed order, "
                    "the same video on any device. 'comfy': the layout of core's Sampler AR Video with a RandomNoise "
                    "of this seed (start noise over the whole latent, fresh noise seeded per chunk and step on the "
                    "device), so both samplers make the same video on one device."),
                io.Boolean.Input(
                    "recache_on_switch", default=True, optional=True,
                    tooltip="With several prompts (AR Prompt Start): at each switch re-encode the frames the cache "
                    "holds under the new prompt (LongLive's KV re-cache; a few extra passes), so the next chunk "
                    "follows it without a seam. Off: only the text changes, the cached frames keep the old prompt."),
                w.vae_input(optional=True),
                w.return_frames(),
                w.save_video(px.SAVE_FORMATS),
                w.filename_prefix(),
                w.frame_rate(),
                w.live_preview(),
                io.Boolean.Input(
                    "warm_start", default=True, optional=True,
                    tooltip="Keep what this run built on the GPU for the next run with the same model and shapes: "
                    "its KV cache buffers, CUDA graphs, text buffers and head-ordered weight copies, so a re-queue "
                    "with a new seed or prompt pays no graph capture or set-up. That memory stays held between runs "
                    "(the log says how much; about 1.8 GiB plus the CUDA graphs for a 480p Wan 1.3B video with "
                    "Dummy Forcing); it is freed when ComfyUI unloads the model, when a run is cancelled or fails, and "
                    "at once when this is off. For a model that comes through Apply Dummy Forcing or AR Cache Policy "
                    "(a MODEL straight from the loader runs cold: ComfyUI could not tell the pack when it unloads it)."),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The video latent (VAE space): decode with VAE Decode."),
                w.DF_STATS.Output(display_name="stats", tooltip="Cache memory, attention cost, head types and "
                                  "seconds per chunk of this run: connect to Cache Stats."),
                io.Image.Output(display_name="IMAGE", tooltip="The decoded frames (needs the 'vae' input; with "
                                "'return_frames' off only the last frame)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent, seed, denoise_timesteps, steps, shift, frames_per_chunk, cache,
                sink_frames, window_frames, context_timestep, start_frames, noise_layout="pack", sigmas=None,
                noise=None, recache_on_switch=True, vae=None, return_frames=True, save_video="off",
                filename_prefix="video/ar_video", frame_rate=16.0, live_preview=True,
                warm_start=True) -> io.NodeOutput:
        pixels = None
        with node_errors(NAME, OWNERS):
            glue.check_float_widgets(frame_rate=frame_rate)
            options = px.PixelOptions(bool(return_frames), save_video, filename_prefix, float(frame_rate),
                                      bool(live_preview))
            px.check_options(options, vae, "sampler")
            if vae is not None:
                px.check_vae(vae)
            glue.check_float_widgets(shift=shift)
            spec = _cache_spec(model, glue.retention_of(cache, sink_frames, window_frames))
            settings = SamplerSettings(
                chunk_frames=int(frames_per_chunk), timesteps=glue.parse_timesteps(denoise_timesteps),
                steps=int(steps), shift=float(shift) if shift > 0 else glue.model_shift(model)[0],
                sigmas=None if sigmas is None else glue.sigmas_of(sigmas), context_timestep=float(context_timestep),
                seed=int(getattr(noise, "seed", seed)), noise="comfy" if noise is not None else noise_layout,
                recache=bool(recache_on_switch))
            initial = glue.initial_latent_of(model)
            if initial is not None and start_frames:
                raise SettingError("sampler", "start_frames", "the model carries an ARVideoI2V start image and "
                                   f"'start_frames' is {start_frames}: use one of them (set 'start_frames' to 0)")
            if initial is not None:
                check_finite(initial, "input", "model")  # ARVideoI2V's start image latent
            n_start = int(initial.shape[2]) if initial is not None else int(start_frames)
            run = glue.prepare_run(model, latent, positive, "positive", settings, spec, n_start,
                                   given_in_one_piece=initial is not None, schedule=True, warm=bool(warm_start))
            start = None
            if n_start:
                start = glue.to_model_space(model, initial if initial is not None else run.samples)
                start = start.expand(run.samples.shape[0], *start.shape[1:])
            init_noise = None if noise is None else noise.generate_noise({"samples": run.samples})
            chunk_done = None
            if vae is not None:
                node_id = cls.hidden.unique_id if cls.hidden is not None else None
                pixels = px.open_pixel_output(vae, run.samples.shape, options, node_id, owner="sampler",
                                              overlap=run.runner.device.type == "cuda",
                                              keep_loaded=[model_loading.runnable(model)])
                chunk_done = px.chunk_feed(model, pixels.stream)
            try:
                result = generate(run.runner, run.prompts, tuple(run.samples.shape), settings, spec,
                                  start_latent=start, start_frames=n_start, callback=run.progress,
                                  initial_noise=init_noise, given_in_one_piece=initial is not None,
                                  chunk_done=chunk_done)
                if pixels is not None:
                    pixels.stream.finish()
            except BaseException:
                model_loading.drop_warm()  # cancelled or failed: nothing is kept for the next run
                if pixels is not None:
                    pixels.stream.abort()
                raise
            model_loading.report_warm(run.runner)
            out = glue.to_latent_output(model, result.latent, latent)
            result.stats.frames_per_latent = frames_per_latent(model)
        if pixels is None:
            return io.NodeOutput(out, result.stats, None)
        return io.NodeOutput(out, result.stats, pixels.images(), ui=px.saved_ui(pixels))


def _cache_spec(model, widget_base) -> CacheSpec:
    """The model's cache settings with this node's base cache; a base set by AR Cache Policy
    must agree with this node's widgets (one value, one place)."""
    spec = glue.cache_spec_of(model) or CacheSpec()
    if spec.base is not None and spec.base != widget_base:
        raise SettingError("cache", "cache", f"the model comes through AR Cache Policy ({spec.base.describe()}) but this "
                           f"node's 'cache' widgets say {widget_base.describe()}: set them the same, or leave AR Cache "
                           "Policy out (it is for ComfyUI's own Sampler AR Video)")
    return spec.with_base(widget_base)
