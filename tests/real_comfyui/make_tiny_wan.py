"""Write a tiny random Wan2.1 T2V diffusion model with ComfyUI's own WanModel class.

Run with the ComfyUI interpreter:  python make_tiny_wan.py COMFYUI_DIR OUT.safetensors [--causal]
ComfyUI's detector (comfy/model_detection.py) infers num_heads = dim // 128, freq_dim 256,
text_dim 4096 (default) and patch (1, 2, 2) from the keys, so the tiny model keeps those.
``--causal`` adds the metadata ``config = {"transformer": {"causal_ar": true}}`` with which
ComfyUI >= 0.21 builds its own CausalWanModel (older ComfyUI loads the same file as WanModel).
"""
import json
import os
import sys

DIM, FFN, LAYERS = 256, 512, 2


def main(comfy_dir, out_path, causal=False, seed=0):
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = WanModel(model_type="t2v", dim=DIM, ffn_dim=FFN, num_heads=DIM // 128, num_layers=LAYERS,
                     in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, dtype=torch.float32,
                     device="cpu", operations=comfy.ops.disable_weight_init)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("norm_q.weight") or k.endswith("norm_k.weight") or (".norm" in k and k.endswith(".weight")):
            t = torch.ones_like(v)
        elif k.endswith(".bias"):
            t = torch.zeros_like(v)
        elif "modulation" in k:
            t = torch.randn_like(v) / DIM ** 0.5
        else:
            fan_in = v[0].numel() if v.ndim > 1 else v.numel()
            t = torch.randn_like(v) / max(fan_in, 1) ** 0.5
        sd[k] = t.contiguous()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    meta = {"config": json.dumps({"transformer": {"causal_ar": True}})} if causal else None
    save_file(sd, out_path, metadata=meta)
    print(json.dumps({"path": out_path, "keys": len(sd), "params": sum(t.numel() for t in sd.values()),
                      "dim": DIM, "heads": DIM // 128, "layers": LAYERS, "causal": causal}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], causal="--causal" in sys.argv[3:])
