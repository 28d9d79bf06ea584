"""AR Video Decode: VAE Decode for video latents, chunk by chunk (ComfyUI's own AR sampler
cannot decode inside its loop; this node gives its users the same streamed pixel path)."""
from __future__ import annotations

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from dummy_forcing_core.errors import SettingError, check_finite

from . import comfy_glue as glue
from . import pixel_output as px
from . import widgets as w
from .node_errors import node_errors

NAME = "AR Video Decode"


class ARVideoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ARVideoDecode",
            display_name=NAME,
            category=w.CATEGORY,
            description=(
                "Decodes a Wan2.1 video latent chunk by chunk with the VAE's causal state carried from chunk to "
                "chunk: the same frames as VAE Decode, with bounded GPU memory, frames played live on the node, and "
                "optionally written to a video file as they are decoded (any length, flat host memory). Use it in "
                "place of VAE Decode after ComfyUI's own Sampler AR Video; AR Video Sampler decodes by itself when "
                "given a VAE."),
            inputs=[
                io.Latent.Input("samples", tooltip="A Wan2.1 video latent [batch, 16, frames, height/8, width/8], "
                                "e.g. from SamplerCustomAdvanced with Sampler AR Video."),
                w.vae_input(optional=False),
                io.Int.Input("chunk_frames", default=3, min=1, max=64,
                             tooltip="Latent frames decoded per step (default 3 = 12 video frames). Only time and "
                             "memory per step change: the frames are the same for any value."),
                w.return_frames(),
                w.save_video(px.SAVE_FORMATS),
                w.filename_prefix(),
                w.frame_rate(),
                w.live_preview(),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The decoded frames (with 'return_frames' off "
                                     "only the last frame).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, samples, vae, chunk_frames=3, return_frames=True, save_video="off",
                filename_prefix="video/ar_video", frame_rate=16.0, live_preview=True) -> io.NodeOutput:
        with node_errors(NAME):
            glue.check_float_widgets("pixels", frame_rate=frame_rate)
            options = px.PixelOptions(bool(return_frames), save_video, filename_prefix, float(frame_rate),
                                      bool(live_preview))
            px.check_options(options, vae)
            px.check_vae(vae)
            x = _video_latent(samples)
            n = int(chunk_frames)
            if n < 1:
                raise SettingError("pixels", "chunk_frames", f"'chunk_frames' must be >= 1, got {n}")
            node_id = cls.hidden.unique_id if cls.hidden is not None else None
            pixels = px.open_pixel_output(vae, x.shape, options, node_id)
            steps = range(0, x.shape[2], n)
            pbar = comfy.utils.ProgressBar(len(steps))
            try:
                for i, f0 in enumerate(steps):
                    comfy.model_management.throw_exception_if_processing_interrupted()
                    pixels.stream.push(x[:, :, f0:f0 + n].to(vae.device))
                    pbar.update_absolute(i + 1, len(steps))
                pixels.stream.finish()
            except BaseException:
                pixels.stream.abort()
                raise
        return io.NodeOutput(pixels.images(), ui=px.saved_ui(pixels))


def _video_latent(latent):
    x = latent.get("samples") if isinstance(latent, dict) else None
    if x is None or x.ndim != 5:
        shape = None if x is None else list(x.shape)
        raise SettingError("input", "samples", f"the 'samples' input is not a video latent [batch, 16, frames, "
                           f"height/8, width/8] (got {shape}); connect the LATENT of a video sampler")
    if x.shape[1] != px.WAN_LATENT_CHANNELS:
        raise SettingError("input", "samples", f"the 'samples' latent has {x.shape[1]} channels; a Wan2.1 VAE "
                           "decodes 16-channel Wan2.1 latents (Wan2.2 5B latents have 48: use VAE Decode with its "
                           "own VAE)")
    check_finite(x, "input", "samples")
    return x
