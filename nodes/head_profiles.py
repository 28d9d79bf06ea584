"""Profile Heads (offline head profiling over prompts x seeds) and Load Head Profile."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.heatmap import head_map_image
from dummy_forcing_core.head_profile import HeadProfile, ProfilingSpec, profile_heads
from dummy_forcing_core.sampler import SamplerSettings

from . import comfy_glue as glue
from . import profile_files
from . import widgets as w
from .node_errors import node_errors

PROFILE_NAME = "Profile Heads"
LOAD_NAME = "Load Head Profile"


def head_map(profile: HeadProfile, dummy_fraction: float) -> torch.Tensor:
    return glue.image_tensor(head_map_image(profile.scores, profile.assign(float(dummy_fraction))))


class ProfileHeads(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProfileHeads",
            display_name=PROFILE_NAME,
            category=w.CATEGORY,
            description=(
                "Measures, once, where every attention head of a Wan model looks while generating: at the first "
                "frames (sink), at recent chunks (neighbor) or at the current chunk only (dummy candidates). It "
                "generates the first chunks of a video for every prompt x seed with a full cache and averages the "
                "attention of chunks ar_start.. into a HEAD_PROFILE. Feed it to Apply Dummy Forcing to skip online "
                "profiling, or save it and reuse it with Load Head Profile. The image is the head map: rows are "
                "layers, columns heads, colour the head type at preview_dummy_heads, shade the attention on the "
                "current chunk."),
            inputs=[
                io.Model.Input("model", tooltip="The Wan2.1 diffusion model to profile (Load Diffusion Model). A "
                               "profile only fits models with the same layers and heads."),
                io.Conditioning.Input(
                    "conditioning", tooltip="One or several prompts (chain CLIP Text Encode outputs through "
                    "Conditioning (Combine) for several). Every entry is profiled; more varied prompts give a profile "
                    "that generalises better (the dummy set overlaps ~76% across prompts)."),
                io.Latent.Input(
                    "latent", tooltip="A Wan video latent (EmptyHunyuanLatentVideo) whose shape sets resolution, "
                    "batch and length. Only the first ar_start + chunks_to_profile chunks are generated; it needs at "
                    "least ar_start + chunks_to_profile + 1 chunks. Profile at the resolution you will generate at."),
                w.seed(" Seeds seed .. seed + runs_per_prompt - 1 are used; the seed also drives query sampling."),
                io.Int.Input(
                    "runs_per_prompt", default=1, min=1, max=64,
                    tooltip="Runs (different seeds) per prompt, averaged into the profile (default 1). Head types are "
                    "stable across seeds, so 1-2 is usually enough; cost grows linearly."),
                io.Int.Input(
                    "ar_start", default=1, min=1, max=10000,
                    tooltip="First generated chunk whose clean pass is profiled (default 1, as Apply Dummy Forcing "
                    "for Self Forcing; 2 for LongLive, with profile_sink_frames 3). Use the same ar_start as when "
                    "generating."),
                io.Int.Input(
                    "chunks_to_profile", default=1, min=1, max=1000,
                    tooltip="How many chunks from ar_start on are profiled and averaged (default 1). Head types are "
                    "~92% stable across chunks; more chunks cost one extra chunk each."),
                io.Int.Input(
                    "sink_frames", default=1, min=1, max=1000,
                    tooltip="Latent frames counted as the attention sink when measuring (default 1). Use the same "
                    "value as sink_frames on Apply Dummy Forcing."),
                w.frames_per_chunk(),
                w.denoise_timesteps(),
                w.steps(),
                w.shift(),
                io.Float.Input(
                    "sample_fraction", default=0.25, min=0.01, max=1.0, step=0.01,
                    tooltip="Share of the current chunk's queries sampled to measure attention (default 0.25, the "
                    "paper). 1.0 uses every query: exact but slower on large videos."),
                io.Float.Input(
                    "preview_dummy_heads", default=0.5, min=0.0, max=1.0, step=0.01,
                    tooltip="Only for the head map image: fraction of heads shown as dummy (default 0.5). Does not "
                    "change the profile; Apply Dummy Forcing picks the real number."),
                io.String.Input(
                    "save_name", default="",
                    tooltip="Empty (default): nothing is saved. A name such as 'self_forcing_480p' saves the profile "
                    "to <ComfyUI output>/dummy_forcing/profiles/<name>.safetensors for Load Head Profile; an existing "
                    "file is never overwritten (a _2, _3, ... suffix is added)."),
                io.Int.Input(
                    "profile_sink_frames", default=0, min=0, max=1000, optional=True,
                    tooltip="The region measured as 'sink'. 0 (default): the first sink_frames frames, the frames a "
                    "sink head keeps. > 0: the first this many cached frames, whatever sink_frames is: the authors' "
                    "LongLive setting measures one chunk (3, at ar_start 2) while sink heads keep 1 frame. Use the "
                    "same value as Apply Dummy Forcing's profile_sink_frames (its LongLive preset sets 3). Must be "
                    "less than the frames cached before ar_start. Saved in the profile's settings."),
            ],
            outputs=[
                w.HEAD_PROFILE.Output(display_name="head_profile", tooltip="Per-head attention scores of this model; "
                                      "connect to Apply Dummy Forcing."),
                io.Image.Output(display_name="head_map", tooltip="Layers x heads map: hue = head type, strength = "
                                "attention on the current chunk."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, conditioning, latent, seed, runs_per_prompt, ar_start, chunks_to_profile, sink_frames,
                frames_per_chunk, denoise_timesteps, steps, shift, sample_fraction, preview_dummy_heads,
                save_name, profile_sink_frames=0) -> io.NodeOutput:
        with node_errors(PROFILE_NAME, {"sampler": PROFILE_NAME, "profiling": PROFILE_NAME}):
            glue.check_float_widgets("profiling", shift=shift, sample_fraction=sample_fraction,
                                     preview_dummy_heads=preview_dummy_heads)
            geom = glue.wan_geometry(model)
            save_path = profile_files.check_save_name(save_name) if (save_name or "").strip() else None
            settings = SamplerSettings(chunk_frames=int(frames_per_chunk),
                                       timesteps=glue.parse_timesteps(denoise_timesteps), steps=int(steps),
                                       shift=float(shift) if shift > 0 else glue.model_shift(model)[0])
            spec = ProfilingSpec.create(geom, int(ar_start), int(chunks_to_profile), int(sink_frames),
                                        float(sample_fraction), int(seed), int(profile_sink_frames))
            seeds = [int(seed) + i for i in range(int(runs_per_prompt))]
            n_prompts = len(conditioning) if isinstance(conditioning, (list, tuple)) else 1
            run = glue.prepare_run(model, latent, conditioning, "conditioning", settings, spec,
                                   videos=n_prompts * len(seeds))
            profile = profile_heads(run.runner, run.contexts, tuple(run.samples.shape), settings, seeds, spec,
                                    callback=run.progress)
            profile.settings["runs"] = len(run.contexts) * len(seeds)
            image = head_map(profile, preview_dummy_heads)
            text = profile.summary(profile.assign(float(preview_dummy_heads)))
            if save_path is not None:
                path = profile_files.save_profile(profile, save_path)
                text = f"saved to {path}\n" + text
        shown = {**ui.PreviewText(text).as_dict(), **ui.PreviewImage(image, cls=cls).as_dict()}
        return io.NodeOutput(profile, image, ui=shown)


class LoadHeadProfile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadHeadProfile",
            display_name=LOAD_NAME,
            category=w.CATEGORY,
            description=(
                "Loads a head profile saved by Profile Heads (<output>/dummy_forcing/profiles) or placed in "
                "<models>/dummy_forcing_profiles, for Apply Dummy Forcing. A profile fits only models with the same "
                "layers and heads; Apply Dummy Forcing checks that."),
            inputs=[
                io.Combo.Input(
                    "profile_name", options=profile_files.list_profiles(),
                    tooltip="A .safetensors head profile from <ComfyUI output>/dummy_forcing/profiles (where Profile "
                    "Heads saves) or <ComfyUI models>/dummy_forcing_profiles. Refresh the page (R) after saving a new "
                    "one. Files that are not head profiles (models, LoRAs) are rejected with an error."),
            ],
            outputs=[w.HEAD_PROFILE.Output(display_name="head_profile", tooltip="Connect to Apply Dummy Forcing.")],
        )

    @classmethod
    def fingerprint_inputs(cls, profile_name):
        try:
            path = profile_files.profile_path(profile_name)
            st = os.stat(path)
            return f"{path}:{st.st_mtime_ns}:{st.st_size}"
        except Exception:
            return profile_name

    @classmethod
    def execute(cls, profile_name) -> io.NodeOutput:
        with node_errors(LOAD_NAME):
            path = profile_files.profile_path(profile_name)
            try:
                profile = HeadProfile.load(path)
            except ValueError as e:  # not a head profile (a model, a LoRA, a damaged file): say which file
                raise SettingError("input", "profile_name", str(e)) from e
        return io.NodeOutput(profile)
