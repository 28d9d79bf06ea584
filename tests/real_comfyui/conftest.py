"""Optional tests against a real ComfyUI: skipped unless COMFYUI_DIR is set.

    COMFYUI_DIR=/opt/comfyui COMFYUI_PYTHON=/opt/comfyui-venv/bin/python \
        python -m pytest -q tests/real_comfyui
"""
import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# pytest >= 8 imports the repo root's __init__.py (the pack module, which imports comfy_api) as a
# package before running any test under it, so this process needs the stub on sys.path too. The
# real ComfyUI always runs in a subprocess (PYTHONPATH dropped) and never sees it.
_STUB = os.path.join(os.path.dirname(HERE), "comfy_stub")
if importlib.util.find_spec("comfy") is None and _STUB not in sys.path:
    sys.path.insert(0, _STUB)

from harness import ComfyServer  # noqa: E402
import probe_pack  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("COMFYUI_DIR"):
        return
    skip = pytest.mark.skip(reason="set COMFYUI_DIR (and COMFYUI_PYTHON) to run against a real ComfyUI")
    for item in items:
        if os.path.dirname(str(item.fspath)) == HERE:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_server():
    srv = ComfyServer.from_env(extra_packs={probe_pack.PACK_NAME: probe_pack.SOURCE})
    if srv is None:
        pytest.skip("COMFYUI_DIR is not set")
    srv.start()
    yield srv
    srv.stop()
