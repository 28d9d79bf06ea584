"""Train the tiny causal Wan2.1 model on the shapes world, with teacher forcing.

    python -m tiny_model_tools.train --device cuda --minutes 8 --out out/tiny
    python -m tiny_model_tools.train --device cpu --steps 20 --set model.num_layers=2 ...

Objective: flow matching as Wan / Self Forcing define it: ``x_t = (1 - s) x0 + s eps``, the
model predicts ``v = eps - x0`` at timestep ``1000 s``; ``s = shift u / (1 + (shift - 1) u)``
with ``u ~ U(0, 1)`` drawn per chunk (3 frames) and shift 5.

Teacher forcing, so that training is exactly what chunk-by-chunk inference with a full KV
cache computes: the transformer sees the doubled sequence ``[clean frames (t = 0) | noisy
frames (per-chunk t)]``; the noisy copy of frame f has the RoPE position of clean frame f;
block mask: clean chunk i attends clean chunks <= i (the cache pass), noisy chunk i attends
clean chunks < i and itself (a denoising pass). The loss is on the noisy half only.
``tests/core/test_tiny_train.py`` checks this equals :class:`ChunkRunner` with a full cache.

The forward is :func:`dummy_forcing_core.wan_blocks.wan_forward` (the skeleton the chunk
runner uses too) over the doubled sequence, with a RoPE table that repeats ``rope_table`` for
each half. Attention: SDPA with a boolean mask, or (CUDA)
FlexAttention with a block mask, which skips the ~70% of the score blocks the mask removes;
``--attn auto`` times both for a few steps and keeps the faster.

Writes to ``--out``: ``model.safetensors`` (EMA weights, fp16, Wan names + ``text_encoder.*``,
metadata: config, steps, final loss), ``raw.safetensors`` (the raw weights, fp16, to resume),
``train_log.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from dummy_forcing_core.rope import RopeTable, rope_table
from dummy_forcing_core.wan_blocks import text_cache, unpatchify, wan_forward
from dummy_forcing_core.wan_model import WanConfig, WanModel
from dummy_forcing_core.tiny.codec import PixelCodec
from dummy_forcing_core.tiny.model import file_size_estimate, read_tiny_metadata, save_tiny
from dummy_forcing_core.tiny.text import TextConfig, TextEncoder

from .dataset import ShapesWorld

__all__ = ["DEFAULT_CONFIG", "load_config", "build", "wan_init", "teacher_forcing_mask", "make_attend",
           "teacher_forcing_forward", "shift_sigma", "flow_sample", "Trainer", "main"]

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")


# ----------------------------------------------------------------------------------------
# config and models


def load_config(path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Read the JSON config and apply ``section.key=value`` overrides (value parsed as JSON)."""
    with open(path or DEFAULT_CONFIG) as f:
        cfg = json.load(f)
    for item in overrides or []:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or section not in cfg:
            raise ValueError(f"override {item!r} must look like section.key=value with section in {list(cfg)}")
        try:
            cfg[section][name] = json.loads(value)
        except json.JSONDecodeError:
            cfg[section][name] = value
    return cfg


