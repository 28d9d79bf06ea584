"""Checkpoint conversion: every source layout -> one plain-Wan .safetensors (CPU, tiny models).

Source layouts mirror the public repos:
- Self Forcing (guandeh17/Self-Forcing trainer/distillation.py save()): {"generator", "critic",
  "generator_ema"}, generator = WanDiffusionWrapper.state_dict() -> "model.<wan name>".
- Causal Forcing / Self Forcing EMA of FSDP runs: "model._fsdp_wrapped_module.blocks..." and
  nested "_fsdp_wrapped_module." / "_checkpoint_wrapped_module." segments (thu-ml/Causal-Forcing
  inference.py strips them).
- CausVid (tianweiy/CausVid train_distillation.py): {"generator": ..., "critic": ...}.
- LongLive (NVlabs/LongLive trainer/distillation.py save() with LoRA): {"generator_lora": sd,
  "critic_lora": sd, "step": n}, sd = peft.get_peft_model_state_dict(PeftModel(CausalWanModel)),
  i.e. "base_model.model.blocks.N.<linear>.lora_A.weight" for every nn.Linear in each
  CausalWanAttentionBlock (utils/lora_utils.py configure_lora_for_model).
- ComfyUI full checkpoints: "model.diffusion_model.<wan name>" next to VAE / text encoder keys.
"""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import ROOT, make_tiny_wan
from dummy_forcing_core.convert import (COMFY_CONFIG, ConversionError, convert_checkpoint, load_converted,
                                        load_lora_state_dict, load_wan_state_dict, merge_lora)
from dummy_forcing_core.wan_model import WanModel

HEADS = 4


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = model.patch_embedding.weight.dtype
    x = torch.randn(1, model.in_dim, 3, 4, 6, generator=g).to(dt)
    t = torch.tensor([640.0], dtype=dt)
    ctx = torch.randn(1, 5, model.text_dim, generator=g).to(dt)
    return x, t, ctx


