"""ComfyUI plumbing shared by the nodes: MODEL / LATENT / CONDITIONING in, the core's types out.

Everything that touches ComfyUI's own modules (model management, progress bars, latent
formats, folders) lives here, so the node files stay thin and the core never imports comfy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from dummy_forcing_core.dummy_forcing import DummyForcingConfig
from dummy_forcing_core.kv_cache import FULL, KVCache, Retention
from dummy_forcing_core.transformer import ChunkRunner, ModelGeometry, check_latent

log = logging.getLogger("dummy_forcing")

TRANSFORMER_OPTIONS_KEY = "dummy_forcing"   # model_options["transformer_options"][...] -> DummyForcingConfig
PROFILE_FOLDER = "dummy_forcing_profiles"   # folder_paths name: <models>/dummy_forcing_profiles (+ output)
PROFILE_OUTPUT_SUBDIR = os.path.join("dummy_forcing", "profiles")
PROFILE_EXT = ".safetensors"
CACHE_POLICIES = ["full", "sink + window"]


# ------------------------------------------------------------------------------------ errors
@contextlib.contextmanager
def node_errors(node: str):
    """Re-raise the core's ValueErrors prefixed with the node's display name. Interrupts
    (comfy.model_management.InterruptProcessingException) and other errors pass unchanged."""
    try:
        yield
    except ValueError as e:
        msg = str(e)
        if msg.startswith(f"{node}:"):
            raise
        raise ValueError(f"{node}: {msg}") from e


# ------------------------------------------------------------------------------------ MODEL
def wan_geometry(model, node: str, input_name: str = "model") -> ModelGeometry:
    """The Wan transformer's geometry, or a ValueError naming the node and input."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if dm is None or not hasattr(base, "latent_format"):
        raise ValueError(f"{node}: the '{input_name}' input is not a ComfyUI diffusion model (got "
                         f"{type(model).__name__}); connect a MODEL from Load Diffusion Model (UNETLoader) "
                         "with a Wan2.1 text-to-video checkpoint")
    try:
        geom = ModelGeometry.of(dm)
    except TypeError as e:
        raise ValueError(f"{node}: the '{input_name}' input is a {type(base).__name__} model "
                         f"({type(dm).__name__}), not a Wan2.1 video transformer. Load a Wan2.1 diffusion "
                         "model (e.g. a Self Forcing / CausVid / LongLive checkpoint, T2V 1.3B) with Load "
                         f"Diffusion Model. ({e})") from e
    channels = getattr(base.latent_format, "latent_channels", geom.in_dim)
    if geom.in_dim != channels:
        raise ValueError(f"{node}: the '{input_name}' input takes {geom.in_dim} input channels but its latents have "
                         f"{channels}: image-to-video / control Wan models that concatenate extra channels are not "
                         "supported; load a Wan2.1 text-to-video model (Self Forcing, CausVid, LongLive)")
    return geom


def dummy_forcing_of(model) -> DummyForcingConfig | None:
    """The DummyForcingConfig that Apply Dummy Forcing attached to this MODEL, if any."""
    opts = getattr(model, "model_options", None) or {}
    cfg = (opts.get("transformer_options") or {}).get(TRANSFORMER_OPTIONS_KEY)
    if cfg is not None and not isinstance(cfg, DummyForcingConfig):
        raise ValueError(f"model_options['transformer_options']['{TRANSFORMER_OPTIONS_KEY}'] holds a "
                         f"{type(cfg).__name__}, not a Dummy Forcing configuration; re-create the Apply Dummy "
                         "Forcing node")
    return cfg


def with_dummy_forcing(model, cfg: DummyForcingConfig):
    """A clone of ``model`` carrying ``cfg``; the input patcher and its dicts are never touched."""
    m = model.clone()
    opts = dict(m.model_options or {})
    to = dict(opts.get("transformer_options") or {})
    to[TRANSFORMER_OPTIONS_KEY] = cfg
    opts["transformer_options"] = to
    m.model_options = opts
    return m


def compute_dtype(model) -> torch.dtype | None:
    base = model.model
    dt = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    if dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return dt
    # e.g. fp8 storage without a manual cast dtype: compute in a real float type
    return torch.bfloat16 if torch.device(model.load_device).type == "cuda" else torch.float32


