"""The pack's chunk decoders against ComfyUI's own VAE Decode, in-process on a real ComfyUI (CPU).

    COMFYUI_PYTHON vae_stream_run.py COMFYUI_DIR REPO_ROOT WORK_DIR

Builds ComfyUI's own Wan2.1 VAE (small width, random weights, loaded through comfy.sd.VAE as Load
VAE does) and, where this ComfyUI has it, a TAEHV (lighttaew2_1 layout), decodes random video
latents with VAE.decode and with the pack's decoder fed chunk by chunk, and runs the pack's AR
Video Decode node. Writes the Wan VAE to WORK_DIR/tiny_wan21_vae.safetensors (for the server
test). Prints one JSON object of max |difference| per VAE and chunk size.
"""
import importlib.util
import json
import os
import sys

COMFY, REPO, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, COMFY)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.ldm.wan.vae as wan_vae  # noqa: E402
import comfy.sd  # noqa: E402

spec = importlib.util.spec_from_file_location("DFPack", os.path.join(REPO, "__init__.py"),
                                              submodule_search_locations=[REPO])
pack = importlib.util.module_from_spec(spec)
sys.modules["DFPack"] = pack
spec.loader.exec_module(pack)
from DFPack.nodes import pixel_output  # noqa: E402
from DFPack.nodes.decode import ARVideoDecode  # noqa: E402


def randomised(module, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in module.state_dict().items():
        if "gamma" in k:
            sd[k] = torch.ones(v.shape)
        else:
            fan = v[0].numel() if v.ndim > 1 else v.numel()
            sd[k] = (torch.randn(v.shape, generator=gen) * scale / max(fan, 1) ** 0.5).contiguous()
    return sd


# ComfyUI 0.2x reads the VAE's width from its weights; 0.3.x builds the Wan2.1 VAE at its real width, 96
dim = 16 if hasattr(wan_vae, "count_cache_layers") else 96
vaes = {"wan": randomised(wan_vae.WanVAE(dim=dim, z_dim=16, temperal_downsample=[False, True, True]))}
save_file(vaes["wan"], os.path.join(WORK, "tiny_wan21_vae.safetensors"))
try:
    import comfy.taesd.taehv as taehv
    vaes["taehv"] = {k: v.to(torch.bfloat16) for k, v in randomised(taehv.TAEHV(latent_channels=16), 0.5).items()}
except ImportError:  # ComfyUI < 0.2x reads no TAEHV
    pass

out = {"vae_kinds": sorted(vaes)}
with torch.no_grad():
    for kind, sd in vaes.items():
        vae = comfy.sd.VAE(sd=sd)
        out[kind + "_type"] = type(vae.first_stage_model).__name__
        for frames in (7, 8):
            z = torch.randn(1, 16, frames, 6, 8, generator=torch.Generator().manual_seed(frames))
            ref = vae.decode(z)
            ref = ref.reshape(-1, *ref.shape[-3:]).float()
            for chunk in (1, 2, 3):
                dec = pixel_output.frame_decoder(vae)
                parts = [dec.push(z[:, :, f0:f0 + chunk]) for f0 in range(0, frames, chunk)] + [dec.finish()]
                got = torch.cat([p for p in parts if p is not None], 1).reshape(-1, *ref.shape[1:]).float()
                key = f"{kind}_T{frames}_chunk{chunk}"
                out[key] = float((got - ref).abs().max()) if got.shape == ref.shape else f"shape {list(got.shape)}"
            node = ARVideoDecode.execute(samples={"samples": z}, vae=vae, chunk_frames=3, live_preview=False).args[0]
            out[f"{kind}_T{frames}_node"] = float((node.float() - ref).abs().max())
            out[f"{kind}_T{frames}_frames"] = int(ref.shape[0])
print(json.dumps(out))