def _same_weights(a, b):
    """The converted weights equal the reference's bit for bit: what conversion must preserve."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@torch.no_grad()
def _same_output(a, b, atol=None):
    """``atol=None``: the weights are the same (checked exactly), so the outputs agree to float64 rounding;
    not bit for bit, since weights read from a file can sit at another memory alignment and take another
    SIMD path (~3e-15 apart). ``atol`` given: a model rebuilt independently (LoRA merge, rounding)."""
    x, t, ctx = _inputs(a)
    ya, yb = a(x, t, ctx), b(x, t, ctx)
    assert ya.shape == yb.shape
    if atol is None:
        _same_weights(a, b)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(ya, yb, atol=atol, rtol=0)


def _check_strict_load(path, cfg):
    sd = load_file(path)
    fresh = WanModel(cfg).to(torch.float64)
    res = fresh.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert all(not k.startswith(("model.", "_fsdp", "base_model")) for k in sd)


def _meta(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def _dir_listing(d):
    return sorted(os.listdir(d))


# --------------------------------------------------------------------------- source layouts


def test_self_forcing_prefers_generator_ema(tmp_path):
    gen, ema = make_tiny_wan(heads=HEADS, seed=0), make_tiny_wan(heads=HEADS, seed=1)
    ckpt = {"generator": {f"model.{k}": v for k, v in gen.state_dict().items()},
            "critic": {"model.blocks.0.ffn.0.weight": torch.zeros(3)},
            "generator_ema": {f"model.{k}": v.float() for k, v in ema.state_dict().items()}}
    src = tmp_path / "self_forcing_dmd.pt"
    torch.save(ckpt, src)

    out = tmp_path / "sf.safetensors"
    info = convert_checkpoint(src, out, num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["source_key"] == "generator_ema"
    model, meta = load_converted(out)
    assert model.num_heads == HEADS and model.num_layers == 2
    assert model.patch_embedding.weight.dtype == torch.float32  # 'keep' by default (EMA shadow is fp32)
    _same_output(model.double(), ema)
    _check_strict_load(out, ema.config)

    out2 = tmp_path / "sf_gen.safetensors"
    info = convert_checkpoint(src, out2, key="generator", num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["source_key"] == "generator"
    model2, _ = load_converted(out2)
    _same_output(model2, gen)


def test_causal_forcing_fsdp_prefixes(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=2)
    sd = {}
    for k, v in ref.state_dict().items():
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            # FSDP around the wrapper's .model and around every block, activation checkpointing inside
            name = f"model._fsdp_wrapped_module.blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        else:
            name = f"model._fsdp_wrapped_module.{k}"
        sd[name] = v
    src = tmp_path / "causal_forcing_chunkwise.pt"
    torch.save({"generator_ema": sd}, src)
    out = tmp_path / "cf.safetensors"
    info = convert_checkpoint(src, out, num_heads=HEADS, chunk_frames=1)
    assert info["metadata"]["dummy_forcing"]["chunk_frames"] == 1
    assert set(info["stripped_prefixes"]) == {"model.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."}
    model, _ = load_converted(out)
    _same_output(model, ref)
    _check_strict_load(out, ref.config)

    # leading '_fsdp_wrapped_module.' (FSDP around the whole wrapper) as well
    sd2 = {f"_fsdp_wrapped_module.{k}": v for k, v in sd.items()}
    src2 = tmp_path / "outer_fsdp.pt"
    torch.save({"generator": sd2, "step": 600}, src2)
    wan, info = load_wan_state_dict(src2)
    assert info["source_key"] == "generator"
    assert set(wan) == set(ref.state_dict())


def test_causvid_generator_only(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=3)
    src = tmp_path / "causvid_model.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in ref.state_dict().items()},
                "critic": {"model.x": torch.zeros(1)}}, src)
    out = tmp_path / "causvid.safetensors"
    info = convert_checkpoint(src, out, num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["source_key"] == "generator"
    assert info["metadata"]["dummy_forcing"]["source_format"] == "training_checkpoint"
    _same_output(load_converted(out)[0], ref)


def test_plain_state_dict_pickle(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=4)
    src = tmp_path / "plain.pth"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "plain.safetensors"
    info = convert_checkpoint(src, out, num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["source_format"] == "state_dict"
    assert info["metadata"]["dummy_forcing"]["source_key"] is None
    model, _ = load_converted(out)
    _same_output(model, ref)
    _check_strict_load(out, ref.config)


def test_comfyui_prefixed_safetensors(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=5)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    sd["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4)  # VAE / TE in a full checkpoint
    sd["text_encoders.umt5xxl.transformer.shared.weight"] = torch.zeros(2, 2)
    src = tmp_path / "wan_full.safetensors"
    save_file(sd, src)
    out = tmp_path / "wan_causal.safetensors"
    info = convert_checkpoint(src, out, num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["source_format"] == "comfyui_safetensors"
    _same_output(load_converted(out)[0], ref)
    _check_strict_load(out, ref.config)


def test_plain_wan_safetensors_and_dtype(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=6)
    src = tmp_path / "wan.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, src)
    out = tmp_path / "wan_bf16.safetensors"
    convert_checkpoint(src, out, dtype="bf16", num_heads=HEADS)
    assert {v.dtype for v in load_file(out).values()} == {torch.bfloat16}
    model, meta = load_converted(out)
    assert model.patch_embedding.weight.dtype == torch.bfloat16
    assert meta["dummy_forcing"]["dtype"] == "bfloat16"
    # equals the reference whose weights were rounded to bf16
    _same_output(model.double(), ref.to(torch.bfloat16).double())


# ------------------------------------------------------------------------------------ LongLive


def _attention_block_linears(model):
    """What LongLive's configure_lora_for_model targets: every nn.Linear inside every block."""
    names = []
    for i, block in enumerate(model.blocks):
        for n, m in block.named_modules():
            if isinstance(m, torch.nn.Linear):
                names.append(f"blocks.{i}.{n}")
    return names


