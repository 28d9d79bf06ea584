"""Quality bars for the shipped small model's videos in ComfyUI, shared by the stub suite
(tests/nodes/test_tiny_nodes.py) and the real-ComfyUI tests (tests/real_comfyui/test_tiny_workflow.py).

Measured when they were set (workflows/first_try_tiny_model.json: its prompt, seed 0, 24 frames of
32x32, chunks of 3, CPU float32; the pack's sampler makes the same video in the stub, ComfyUI 0.27
and 0.3.64, and the command-line demo), with the measures of tiny_model_tools/metrics.py:

| video | persistence | start cell | direction | speed px/frame | PSNR / SSIM vs full cache |
| --- | --- | --- | --- | --- | --- |
| AR Video Sampler, full cache | 1.0 | 1.0 | 0.957 | 1.25 | |
| AR Video Sampler, Dummy Forcing 50% (authors' defaults: normalised cost, neighbors without the sink) | 1.0 | 1.0 | 0.957 | 1.59 | 21.52 dB / 0.882 |
| the same with the earlier defaults (raw cost, neighbors keep frame 0) | 1.0 | 1.0 | 0.957 | 1.44 | 22.66 dB / 0.908 |
| ComfyUI's Sampler AR Video, full cache | 1.0 | 1.0 | 0.987 | 0.85 | |
| ComfyUI's Sampler AR Video, Dummy Forcing 50% | 1.0 | 1.0 | 0.987 | 1.31 | 20.40 dB / 0.816 |

(ComfyUI's own loop draws its own noise and uses BasicScheduler's simple sigmas, so it makes
another video than the pack's sampler; the stub's loop numbers are above, ComfyUI 0.27's are in
docs/tiny_model.md.) The bars leave room for float differences between machines, not for a
model that loses its object or its direction.
"""
from __future__ import annotations

import torch

from dummy_forcing_core.tiny.world import DEFAULT_PROMPT

FULL_MIN = {"persistence": 0.95, "start_cell": 1.0, "direction": 0.85}
DF_MIN = {"persistence": 0.95, "start_cell": 1.0, "direction": 0.85}
DF_PSNR_MIN, DF_SSIM_MIN = 20.0, 0.85        # the pack's sampler: measured 21.52 dB, 0.882 (2026-12-02)
CORE_PSNR_MIN, CORE_SSIM_MIN = 18.0, 0.75    # ComfyUI's own loop: measured 20.40 dB, 0.816 (stub)


def measure(full: torch.Tensor, dfv: torch.Tensor, prompt: str = DEFAULT_PROMPT) -> dict:
    """World metrics of both videos ([3, F, H, W] in [-1, 1]) and PSNR / SSIM of Dummy Forcing's."""
    from tiny_model_tools import metrics as m  # test-only: the runtime never imports the tools

    return {"full": m.world_metrics(full, prompt), "df": m.world_metrics(dfv, prompt), "psnr": m.psnr(dfv, full),
            "ssim": m.ssim(dfv, full)}


def check_quality(full: torch.Tensor, dfv: torch.Tensor, psnr_min: float = DF_PSNR_MIN,
                  ssim_min: float = DF_SSIM_MIN, prompt: str = DEFAULT_PROMPT) -> dict:
    got = measure(full, dfv, prompt)
    print("measured:", {k: ({q: round(x, 3) for q, x in v.items()} if isinstance(v, dict) else round(v, 3))
                        for k, v in got.items()})
    for k, v in FULL_MIN.items():
        assert got["full"][k] >= v, ("full cache", k, got)
    for k, v in DF_MIN.items():
        assert got["df"][k] >= v, ("Dummy Forcing", k, got)
    assert got["psnr"] >= psnr_min and got["ssim"] >= ssim_min, got
    return got