def kv_cache_bytes(model, geom: ModelGeometry, shape, chunk_frames: int, retention: Retention = FULL) -> int:
    """Upper bound of the KV cache a run of latent ``shape`` (B, C, F, H, W) allocates."""
    B, _, Fr, Hh, Ww = shape
    _, ph, pw = geom.patch_size
    return KVCache.estimate_bytes(geom.num_layers, geom.num_heads, geom.head_dim, (Hh // ph) * (Ww // pw),
                                  chunk_frames, Fr, retention, B, compute_dtype(model))


def load_runner(model, chunk_shape=None, extra_bytes: int = 0) -> ChunkRunner:
    """Load the MODEL through ComfyUI's model management (weights, LoRA patches, offload), asking
    for room for a chunk's activations (``chunk_shape``) plus ``extra_bytes`` (the KV cache), and
    wrap its diffusion model in the core's ChunkRunner on the load device."""
    need = int(extra_bytes)
    if chunk_shape is not None:
        try:
            need += int(model.memory_required(list(chunk_shape)))
        except Exception:  # an estimate only
            pass
    comfy.model_management.load_models_gpu([model], memory_required=need, minimum_memory_required=need)
    return ChunkRunner(model.model.diffusion_model, dtype=compute_dtype(model), device=model.load_device)


# ------------------------------------------------------------------------------------ LATENT
def latent_samples(latent, node: str, geom: ModelGeometry, input_name: str = "latent") -> torch.Tensor:
    """The VAE-space samples of a LATENT, checked to be a Wan video latent for this model."""
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise ValueError(f"{node}: the '{input_name}' input is not a LATENT (a dict with 'samples')")
    x = latent["samples"]
    if x.ndim == 4:
        raise ValueError(f"{node}: the '{input_name}' input is an image latent {list(x.shape)} [B, C, H, W]; this "
                         "node generates video chunk by chunk and needs a video latent [B, 16, frames, H/8, W/8]: "
                         "use EmptyHunyuanLatentVideo (or a Wan video latent) instead of Empty Latent Image")
    if latent.get("noise_mask") is not None:
        log.warning("%s: the latent's noise_mask is ignored (the whole video is generated)", node)
    check_latent(x, geom, f"the '{input_name}' input")
    return x


def to_model_space(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.latent_format.process_in(x.float())


def to_latent_output(model, x: torch.Tensor, like: dict) -> dict:
    """A LATENT (VAE space, on the intermediate device) from model-space samples."""
    out = {k: v for k, v in like.items() if k not in ("samples", "noise_mask")}
    y = model.model.latent_format.process_out(x.float())
    out["samples"] = y.to(comfy.model_management.intermediate_device())
    return out


# ------------------------------------------------------------------------------------ CONDITIONING
def conditioning_contexts(cond, node: str, input_name: str, text_dim: int | None) -> list[torch.Tensor]:
    """The text context tensor [B, L, dim] of every CONDITIONING entry."""
    if not isinstance(cond, (list, tuple)) or not cond:
        raise ValueError(f"{node}: the '{input_name}' input is empty; connect a CONDITIONING from CLIP Text Encode")
    out = []
    for i, entry in enumerate(cond):
        t = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if not torch.is_tensor(t) or t.ndim != 3:
            raise ValueError(f"{node}: entry {i} of the '{input_name}' input is not a text conditioning "
                             f"[batch, tokens, dim] (got {type(t).__name__}"
                             f"{'' if not torch.is_tensor(t) else ' of shape ' + str(list(t.shape))})")
        if text_dim is not None and t.shape[-1] != text_dim:
            raise ValueError(f"{node}: the '{input_name}' conditioning has {t.shape[-1]}-dim tokens but the model's "
                             f"text embedding takes {text_dim} (umT5-XXL for Wan2.1); encode the prompt with a "
                             "CLIP loaded as type 'wan' (umt5_xxl)")
        out.append(t)
    return out


def text_dim_of(model) -> int | None:
    te = getattr(model.model.diffusion_model, "text_embedding", None)
    first = te[0] if isinstance(te, torch.nn.Sequential) and len(te) else te
    w = getattr(first, "weight", None)
    if getattr(first, "in_features", None):
        return int(first.in_features)
    return int(w.shape[1]) if torch.is_tensor(w) and w.ndim == 2 else None


def check_context_batch(ctx: torch.Tensor, batch: int, node: str, input_name: str) -> None:
    if ctx.shape[0] not in (1, batch):
        raise ValueError(f"{node}: the '{input_name}' conditioning has batch {ctx.shape[0]} but the latent has batch "
                         f"{batch}; give one prompt (batch 1, used for every video) or one per video ({batch})")


# ------------------------------------------------------------------------------------ widgets
def parse_timesteps(text: str, node: str, input_name: str = "denoise_timesteps") -> tuple[float, ...] | None:
    """"1000,750,500,250" -> (1000.0, 750.0, 500.0, 250.0); empty -> None (use steps)."""
    parts = [p for p in re.split(r"[,\s;]+", (text or "").strip()) if p]
    if not parts:
        return None
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{node}: '{input_name}' must be a comma-separated list of timesteps in (0, 1000] such as "
                         f"1000,750,500,250 (or empty to use 'steps'), got {text!r}") from None
    bad = [v for v in vals if not 0.0 < v <= 1000.0]
    if bad:
        raise ValueError(f"{node}: '{input_name}' values must be in (0, 1000], got {bad} in {text!r}")
    return vals


def retention_of(cache: str, sink_frames: int, window_frames: int, node: str) -> Retention:
    if cache == "full":
        return FULL
    if cache == "sink + window":
        return Retention(int(sink_frames), int(window_frames))
    raise ValueError(f"{node}: 'cache' must be one of {CACHE_POLICIES}, got {cache!r}")


# ------------------------------------------------------------------------------------ progress
def _preview_settings() -> tuple[bool, int]:
    """(enabled, max size) from ComfyUI's --preview-method / --preview-size (on when unknown)."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except Exception:
        return True, 512
    return args.preview_method != LatentPreviewMethod.NoPreviews, int(getattr(args, "preview_size", 512))


def make_previewer(model):
    """x0 [B, C, F, H, W] (model space) -> ("JPEG", PIL.Image, max size) of its last frame through
    the latent format's latent_rgb_factors, or None when previews are off or impossible."""
    enabled, max_size = _preview_settings()
    fmt = getattr(model.model, "latent_format", None)
    factors = getattr(fmt, "latent_rgb_factors", None)
    if not enabled or factors is None:
        return None
    try:
        from PIL import Image
        w = torch.tensor(factors, dtype=torch.float32)                 # [C, 3]
        bias = getattr(fmt, "latent_rgb_factors_bias", None)
        b = torch.tensor(bias, dtype=torch.float32) if bias is not None else torch.zeros(3)
    except Exception:
        return None

    def preview(x0: torch.Tensor):
        try:
            frame = x0[0, :, -1].detach().to(device="cpu", dtype=torch.float32)  # [C, H, W]
            if frame.shape[0] != w.shape[0]:
                return None
            rgb = torch.einsum("chw,cd->hwd", frame, w) + b
            img = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8).numpy()
            return ("JPEG", Image.fromarray(img), max_size)
        except Exception:  # a preview must never break a generation
            return None

    return preview


