"""The converter command: one ``error: ...`` line and exit code 2 (arguments) or 1 (input / I/O), no
traceback, cheap checks before the long work; progress bars through an optional tqdm."""
import errno
import os
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_tiny_wan
from dummy_forcing_core.convert import base_model, conversion, convert_checkpoint, main
from dummy_forcing_core.convert import lora as lora_reading

HEADS = 4


@pytest.fixture
def files(tmp_path):
    ref = make_tiny_wan(heads=HEADS)
    pt = tmp_path / "base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in ref.state_dict().items()}}, pt)
    st = tmp_path / "wan.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, st)
    lora = tmp_path / "lora.pt"
    w = ref.blocks[0].self_attn.q.weight
    torch.save({"generator_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.ones(2, w.shape[1]),
                                   "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.ones(w.shape[0], 2)}},
               lora)
    return types.SimpleNamespace(pt=str(pt), st=str(st), lora=str(lora), dir=tmp_path)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _no_reading(monkeypatch):
    for reader in (base_model, lora_reading):  # the modules that read input files
        monkeypatch.setattr(reader, "_read_input",
                            lambda *a, **k: pytest.fail("read the input before checking arguments"))


def _no_long_work(monkeypatch):
    monkeypatch.setattr(base_model._Model, "verify", lambda *a, **k: pytest.fail("started the long CRC pass"))
    monkeypatch.setattr(conversion, "_write_safetensors", lambda *a, **k: pytest.fail("started writing"))


@pytest.mark.parametrize("extra,expected", [
    (["--chunk-frames", "0"], "--chunk-frames must be a positive integer"),
    (["--chunk-frames", "-3"], "--chunk-frames must be a positive integer"),
    (["--chunk-frames", "abc"], "argument --chunk-frames: invalid int value"),
    (["--num-heads", "0"], "--num-heads must be a positive integer"),
    (["--num-heads", "-4"], "--num-heads must be a positive integer"),
    (["--lora", "{lora}", "--lora-alpha", "nan"], "--lora-alpha must be a finite positive number"),
    (["--lora", "{lora}", "--lora-alpha", "-1"], "--lora-alpha must be a finite positive number"),
    (["--lora", "{lora}", "--lora-alpha", "inf"], "--lora-alpha must be a finite positive number"),
    (["--lora", "{lora}", "--lora-rank", "0"], "--lora-rank must be a positive integer"),
    (["--lora-alpha", "4"], "apply to a LoRA"),
    (["--dtype", "fp64"], "argument --dtype: invalid choice"),
])
def test_nonsense_numbers_exit_2_before_reading(files, capsys, monkeypatch, extra, expected):
    _no_reading(monkeypatch)
    extra = [a.format(lora=files.lora) for a in extra]
    code, out, err = _run(capsys, files.pt, *extra, "-o", files.dir / "out.safetensors")
    assert code == 2 and out == ""
    assert expected in _one_error_line(err)
    assert not (files.dir / "out.safetensors").exists()


def test_missing_output_flag_is_one_line(files, capsys):
    code, _, err = _run(capsys, files.pt)
    assert code == 2 and "-o/--output" in _one_error_line(err)


@pytest.mark.parametrize("case", ["dir", "dir_named_safetensors", "same_as_input", "same_via_link", "same_as_lora",
                                  "not_safetensors", "no_folder"])
def test_bad_output_paths_exit_2_before_reading(files, capsys, monkeypatch, case):
    d = files.dir
    if case == "dir":
        out, expected = d, "is a folder"
    elif case == "dir_named_safetensors":
        (d / "x.safetensors").mkdir()
        out, expected = d / "x.safetensors", "is a folder"
    elif case == "same_as_input":
        out, expected = files.st, "refusing to overwrite the input"
    elif case == "same_via_link":
        os.link(files.st, d / "hard.safetensors")
        out, expected = d / "hard.safetensors", "refusing to overwrite the input"
    elif case == "same_as_lora":
        shutil.copy(files.lora, d / "lora.safetensors")
        code, _, err = _run(capsys, files.st, "--lora", d / "lora.safetensors", "-o", d / "lora.safetensors")
        assert code == 2 and "refusing to overwrite the input" in _one_error_line(err)
        return
    elif case == "not_safetensors":
        out, expected = d / "out.pt", "must be a .safetensors file"
    else:
        out, expected = d / "nowhere" / "out.safetensors", "does not exist"
    data = open(files.st, "rb").read()
    _no_reading(monkeypatch)
    code, out_text, err = _run(capsys, files.st, "-o", out)
    assert code == 2 and out_text == ""
    assert expected in _one_error_line(err)
    assert open(files.st, "rb").read() == data


def test_heads_that_do_not_divide_dim_exit_2_before_the_long_work(files, capsys, monkeypatch):
    _no_long_work(monkeypatch)
    for src in (files.pt, files.st):
        code, _, err = _run(capsys, src, "--num-heads", "5", "-o", files.dir / "out.safetensors")
        assert code == 2
        line = _one_error_line(err)
        assert "--num-heads 5 does not split dim 64" in line and os.path.basename(src) in line


def test_disk_full_exit_1_one_line(files, capsys, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    before = sorted(os.listdir(files.dir))
    code, out, err = _run(capsys, files.pt, "--num-heads", HEADS, "-o", files.dir / "out.safetensors")
    monkeypatch.undo()
    assert code == 1 and out == ""
    line = _one_error_line(err)
    assert "out.safetensors" in line and "No space left on device" in line
    assert sorted(os.listdir(files.dir)) == before


def test_not_enough_free_space_found_before_the_long_work(files, capsys, monkeypatch):
    _no_long_work(monkeypatch)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10 ** 6, used=0, free=100))
    code, _, err = _run(capsys, files.pt, "--num-heads", HEADS, "-o", files.dir / "out.safetensors")
    assert code == 1 and "not enough free disk space" in _one_error_line(err)


