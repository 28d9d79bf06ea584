"""14B formats (Krea Realtime single file and sharded ``transformer/``, diffusers names, 14B Self Forcing
pickles), fp8 and ComfyUI scaled fp8, and unsupported geometries / dtypes (tiny synthetic files with the
published key names; geometry with 14B's ratios: ffn = 2.7 dim, head size 128 or many heads).

Published layouts mirrored here (see the module docstring of dummy_forcing_core.convert for sources):
- krea/krea-realtime-video ``krea-realtime-video-14b.safetensors``: float16, ``model.<wan name>``.
- krea/krea-realtime-video ``transformer/diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors`` + index
  json: the same tensors, bare Wan names.
- diffusers WanTransformer3DModel names (IPostYellow/krea-realtime-video-diffusers), config.json with
  ``num_attention_heads``.
- ComfyUI scaled fp8: ``scaled_fp8`` marker, ``<layer>.scale_weight``, ``<layer>.scale_input``; newer
  ``<layer>.comfy_quant`` (JSON bytes) + ``<layer>.weight_scale``, weights possibly stored as uint8.
"""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dummy_forcing_core.convert import (ConversionError, UsageError, convert_checkpoint, load_converted,
                                        load_wan_state_dict)
from dummy_forcing_core.wan_model import WanConfig, WanModel


def _model(dim=256, heads=2, layers=3, seed=0, dtype=torch.float64, in_dim=16, out_dim=16, patch=(1, 2, 2)):
    """A 14B-shaped tiny Wan: ffn = 2.7 * dim (13824 / 5120), text_dim 32, freq_dim 32."""
    ffn = int(round(dim * 2.7 / 2) * 2)
    cfg = WanConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, in_dim=in_dim, out_dim=out_dim,
                    text_dim=32, freq_dim=32, patch_size=patch)
    return WanModel(cfg).init_random(seed).to(dtype).eval()


@torch.no_grad()
def _assert_same_output(a, b):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 5, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([640.0], dtype=torch.float64)
    a, b = a.double(), b.double()
    # the weights exactly (what conversion must preserve); the outputs to float64 rounding, since weights
    # read from a file can sit at another memory alignment and take another SIMD path (~3e-15 apart)
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    torch.testing.assert_close(a(x, t, ctx), b(x, t, ctx), rtol=1e-12, atol=1e-12)


def _sd(model, dtype=None):
    return {k: (v.to(dtype) if dtype else v).contiguous() for k, v in model.state_dict().items()}