class Progress:
    """The core's step callback: cancel point, ComfyUI progress bar and latent preview.

    Counts its own calls, so one bar can span several core runs (Profile Heads)."""

    def __init__(self, model, total: int):
        self.total = max(int(total), 1)
        self.done = 0
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.previewer = make_previewer(model)

    def check(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    def __call__(self, event) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.done += 1
        preview = self.previewer(event.x0) if self.previewer is not None else None
        self.pbar.update_absolute(min(self.done, self.total), self.total, preview)


# ------------------------------------------------------------------------------------ folders
def profile_output_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), PROFILE_OUTPUT_SUBDIR)


def register_profile_folders() -> None:
    """<models>/dummy_forcing_profiles and <output>/dummy_forcing/profiles as the folder
    'dummy_forcing_profiles' (idempotent; also picks up a changed output directory)."""
    add = getattr(folder_paths, "add_model_folder_path", None)
    if add is None:
        return
    models_dir = getattr(folder_paths, "models_dir", None)
    if models_dir:
        add(PROFILE_FOLDER, os.path.join(models_dir, PROFILE_FOLDER))
    add(PROFILE_FOLDER, profile_output_dir())


def list_profiles() -> list[str]:
    register_profile_folders()
    try:
        names = folder_paths.get_filename_list(PROFILE_FOLDER)
    except Exception:
        names = []
    return sorted(n for n in names if n.lower().endswith(PROFILE_EXT))


def profile_path(name: str, node: str) -> str:
    register_profile_folders()
    path = folder_paths.get_full_path(PROFILE_FOLDER, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(PROFILE_FOLDER))
        raise ValueError(f"{node}: head profile {name!r} not found in {where}")
    return path


def safe_profile_name(name: str, node: str) -> str:
    name = (name or "").strip()
    if name.lower().endswith(PROFILE_EXT):
        name = name[: -len(PROFILE_EXT)]
    if not name or name in (".", "..") or re.search(r"[\\/:*?\"<>|\x00-\x1f]", name) or name.startswith("."):
        raise ValueError(f"{node}: save_name {name!r} is not a plain file name; use letters, digits, '-', '_' "
                         "(no folders), e.g. self_forcing_480p")
    return name


def unused_profile_path(name: str) -> str:
    """<output>/dummy_forcing/profiles/<name>.safetensors, or <name>_2, _3, ... if taken."""
    folder = profile_output_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + PROFILE_EXT)
    i = 2
    while os.path.exists(path):
        path = os.path.join(folder, f"{name}_{i}{PROFILE_EXT}")
        i += 1
    return path
