"""The live view (nodes/live_view.py) inside a real ComfyUI (COMFYUI_DIR; run on 0.27 and 0.3.64):
the server APIs it calls exist with the signatures it calls them with (and as tests/comfy_stub/server.py
has them), and planted frames written through it reach the client that queued the prompt, over
ComfyUI's websocket, as events whose sprite sheets /view serves with the planted pixels.

    COMFYUI_DIR=/work/comfy027 COMFYUI_PYTHON=/work/venv027/bin/python \
        python -m pytest -q tests/real_comfyui/test_live_view_real.py
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

import live_view_probe
from harness import HERE, ComfyServer

SIGNATURES = r'''
import inspect, json, sys
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import utils.json_util  # as main.py does first: v0.3.64's nodes.py puts comfy/ (with a utils.py) on sys.path
import folder_paths
import server
P = server.PromptServer
sig = lambda f: [(p.name, None if p.default is p.empty else repr(p.default)) for p in inspect.signature(f).parameters.values()]
init_src = inspect.getsource(P.__init__)
print(json.dumps({
    "send_sync": sig(P.send_sync), "init": sig(P.__init__), "instance_before": hasattr(P, "instance"),
    "init_sets_instance": "PromptServer.instance = self" in init_src,
    "init_sets_client_id": "self.client_id = None" in init_src,
    "get_temp_directory": sig(folder_paths.get_temp_directory),
    "get_directory_by_type": sig(folder_paths.get_directory_by_type),
    "temp_by_type": folder_paths.get_directory_by_type("temp") == folder_paths.get_temp_directory(),
}))
'''


def _real(snippet: str) -> dict:
    comfy_dir = os.environ["COMFYUI_DIR"]
    python = os.environ.get("COMFYUI_PYTHON") or "python3"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([python, "-c", snippet], cwd=comfy_dir, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_server_apis_as_called():
    import folder_paths as stub_folder_paths
    import server as stub_server

    real = _real(SIGNATURES)
    sig = lambda f: [[p.name, None if p.default is p.empty else repr(p.default)]  # noqa: E731
                     for p in inspect.signature(f).parameters.values()]
    # LiveView calls send_sync(event, data, sid) positionally and reads PromptServer.instance / client_id
    assert real["send_sync"] == [["self", None], ["event", None], ["data", None], ["sid", "None"]]
    assert real["send_sync"] == sig(stub_server.PromptServer.send_sync)
    assert [n for n, _ in real["init"]] == [n for n, _ in sig(stub_server.PromptServer.__init__)] == ["self", "loop"]
    assert not real["instance_before"] and real["init_sets_instance"] and real["init_sets_client_id"]
    assert real["get_temp_directory"] == sig(stub_folder_paths.get_temp_directory) == []
    assert real["get_directory_by_type"] == sig(stub_folder_paths.get_directory_by_type)
    assert real["temp_by_type"]


@pytest.fixture(scope="module")
def live_server():
    srv = ComfyServer.from_env(extra_packs={live_view_probe.PACK_NAME: live_view_probe.SOURCE})
    srv.start()
    yield srv
    srv.stop()


def _run(srv, tmp_path, **inputs) -> dict:
    base = {"frames": 10, "chunk": 4, "height": 48, "width": 80, "frame_rate": 8.0, "delay": 0.0,
            "cancel": False, "live_preview": True, "nonce": 0}
    prompt = {"7": {"class_type": live_view_probe.NODE_ID, "inputs": {**base, **inputs}}}
    pf = tmp_path / "prompt.json"
    pf.write_text(json.dumps(prompt))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([srv.python, os.path.join(HERE, "live_view_client.py"), srv.url, str(pf), str(tmp_path)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:] + "\n" + srv.log_tail()
    return json.loads(r.stdout.strip().splitlines()[-1])


def _frames_of(res, ev):
    sheet = np.asarray(Image.open(res["sprites"][ev["filename"]]).convert("RGB"), dtype=np.float32)
    assert sheet.shape == (ev["count"] * ev["height"], ev["width"], 3)
    return sheet.reshape(ev["count"], ev["height"], ev["width"], 3)


def test_frames_reach_the_client(live_server, tmp_path):
    res = _run(live_server, tmp_path, nonce=1)
    assert res["end"] == "execution_success", live_server.log_tail()
    evs = res["events"]
    assert [(e["state"], e.get("first"), e.get("count")) for e in evs] == [
        ("frames", 0, 4), ("frames", 4, 4), ("frames", 8, 2), ("complete", None, None)]
    assert evs[-1]["frames"] == 10
    assert {e["node"] for e in evs} == {"7"} and len({e["run"] for e in evs}) == 1
    assert res["bystander"] == []  # sent to the client that queued the prompt only
    for e in evs[:-1]:
        assert (e["type"], e["subfolder"], e["width"], e["height"], e["frame_rate"]) == (
            "temp", "dummy_forcing_live", 80, 48, 8.0)
        assert os.path.isfile(os.path.join(live_server.base_dir, "temp", e["subfolder"], e["filename"]))
        for k, frame in enumerate(_frames_of(res, e)):
            want = np.array(live_view_probe.frame_color(e["first"] + k), dtype=np.float32)
            assert np.abs(frame - want).mean(axis=(0, 1)).max() < 4, (e["first"] + k, frame.mean(axis=(0, 1)), want)


def test_cancel_and_off(live_server, tmp_path):
    res = _run(live_server, tmp_path, frames=6, cancel=True, nonce=2)
    assert [(e["state"], e.get("first"), e.get("count")) for e in res["events"]] == [
        ("frames", 0, 4), ("frames", 4, 2), ("cancelled", None, None)]
    assert res["events"][-1]["frames"] == 6
    res = _run(live_server, tmp_path, live_preview=False, nonce=3)
    assert res["end"] == "execution_success" and res["events"] == []


def test_large_frames_downscaled(live_server, tmp_path):
    res = _run(live_server, tmp_path, frames=2, chunk=2, height=720, width=1280, nonce=4)
    (ev, done) = res["events"]
    assert (ev["width"], ev["height"], done["state"]) == (512, 288, "complete")
    frames = _frames_of(res, ev)
    for k in range(2):
        want = np.array(live_view_probe.frame_color(k), dtype=np.float32)
        assert np.abs(frames[k] - want).mean(axis=(0, 1)).max() < 4
