"""Convert causal Wan2.1 checkpoints (1.3B and 14B) into one ComfyUI-loadable ``.safetensors``.

Usable as functions and as a command::

    python -m dummy_forcing_core.convert INPUT [--lora LORA] [--key auto|generator_ema|generator|...]
        [--chunk-frames 3] [--dtype bf16|fp16|fp32|keep] [--num-heads N]
        [--lora-alpha A] [--lora-rank R] [--no-causal-ar-flag] [--no-progress] -o OUT.safetensors

INPUT is a file (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` pickle, ``.safetensors`` / ``.sft``), a
sharded-safetensors index (``*.safetensors.index.json``), or a folder holding exactly one of those
(a Hugging Face repo folder is also searched in its ``transformer/`` sub-folder).

Inputs understood
-----------------
* Self Forcing / Causal Forcing / CausVid / LongLive training pickles: a dict with ``generator_ema``
  and/or ``generator`` (``auto`` prefers ``generator_ema``), each a state dict of the
  ``WanDiffusionWrapper``: names ``model.<wan name>``, EMA copies of FSDP runs with
  ``_fsdp_wrapped_module.`` segments (also nested inside blocks). Wrapper segments
  (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``) are removed wherever
  they occur, then leading ``model.`` / ``module.`` / ``diffusion_model.`` / ``base_model.model.``.
  14B runs of this trainer (Krea Realtime and GoatWu/Self-Forcing-Plus ``configs/self_forcing_14b_dmd.yaml``
  build on guandeh17/Self-Forcing) save the same dict; only the shapes differ.
* A pickle that is directly a state dict, or ``{"model": sd}`` / ``{"state_dict": sd}``.
* Plain Wan ``.safetensors`` (Wan names, or ComfyUI full checkpoints with ``model.diffusion_model.``;
  VAE / text-encoder entries of such files are dropped). A top-level ``freqs`` RoPE buffer is dropped.
* Krea Realtime 14B (Hugging Face ``krea/krea-realtime-video``; a causal Wan2.1-T2V-14B distilled with
  Self Forcing), both published layouts of the same transformer:
  ``krea-realtime-video-14b.safetensors`` (one file, 28.6 GB, 1095 float16 tensors named
  ``model.<wan name>``) and ``transformer/diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors``
  plus its index json (the same tensors with bare Wan names; the folder's remote-code ``.py`` files are
  not read). Read in krea-ai/realtime-video
  ``release_server.py`` (``load_file`` then ``WanDiffusionWrapper.load_state_dict``, which tests
  ``model.blocks.0.self_attn.k.weight``), daydreamlive/scope ``wan2_1/components/generator.py``
  (strips a leading ``model.``), DiffSynth-Studio ``examples/wanvideo/.../krea-realtime-video.py``
  (file name) and SceneWorks/inference ``mlx-gen-krea-realtime`` ``src/convert.rs`` /
  ``tests/transformer_load.rs`` / ``tests/rehost_real_weights.rs`` (both layouts, 1095 F16 tensors,
  no ``freqs``). The older checkpoint of krea-ai/realtime-video's README (``krea/krea-rt-14b``,
  ``checkpoints/14b_400.safetensors`` in ``configs/self_forcing_server_14b.yaml``) goes through the
  same loader, so it has the same names.
* Diffusers ``WanTransformer3DModel`` names (``blocks.0.attn1.to_q``, ``blocks.0.attn1.to_out.0``,
  ``blocks.0.norm2`` (= Wan ``norm3``), ``blocks.0.ffn.net.0.proj``, ``blocks.0.scale_shift_table``,
  ``condition_embedder.{time,text}_embedder.linear_{1,2}``, ``condition_embedder.time_proj``,
  ``proj_out``, ``scale_shift_table``), mapped back with the table of huggingface/diffusers
  ``scripts/convert_wan_to_diffusers.py``. The causal repackaging ``IPostYellow/krea-realtime-video-diffusers``
  (ModelScope; served by sgl-project/sglang PR #19817, loaded with
  ``WanTransformer3DModel.from_pretrained(..., subfolder="transformer")``) uses them. A
  ``config.json`` next to a sharded index gives the head count (``num_attention_heads``).
* fp8 weights: plain ``float8_e4m3fn`` / ``float8_e5m2`` (cast to ``--dtype``); ComfyUI "scaled fp8"
  (marker ``scaled_fp8``, per layer ``<layer>.scale_weight`` and optional ``<layer>.scale_input``;
  ComfyUI ``comfy/model_detection.py``, ``comfy/ops.py`` ``scaled_fp8_ops``) and ComfyUI's newer
  per-layer quantization (``<layer>.comfy_quant`` = JSON bytes ``{"format": "float8_e4m3fn"}``,
  ``<layer>.weight_scale``, optional ``<layer>.input_scale``, or a ``_quantization_metadata`` entry;
  ``comfy/utils.py`` ``convert_old_quants``, ``comfy/quant_ops.py``). fp8 layers are dequantized as
  ``weight.float() * scale`` (what ComfyUI computes), then cast; activation scales are dropped.
  nvfp4 / mxfp8 / int8 layers are refused.
* LongLive LoRA (``--lora``): the ``lora.pt`` LongLive writes, ``{"generator_lora": sd, ...}`` with
  PEFT names ``base_model.model.blocks.N.<linear>.lora_A.weight`` / ``.lora_B.weight``, raw PEFT names
  (``.lora_A.default.weight``) and kohya ``lora_down`` / ``lora_up`` / ``.alpha``. Merged as
  ``W += (alpha / rank) * B @ A`` in float32 (float64 for float64 weights). ``rank`` is each module's
  ``lora_A`` row count; ``alpha`` comes from the file (per-module ``.alpha`` tensors, or an ``alpha`` /
  ``lora_alpha`` entry, also inside an ``adapter`` / ``lora_config`` / ``peft_config`` dict), else
  from ``--lora-alpha``, else equals the rank (LongLive's released LoRA: rank 256, alpha 256).

Supported geometry: Wan2.1 text-to-video, 16 latent channels in and out, patch (1, 2, 2), any dim /
depth (1.3B: dim 1536, 30 layers; 14B: dim 5120, 40 layers, ffn 13824). Heads default to dim // 128
as ComfyUI assumes (``WanConfig.from_state_dict``). Image-to-video (36 input channels, ``img_emb``),
Wan2.2 TI2V-5B (48 channels), VACE and other variants are refused by name.

Not verified (no real file was downloaded): Krea's key names and F16 dtype come from third-party
code that reads the files, not from the files; the index file name (diffusers' default
``diffusion_pytorch_model.safetensors.index.json``; any ``*.safetensors.index.json`` is accepted) and
whether Krea's ``transformer/config.json`` states the head count; the diffusers repackaging's exact
names (assumed stock ``WanTransformer3DModel``). No published causal 14B ``.pt`` was found (the 14B
Self-Forcing-Plus release, lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill, is bidirectional).

Layout (one job per module; imports point down this list, never up)
-------------------------------------------------------------------
* ``common``: the two exceptions, fp8 dtypes, finite / tensor-dict checks, progress bars.
* ``reading``: resolving INPUT (file, index, folder), pickle safety, zip CRC-32, shards.
* ``names``: key normalisation (wrapper segments, prefixes) and diffusers -> Wan names.
* ``quant``: ComfyUI fp8 / scaled-fp8 scales split off and dequantized.
* ``validation``: :func:`validate_wan_state_dict` (names, variant, dtypes, heads, shapes).
* ``base_model``: the base model opened from INPUT; :func:`load_wan_state_dict`.
* ``lora``: :func:`load_lora_state_dict`, :func:`merge_lora` and the merge plan.
* ``writing``: the streaming, atomic ``.safetensors`` writer.
* ``conversion``: :func:`convert_checkpoint` (checks, metadata, the long pass), :func:`load_converted`.
* ``cli``: the command (argparse, :func:`main`); ``__main__`` runs it.

Safety and integrity are described in ``reading``, the output file and its metadata in
``conversion`` and ``writing``.
"""
from .base_model import SOURCE_KEYS, load_wan_state_dict  # noqa: F401
from .cli import main  # noqa: F401
from .common import FP8, ConversionError, UsageError  # noqa: F401
from .conversion import COMFY_CONFIG, DTYPES, FORMAT_VERSION, convert_checkpoint, load_converted  # noqa: F401
from .lora import load_lora_state_dict, merge_lora  # noqa: F401
from .names import COMFY_PREFIX, DROPPED_BUFFERS, LEADING_PREFIXES, WRAPPER_SEGMENTS  # noqa: F401
from .reading import MODEL_EXTS, SAFETENSORS_EXTS  # noqa: F401
from .validation import SUPPORTED, WEIGHT_DTYPES, validate_wan_state_dict  # noqa: F401


__all__ = [
    "ConversionError",
    "UsageError",
    "load_wan_state_dict",
    "load_lora_state_dict",
    "merge_lora",
    "validate_wan_state_dict",
    "convert_checkpoint",
    "load_converted",
    "COMFY_CONFIG",
    "main",
]