def _write_sharded(folder, sd, n=3, config=None):
    """A diffusers-style sharded checkpoint: n shards + diffusion_pytorch_model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    keys = sorted(sd)
    wmap = {}
    for i in range(n):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::n]}
        save_file(part, os.path.join(folder, name))
        wmap.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f)
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    return folder


# ---------------------------------------------------------------------------------- Krea Realtime


def test_krea_single_file_float16_model_prefix(tmp_path):
    ref = _model()
    src = tmp_path / "krea-realtime-video-14b.safetensors"
    save_file({f"model.{k}": v for k, v in _sd(ref, torch.float16).items()}, src)
    out = tmp_path / "krea_bf16.safetensors"
    info = convert_checkpoint(src, out, dtype="bf16")  # no --num-heads: dim 256 // 128 = 2 heads
    ours = info["metadata"]["dummy_forcing"]
    assert ours["num_heads"] == 2 and ours["num_layers"] == 3 and ours["dim"] == 256 and ours["dtype"] == "bfloat16"
    assert info["stripped_prefixes"] == ["model."]
    model, meta = load_converted(out)
    assert model.num_heads == 2 and meta["config"] == {"transformer": {"causal_ar": True}}
    _assert_same_output(model, ref.half().to(torch.bfloat16))


def test_krea_sharded_transformer_folder(tmp_path):
    ref = _model(seed=1)
    repo = tmp_path / "krea-realtime-video"
    transformer = _write_sharded(repo / "transformer", _sd(ref, torch.float16))
    index = os.path.join(transformer, "diffusion_pytorch_model.safetensors.index.json")
    for i, src in enumerate([transformer, index, repo]):  # the folder, its index, the repo folder
        out = tmp_path / f"krea_{i}.safetensors"
        info = convert_checkpoint(src, out, dtype="bf16")
        assert info["metadata"]["dummy_forcing"]["source_format"] == "sharded_safetensors"
        _assert_same_output(load_converted(out)[0], ref.half().to(torch.bfloat16))
    sd, info = load_wan_state_dict(transformer)
    assert set(sd) == set(ref.state_dict()) and info["config"]["num_heads"] == 2

    # the repo also ships the single file: a folder with two checkpoints is ambiguous
    save_file({f"model.{k}": v for k, v in _sd(ref, torch.float16).items()},
              repo / "krea-realtime-video-14b.safetensors")
    with pytest.raises(ConversionError, match=r"found krea-realtime-video-14b\.safetensors, transformer/"
                                              r"diffusion_pytorch_model\.safetensors\.index\.json; pass one"):
        convert_checkpoint(repo, tmp_path / "x.safetensors")


def test_sharded_incomplete_downloads_refused(tmp_path):
    ref = _model(seed=2, layers=2)
    folder = _write_sharded(tmp_path / "transformer", _sd(ref, torch.float16))
    shard2 = os.path.join(folder, "diffusion_pytorch_model-00002-of-00003.safetensors")
    part = load_file(shard2)
    dropped = sorted(part)[0]
    del part[dropped]
    save_file(part, shard2)
    with pytest.raises(ConversionError, match=rf"00002-of-00003\.safetensors: does not match .*index\.json: "
                                              rf"1 listed tensors missing \({dropped}\)"):
        convert_checkpoint(folder, tmp_path / "out.safetensors")
    os.remove(shard2)
    with pytest.raises(ConversionError, match=r"index\.json: 1 of 3 shards are missing .*00002-of-00003"):
        convert_checkpoint(folder, tmp_path / "out.safetensors")
    shard1 = os.path.join(folder, "diffusion_pytorch_model-00001-of-00003.safetensors")
    with pytest.raises(ConversionError, match=r"00001-of-00003\.safetensors: not a Wan model \(this looks like one "
                                              r"shard"):
        convert_checkpoint(shard1, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ------------------------------------------------------------------------------ diffusers names

_DIFFUSERS_TOP = {"time_embedding.0": "condition_embedder.time_embedder.linear_1",
                  "time_embedding.2": "condition_embedder.time_embedder.linear_2",
                  "text_embedding.0": "condition_embedder.text_embedder.linear_1",
                  "text_embedding.2": "condition_embedder.text_embedder.linear_2",
                  "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
                  "head.modulation": "scale_shift_table", "patch_embedding": "patch_embedding"}
_DIFFUSERS_BLOCK = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q",
                    "self_attn.norm_k": "attn1.norm_k", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
                    "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k", "norm3": "norm2",
                    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2", "modulation": "scale_shift_table"}


def _to_diffusers(name):
    """Wan name -> diffusers WanTransformer3DModel name (diffusers scripts/convert_wan_to_diffusers.py)."""
    if name.startswith("blocks."):
        _, i, rest = name.split(".", 2)
        for wan, dif in _DIFFUSERS_BLOCK.items():
            if rest == wan or rest.startswith(wan + "."):
                return f"blocks.{i}.{dif}{rest[len(wan):]}"
        raise KeyError(name)
    for wan, dif in _DIFFUSERS_TOP.items():
        if name == wan or name.startswith(wan + "."):
            return dif + name[len(wan):]
    raise KeyError(name)


def test_diffusers_named_sharded_checkpoint(tmp_path):
    ref = _model(dim=320, heads=40, layers=2, seed=3, dtype=torch.bfloat16)  # many heads (8 dims each)
    sd = {_to_diffusers(k): v for k, v in _sd(ref).items()}
    assert "blocks.1.attn1.to_out.0.weight" in sd and "blocks.0.norm2.weight" in sd and "scale_shift_table" in sd
    folder = _write_sharded(tmp_path / "krea-realtime-video-diffusers" / "transformer", sd,
                            config={"_class_name": "WanTransformer3DModel", "num_attention_heads": 40,
                                    "attention_head_dim": 8, "num_layers": 2})
    out = tmp_path / "diffusers.safetensors"
    with pytest.warns(UserWarning, match="ComfyUI assumes dim // 128 = 2 heads"):
        info = convert_checkpoint(os.path.dirname(folder), out, dtype="keep")  # heads from config.json
    assert info["source"]["naming"] == "diffusers" and info["metadata"]["dummy_forcing"]["num_heads"] == 40
    assert set(load_file(out)) == set(ref.state_dict())
    model, _ = load_converted(out)
    assert model.num_heads == 40
    _assert_same_output(model, ref)

    single = tmp_path / "diffusers_single.safetensors"
    save_file(sd, single)
    with pytest.warns(UserWarning, match="ComfyUI assumes dim // 128 = 2 heads"):
        convert_checkpoint(single, tmp_path / "d2.safetensors", num_heads=40, dtype="keep")
    _assert_same_output(load_converted(tmp_path / "d2.safetensors")[0], ref)


def test_14b_self_forcing_pickle_with_fsdp_wrappers(tmp_path):
    ref = _model(seed=4, dtype=torch.float32)
    sd = {}
    for k, v in ref.state_dict().items():
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            sd[f"model._fsdp_wrapped_module.blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"] = v
        else:
            sd[f"model._fsdp_wrapped_module.{k}"] = v
    src = tmp_path / "self_forcing_14b_dmd.pt"
    torch.save({"generator": sd, "critic": {"x": torch.zeros(1)}, "generator_ema": sd}, src)
    out = tmp_path / "sf14b.safetensors"
    info = convert_checkpoint(src, out, dtype="bf16")
    assert info["metadata"]["dummy_forcing"]["num_heads"] == 2  # dim // 128
    _assert_same_output(load_converted(out)[0], ref.to(torch.bfloat16))


# -------------------------------------------------------------------------------------------- fp8


def _fp8_split(model, fp8):
    """2-D Linear weights in fp8, the rest float32 (how fp8 Wan files are usually packed)."""
    return {k: (v.to(fp8) if v.ndim == 2 and k.startswith("blocks.") else v.float()).contiguous()
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_plain_fp8_weights(tmp_path, fp8):
    sd = _fp8_split(_model(dim=128, heads=1, seed=5, layers=2), fp8)
    src = tmp_path / "wan_fp8.safetensors"
    save_file(sd, src)
    convert_checkpoint(src, tmp_path / "bf16.safetensors", dtype="bf16")
    got = load_file(tmp_path / "bf16.safetensors")
    assert all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in sd.items())
    convert_checkpoint(src, tmp_path / "keep.safetensors", dtype="keep")
    kept = load_file(tmp_path / "keep.safetensors")
    assert kept["blocks.0.ffn.0.weight"].dtype == fp8
    assert torch.equal(kept["blocks.0.ffn.0.weight"].view(torch.uint8), sd["blocks.0.ffn.0.weight"].view(torch.uint8))


def _scaled(model, style, fp8=torch.float8_e4m3fn):
    """(file state dict, expected float32 weights) in ComfyUI's old or new scaled-fp8 layout."""
    out, expected = {}, {}
    for k, v in model.state_dict().items():
        mod = k[:-len(".weight")]
        if v.ndim == 2 and k.startswith("blocks."):
            scale = (v.abs().amax() / torch.finfo(fp8).max).float()
            q = (v.float() / scale).to(fp8)
            expected[k] = q.float() * scale
            if style == "old":
                out[f"model.diffusion_model.{k}"] = q
                out[f"model.diffusion_model.{mod}.scale_weight"] = scale.reshape(())
                out[f"model.diffusion_model.{mod}.scale_input"] = torch.ones(())
            else:
                out[k] = q.view(torch.uint8)
                out[f"{mod}.weight_scale"] = scale.reshape(())
                out[f"{mod}.comfy_quant"] = torch.tensor(list(json.dumps({"format": str(fp8)[6:]}).encode()),
                                                         dtype=torch.uint8)
        else:
            out[f"model.diffusion_model.{k}" if style == "old" else k] = v.float()
            expected[k] = v.float()
    if style == "old":
        out["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=fp8)
        out["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)
    return out, expected


@pytest.mark.parametrize("style", ["old", "new"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_comfyui_scaled_fp8(tmp_path, style, dtype):
    sd, expected = _scaled(_model(dim=128, heads=1, seed=6, layers=2), style)
    src = tmp_path / "wan_fp8_scaled.safetensors"
    save_file(sd, src)
    out = tmp_path / "out.safetensors"
    info = convert_checkpoint(src, out, dtype=dtype)
    assert info["source"]["quantization"] == ("comfy_scaled_fp8" if style == "old" else "comfy_quant")
    got = load_file(out)
    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(target)), k
    with pytest.raises(UsageError, match=r"wan_fp8_scaled\.safetensors: holds ComfyUI scaled-fp8 weights"):
        convert_checkpoint(src, tmp_path / "keep.safetensors", dtype="keep")


def test_comfy_quant_in_metadata_and_unsupported_formats(tmp_path):
    model = _model(dim=128, heads=1, seed=7, layers=2)
    sd, expected = _scaled(model, "new")
    layers = {k[:-len(".comfy_quant")]: {"format": "float8_e4m3fn"} for k in sd if k.endswith(".comfy_quant")}
    sd = {k: v for k, v in sd.items() if not k.endswith(".comfy_quant")}
    src = tmp_path / "meta.safetensors"
    save_file(sd, src, metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})
    convert_checkpoint(src, tmp_path / "out.safetensors", dtype="fp32")
    assert torch.equal(load_file(tmp_path / "out.safetensors")["blocks.1.cross_attn.k.weight"],
                       expected["blocks.1.cross_attn.k.weight"])

    nv = dict(sd)
    nv["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    bad = tmp_path / "nvfp4.safetensors"
    save_file(nv, bad)
    with pytest.raises(ConversionError, match=r"nvfp4\.safetensors: layer 'blocks\.0\.ffn\.0' uses ComfyUI "
                                              r"quantization format 'nvfp4'.*supported: float8_e4m3fn, float8_e5m2"):
        convert_checkpoint(bad, tmp_path / "x.safetensors", dtype="bf16")


# --------------------------------------------------------------------------- unsupported models


def test_image_to_video_refused(tmp_path):
    ref = _model(in_dim=36, layers=1)
    sd = _sd(ref)
    sd["img_emb.proj.0.weight"] = torch.ones(1280)
    sd["blocks.0.cross_attn.k_img.weight"] = torch.zeros(256, 256)
    src = tmp_path / "wan2.1_i2v_480p.safetensors"
    save_file(sd, src)
    with pytest.raises(ConversionError, match=r"i2v_480p\.safetensors: an image-to-video .*img_emb.*36 input "
                                              r"channels.*supported: Wan2\.1 text-to-video"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    sd = {k: v for k, v in sd.items() if "img" not in k}  # even without the image parameters
    save_file(sd, src)
    with pytest.raises(ConversionError, match="image-to-video"):
        load_wan_state_dict(src)


@pytest.mark.parametrize("in_dim,out_dim,patch,expected", [
    (48, 48, (1, 2, 2), r"48 input / 48 output latent channels .*Wan2\.2 TI2V-5B"),
    (16, 16, (1, 1, 1), r"patch \(1, 1, 1\)"),
    (16, 4, (1, 2, 2), r"16 input / 4 output"),
])
def test_other_geometries_refused(tmp_path, in_dim, out_dim, patch, expected):
    src = tmp_path / "wan2.2_ti2v_5B.safetensors"
    save_file(_sd(_model(dim=128, heads=1, layers=1, in_dim=in_dim, out_dim=out_dim, patch=patch)), src)
    with pytest.raises(ConversionError,
                       match=rf"ti2v_5B\.safetensors: .*{expected}.*supported: Wan2\.1 text-to-video"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("dtype", ["float8_e8m0fnu", "float4_e2m1fn_x2", "int8"])
def test_unsupported_weight_dtypes_refused(tmp_path, dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"torch has no {dtype}")
    sd = _sd(_model(layers=1))
    w = sd["blocks.0.ffn.0.weight"]
    sd["blocks.0.ffn.0.weight"] = torch.zeros(w.shape, dtype=torch.uint8).view(getattr(torch, dtype))
    src = tmp_path / "odd.safetensors"
    try:
        save_file(sd, src)
    except Exception as exc:  # noqa: BLE001 - this safetensors cannot store it: nothing to test
        pytest.skip(f"safetensors cannot store {dtype}: {exc}")
    with safe_open(src, "pt") as f:
        stored = f.get_slice("blocks.0.ffn.0.weight").get_dtype()
    with pytest.raises(ConversionError, match=rf"odd\.safetensors: blocks\.0\.ffn\.0\.weight has dtype {dtype}; "
                                              r"supported weight dtypes: float32, .*float8_e4m3fn, float8_e5m2"):
        convert_checkpoint(src, tmp_path / "out.safetensors", dtype="bf16")
    assert stored and not (tmp_path / "out.safetensors").exists()