def _make_peft_lora(model, rank, seed, adapter_segment=False):
    g = torch.Generator().manual_seed(seed)
    lora, mats = {}, {}
    for name in _attention_block_linears(model):
        w = model.get_submodule(name).weight
        A = torch.randn(rank, w.shape[1], generator=g, dtype=torch.float64) * 0.1
        B = torch.randn(w.shape[0], rank, generator=g, dtype=torch.float64) * 0.1
        seg = ".default" if adapter_segment else ""
        lora[f"base_model.model.{name}.lora_A{seg}.weight"] = A
        lora[f"base_model.model.{name}.lora_B{seg}.weight"] = B
        mats[name] = (A, B)
    return lora, mats


def _independent_merge(base, mats, scale):
    merged = make_tiny_wan(heads=HEADS)
    merged.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, (A, B) in mats.items():
            lin = merged.get_submodule(name)
            lin.weight += scale * torch.einsum("or,ri->oi", B, A)
    return merged


def test_longlive_base_plus_peft_lora(tmp_path):
    base = make_tiny_wan(heads=HEADS, seed=7)
    rank = 4
    lora, mats = _make_peft_lora(base, rank, seed=8)
    assert len(mats) == 2 * 10  # q,k,v,o of self_attn and cross_attn, ffn.0, ffn.2 per block
    src = tmp_path / "longlive_base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in base.state_dict().items()}}, src)
    lsrc = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora, "critic_lora": {"base_model.model.x.lora_A.weight": torch.zeros(1, 1)},
                "step": 3000}, lsrc)

    out = tmp_path / "longlive.safetensors"
    info = convert_checkpoint(src, out, lora=lsrc, num_heads=HEADS)
    ours = info["metadata"]["dummy_forcing"]
    assert ours["lora_merged"] is True and ours["lora_modules"] == 20
    assert ours["lora_rank"] == rank and ours["lora_alpha"] == rank and ours["lora_scale"] == 1.0
    model, meta = load_converted(out)
    assert meta["dummy_forcing"]["lora_merged"] is True
    expected = _independent_merge(base, mats, scale=1.0)
    _same_output(model, expected, atol=1e-12)
    _check_strict_load(out, base.config)
    # the merge changed the model
    x, t, ctx = _inputs(base)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, ctx), base(x, t, ctx))


def test_longlive_lora_alpha_from_file_and_flags(tmp_path):
    base = make_tiny_wan(heads=HEADS, seed=9)
    rank = 4
    lora, mats = _make_peft_lora(base, rank, seed=10, adapter_segment=True)  # raw PEFT names
    src = tmp_path / "base.pt"
    torch.save({"generator_ema": {f"model.{k}": v for k, v in base.state_dict().items()}}, src)

    # alpha given by flag
    lsrc = tmp_path / "lora_flag.pt"
    torch.save({"generator_lora": lora}, lsrc)
    out = tmp_path / "flag.safetensors"
    convert_checkpoint(src, out, lora=lsrc, lora_alpha=8, num_heads=HEADS)
    _same_output(load_converted(out)[0], _independent_merge(base, mats, scale=2.0), atol=1e-12)

    # alpha stated in the file wins over the flag
    lsrc2 = tmp_path / "lora_file.pt"
    torch.save({"generator_lora": lora, "adapter": {"type": "lora", "rank": rank, "alpha": 2}}, lsrc2)
    out2 = tmp_path / "file.safetensors"
    with pytest.warns(UserWarning, match="alpha"):
        info = convert_checkpoint(src, out2, lora=lsrc2, lora_alpha=8, num_heads=HEADS)
    assert info["metadata"]["dummy_forcing"]["lora_scale"] == 0.5
    _same_output(load_converted(out2)[0], _independent_merge(base, mats, scale=0.5), atol=1e-12)

    # wrong rank flag is refused
    with pytest.raises(ConversionError, match="rank"):
        convert_checkpoint(src, tmp_path / "bad.safetensors", lora=lsrc, lora_rank=8, num_heads=HEADS)
    assert not (tmp_path / "bad.safetensors").exists()


