"""The pixel path of a node: a ComfyUI VAE becomes the core's chunk decoder and the node's pixel
outputs (IMAGE frames, a video file in ComfyUI's output folder, the live view) become the
core's frame sinks (``dummy_forcing_core.pixel_stream``).

Everything is checked before any sampling: the VAE (Wan2.1 family), the file name (inside the
output folder) and that the frames have somewhere to go.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

import comfy.model_management
import folder_paths
from comfy_api.latest import io, ui

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.pixel_stream import FrameCollector, PixelStream
from dummy_forcing_core.vae_stream import TAEHVDecoder, WanCausalDecoder
from dummy_forcing_core.video_file import CODECS, VideoFileWriter

from .live_view import LiveView

__all__ = ["PixelOptions", "PixelOutput", "check_vae", "open_pixel_output", "SAVE_FORMATS"]

log = logging.getLogger("dummy_forcing")
SAVE_FORMATS = ["off"] + sorted(CODECS)
WAN_LATENT_CHANNELS = 16
FITS = ("the Wan2.1 VAE (wan_2.1_vae.safetensors) or a tiny Wan2.1 autoencoder (lighttaew2_1 / taew2_1), "
        "loaded with Load VAE")


@dataclass(frozen=True)
class PixelOptions:
    """What a node does with the decoded frames. save: 'off' or a container in CODECS."""

    return_frames: bool = True
    save: str = "off"
    filename_prefix: str = "video/ar_video"
    frame_rate: float = 16.0
    live_preview: bool = True


def _kind(vae, name: str) -> str:
    """'wan' or 'taehv', or a SettingError naming the input and what fits."""
    fsm = getattr(vae, "first_stage_model", None)
    if fsm is None or not hasattr(vae, "patcher"):
        raise SettingError("input", name, f"the '{name}' input is not a VAE (got {type(vae).__name__}); connect "
                           f"{FITS}")
    channels = getattr(vae, "latent_channels", None)
    kind = type(fsm).__name__
    module = type(fsm).__module__
    if kind == "WanVAE" and module.endswith("wan.vae") and channels == WAN_LATENT_CHANNELS:
        return "wan"
    if kind == "TAEHV" and channels == WAN_LATENT_CHANNELS:
        return "taehv"
    what = f"a {kind} VAE with {channels}-channel latents" if channels else f"a {kind} VAE"
    if kind == "WanVAE":
        what += " (Wan2.2's VAE)" if channels == 48 else ""
    raise SettingError("input", name, f"the '{name}' input is {what}, not a Wan2.1-family VAE: the causal Wan2.1 "
                       f"models make 16-channel Wan2.1 latents. Connect {FITS}")


def check_vae(vae, name: str = "vae") -> None:
    _kind(vae, name)


def frame_decoder(vae, name: str = "vae"):
    """The core's chunk decoder over a loaded ComfyUI VAE (same frames as VAE Decode)."""
    fsm = vae.first_stage_model
    out_dtype = vae.vae_output_dtype() if hasattr(vae, "vae_output_dtype") else torch.float32
    if _kind(vae, name) == "taehv":
        return TAEHVDecoder(fsm, vae.vae_dtype, vae.device, out_dtype, vae.process_output)
    import comfy.ldm.wan.vae as wan_vae  # noqa: PLC0415 - only for this VAE
    # ComfyUI 0.2x decodes frame 0, then 2 latent frames per call; 0.3.x one frame per call
    if hasattr(wan_vae, "count_cache_layers"):
        slots, segment = wan_vae.count_cache_layers(fsm.decoder), 2
    else:
        slots, segment = wan_vae.count_conv3d(fsm.decoder), 1
    return WanCausalDecoder(fsm, slots, segment, vae.vae_dtype, vae.device, out_dtype, vae.process_output)


def decode_memory(vae, latent_shape) -> int:
    """Bytes ComfyUI asks for to decode a chunk of ``latent_shape`` [B, C, n, H, W]."""
    try:
        return int(vae.memory_used_decode(list(latent_shape), vae.vae_dtype))
    except Exception:  # an estimate only
        return 0


def check_options(options: PixelOptions, vae, owner: str = "pixels") -> None:
    if options.save not in SAVE_FORMATS:
        raise SettingError(owner, "save_video", f"'save_video' must be one of {', '.join(SAVE_FORMATS)}, got "
                           f"{options.save!r}")
    if vae is None and (options.save != "off"):
        raise SettingError(owner, "save_video", "'save_video' needs the 'vae' input: connect the Wan2.1 VAE (or "
                           "lighttaew2_1) to decode the video while it is made, or set 'save_video' to off")
    if not (options.frame_rate > 0 and options.frame_rate < 1000):
        raise SettingError(owner, "frame_rate", f"'frame_rate' must be in (0, 1000), got {options.frame_rate}")


