"""tests/comfy_stub mirrors the real ComfyUI's signatures (runs only when COMFYUI_DIR is set)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STUB_DIR = os.path.join(os.path.dirname(HERE), "comfy_stub")

# Stub-only keyword arguments and defaults that differ on purpose.
ALLOWED = {
    "comfy.model_base.BaseModel.__init__": {"unet_model"},  # real default: the SD UNetModel class
}


def _dump(python, mode, path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([python, os.path.join(HERE, "dump_signatures.py"), mode, path], capture_output=True,
                       text=True, timeout=120, cwd=path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_stub_signatures_match_real():
    real = _dump(os.environ.get("COMFYUI_PYTHON") or sys.executable, "real", os.environ["COMFYUI_DIR"])
    stub = _dump(sys.executable, "stub", STUB_DIR)
    problems = []
    for name, rsig in real["signatures"].items():
        ssig = stub["signatures"].get(name)
        if isinstance(rsig, str):
            problems.append(f"{name}: not in the real ComfyUI ({rsig})")
            continue
        if isinstance(ssig, str) or ssig is None:
            problems.append(f"{name}: missing in stub ({ssig})")
            continue
        allowed = ALLOWED.get(name, set())
        if [p[:2] for p in ssig[:len(rsig)]] != [p[:2] for p in rsig]:
            problems.append(f"{name}: params differ\n  real {rsig}\n  stub {ssig}")
            continue
        for rp, sp in zip(rsig, ssig):
            if rp[2] != sp[2] and rp[0] not in allowed:
                problems.append(f"{name}: default of {rp[0]} real {rp[2]} stub {sp[2]}")
        extra = [p for p in ssig[len(rsig):] if p[1] != "KEYWORD_ONLY"]
        if extra:
            problems.append(f"{name}: stub has extra positional params {extra}")
    if real["io_types"] != stub["io_types"]:
        problems.append(f"io types differ: real {real['io_types']} stub {stub['io_types']}")
    if real["constants"] != stub["constants"]:
        problems.append(f"constants differ: real {real['constants']} stub {stub['constants']}")
    assert not problems, "\n".join(problems)
