"""Converter hardening: pickle loading on old torch, zip CRC, how the output file is written,
non-finite / non-float / sparse weights, degenerate LoRAs (CPU, tiny models)."""
import os
import re
import stat
import struct
import tracemalloc
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import make_tiny_wan
from dummy_forcing_core.convert import reading
from dummy_forcing_core.convert import (ConversionError, UsageError, convert_checkpoint, load_lora_state_dict,
                                        load_wan_state_dict, merge_lora)

HEADS = 4


def _training_pt(path, model, **extra):
    torch.save({"generator": {f"model.{k}": v for k, v in model.state_dict().items()}, **extra}, path)
    return path


def _plain_st(path, model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _listing(d):
    return sorted(os.listdir(d))


def _peft_lora(model, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.2"):
        w = model.get_submodule(name).weight
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g, dtype=w.dtype)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g, dtype=w.dtype)
    return lora


# ------------------------------------------------------------------------ pickles on old torch


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # safetensors reads torch.__version__ too
@pytest.mark.parametrize("version", ["2.5.1+cu121", "2.4.0", "1.13.1", "2.6.0a0+ecf3bae"])
def test_pickles_refused_on_torch_before_2_6(tmp_path, monkeypatch, version):
    ref = make_tiny_wan(heads=HEADS)
    pt = _training_pt(tmp_path / "sf.pt", ref)
    lora = tmp_path / "lora.pt"
    torch.save({"generator_lora": _peft_lora(ref)}, lora)
    st = _plain_st(tmp_path / "wan.safetensors", ref)

    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not run on this torch"))
    with pytest.raises(ConversionError, match=r"sf\.pt: refusing to read a pickle with torch .*CVE-2025-32434"):
        load_wan_state_dict(pt, num_heads=HEADS)
    with pytest.raises(ConversionError, match=r"lora\.pt: .*CVE-2025-32434"):
        load_lora_state_dict(lora)
    before = _listing(tmp_path)
    with pytest.raises(ConversionError, match="CVE-2025-32434"):
        convert_checkpoint(pt, tmp_path / "out.safetensors", num_heads=HEADS)
    assert _listing(tmp_path) == before
    # safetensors inputs do not unpickle anything: still fine
    convert_checkpoint(st, tmp_path / "ok.safetensors", num_heads=HEADS)
    assert (tmp_path / "ok.safetensors").exists()


@pytest.mark.parametrize("version", ["2.6.0", "2.6.1+cpu", "2.13.0+cpu", "3.0.0"])
def test_pickles_read_on_torch_2_6_and_later(tmp_path, monkeypatch, version):
    ref = make_tiny_wan(heads=HEADS)
    pt = _training_pt(tmp_path / "sf.pt", ref)
    monkeypatch.setattr(torch, "__version__", version)
    sd, info = load_wan_state_dict(pt, num_heads=HEADS)
    assert set(sd) == set(ref.state_dict()) and info["source_key"] == "generator"


# ------------------------------------------------------------------------------------ zip CRC