def video_paths(prefix: str, videos: int, ext: str, width: int, height: int, owner: str = "pixels"):
    """Final paths in ComfyUI's output folder, one per video, and their (filename, subfolder)."""
    out_dir = folder_paths.get_output_directory()
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir, width, height)
    except Exception as e:
        raise SettingError(owner, "filename_prefix", f"'filename_prefix' = {prefix!r} cannot be used: {e}. Give a "
                           "name inside ComfyUI's output folder, such as video/ar_video") from e
    files = [f"{name}_{counter + b:05}_.{ext}" for b in range(videos)]
    return [os.path.join(folder, f) for f in files], [(f, subfolder) for f in files]


class PixelOutput:
    """A node's pixel outputs for one run: ``stream`` (push chunks, then finish or abort),
    then ``images()`` (IMAGE or None) and ``saved`` ((filename, subfolder) of each file)."""

    def __init__(self, stream: PixelStream, collector: FrameCollector | None, last: "_LastFrame",
                 saved: list[tuple[str, str]]):
        self.stream, self.collector, self.last, self.saved = stream, collector, last, saved

    def images(self) -> torch.Tensor | None:
        if self.collector is not None:
            return self.collector.images()
        return self.last.frame


class _LastFrame:
    """Keeps only the newest frame (IMAGE when frames are not returned: a preview, flat memory)."""

    def __init__(self):
        self.frame = None

    def write(self, frames, first):
        self.frame = frames[:1, -1].clone()

    def close(self):
        pass

    def abort(self):
        self.frame = None


def open_pixel_output(vae, latent_shape, options: PixelOptions, node_id=None, overlap: bool | None = None,
                      owner: str = "pixels", keep_loaded=()) -> PixelOutput:
    """Check, load the VAE (with room for one chunk's decode; ``keep_loaded``: patchers loaded
    with it, e.g. the diffusion model being sampled, so one does not push the other out) and
    open the sinks. latent_shape: the video latent's [B, C, F, H, W]; the VAE must be checked."""
    check_options(options, vae, owner)
    B, C, _, H, W = (int(v) for v in latent_shape)
    kind = _kind(vae, "vae")
    if C != WAN_LATENT_CHANNELS:  # e.g. the shipped small model's 12-channel codec latents
        raise SettingError("input", "vae", f"the 'vae' input decodes {WAN_LATENT_CHANNELS}-channel Wan2.1 latents but "
                           f"this video's latents have {C} channels" + (" (the small model's: leave 'vae' unconnected "
                           "and decode them with Tiny Decode)" if C == 12 else ""))
    scale = 8
    paths, saved = [], []
    if options.save != "off":
        paths, saved = video_paths(options.filename_prefix, B, options.save, W * scale, H * scale, owner)
    decoder = frame_decoder(vae)
    comfy.model_management.load_models_gpu([*keep_loaded, vae.patcher],
                                           memory_required=decode_memory(vae, (B, WAN_LATENT_CHANNELS, 3, H, W)))
    collector = FrameCollector(torch.float32, comfy.model_management.intermediate_device()) \
        if options.return_frames else None
    last = _LastFrame()
    sinks = [collector if collector is not None else last]
    if paths:
        sinks.append(VideoFileWriter(paths, options.frame_rate))
    if options.live_preview:
        sinks.append(LiveView(node_id, options.frame_rate))
    if overlap is None:
        overlap = torch.device(vae.device).type == "cuda"
    log.debug("pixel output: %s decoder, overlap %s, sinks %s", kind, overlap, [type(s).__name__ for s in sinks])
    return PixelOutput(PixelStream(decoder, sinks, overlap=overlap, device=vae.device), collector, last, saved)


def chunk_feed(model, stream: PixelStream):
    """The core's ``chunk_done(f0, x)``: a model-space piece of the video -> VAE space -> decode."""
    fmt = model.model.latent_format

    def feed(f0: int, x: torch.Tensor) -> None:
        x = fmt.process_out(x.float())
        if f0 == 0 and x.shape[2] > 1:  # the video's first frame on its own: it shows sooner
            stream.push(x[:, :, :1])
            x = x[:, :, 1:]
        stream.push(x)

    return feed


def saved_ui(pixels: PixelOutput):
    """The node's UI message: the saved videos, shown on the node as Save Video does."""
    if not pixels.saved:
        return None
    return ui.PreviewVideo([ui.SavedResult(f, sub, io.FolderType.output) for f, sub in pixels.saved])