def test_merge_lora_function_and_unmatched_keys(tmp_path):
    base = make_tiny_wan(heads=HEADS, seed=11)
    lora, mats = _make_peft_lora(base, 2, seed=12)
    sd = merge_lora(dict(base.state_dict()), lora, alpha=4)  # scale 2
    name = "blocks.1.cross_attn.v"
    A, B = mats[name]
    torch.testing.assert_close(sd[f"{name}.weight"], base.state_dict()[f"{name}.weight"] + 2 * B @ A)

    bad = dict(lora)
    bad["base_model.model.blocks.7.self_attn.q.lora_A.weight"] = torch.zeros(2, 64, dtype=torch.float64)
    bad["base_model.model.blocks.7.self_attn.q.lora_B.weight"] = torch.zeros(64, 2, dtype=torch.float64)
    with pytest.raises(ConversionError, match=r"match no weight.*blocks\.7\.self_attn\.q\.weight"):
        merge_lora(dict(base.state_dict()), bad)

    src = tmp_path / "base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in base.state_dict().items()}}, src)
    lsrc = tmp_path / "lora_bad.pt"
    torch.save({"generator_lora": bad}, lsrc)
    before = _dir_listing(tmp_path)
    with pytest.raises(ConversionError, match=r"lora_bad\.pt.*blocks\.7\.self_attn\.q\.weight"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, num_heads=HEADS)
    assert _dir_listing(tmp_path) == before

    lsd, linfo = load_lora_state_dict(lsrc)
    assert linfo["source_key"] == "generator_lora" and len(lsd) == len(bad)


# ------------------------------------------------------------------------------------ metadata


def test_metadata_layout(tmp_path):
    ref = make_tiny_wan(heads=HEADS, seed=13)
    src = tmp_path / "m.pt"
    torch.save({"generator_ema": {f"model.{k}": v for k, v in ref.state_dict().items()}}, src)
    out = tmp_path / "m.safetensors"
    convert_checkpoint(src, out, chunk_frames=3, num_heads=HEADS)
    meta = _meta(out)
    # exactly what ComfyUI's model_detection merges into the Wan unet config (extra keys there
    # would reach CausalWanModel(**unet_config) as unknown keyword arguments)
    assert json.loads(meta["config"]) == {"transformer": {"causal_ar": True}} == COMFY_CONFIG
    ours = json.loads(meta["dummy_forcing"])
    assert ours["source_format"] == "training_checkpoint"
    assert ours["source_key"] == "generator_ema"
    assert ours["chunk_frames"] == 3 and ours["num_frame_per_block"] == 3
    assert ours["lora_merged"] is False
    assert ours["num_heads"] == HEADS and ours["num_layers"] == 2 and ours["dim"] == 64

    out2 = tmp_path / "noflag.safetensors"
    convert_checkpoint(src, out2, num_heads=HEADS, comfy_causal_ar=False)
    assert "config" not in _meta(out2)


def test_load_converted_defaults_heads_to_dim_over_128(tmp_path):
    ref = make_tiny_wan(heads=2, head_dim=128, seed=14, layers=1)  # dim 256 -> 2 heads
    path = tmp_path / "raw.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)  # no metadata at all
    model, meta = load_converted(path)
    assert model.num_heads == 2 and meta == {}
    _same_output(model, ref)


# -------------------------------------------------------------------------------------- refusals