def test_unreadable_input_and_interrupt_are_one_line(files, capsys, monkeypatch):
    code, _, err = _run(capsys, files.dir / "missing.pt", "-o", files.dir / "out.safetensors")
    assert code == 1 and "no such file" in _one_error_line(err)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "_write_safetensors", interrupted)
    code, _, err = _run(capsys, files.st, "--num-heads", HEADS, "-o", files.dir / "out.safetensors")
    assert code == 130 and "interrupted" in _one_error_line(err)


def test_success_prints_summary_and_no_error(files, capsys):
    code, out, err = _run(capsys, files.pt, "--lora", files.lora, "--num-heads", HEADS, "-o",
                          files.dir / "ok.safetensors")
    assert code == 0 and "error" not in err
    assert "wrote" in out and "LoRA merged: 1 modules" in out


# ------------------------------------------------------------------------------------- progress


class _FakeTqdm:
    bars = []

    def __init__(self, total=None, desc=None, **kw):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        _FakeTqdm.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True
        return False

    def update(self, n):
        self.n += n


@pytest.fixture
def fake_tqdm(monkeypatch):
    _FakeTqdm.bars = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=_FakeTqdm))
    return _FakeTqdm


def test_progress_with_tqdm(files, fake_tqdm):
    out = files.dir / "p.safetensors"
    convert_checkpoint(files.pt, out, num_heads=HEADS, dtype="bf16", progress=True)
    descs = [b.desc for b in fake_tqdm.bars]
    assert any(d.startswith("checking base.pt") for d in descs) and "writing p.safetensors" in descs
    for b in fake_tqdm.bars:
        assert b.closed and b.n == b.total > 0
    writing = next(b for b in fake_tqdm.bars if b.desc.startswith("writing"))
    assert writing.total == sum(v.numel() * 2 for v in make_tiny_wan(heads=HEADS).state_dict().values())


def test_no_progress_off_a_terminal_or_without_tqdm(files, fake_tqdm, monkeypatch):
    convert_checkpoint(files.pt, files.dir / "a.safetensors", num_heads=HEADS)  # stderr is not a TTY here
    convert_checkpoint(files.pt, files.dir / "b.safetensors", num_heads=HEADS, progress=False)
    assert fake_tqdm.bars == []
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed: import fails, conversion goes on silently
    convert_checkpoint(files.pt, files.dir / "c.safetensors", num_heads=HEADS, progress=True)
    assert (files.dir / "c.safetensors").exists()
