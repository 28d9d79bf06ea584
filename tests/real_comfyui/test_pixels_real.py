"""Pixels out on a real ComfyUI: the pack's chunk decoders give VAE Decode's frames with ComfyUI's
own VAE classes (the Wan2.1 VAE everywhere, TAEHV / lighttaew2_1 where ComfyUI reads it), and AR
Video Sampler with Load VAE writes a whole video file through the server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from harness import REPO_ROOT
from test_pack_nodes import base_prompt, run_ok, sampler, server  # noqa: F401 - the module's server fixture

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def measured():
    if not os.environ.get("COMFYUI_DIR"):
        pytest.skip("COMFYUI_DIR is not set")
    work = tempfile.mkdtemp(prefix="df_vae_stream_")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([os.environ.get("COMFYUI_PYTHON", "python"), os.path.join(HERE, "vae_stream_run.py"),
                        os.environ["COMFYUI_DIR"], REPO_ROOT, work], capture_output=True, text=True, timeout=900,
                       cwd=os.environ["COMFYUI_DIR"], env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    yield json.loads(r.stdout.strip().splitlines()[-1]), work
    shutil.rmtree(work, ignore_errors=True)


def test_wan_vae_in_chunks_equals_vae_decode(measured):
    m, _ = measured
    assert m["wan_type"] == "WanVAE"
    for frames in (7, 8):
        assert m[f"wan_T{frames}_frames"] == 1 + 4 * (frames - 1)
        for chunk in ("chunk1", "chunk2", "chunk3", "node"):
            assert m[f"wan_T{frames}_{chunk}"] == 0.0, (frames, chunk, m)  # the same arithmetic, frame for frame


def test_taehv_in_chunks_equals_vae_decode_where_comfyui_reads_it(measured):
    m, _ = measured
    if "taehv" not in m["vae_kinds"]:
        pytest.skip("this ComfyUI has no TAEHV (lighttaew2_1) support")
    assert m["taehv_type"] == "TAEHV"
    for frames in (7, 8):
        for chunk in ("chunk1", "chunk2", "chunk3", "node"):
            assert m[f"taehv_T{frames}_{chunk}"] < 1e-4, (frames, chunk, m)  # frames batched per chunk: rounding


def test_sampler_with_load_vae_saves_the_video(server, measured):  # noqa: F811
    av = pytest.importorskip("av")
    _, work = measured
    os.makedirs(os.path.join(server.base_dir, "models", "vae"), exist_ok=True)
    shutil.copy(os.path.join(work, "tiny_wan21_vae.safetensors"),
                os.path.join(server.base_dir, "models", "vae", "tiny_wan21_vae.safetensors"))
    prompt = base_prompt()
    prompt.update({
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_wan21_vae.safetensors"}},
        "sample": sampler(("unet", 0), frames_per_chunk=3, vae=["vae", 0], save_video="mp4",
                          filename_prefix="video/df_real", return_frames=True, live_preview=True),
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["sample", 2]}},
    })
    res = run_ok(server, prompt)
    videos = [f for f in server.output_files() if f.startswith("video/df_real") or f.startswith("video" + os.sep)]
    assert len(videos) == 1 and videos[0].endswith(".mp4"), server.output_files()
    with av.open(os.path.join(server.base_dir, "output", videos[0])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 21  # 6 latent frames -> 21 frames
    assert len(res.outputs["preview"]["images"]) == 21
    assert not [f for f in os.listdir(os.path.join(server.base_dir, "output", "video")) if f.endswith(".partial")]
