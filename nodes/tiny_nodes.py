"""The small model that ships with the pack, in a graph with nothing to download:
Load Tiny Model (MODEL + its text encoder), Tiny Text Encode (CONDITIONING), Tiny Empty
Latent (LATENT) and Tiny Decode (IMAGE frames). Between them any of the pack's nodes
(Apply Dummy Forcing, AR Video Sampler, Cache Stats) or ComfyUI's own AR sampler run it."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.model_management

from dummy_forcing_core.errors import SettingError, check_finite
from dummy_forcing_core.tiny.codec import CODEC
from dummy_forcing_core.tiny.model import DEFAULT_PATH, read_tiny
from dummy_forcing_core.tiny.text import TextEncoder, words_of
from dummy_forcing_core.tiny.world import DEFAULT_PROMPT, MAX_OBJECTS, PROMPT_FORM, prompt_warnings

from . import widgets as w
from .node_errors import node_errors
from .tiny_comfy_model import comfy_model

log = logging.getLogger("dummy_forcing")

CATEGORY = w.CATEGORY
TINY_TEXT = io.Custom("DF_TINY_TEXT")
LOADER, ENCODE, EMPTY, DECODE = "Load Tiny Model", "Tiny Text Encode", "Tiny Empty Latent", "Tiny Decode"
TRAINED_FRAMES, TRAINED_SIZE = 24, 32
BLOCK = CODEC.factor * 2  # frame sizes are multiples of the codec's 2 x the transformer's patch 2


class TinyModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DFTinyModelLoader",
            display_name=LOADER,
            category=CATEGORY,
            description=(
                "Loads the small causal video model that ships with the pack (assets/tiny_model, 12 MB, trained in "
                "~40 min on one GPU): a 6-layer x 8-head Wan2.1 transformer that makes 24 frames of 32x32 pixels of "
                "coloured shapes moving on a background, chunk by chunk, from a prompt of its own small world. It "
                "runs on a CPU in seconds, so every node of the pack can be tried without downloading anything. "
                "The MODEL is a ComfyUI Wan2.1 model (causal AR on ComfyUI 0.21+, shift 5): connect it to Apply "
                "Dummy Forcing / AR Video Sampler, or to ComfyUI's Sampler AR Video. Its latents are 12-channel "
                "pixel blocks, not Wan VAE latents: make them with Tiny Empty Latent, decode them with Tiny "
                "Decode."),
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The tiny Wan2.1 transformer as a ComfyUI MODEL "
                                "(float32, flow shift 5; frames_per_chunk 3 is what it was trained with)."),
                TINY_TEXT.Output(display_name="text_encoder", tooltip="Its own small text encoder (64-dim tokens, "
                                 "32 of them): connect to Tiny Text Encode. umT5 / CLIP Text Encode does not fit "
                                 "this model."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        with node_errors(LOADER):
            try:
                f = read_tiny(DEFAULT_PATH)
            except FileNotFoundError:
                raise SettingError("input", "model", f"the shipped model file {DEFAULT_PATH} is missing; reinstall "
                                   "the pack (a git clone includes it)") from None
            except (OSError, ValueError) as e:  # not a safetensors file, or not the tiny model's format
                raise SettingError("input", "model", f"{e}; reinstall the pack to restore the shipped file") from e
            model = comfy_model(f)
            text = f.text_encoder()
            text.max_objects = int(f.config.get("data", {}).get("max_objects", MAX_OBJECTS))
        return io.NodeOutput(model, text)


class TinyTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DFTinyTextEncode",
            display_name=ENCODE,
            category=CATEGORY,
            description=(
                "Encodes a prompt of the tiny model's world with its own text encoder. The world knows only its "
                "own words: " + PROMPT_FORM + ". Words it does not know, a prompt past its 32 tokens or more than 3 "
                "objects are named on the node and in the console (the prompt is still used)."),
            inputs=[
                TINY_TEXT.Input("text_encoder", tooltip="The 'text_encoder' output of Load Tiny Model."),
                io.String.Input(
                    "prompt", default=DEFAULT_PROMPT, multiline=True,
                    tooltip="What to generate, in the tiny world's form: 'a <small|big> <colour> <circle|square|"
                    "triangle> at <start cell> <moving right|moving up left|falling|...> <fast|slowly>', up to 3 "
                    "objects separated by commas, then 'on a <black|gray|navy|maroon|olive|teal> <plain|gradient> "
                    "background'. Object colours: red, green, blue, yellow, cyan, white."),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING", tooltip="The prompt as the tiny model's "
                                            "text context [1, 32, 64]: connect to AR Video Sampler's 'positive' "
                                            "(or CFGGuider for ComfyUI's own AR sampler).")],
        )

    @classmethod
    def execute(cls, text_encoder, prompt) -> io.NodeOutput:
        with node_errors(ENCODE):
            if not isinstance(text_encoder, TextEncoder):
                raise SettingError("input", "text_encoder", f"the 'text_encoder' input is a "
                                   f"{type(text_encoder).__name__}; connect the 'text_encoder' output of Load Tiny "
                                   "Model")
            warnings = prompt_warnings(prompt, text_encoder, getattr(text_encoder, "max_objects", MAX_OBJECTS))
            with torch.no_grad():
                context = text_encoder.encode([prompt]).float().cpu()
        for message in warnings:
            log.warning("%s: %s", ENCODE, message)
        read = " ".join(words_of(prompt, text_encoder.config.filler, text_encoder.config.synonyms))
        shown = "\n".join([f"warning: {m}" for m in warnings] + ([PROMPT_FORM] if warnings else [])
                          + [f"the model reads: {read or '(nothing)'}"])
        return io.NodeOutput([[context, {}]], ui=ui.PreviewText(shown))


class TinyEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DFTinyEmptyLatent",
            display_name=EMPTY,
            category=CATEGORY,
            description=(
                "An empty video latent for the tiny model: [batch, 12, frames, size/2, size/2] (one latent frame "
                "per video frame; each latent pixel is a 2x2 block of RGB). Connect it to AR Video Sampler's "
                "'latent' (or SamplerCustomAdvanced's 'latent_image')."),
            inputs=[
                io.Int.Input("frames", default=TRAINED_FRAMES, min=1, max=1024,
                             tooltip="Video frames (= latent frames). Default 24, what the model was trained on; "
                             "longer videos work chunk by chunk but later frames are untested (use a sink + "
                             "window cache for long ones)."),
                io.Int.Input("size", default=TRAINED_SIZE, min=BLOCK, max=256, step=BLOCK,
                             tooltip=f"Width and height in pixels, a multiple of {BLOCK}. Default 32, the only size "
                             "the model was trained at; other sizes run but are untested."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Videos made at once (default 1); with one seed, each gets its own noise."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="Zeros of the tiny model's latent shape.")],
        )

    @classmethod
    def execute(cls, frames, size, batch_size) -> io.NodeOutput:
        with node_errors(EMPTY):
            if size % BLOCK:
                raise SettingError("input", "size", f"'size' = {size} must be a multiple of {BLOCK} (the codec's 2x2 "
                                   "pixel blocks and the transformer's 2x2 patches)")
            C, F, h, wd = CODEC.latent_shape(int(frames), int(size), int(size))
        samples = torch.zeros(int(batch_size), C, F, h, wd, device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})


class TinyDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DFTinyDecode",
            display_name=DECODE,
            category=CATEGORY,
            description=(
                "Turns the tiny model's latents into IMAGE frames (its codec is exact: no VAE, no loss), enlarged "
                "'scale' times with sharp pixels. Connect to Save Animated WEBP / Create Video + Save Video / "
                "Preview Image. A Wan2.1 latent (16 channels) is refused: decode that with VAE Decode."),
            inputs=[
                io.Latent.Input("latent", tooltip="A latent of the tiny model (AR Video Sampler or "
                                "SamplerCustomAdvanced with Load Tiny Model): [batch, 12, frames, h, w]."),
                io.Int.Input("scale", default=4, min=1, max=16,
                             tooltip="Screen pixels per video pixel (default 4: 32x32 frames become 128x128), "
                             "nearest neighbour so the shapes stay sharp."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The frames [batch x frames, height, width, 3], "
                                     "video after video.")],
        )

    @classmethod
    def execute(cls, latent, scale) -> io.NodeOutput:
        with node_errors(DECODE):
            samples = latent.get("samples") if isinstance(latent, dict) else None
            if not torch.is_tensor(samples):
                raise SettingError("input", "latent", "the 'latent' input is not a LATENT (a dict with 'samples')")
            CODEC.check(samples.shape, "latent")
            check_finite(samples, "input", "latent")
            frames = CODEC.frames(samples, int(scale))
        return io.NodeOutput(frames)


NODES = [TinyModelLoader, TinyTextEncode, TinyEmptyLatent, TinyDecode]
