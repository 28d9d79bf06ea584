"""Hostile converter / head-profile inputs (issue 20 item 8): JSON nested far deeper than any real file
(a shard index, a head profile's settings / fingerprint, a model's metadata) and ComfyUI fp8 scales that
are zero, negative or not finite. Each is refused by a one-line error naming the file (and the tensor),
never a raw RecursionError, never a silently sign-flipped or zeroed layer."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dummy_forcing_core.convert import ConversionError, convert_checkpoint, load_converted, load_wan_state_dict
from dummy_forcing_core.head_profile import HeadProfile
from dummy_forcing_core.wan_model import WanConfig, WanModel

DEEP = 100_000


def _deep_json(depth=DEEP, key=None):
    """'[[[...]]]' ``depth`` deep; as the value of ``key`` in an object when given."""
    arr = "[" * depth + "]" * depth
    return arr if key is None else '{"%s": %s}' % (key, arr)


def _model(layers=1, seed=0):
    cfg = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=layers, in_dim=16, out_dim=16, text_dim=32,
                    freq_dim=32)
    return WanModel(cfg).init_random(seed).eval()


def _sd(model):
    return {k: v.float().contiguous() for k, v in model.state_dict().items()}


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ----------------------------------------------------------------------------------- deep JSON


def test_deeply_nested_shard_index_refused(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weight_map": %s}' % _deep_json())
    for path in (index, tmp_path):  # named directly, or found in the repo folder's transformer/
        with pytest.raises(ConversionError) as ei:
            load_wan_state_dict(str(path))
        msg = _one_line(ei)
        assert "diffusion_pytorch_model.safetensors.index.json" in msg and "nested" in msg
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConversionError, match="nested"):
        convert_checkpoint(str(index), str(tmp_path / "out.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_deeply_nested_sharded_config_json_refused(tmp_path):
    sd = _sd(_model())
    save_file(sd, tmp_path / "diffusion_pytorch_model-00001-of-00001.safetensors")
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "diffusion_pytorch_model-00001-of-00001.safetensors" for k in sd}}))
    (tmp_path / "config.json").write_text(_deep_json(key="num_attention_heads"))
    with pytest.raises(ConversionError) as ei:
        load_wan_state_dict(str(tmp_path / "diffusion_pytorch_model.safetensors.index.json"))
    msg = _one_line(ei)
    assert "config.json" in msg and "nested" in msg


def test_deeply_nested_quantization_metadata_and_comfy_quant_refused(tmp_path):
    sd = _sd(_model())
    src = tmp_path / "quant_meta.safetensors"
    save_file(sd, src, metadata={"_quantization_metadata": _deep_json(key="layers")})
    with pytest.raises(ConversionError) as ei:
        load_wan_state_dict(str(src))
    assert "quant_meta.safetensors" in _one_line(ei) and "nested" in str(ei.value)

    sd2 = dict(sd)
    sd2["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(_deep_json(depth=5000).encode()), dtype=torch.uint8)
    src2 = tmp_path / "comfy_quant.safetensors"
    save_file(sd2, src2)
    with pytest.raises(ConversionError) as ei:
        load_wan_state_dict(str(src2))
    msg = _one_line(ei)
    assert "comfy_quant.safetensors" in msg and "blocks.0.ffn.0.comfy_quant" in msg


def test_load_converted_with_deeply_nested_metadata(tmp_path):
    model = _model(seed=3)
    src = tmp_path / "deep_meta.safetensors"
    save_file(_sd(model), src, metadata={"dummy_forcing": _deep_json(key="num_heads")})
    with pytest.raises(ConversionError) as ei:
        load_converted(str(src))
    msg = _one_line(ei)
    assert "deep_meta.safetensors" in msg and "'dummy_forcing'" in msg and "nested" in msg


def _profile_file(tmp_path, name, **meta_overrides):
    prof = HeadProfile(torch.full((2, 3, 3), 1 / 3), {"num_layers": 2, "num_heads": 3, "head_dim": 8, "dim": 24},
                       {"sink_frames": 1})
    path = tmp_path / name
    prof.save(str(path))
    if meta_overrides:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta, scores = dict(f.metadata()), f.get_tensor("scores")
        meta.update(meta_overrides)
        save_file({"scores": scores}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("field", ["settings", "fingerprint", "num_samples"])
def test_head_profile_with_deeply_nested_metadata_refused(tmp_path, field):
    ok = _profile_file(tmp_path, "ok.safetensors")
    assert HeadProfile.load(str(ok)).settings == {"sink_frames": 1}
    path = _profile_file(tmp_path, "deep.safetensors", **{field: _deep_json(key="x")})
    with pytest.raises(ValueError) as ei:
        HeadProfile.load(str(path))
    msg = _one_line(ei)
    assert "deep.safetensors" in msg and f"'{field}'" in msg and "nested" in msg


def test_head_profile_settings_nested_below_the_decoder_limit_refused(tmp_path):
    # 600 deep decodes from a shallow stack but raises RecursionError from a deep one (ComfyUI's executor
    # calls in from hundreds of frames down): the bound refuses it wherever it is called from
    path = _profile_file(tmp_path, "deepish.safetensors", settings=_deep_json(depth=600, key="sink_frames"))
    for frames in (0, 500):
        with pytest.raises(ValueError) as ei:
            _call_from_depth(frames, HeadProfile.load, str(path))
        assert "deepish.safetensors" in _one_line(ei) and "nested" in str(ei.value)


def _call_from_depth(frames, fn, *args):
    return fn(*args) if frames == 0 else _call_from_depth(frames - 1, fn, *args)


# --------------------------------------------------------------------------------- fp8 scales


def _scaled_old(model, bad_layer, bad_value):
    """ComfyUI's old scaled-fp8 layout; the scale of ``bad_layer`` replaced by ``bad_value``."""
    fp8 = torch.float8_e4m3fn
    out = {}
    for k, v in model.state_dict().items():
        mod = k[:-len(".weight")]
        if v.ndim == 2 and k.startswith("blocks."):
            scale = (v.abs().amax() / torch.finfo(fp8).max).float()
            out[f"model.diffusion_model.{k}"] = (v.float() / scale).to(fp8)
            s = torch.tensor(bad_value) if mod == bad_layer else scale
            out[f"model.diffusion_model.{mod}.scale_weight"] = s.float().reshape(())
        else:
            out[f"model.diffusion_model.{k}"] = v.float().contiguous()
    out["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=fp8)
    return out


@pytest.mark.parametrize("value", [-0.01, 0.0, -0.0, float("nan"), float("inf")])
def test_fp8_scale_not_positive_refused(tmp_path, value):
    model = _model(seed=4)
    good = tmp_path / "good_fp8.safetensors"
    save_file(_scaled_old(model, "none", 1.0), good)
    convert_checkpoint(str(good), str(tmp_path / "good_out.safetensors"), dtype="fp32")  # the layout converts

    src = tmp_path / "bad_scale_fp8.safetensors"
    save_file(_scaled_old(model, "blocks.0.self_attn.q", value), src)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError) as ei:
        convert_checkpoint(str(src), str(out), dtype="fp32")
    msg = _one_line(ei)
    assert "bad_scale_fp8.safetensors" in msg and "blocks.0.self_attn.q.scale_weight" in msg
    assert not out.exists()


def test_fp8_rowwise_scale_with_one_negative_row_refused(tmp_path):
    model = _model(seed=5)
    sd = _scaled_old(model, "none", 1.0)
    key = "model.diffusion_model.blocks.0.ffn.0.scale_weight"
    w = sd["model.diffusion_model.blocks.0.ffn.0.weight"]
    rows = sd[key].expand(w.shape[0], 1).clone()
    rows[3, 0] = -rows[3, 0]
    sd[key] = rows
    src = tmp_path / "rowwise.safetensors"
    save_file(sd, src)
    with pytest.raises(ConversionError) as ei:
        load_wan_state_dict(str(src))
    msg = _one_line(ei)
    assert "rowwise.safetensors" in msg and "blocks.0.ffn.0.scale_weight" in msg and "1 of 256" in msg