def test_non_wan_checkpoint_refused(tmp_path):
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8), "bn1.bias": torch.zeros(8),
              "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3), "fc.weight": torch.zeros(10, 8),
              "fc.bias": torch.zeros(10)}
    src = tmp_path / "resnet18.pth"
    torch.save({"state_dict": resnet}, src)
    before = _dir_listing(tmp_path)
    with pytest.raises(ConversionError) as ei:
        convert_checkpoint(src, tmp_path / "out.safetensors")
    msg = str(ei.value)
    assert "resnet18.pth" in msg and "not a Wan model" in msg and "head.modulation" in msg
    assert _dir_listing(tmp_path) == before

    # a Wan checkpoint with a block cut short: names what is missing
    ref = make_tiny_wan(heads=HEADS)
    sd = {f"model.{k}": v for k, v in ref.state_dict().items() if k not in ("blocks.1.ffn.2.weight",
                                                                           "blocks.1.norm3.bias")}
    src2 = tmp_path / "truncated.pt"
    torch.save({"generator": sd}, src2)
    before = _dir_listing(tmp_path)
    with pytest.raises(ConversionError, match=r"truncated\.pt.*missing.*ffn\.2\.weight \(blocks 1\)"):
        convert_checkpoint(src2, tmp_path / "out.safetensors", num_heads=HEADS)
    assert _dir_listing(tmp_path) == before

    # i2v-only extras are refused too
    sd3 = {f"model.{k}": v for k, v in ref.state_dict().items()}
    sd3["model.img_emb.proj.0.weight"] = torch.zeros(4)
    src3 = tmp_path / "i2v.pt"
    torch.save({"generator": sd3}, src3)
    with pytest.raises(ConversionError, match="img_emb"):
        load_wan_state_dict(src3, num_heads=HEADS)

    # LoRA-only file given as INPUT
    src4 = tmp_path / "lora_only.pt"
    torch.save({"generator_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, 1)}}, src4)
    with pytest.raises(ConversionError, match="--lora"):
        load_wan_state_dict(src4)


class Payload:
    """A custom object: loading it requires full unpickling."""

    def __init__(self):
        self.note = "hello"


def test_pickle_needing_full_unpickle_refused(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    src = tmp_path / "evil.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in ref.state_dict().items()}, "config": Payload()}, src)
    before = _dir_listing(tmp_path)
    with pytest.raises(ConversionError, match="not a plain-tensor checkpoint.*never unpickles arbitrary objects"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert _dir_listing(tmp_path) == before

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(ConversionError, match="could not be read"):
        load_wan_state_dict(junk)


def test_refuses_to_overwrite_input_and_cleans_up_on_failure(tmp_path, monkeypatch):
    ref = make_tiny_wan(heads=HEADS)
    src = tmp_path / "same.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, src)
    data = src.read_bytes()
    with pytest.raises(ConversionError, match="overwrite the input"):
        convert_checkpoint(src, src)
    with pytest.raises(ConversionError, match="overwrite the input"):
        convert_checkpoint(src, tmp_path / "." / "same.safetensors")
    assert src.read_bytes() == data

    # a failure while writing leaves neither the output nor the temporary file (the converter streams
    # tensors through os.write: the first write lands partly, the next one fails)
    real_write, calls = os.write, []

    def broken_write(fd, data):
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(os, "write", broken_write)
    before = _dir_listing(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(src, tmp_path / "out.safetensors", num_heads=HEADS)
    assert _dir_listing(tmp_path) == before


# ------------------------------------------------------------------------------------------- CLI


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dummy_forcing_core.convert", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    base = make_tiny_wan(heads=HEADS, seed=15)
    lora, mats = _make_peft_lora(base, 4, seed=16)
    src = tmp_path / "base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in base.state_dict().items()}}, src)
    lsrc = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora}, lsrc)
    out = tmp_path / "cli.safetensors"
    r = _run_cli(src, "--lora", lsrc, "--key", "generator", "--chunk-frames", "3",
                 "--num-heads", HEADS, "--lora-alpha", 4, "-o", out)  # --dtype defaults to bf16
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "LoRA merged" in r.stdout
    assert {v.dtype for v in load_file(out).values()} == {torch.bfloat16}
    model, meta = load_converted(out)
    assert meta["config"] == COMFY_CONFIG and meta["dummy_forcing"]["lora_merged"] is True
    assert meta["dummy_forcing"]["chunk_frames"] == 3
    expected = _independent_merge(base, mats, scale=1.0).to(torch.bfloat16).double()
    _same_output(model.double(), expected, atol=1e-6)

    bad = tmp_path / "notwan.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    r = _run_cli(bad, "-o", tmp_path / "x.safetensors")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "notwan.pt" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