def wan_init(model: WanModel, seed: int = 0) -> WanModel:
    """Wan2.1's own initialisation: xavier-uniform linears with zero bias, N(0, 0.02) for the
    text/time embeddings, modulation ~ N(0, 1/dim), zero output head."""
    g = torch.Generator().manual_seed(seed)

    def xavier(w):
        fan_out, fan_in = w.shape[0], w[0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * bound)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                xavier(m.weight)
                nn.init.zeros_(m.bias)
        xavier(model.patch_embedding.weight)
        nn.init.zeros_(model.patch_embedding.bias)
        for seq in (model.text_embedding, model.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
        for b in model.blocks:
            b.modulation.copy_(torch.randn(b.modulation.shape, generator=g) / math.sqrt(model.dim))
        model.head.modulation.copy_(torch.randn(model.head.modulation.shape, generator=g) / math.sqrt(model.dim))
        nn.init.zeros_(model.head.head.weight)
        nn.init.zeros_(model.head.head.bias)
    return model


def build(cfg: dict, seed: int = 0) -> tuple[WanModel, TextEncoder]:
    torch.manual_seed(seed)
    model = wan_init(WanModel(WanConfig.from_dict(cfg["model"])), seed)
    text = TextEncoder(TextConfig.from_dict(cfg["text"]))
    if model.config.text_dim != text.config.dim:
        raise ValueError(f"model.text_dim {model.config.text_dim} != text.dim {text.config.dim}")
    return model, text


# ----------------------------------------------------------------------------------------
# teacher-forcing forward


def _token_layout(frames: int, tpf: int, chunk: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of the doubled sequence: chunk index and whether it is in the noisy half."""
    c = torch.arange(frames, device=device).repeat_interleave(tpf) // chunk
    chunk_id = torch.cat([c, c])
    noisy = torch.cat([torch.zeros_like(c), torch.ones_like(c)]).bool()
    return chunk_id, noisy


def teacher_forcing_mask(frames: int, tpf: int, chunk: int, device=None) -> torch.Tensor:
    """bool [2L, 2L], True = may attend (L = frames * tpf): clean chunk i -> clean chunks
    <= i; noisy chunk i -> clean chunks < i and noisy chunk i."""
    chunk_id, noisy = _token_layout(frames, tpf, chunk, device)
    qc, kc = chunk_id[:, None], chunk_id[None, :]
    qn, kn = noisy[:, None], noisy[None, :]
    clean_q = ~qn & ~kn & (kc <= qc)
    noisy_q = qn & ((~kn & (kc < qc)) | (kn & (kc == qc)))
    return clean_q | noisy_q


def make_attend(kind: str, frames: int, tpf: int, chunk: int, device):
    """self_attend(q, k, v) for block_forward ([B, L, H, D] in and out) over the doubled
    sequence with the teacher-forcing mask. kind: 'sdpa' or 'flex'."""
    device = torch.device(device)
    if kind == "sdpa":
        mask = teacher_forcing_mask(frames, tpf, chunk, device)

        def attend(q, k, v):
            dt = v.dtype
            o = F.scaled_dot_product_attention(q.to(dt).transpose(1, 2), k.to(dt).transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask)
            return o.transpose(1, 2)

        return attend
    if kind == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        chunk_id, noisy = _token_layout(frames, tpf, chunk, device)
        chunk_id = chunk_id.to(torch.int32)
        noisy_i = noisy.to(torch.int32)

        def mask_mod(b, h, q_idx, kv_idx):
            qc, kc = chunk_id[q_idx], chunk_id[kv_idx]
            qn, kn = noisy_i[q_idx], noisy_i[kv_idx]
            clean_q = (qn == 0) & (kn == 0) & (kc <= qc)
            noisy_q = (qn == 1) & (((kn == 0) & (kc < qc)) | ((kn == 1) & (kc == qc)))
            return clean_q | noisy_q

        n = 2 * frames * tpf
        block_mask = create_block_mask(mask_mod, None, None, n, n, device=device)
        flex = torch.compile(flex_attention, dynamic=False)

        def attend(q, k, v):
            dt = torch.bfloat16 if device.type == "cuda" else v.dtype
            o = flex(q.to(dt).transpose(1, 2), k.to(dt).transpose(1, 2), v.to(dt).transpose(1, 2), block_mask=block_mask)
            return o.transpose(1, 2)

        return attend
    raise ValueError(f"unknown attention backend {kind!r}")


def doubled_rope(frames: int, h: int, w: int, head_dim: int, device, dtype=torch.float32) -> RopeTable:
    """RoPE of [clean frames 0..F-1 | noisy frames 0..F-1]: the noisy copy of frame f sits at
    the clean frame's position, as a denoising pass of that chunk does at inference."""
    r = rope_table(frames, h, w, head_dim, 0, device=device, dtype=dtype)
    return RopeTable(torch.cat([r.cos, r.cos]), torch.cat([r.sin, r.sin]))


def teacher_forcing_forward(model: WanModel, x0: torch.Tensor, xt: torch.Tensor, t_frames: torch.Tensor,
                            context: torch.Tensor, attend, dtype=torch.float32,
                            t_clean: torch.Tensor | None = None) -> torch.Tensor:
    """Flow prediction for the noisy frames, each chunk seeing only clean past chunks.

    x0, xt: [B, C, F, H, W] context ("clean") and noisy latents; t_frames: [B, F] timesteps
    (0..1000) of the noisy frames; context: [B, L_text, text_dim]; t_clean: [B, F] timesteps
    of the context frames (default 0: clean, as the sampler's cache pass with
    context_timestep 0). Returns [B, out_dim, F, H, W]."""
    Fr = x0.shape[2]
    _, ph, pw = model.patch_size
    h, w = x0.shape[3] // ph, x0.shape[4] // pw
    ts = torch.cat([torch.zeros_like(t_frames) if t_clean is None else t_clean.to(t_frames), t_frames], dim=1)
    rope = doubled_rope(Fr, h, w, model.dim // model.num_heads, x0.device,
                        torch.float64 if dtype == torch.float64 else torch.float32)
    out, _ = wan_forward(model, torch.cat([x0, xt], dim=2), ts, text_cache(model, context, dtype), rope,
                         lambda _layer, q, k, v: attend(q, k, v), dtype)
    L = out.shape[1] // 2
    return unpatchify(out[:, L:], (Fr, h, w), tuple(model.patch_size), model.out_dim)


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def flow_sample(x0: torch.Tensor, chunk: int, shift: float, sigma: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
    """-> xt, target v, timesteps [B, F]. sigma: optional [B, n_chunks] (else drawn)."""
    B, _, Fr = x0.shape[:3]
    n_chunks = -(-Fr // chunk)
    if sigma is None:
        u = torch.rand(B, n_chunks, device=x0.device, generator=generator)
        sigma = shift_sigma(u, shift)
    s = sigma.repeat_interleave(chunk, dim=1)[:, :Fr].to(x0.dtype)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    sb = s[:, None, :, None, None]
    xt = (1 - sb) * x0 + sb * eps
    return xt, eps - x0, 1000.0 * s


# ----------------------------------------------------------------------------------------
# training


class Trainer:
    """Holds model, text encoder, EMA copies, optimizer and data; ``step()`` does one update."""

    def __init__(self, cfg: dict, device="cpu", attn: str = "sdpa", seed: int | None = None):
        self.cfg = cfg
        tc = cfg["train"]
        self.device = torch.device(device)
        self.seed = tc["seed"] if seed is None else seed
        self.model, self.text = build(cfg, self.seed)
        self.model.to(self.device).train()
        self.text.to(self.device).train()
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text).eval().requires_grad_(False)
        self.codec = PixelCodec(cfg["codec"]["factor"])
        d = cfg["data"]
        self.world = ShapesWorld(d["seed"], d["frames"], d["size"], d["max_objects"])
        self.val_world = ShapesWorld(d["seed"] + 1_000_003, d["frames"], d["size"], d["max_objects"])
        self.chunk = tc["chunk_frames"]
        self.shift = tc["shift"]
        self.frames = d["frames"]
        ph, pw = self.model.patch_size[1:]
        lat = d["size"] // self.codec.factor
        self.tpf = (lat // ph) * (lat // pw)
        self.params = list(self.model.parameters()) + list(self.text.parameters())
        self.ema_params = list(self.ema_model.parameters()) + list(self.ema_text.parameters())
        fused = self.device.type == "cuda"
        decay, no_decay = [], []
        for p in self.params:
            (decay if p.ndim >= 2 else no_decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=tc["lr"], betas=tuple(tc["betas"]), fused=fused)
        self.amp = self.device.type == "cuda"
        self.attends = {}
        self.attn = attn
        self.step_count = 0
        self.warmup = tc["warmup_steps"]
        self.gen = torch.Generator(device=self.device).manual_seed(self.seed + 17)
        self._val = None
        self.forward_fn = teacher_forcing_forward

    def use_compile(self, on: bool = True):
        """torch.compile the teacher-forcing forward (fuses the many small elementwise ops
        around this small model's GEMMs); ``False`` goes back to eager."""
        self.forward_fn = torch.compile(teacher_forcing_forward, dynamic=False) if on else teacher_forcing_forward

    def attend_fn(self, kind: str | None = None):
        kind = kind or self.attn
        if kind not in self.attends:
            self.attends[kind] = make_attend(kind, self.frames, self.tpf, self.chunk, self.device)
        return self.attends[kind]

    def data(self, step: int, batch: int):
        idx = range(step * batch, (step + 1) * batch)
        video, prompts, _ = self.world.batch(idx, device=self.device)
        tokens = self.text.tokenize(prompts)
        if self.device.type == "cuda":  # no host sync: the next batch is built while the GPU works
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        return self.codec.encode(video), tokens.to(self.device)

    def loss(self, model, text, x0, tokens, attend, sigma=None, generator=None, augment: bool = False,
             forward=None):
        """Flow-matching loss. ``augment`` (training only) applies the optional recipe knobs of
        ``train``: ``context_noise`` (> 0: with probability ``context_noise_prob`` a context
        chunk is noised to sigma ~ U(0, context_noise) at timestep 1000 sigma, so the model
        cannot trust its history blindly and must use the text) and ``first_chunk_weight``
        (loss weight of chunk 0, the one generated from the text alone). The shipped model's
        last fine-tune used 0.6 and 6 (the config's values); its first runs had them off."""
        tc = self.cfg["train"]
        gen = generator or self.gen
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            ctx = text(tokens)
            xt, target, t = flow_sample(x0, self.chunk, self.shift, sigma, gen)
            x_ctx, t_ctx = x0, None
            cn = float(tc.get("context_noise", 0.0)) if augment else 0.0
            if cn > 0:
                B, Fr = x0.shape[0], x0.shape[2]
                n_chunks = -(-Fr // self.chunk)
                on = torch.rand(B, n_chunks, device=x0.device, generator=gen) < float(tc.get("context_noise_prob", 0.5))
                sc = torch.rand(B, n_chunks, device=x0.device, generator=gen) * cn * on
                s_f = sc.repeat_interleave(self.chunk, dim=1)[:, :Fr].to(x0.dtype)
                eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=gen)
                x_ctx = x0 + s_f[:, None, :, None, None] * (eps - x0)
                t_ctx = 1000.0 * s_f
            pred = (forward or self.forward_fn)(model, x_ctx, xt, t, ctx, attend, t_clean=t_ctx)
        err = (pred.float() - target.float()) ** 2
        w0 = float(tc.get("first_chunk_weight", 1.0)) if augment else 1.0
        if w0 != 1.0:
            w = torch.ones(x0.shape[2], device=x0.device)
            w[: self.chunk] = w0
            return (err.mean((0, 1, 3, 4)) * w).sum() / w.sum()
        return err.mean()

    def step(self, x0: torch.Tensor, tokens: torch.Tensor, lr: float, attn: str | None = None) -> float:
        tc = self.cfg["train"]
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.loss(self.model, self.text, x0, tokens, self.attend_fn(attn), augment=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.params, tc["grad_clip"])
        self.opt.step()
        self.step_count += 1
        d = min(tc["ema_decay"], (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.params], 1 - d)
        return loss.detach()

    @torch.no_grad()
    def val_loss(self) -> float:
        """EMA loss on fixed held-out clips, noise and sigmas (the sampler's 4 sigmas, cycled per chunk)."""
        tc = self.cfg["train"]
        if self._val is None:
            n = tc["val_clips"]
            video, prompts, _ = self.val_world.batch(range(n), device=self.device)
            x0 = self.codec.encode(video)
            n_chunks = -(-self.frames // self.chunk)
            sig = torch.tensor(tc["val_sigmas"], device=self.device)
            sigma = sig[(torch.arange(n)[:, None] + torch.arange(n_chunks)[None]) % len(sig)].to(self.device)
            self._val = (x0, self.text.tokenize(prompts).to(self.device), sigma)
        x0, tokens, sigma = self._val
        total = 0.0
        for i in range(0, x0.shape[0], 32):
            g = torch.Generator(device=self.device).manual_seed(1234 + i)
            total += float(self.loss(self.ema_model, self.ema_text, x0[i:i + 32], tokens[i:i + 32],
                                     self.attend_fn(), sigma[i:i + 32], g,
                                     forward=teacher_forcing_forward)) * x0[i:i + 32].shape[0]  # eager: no recompile
        return total / x0.shape[0]

    def load_resume(self, folder: str):
        """Continue from a previous run's folder (``raw.safetensors`` + ``model.safetensors``)
        or from a shipped model file / its folder (EMA weights only: they start both copies).
        Text-encoder word embeddings are matched by word, so the vocabulary may have grown;
        new words keep their fresh initialisation."""
        from safetensors.torch import load_file

        ema_path = folder if folder.endswith(".safetensors") else os.path.join(folder, "model.safetensors")
        raw_path = os.path.join(os.path.dirname(ema_path), "raw.safetensors")
        if not os.path.exists(raw_path) or folder.endswith(".safetensors"):
            raw_path = ema_path
        meta = read_tiny_metadata(ema_path)
        old_vocab = meta["config"]["text"]["vocab"]
        for path, (m, t) in ((raw_path, (self.model, self.text)), (ema_path, (self.ema_model, self.ema_text))):
            sd = load_file(path)
            m.load_state_dict({k: v.float() for k, v in sd.items() if not k.startswith("text_encoder.")})
            tsd = {k[13:]: v.float() for k, v in sd.items() if k.startswith("text_encoder.")}
            tsd["embed.weight"] = _remap_embedding(tsd["embed.weight"], old_vocab, t.config.vocab,
                                                   t.embed.weight.detach().float().cpu())
            t.load_state_dict(tsd)
        info = meta["train_info"]
        self.step_count = meta["steps"]
        self.warmup = self.cfg["train"]["resume_warmup_steps"]
        return info

    def save(self, out: str, final_loss: float | None, info: dict) -> dict:
        cfg = {k: v for k, v in self.cfg.items() if k not in ("model", "text")}
        size = save_tiny(os.path.join(out, "model.safetensors"), self.ema_model, self.ema_text, cfg,
                         steps=self.step_count, final_loss=final_loss, info=info)
        save_tiny(os.path.join(out, "raw.safetensors"), self.model, self.text, cfg,
                  steps=self.step_count, final_loss=final_loss, info=info)
        return {"model_bytes": size}


def _remap_embedding(old: torch.Tensor, old_vocab: list[str], new_vocab: list[str], fresh: torch.Tensor) -> torch.Tensor:
    """Rows of an embedding table for ``new_vocab``: a word's old row where it had one, else ``fresh``'s."""
    index = {w: i for i, w in enumerate(old_vocab)}
    out = fresh.clone()
    for j, w in enumerate(new_vocab):
        if w in index:
            out[j] = old[index[w]]
    return out


def lr_at(cfg: dict, progress: float, step_in_run: int, warmup: int) -> float:
    tc = cfg["train"]
    progress = min(max(progress, 0.0), 1.0)
    lo = tc["lr"] * tc["min_lr_frac"]
    cos = lo + (tc["lr"] - lo) * 0.5 * (1 + math.cos(math.pi * progress))
    return cos * min(1.0, (step_in_run + 1) / max(1, warmup))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (this run)")
    ap.add_argument("--minutes", type=float, default=None, help="time budget of this run's training loop")
    ap.add_argument("--schedule-minutes", type=float, default=None,
                    help="length of the cosine LR schedule in minutes over all runs (default: --minutes)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--out", default="out/tiny")
    ap.add_argument("--config", default=None, help="JSON config (default: tiny_model_tools/config.json)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    ap.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flex"])
    ap.add_argument("--resume", default=None,
                    help="folder with model.safetensors + raw.safetensors of a previous run, or a model file "
                         "(e.g. assets/tiny_model/model.safetensors) to fine-tune")
    ap.add_argument("--restart-schedule", action="store_true",
                    help="with --resume: start a new warm-up + cosine schedule instead of continuing the old one")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (CUDA; falls back to eager)")
    ap.add_argument("--log-every", type=int, default=None)
    args = ap.parse_args(argv)
    if args.steps is None and args.minutes is None:
        ap.error("give --steps and/or --minutes")

    cfg = load_config(args.config, args.set)
    tc = cfg["train"]
    if args.batch:
        tc["batch"] = args.batch
    if args.log_every:
        tc["log_every"] = args.log_every
    batch = tc["batch"]
    device = torch.device(args.device)
    torch.manual_seed(tc["seed"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    attn = "sdpa" if (args.attn == "auto" and device.type != "cuda") else args.attn
    trainer = Trainer(cfg, device, attn="sdpa" if attn == "auto" else attn)
    if args.compile:
        trainer.use_compile()
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_text = sum(p.numel() for p in trainer.text.parameters())
    print(f"model: {n_params / 1e6:.2f} M params (text encoder {n_text / 1e3:.1f} k); fp16 file ~"
          f"{file_size_estimate(trainer.model, trainer.text) / 2**20:.2f} MiB; tokens/frame {trainer.tpf}; "
          f"sequence {2 * trainer.frames * trainer.tpf} (doubled)", flush=True)

    prior = {"steps": 0, "seconds": 0.0, "log": []}
    if args.resume:
        info = trainer.load_resume(args.resume)
        prior = {"steps": trainer.step_count, "seconds": float(info.get("schedule_elapsed_s", 0.0)),
                 "log": info.get("log", [])}
        if args.restart_schedule:
            prior["log"] = prior["log"] + [{"step": trainer.step_count, "event": "schedule restarted",
                                            "previous_schedule_s": prior["seconds"]}]
            prior["seconds"] = 0.0
        print(f"resumed from {args.resume}: step {prior['steps']}, {prior['seconds']:.0f} s of schedule done", flush=True)
    budget = None if args.minutes is None else args.minutes * 60.0
    schedule_total = (args.schedule_minutes * 60.0) if args.schedule_minutes else (
        prior["seconds"] + budget if budget else None)

    os.makedirs(args.out, exist_ok=True)
    log = list(prior["log"])
    run_steps = 0
    window, window_n = torch.zeros((), device=device), 0
    last_loss = float("nan")
    timing: dict[str, list[float]] = {}
    t_start = time.time()
    t_log = t_start
    clips_at_log = 0
    crashed = None
    try:
        while True:
            elapsed = time.time() - t_start
            if budget is not None and elapsed >= budget:
                break
            if args.steps is not None and run_steps >= args.steps:
                break
            if args.steps is not None and budget is None:
                progress = (prior["steps"] + run_steps) / max(1, prior["steps"] + args.steps)
            else:
                progress = (prior["seconds"] + elapsed) / schedule_total
            lr = lr_at(cfg, progress, run_steps, trainer.warmup)
            x0, tokens = trainer.data(trainer.step_count, batch)

            # --attn auto on CUDA: 8 steps with SDPA, then 8 with FlexAttention, keep the faster
            kind = trainer.attn
            if attn == "auto":
                kind = "sdpa" if run_steps < 8 else "flex"
                if run_steps == 16:
                    med = {k: sorted(v)[len(v) // 2] for k, v in timing.items() if v}
                    best = min(med, key=med.get)
                    print(f"attention timing (median s/step): {med} -> {best}", flush=True)
                    trainer.attn, attn = best, best
                    kind = best
            t0 = time.time()
            try:
                loss = trainer.step(x0, tokens, lr, kind)
            except torch.OutOfMemoryError:
                if batch <= 4:
                    raise
                batch //= 2
                trainer.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                print(f"out of memory: batch -> {batch}", flush=True)
                continue
            except Exception as exc:  # FlexAttention / torch.compile may fail on some setups
                if trainer.forward_fn is not teacher_forcing_forward:
                    print(f"torch.compile failed ({type(exc).__name__}: {exc}); running eager", flush=True)
                    trainer.use_compile(False)
                    timing.clear()
                    continue
                if kind != "flex":
                    raise
                print(f"FlexAttention failed ({type(exc).__name__}: {exc}); using SDPA", flush=True)
                timing.pop("flex", None)
                trainer.attn, attn = "sdpa", "sdpa"
                continue
            if attn == "auto":
                _sync(device)
                if run_steps % 8 >= 2:  # skip warm-up / compile steps
                    timing.setdefault(kind, []).append(time.time() - t0)
            window += loss
            window_n += 1
            run_steps += 1
            if run_steps % tc["log_every"] == 0 or run_steps == 1:
                avg = float(window) / window_n
                last_loss = avg
                now = time.time()
                clips = run_steps * batch
                rate = (clips - clips_at_log) / max(now - t_log, 1e-9)
                entry = {"step": trainer.step_count, "elapsed_s": round(prior["seconds"] + now - t_start, 1),
                         "lr": lr, "loss": round(avg, 5), "clips_per_s": round(rate, 1)}
                if trainer.step_count % tc["val_every"] < tc["log_every"] and run_steps > 1:
                    entry["val_loss_ema"] = round(trainer.val_loss(), 5)
                log.append(entry)
                print(json.dumps(entry), flush=True)
                window, window_n = torch.zeros((), device=device), 0
                t_log, clips_at_log = time.time(), clips
                if not math.isfinite(avg):
                    raise FloatingPointError(f"loss is {avg} at step {trainer.step_count}")
    except Exception as exc:  # keep what was learnt, then re-raise
        crashed = exc
        print(f"training stopped by {type(exc).__name__}: {exc}", flush=True)
        if run_steps == 0:
            raise
    if window_n:
        last_loss = float(window) / window_n
    _sync(device)
    seconds = time.time() - t_start
    val = trainer.val_loss()
    info = {
        "steps": trainer.step_count, "run_steps": run_steps, "run_seconds": round(seconds, 1),
        "schedule_elapsed_s": round(prior["seconds"] + seconds, 1),
        "schedule_total_s": schedule_total, "batch": batch, "clips_seen": trainer.step_count * batch,
        "final_loss": round(last_loss, 5), "final_val_loss_ema": round(val, 5), "attention": trainer.attn,
        "compiled": trainer.forward_fn is not teacher_forcing_forward,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": sys.version.split()[0], "resumed_from_step": prior["steps"],
        "log": log,
    }
    if crashed is not None:
        info["stopped_by"] = f"{type(crashed).__name__}: {crashed}"
    saved = trainer.save(args.out, last_loss, info)
    info["model_bytes"] = saved["model_bytes"]
    info["params"] = {"transformer": n_params, "text_encoder": n_text}
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"config": cfg, **info}, f, indent=1)
    print(f"done: {trainer.step_count} steps ({run_steps} this run) in {seconds:.0f} s; loss {last_loss:.4f}; "
          f"EMA val loss {val:.4f}; model {saved['model_bytes'] / 2**20:.2f} MiB -> {args.out}", flush=True)
    if crashed is not None:
        raise crashed
    return info


if __name__ == "__main__":
    main()
