"""Widget inputs that several nodes share (same names, defaults, ranges and tooltips)."""
from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "video/dummy forcing"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
HEAD_PROFILE = io.Custom("HEAD_PROFILE")
DF_STATS = io.Custom("DF_STATS")


def seed(tooltip_extra: str = "") -> io.Int.Input:
    return io.Int.Input(
        "seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
        tooltip="Noise seed (default 0). The same seed, settings and model give the same video on any device: "
                "noise is drawn on the CPU in a fixed order. With a batch > 1 the one seed drives the whole batch "
                "(each video gets different noise)." + tooltip_extra)


def denoise_timesteps() -> io.String.Input:
    return io.String.Input(
        "denoise_timesteps", default="1000,750,500,250",
        tooltip="Denoising timesteps of every chunk, comma-separated, each in (0, 1000], before the shift warp. "
                "Default 1000,750,500,250: the 4-step schedule Self Forcing / CausVid / LongLive were distilled "
                "for. Leave empty to use 'steps' evenly spaced timesteps instead. Only change it for a checkpoint "
                "trained with another schedule.")


def steps() -> io.Int.Input:
    return io.Int.Input(
        "steps", default=4, min=1, max=100,
        tooltip="Denoising steps per chunk, used only when 'denoise_timesteps' is empty (default 4): timesteps "
                "1000, 1000*(1-1/steps), ... More steps cost proportionally more time; distilled causal "
                "checkpoints are made for 4.")


def shift() -> io.Float.Input:
    return io.Float.Input(
        "shift", default=0.0, min=0.0, max=100.0, step=0.01,
        tooltip="Flow-matching shift applied to the timesteps: sigma' = shift*s / (1 + (shift-1)*s). Default 0 = from "
                "the model: ModelSamplingSD3's shift when the model comes through it, the checkpoint's own when "
                "ComfyUI loads it as a causal AR model (5), else 5.0, the value Self Forcing, LongLive and Causal "
                "Forcing were distilled with. Set a value to override (CausVid uses 8). Unused when 'sigmas' is "
                "connected.")


def frames_per_chunk() -> io.Int.Input:
    return io.Int.Input(
        "frames_per_chunk", default=3, min=1, max=64,
        tooltip="Latent frames generated per autoregressive chunk (default 3 = 12 video frames, chunk-wise Self "
                "Forcing / LongLive). Use 1 for frame-wise checkpoints. Must match how the checkpoint was trained; "
                "a last chunk that does not fill up is generated shorter.")


CACHE_POLICIES = ["full", "sink + window"]


def cache_policy() -> io.Combo.Input:
    return io.Combo.Input(
        "cache", options=list(CACHE_POLICIES), default="full",
        tooltip="What the KV cache keeps of past frames. 'full' (default): every generated frame (Self Forcing's "
                "setting; memory grows with the video). 'sink + window': the first 'sink_frames' frames forever plus "
                "the last 'window_frames' (LongLive-style; bounded memory for long videos). With Dummy Forcing this "
                "is the cache used until ar_start.")


def base_sink_frames() -> io.Int.Input:
    return io.Int.Input(
        "sink_frames", default=3, min=0, max=1024,
        tooltip="'sink + window' only: latent frames at the start of the video that stay in the cache forever "
                "(attention sink). Default 3 (one chunk), as LongLive. Ignored with 'full'.")


def window_frames() -> io.Int.Input:
    return io.Int.Input(
        "window_frames", default=12, min=0, max=4096,
        tooltip="'sink + window' only: most recent latent frames kept in the cache (default 12 = 4 chunks of 3). "
                "Larger windows remember more but cost memory and time. Ignored with 'full'.")


# ------------------------------------------------------------------------------------ pixels out
def vae_input(optional: bool) -> io.Vae.Input:
    return io.Vae.Input(
        "vae", optional=optional,
        tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors) or a tiny Wan2.1 autoencoder (lighttaew2_1 / taew2_1, "
                "much faster, a little softer), from Load VAE. Each chunk is decoded as soon as it is final, "
                "overlapped with the next chunk on a GPU; the frames equal VAE Decode of the whole latent."
                + (" Leave it unconnected to return only the latent." if optional else ""))


def return_frames() -> io.Boolean.Input:
    return io.Boolean.Input(
        "return_frames", default=True, optional=True,
        tooltip="Return every decoded frame as IMAGE (for Save Video, Create Video, ...). Off: only the last "
                "frame is returned and host memory stays flat, for long videos written with 'save_video' "
                "(a 4-minute 480p video is ~18 GB of IMAGE).")


def save_video(formats: list[str]) -> io.Combo.Input:
    return io.Combo.Input(
        "save_video", options=formats, default="off", optional=True,
        tooltip="Write the video to ComfyUI's output folder while it is decoded, chunk by chunk (any length, "
                "flat memory): mp4 (H.264) or webm (VP9). A cancelled or failed run leaves no file under the "
                "final name. Needs the 'vae' input. Off: nothing is written (use Save Video on IMAGE).")


def filename_prefix() -> io.String.Input:
    return io.String.Input(
        "filename_prefix", default="video/ar_video", optional=True,
        tooltip="Name of the saved video inside ComfyUI's output folder (a subfolder may be given, as in Save "
                "Video); a counter is appended. Names that leave the output folder are refused.")


def frame_rate() -> io.Float.Input:
    return io.Float.Input(
        "frame_rate", default=16.0, min=1.0, max=120.0, step=1.0, optional=True,
        tooltip="Frames per second of the saved video and of the live view (Wan2.1 models: 16).")


def live_preview() -> io.Boolean.Input:
    return io.Boolean.Input(
        "live_preview", default=True, optional=True,
        tooltip="Play the frames decoded so far on this node in the browser while the video is made (updated "
                "chunk by chunk; small JPEG previews in ComfyUI's temp folder).")
