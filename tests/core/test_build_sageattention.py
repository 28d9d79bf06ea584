"""bench/build_sageattention.py's source patches, on stand-in sources (no SageAttention code here)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("build_sageattention", os.path.join(ROOT, "bench", "build_sageattention.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_every_launch_moves_to_the_current_stream():
    src = ("#include <torch/extension.h>\n"
           "k1<<<grid, block>>>(a);\n"
           "k2<T, 4><<<dim3(n, h), NUM_THREADS, smem>>>(b);\n"
           "k3<<<g, b, 0, my_stream>>>(c);\n")
    out, n = build.on_current_stream(src)
    assert n == 3
    assert "k1<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(a)" in out
    assert "k2<T, 4><<<dim3(n, h), NUM_THREADS, smem, at::cuda::getCurrentCUDAStream()>>>(b)" in out
    assert "k3<<<g, b, 0, my_stream>>>(c)" in out  # a launch that names its stream keeps it
    assert out.startswith("#include <ATen/cuda/CUDAContext.h>\n")
    assert build.on_current_stream(out)[0].count("CUDAContext.h") == 1


def test_patch_keeps_the_hopper_extensions_only_and_refuses_another_layout(tmp_path):
    setup = "\n".join(["a = 1", build.DROPPED_EXTENSIONS[0], "    ext(sm80)", build.DROPPED_EXTENSIONS[1],
                       "    ext(sm89)", "if HAS_SM90:", "    ext(sm90)"])
    (tmp_path / "setup.py").write_text(setup)
    for rel in build.KERNEL_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("k<<<g, b>>>();\n")
    build.patch(str(tmp_path))
    text = (tmp_path / "setup.py").read_text()
    assert text.count("if False:") == 2 and "if HAS_SM90:" in text
    assert all("getCurrentCUDAStream" in (tmp_path / rel).read_text() for rel in build.KERNEL_FILES)
    (tmp_path / "setup.py").write_text("setup()\n")
    with pytest.raises(SystemExit, match="another SageAttention version"):
        build.patch(str(tmp_path))