def _flip_byte(path, member_pred, offset=3):
    """Flip the lowest bit of one byte inside a zip member's stored data (the CRC no longer matches)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if member_pred(i.filename)), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + name_len + extra_len + offset
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))
    return info.filename


def test_crc_mismatch_in_tensor_data_is_refused(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    pt = _training_pt(tmp_path / "self_forcing_dmd.pt", ref)
    member = _flip_byte(pt, lambda n: "/data/" in n)  # inside the largest tensor: a tiny, finite change
    before = _listing(tmp_path)
    with pytest.raises(ConversionError, match=rf"self_forcing_dmd\.pt: corrupt file .*CRC.*{member.split('/')[-1]}"):
        convert_checkpoint(pt, tmp_path / "out.safetensors", num_heads=HEADS)
    assert _listing(tmp_path) == before
    with pytest.raises(ConversionError, match=r"self_forcing_dmd\.pt: corrupt"):
        load_wan_state_dict(pt, num_heads=HEADS)


def test_crc_mismatch_in_pickle_and_in_lora(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    pt = _training_pt(tmp_path / "base.pt", ref)
    _flip_byte(pt, lambda n: n.endswith("data.pkl"), offset=40)
    with pytest.raises(ConversionError, match=r"base\.pt: corrupt"):
        load_wan_state_dict(pt, num_heads=HEADS)

    good = _training_pt(tmp_path / "good.pt", ref)
    lora = tmp_path / "lora.pt"
    torch.save({"generator_lora": _peft_lora(ref)}, lora)
    _flip_byte(lora, lambda n: "/data/" in n)
    with pytest.raises(ConversionError, match=r"lora\.pt: corrupt"):
        convert_checkpoint(good, tmp_path / "out.safetensors", lora=lora, num_heads=HEADS)
    assert not (tmp_path / "out.safetensors").exists()


def test_crc_check_streams(tmp_path):
    big = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(8 << 20)}, big)  # one 32 MiB member
    tracemalloc.start()
    try:
        reading._check_zip_crc(str(big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20


# ------------------------------------------------------------------------------ writing output


def _convert_small(tmp_path, name="out.safetensors", **kw):
    src = _plain_st(tmp_path / "wan.safetensors", make_tiny_wan(heads=HEADS))
    out = tmp_path / name
    convert_checkpoint(src, out, num_heads=HEADS, **kw)
    return out


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_output_permissions_follow_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = _convert_small(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask


def test_output_fsynced_before_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.realpath(a)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _convert_small(tmp_path)
    replaced = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(replaced) == 1
    tmp = events[replaced[0]][1]
    assert ("fsync", tmp) in events[:replaced[0]]


def test_interrupted_write_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous version")
    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(fd)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    before = _listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _convert_small(tmp_path)
    monkeypatch.undo()
    assert _listing(tmp_path) == sorted(before + ["wan.safetensors"])
    assert out.read_bytes() == b"previous version"


def test_written_file_is_plain_safetensors(tmp_path):
    out = _convert_small(tmp_path, dtype="bf16")
    sd = load_file(out)
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    with open(out, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    assert n % 8 == 0 and os.path.getsize(out) == 8 + n + sum(v.numel() * 2 for v in sd.values())


# ------------------------------------------------------------------------- values and dtypes


@pytest.mark.parametrize("name,value", [("blocks.1.ffn.0.weight", float("nan")), ("head.modulation", float("inf")),
                                        ("patch_embedding.bias", float("-inf"))])
@pytest.mark.parametrize("container", ["pt", "safetensors"])
def test_non_finite_base_weights_refused(tmp_path, name, value, container):
    ref = make_tiny_wan(heads=HEADS)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd[name].view(-1)[3] = value
    if container == "pt":
        src = tmp_path / "diverged.pt"
        torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}}, src)
    else:
        src = tmp_path / "diverged.safetensors"
        save_file(sd, src)
    before = _listing(tmp_path)
    with pytest.raises(ConversionError, match=rf"diverged\.{container}: {re.escape(name)} holds 1 NaN"):
        convert_checkpoint(src, tmp_path / "out.safetensors", num_heads=HEADS, dtype="bf16")
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_non_float_weights_refused(tmp_path, dtype):
    ref = make_tiny_wan(heads=HEADS)
    sd = {f"model.{k}": v for k, v in ref.state_dict().items()}
    sd["model.blocks.0.norm3.weight"] = sd["model.blocks.0.norm3.weight"].to(dtype)
    src = tmp_path / "odd.pt"
    torch.save({"generator": sd}, src)
    with pytest.raises(ConversionError, match=rf"odd\.pt: blocks\.0\.norm3\.weight has dtype "
                                              rf"{str(dtype).replace('torch.', '')}; supported"):
        convert_checkpoint(src, tmp_path / "out.safetensors", num_heads=HEADS)
    assert not (tmp_path / "out.safetensors").exists()


def test_sparse_weights_refused(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    sd = {f"model.{k}": v for k, v in ref.state_dict().items()}
    sd["model.blocks.1.self_attn.q.weight"] = sd["model.blocks.1.self_attn.q.weight"].to_sparse()
    src = tmp_path / "sparse.pt"
    torch.save({"generator": sd}, src)
    with pytest.raises(ConversionError, match=r"sparse\.pt: blocks\.1\.self_attn\.q\.weight is a sparse_coo tensor"):
        convert_checkpoint(src, tmp_path / "out.safetensors", num_heads=HEADS)


# -------------------------------------------------------------------------------- LoRA factors


def _base_and_lora(tmp_path, lora, **extra):
    ref = make_tiny_wan(heads=HEADS)
    src = _training_pt(tmp_path / "base.pt", ref)
    lsrc = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora, **extra}, lsrc)
    return ref, src, lsrc


@pytest.mark.parametrize("bad", ["nan_A", "inf_B", "int_A", "rank0"])
def test_degenerate_lora_factors_refused(tmp_path, bad):
    ref = make_tiny_wan(heads=HEADS)
    lora = _peft_lora(ref)
    a, b = "base_model.model.blocks.1.ffn.2.lora_A.weight", "base_model.model.blocks.1.ffn.2.lora_B.weight"
    if bad == "nan_A":
        lora[a][0, 0] = float("nan")
    elif bad == "inf_B":
        lora[b][1, 0] = float("inf")
    elif bad == "int_A":
        lora[a] = lora[a].to(torch.int32)
    else:
        lora[a], lora[b] = lora[a][:0], lora[b][:, :0]
    _, src, lsrc = _base_and_lora(tmp_path, lora)
    expected = {"nan_A": "lora_A holds 1 NaN", "inf_B": "lora_B holds 1 NaN", "int_A": "lora_A must be a dense",
                "rank0": "rank 0"}[bad]
    with pytest.raises(ConversionError, match=rf"lora\.pt: .*blocks\.1\.ffn\.2.*{expected}"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, num_heads=HEADS)
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ConversionError, match="blocks.1.ffn.2"):
        merge_lora(dict(ref.state_dict()), lora)


def test_lora_shape_mismatch_refused(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    lora = _peft_lora(ref, rank=2)
    lora["base_model.model.blocks.0.self_attn.q.lora_B.weight"] = torch.zeros(64, 3, dtype=torch.float64)
    _, src, lsrc = _base_and_lora(tmp_path, lora)
    with pytest.raises(ConversionError, match=r"lora\.pt: LoRA blocks\.0\.self_attn\.q: lora_B \(64, 3\) @ lora_A"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, num_heads=HEADS)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -4.0, 0.0])
def test_bad_alpha_refused(tmp_path, alpha):
    ref = make_tiny_wan(heads=HEADS)
    # stated by the file
    _, src, lsrc = _base_and_lora(tmp_path, _peft_lora(ref), adapter={"type": "lora", "alpha": alpha})
    with pytest.raises(ConversionError, match=r"lora\.pt: the file states LoRA alpha = .*finite positive"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, num_heads=HEADS)
    # per-module kohya alpha tensor
    lora = _peft_lora(ref)
    lora["base_model.model.blocks.0.self_attn.q.alpha"] = torch.tensor(alpha)
    _, src, lsrc = _base_and_lora(tmp_path, lora)
    with pytest.raises(ConversionError, match=r"LoRA blocks\.0\.self_attn\.q: alpha = .* finite positive"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, num_heads=HEADS)
    # given as an argument
    _, src, lsrc = _base_and_lora(tmp_path, _peft_lora(ref))
    with pytest.raises(UsageError, match="--lora-alpha must be a finite positive number"):
        convert_checkpoint(src, tmp_path / "out.safetensors", lora=lsrc, lora_alpha=alpha, num_heads=HEADS)
    with pytest.raises(ConversionError, match="alpha"):
        merge_lora(dict(ref.state_dict()), _peft_lora(ref), alpha=alpha)
    assert not (tmp_path / "out.safetensors").exists()
