"""The tiny demo's command line: flags checked before anything runs, one-line errors and
warnings, defaults in --help, median timings, the animation formats of --out."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dummy_forcing_core.tiny.model import DEFAULT_PATH
from dummy_forcing_core.tiny.text import words_of
from tiny_model_tools import demo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_model = pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")
FOUR_OBJECTS = ("a big red circle at top left moving right fast, a big green square at top right falling fast, "
                "a small blue triangle at bottom left rising fast, a small white circle at center moving left "
                "slowly, on a navy plain background")


class _Stop(Exception):
    pass


def _never(*a, **k):
    raise AssertionError("the demo loaded the model or generated before refusing a bad flag")


def _lines(text):
    return [l for l in text.splitlines() if l.strip()]


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("(default: out/demo.gif)", "(default: 24)", "(default: 0.5)", "(default: 3)", "(default: cpu)"):
        assert default in out
    assert demo.DEFAULT_PROMPT in out and "prompt form" in out


def _bad_cases(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    cases = [
        (["--out", str(tmp_path)], "--out"),                          # an existing directory
        (["--out", str(tmp_path / "sub") + "/"], "--out"),            # a folder name
        (["--out", str(tmp_path / "demo.mp4")], "--out"),             # not an image / animation format
        (["--out", str(tmp_path / "demo")], "--out"),                 # no extension
        (["--out", str(a_file / "demo.gif")], "--out"),               # its folder would be inside a file
        (["--frames", "0"], "--frames"), (["--frames", "1000"], "--frames"), (["--frames", "x"], "--frames"),
        (["--dummy-heads", "1.5"], "--dummy-heads"), (["--dummy-heads", "-0.1"], "--dummy-heads"),
        (["--dummy-heads", "nan"], "--dummy-heads"),
        (["--neighbor-chunks", "0"], "--neighbor-chunks"), (["--sink-frames", "0"], "--sink-frames"),
        (["--ar-start", "0"], "--ar-start"), (["--ar-start", "3", "--frames", "9"], "--ar-start"),
        (["--frames", "3"], "--ar-start"),                            # too short for Dummy Forcing at ar_start 1
        (["--sink-frames", "7", "--frames", "9"], "--sink-frames"),
        (["--scale", "0"], "--scale"), (["--scale", "100"], "--scale"), (["--seed", "-1"], "--seed"),
        (["--repeats", "0"], "--repeats"),
        (["--switch-prompt", "a big red circle", "--switch-frame", "24"], "--switch-frame"),  # past the video
        (["--switch-prompt", "a big red circle", "--switch-frame", "1"], "--switch-frame"),   # inside the first chunk
        (["--model", str(tmp_path / "missing.safetensors")], "--model"), (["--model", str(a_file)], "--model"),
        (["--device", "nonsense"], "--device"),
        (["--bogus"], "--bogus"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device"))
    return cases


def test_bad_flags_are_one_line_errors_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_tiny", _never)
    monkeypatch.setattr(demo, "run_pair", _never)
    for argv, flag in _bad_cases(tmp_path):
        with pytest.raises(SystemExit) as e:
            demo.main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "ok" / "demo.gif")]))
        err = capsys.readouterr().err
        assert e.value.code == 2, argv
        assert len(_lines(err)) == 1 and err.startswith("error: ") and flag in err, (argv, err)
    assert not (tmp_path / "ok").exists() and not (tmp_path / "sub").exists()  # nothing created


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_tiny", _never)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SystemExit):
            demo.main(["--out", str(ro / "new" / "demo.gif")])
    finally:
        ro.chmod(0o700)
    assert "permission" in capsys.readouterr().err


def test_cli_error_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "tiny_model_tools.demo", "--frames", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert _lines(p.stderr) == [p.stderr.strip()] and p.stderr.startswith("error: --frames"), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def _warnings(monkeypatch, capsys, prompt, *extra):
    """Run the demo up to the point where it would generate; return its stderr lines."""
    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(demo, "run_pair", stop)
    with pytest.raises(_Stop):
        demo.main(["--prompt", prompt, "--out", "out/unused.gif", *extra])
    return _lines(capsys.readouterr().err)


@needs_model
def test_prompt_warnings(monkeypatch, capsys):
    assert _warnings(monkeypatch, capsys, demo.DEFAULT_PROMPT) == []

    lines = _warnings(monkeypatch, capsys, "")
    assert len(lines) == 1 and lines[0].startswith("warning: the prompt is empty")

    lines = _warnings(monkeypatch, capsys, "a big purple circle at top left moving right fast, on a navy background")
    assert len(lines) == 1 and "purple" in lines[0]

    # planted: a prompt longer than the encoder reads, naming 4 objects (the world has at most 3)
    tokens = words_of(FOUR_OBJECTS)
    dropped = len(tokens) - 32
    assert dropped > 0
    lines = _warnings(monkeypatch, capsys, FOUR_OBJECTS)
    assert all(l.startswith("warning: ") for l in lines) and len(lines) == 2, lines
    cut = next(l for l in lines if "cut" in l)
    assert f"{dropped} tokens dropped" in cut and " ".join(w for w in tokens[32:] if w != ",") in cut
    assert any("4 objects" in l and "at most 3" in l for l in lines)

    lines = _warnings(monkeypatch, capsys, demo.DEFAULT_PROMPT, "--frames", "30")
    assert len(lines) == 1 and "trained on 24" in lines[0]


class _Stats:
    def __init__(self, steady):
        self.steady = steady

    def steady_chunk_seconds(self):
        return self.steady


def test_chunk_time_is_a_median_over_runs():
    # planted: one run has a chunk stalled by a busy CPU (6 s); the typical chunk is 0.25 s
    runs = [_Stats([0.25, 0.26, 0.24]), _Stats([0.25, 6.0, 0.25]), _Stats([0.26, 0.25, 0.24])]
    assert 0.24 <= demo.median_chunk_seconds(runs) <= 0.26
    assert np.mean([s for r in runs for s in r.steady]) > 0.8  # what a mean would have said


def test_busy_cpu_is_named(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (5.6, 4.0, 3.0), raising=False)
    assert "busy: load 5.6 on 2 cores" in demo._busy_cpu_note()
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (1.2, 1.0, 1.0), raising=False)
    assert demo._busy_cpu_note() == ""


@pytest.mark.parametrize("ext", [".gif", ".webp", ".png"])
def test_animation_formats_keep_colours_exact(tmp_path, ext):
    v = torch.randint(0, 2, (3, 5, 8, 8)).float() * 2 - 1  # 8 colours: exact in a GIF palette too
    path = demo.side_by_side_gif(str(tmp_path / f"a{ext}"), [("a", v), ("b", -v)], scale=2)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (2 * 16 + 2, 14 + 16)
        im.seek(3)
        pixels = np.asarray(im.convert("RGB"))[14:, :16]  # below the label strip, the first video
    want = ((v[:, 3].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
    assert np.array_equal(pixels, want)  # lossy WebP would blur the object colours the metrics track


@pytest.mark.slow
@needs_model
def test_cli_runs_with_repeats(tmp_path, capsys):
    out = tmp_path / "new" / "demo.png"
    r = demo.main(["--frames", "7", "--repeats", "2", "--scale", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert r["repeats"] == 2 and "speed-up (steady chunk time, median of 2 runs)" in text and f"wrote {out}" in text
    assert r["df_chunk_s"] > 0 and r["full_chunk_s"] > 0
    with Image.open(out) as im:
        assert im.n_frames == 7


@pytest.mark.slow
def test_cli_shows_a_prompt_switch(tmp_path, capsys):
    """--switch-prompt: the frames before the switch are the single-prompt video's, later ones differ."""
    out = tmp_path / "switch.gif"
    base = demo.main(["--frames", "9", "--repeats", "1", "--scale", "1", "--out", str(tmp_path / "one.gif")])
    capsys.readouterr()
    r = demo.main(["--frames", "9", "--repeats", "1", "--scale", "1", "--out", str(out), "--switch-frame", "6",
                   "--switch-prompt", "a big blue circle at top right moving left fast, on a maroon plain background"])
    text = capsys.readouterr().out
    assert "prompt switch at latent frame 6 (chunk 2)" in text and "re-cache" in text
    assert r["df_stats"].prompt_switches and r["full_stats"].prompt_switches
    for name in ("full", "df"):
        assert torch.equal(r[name][:, :6], base[name][:, :6])
        assert (r[name][:, 6:] - base[name][:, 6:]).abs().max() > 0.05
