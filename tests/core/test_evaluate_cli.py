"""The tiny evaluation's command line (results in out/ unless --write-docs, progress from the
start, total time at the end) and the ComfyUI stub's temp dir (removed at exit)."""
import io
import os
import subprocess
import sys
import types

import pytest

from dummy_forcing_core.tiny.model import DEFAULT_PATH
from tiny_model_tools import evaluate as ev

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUB_DIR = os.path.join(ROOT, "tests", "comfy_stub")


def test_results_go_to_out_unless_write_docs():
    for path in ev.output_paths(False).values():
        assert path.split(os.sep)[0] == "out"
    docs = ev.output_paths(True)
    assert docs["md"] == os.path.join(ROOT, "docs", "tiny_eval.md")
    assert docs["head_map"] == os.path.join(ROOT, "assets", "tiny_model", "head_map.png")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DEFAULT_PATH), reason="shipped tiny model missing")
def test_cli_writes_out_with_progress_and_total_time(tmp_path, monkeypatch, capsys):
    shipped = {p: os.path.getmtime(p) for p in ev.output_paths(True).values() if os.path.exists(p)}
    grid = ev.settings_grid
    monkeypatch.setattr(ev, "settings_grid", lambda geometry: grid(geometry)[:3])  # full, window, DF 25%
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain-line progress
    monkeypatch.chdir(tmp_path)
    ev.main(["--prompts", "1", "--seeds", "0", "--frames", "7"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]

    assert err[0].startswith("tiny evaluate: 1 prompts x 1 seeds")  # before the model is loaded
    assert err[1].startswith("[1/4] prompt 1/1 seed 0: full cache") and err[-2].startswith("[4/4] profiling heads")
    assert err[-1].startswith("wrote out") and " total " in err[-1] and err[-1].endswith(" s")
    for path in ev.output_paths(False).values():
        assert (tmp_path / path).is_file(), path
    assert "![head map](tiny_head_map.png)" in (tmp_path / "out" / "tiny_eval.md").read_text()
    assert {p: os.path.getmtime(p) for p in shipped} == shipped  # docs/ and assets/ untouched


def test_progress_plain_lines_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    out = io.StringIO()
    p = ev.Progress(3, every=1e9, stream=out)
    for i in range(3):
        p.step(f"video {i}")
    p.close()
    lines = out.getvalue().splitlines()  # the first step at once, then throttled; the last always
    assert [l.split()[0] for l in lines] == ["[1/3]", "[3/3]"] and "left)" in lines[0]


def test_progress_uses_tqdm_when_installed(monkeypatch):
    calls = []

    class FakeBar:
        def __init__(self, total, **kw):
            calls.append(("total", total))

        def set_postfix_str(self, s, refresh=True):
            pass

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    out = io.StringIO()
    p = ev.Progress(2, stream=out)
    p.step("a")
    p.step("b")
    p.close()
    assert calls == [("total", 2), ("update", 1), ("update", 1), ("close",)] and out.getvalue() == ""


def test_comfy_stub_temp_dir_is_removed_at_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COMFY_STUB_BASE_DIR"}
    env["PYTHONPATH"] = STUB_DIR
    other = tmp_path / "other"
    code = ("import os, folder_paths as fp; print(fp.base_path); assert os.path.isdir(fp.get_output_directory()); "
            f"fp.set_base_directory({str(other)!r}); print(fp.base_path)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    temp, rebased = p.stdout.split()
    assert not os.path.exists(temp)  # the stub's own temp dir is gone
    assert rebased == str(other) and (other / "output").is_dir()  # set_base_directory still works, and is kept

    env["COMFY_STUB_BASE_DIR"] = str(tmp_path / "base")  # the caller's directory: used and kept
    p = subprocess.run([sys.executable, "-c", "import folder_paths as fp; print(fp.base_path)"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == str(tmp_path / "base") and (tmp_path / "base" / "output").is_dir()
