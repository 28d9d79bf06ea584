"""Optional tests against a real ComfyUI: skipped unless COMFYUI_DIR is set.

    COMFYUI_DIR=/opt/comfyui COMFYUI_PYTHON=/opt/comfyui-venv/bin/python \
        python -m pytest -q tests/real_comfyui
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

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
