"""The warm start in a real ComfyUI (COMFYUI_DIR): AR Video Sampler re-queued with a new seed, then a
new prompt, on the one loaded model runs warm (the log says what it keeps) and gives the latents a
cold run (warm_start off, on a freshly loaded copy of the weights) gives."""
from __future__ import annotations

from test_pack_nodes import (TEXT_PACK, TEXT_PACK_SOURCE, apply, base_prompt, run_ok, sampler,  # noqa: F401
                             save_latent, saved_latent, server)

import torch


def test_requeued_runs_are_warm_and_equal_cold_runs(server):
    def one(unet, seed, text_seed, prefix, **kw):
        p = base_prompt(text_seed=text_seed)
        p["unet"]["inputs"]["unet_name"] = unet
        p.update({"df": apply(), "s": sampler(("df", 0), seed=seed, **kw), "save": save_latent("s", prefix)})
        return run_ok(server, p)

    from harness import TINY_WAN_NAME
    runs = [(3, 1), (4, 1), (4, 2)]  # a new seed, then a new prompt
    for i, (seed, text) in enumerate(runs):
        one(TINY_WAN_NAME, seed, text, f"latents/warm_{i}")
    log = server.log_text()
    assert log.count("warm start keeps") >= 3 and log.count("this run reused the last run's") >= 2, log[-3000:]
    copy = "tiny_wan_t2v_warm_copy.safetensors"
    server.write_tiny_wan(copy)  # same seed: the same weights
    for i, (seed, text) in enumerate(runs):
        one(copy, seed, text, f"latents/cold_{i}", warm_start=False)
        assert torch.equal(saved_latent(server, f"latents/warm_{i}"), saved_latent(server, f"latents/cold_{i}")), i
