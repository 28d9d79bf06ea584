"""An independent float64 reference of a Wan2.1 transformer, for tests only.

Written from the Wan2.1 equations on a raw state dict, sharing no code with the pack:
complex-number RoPE, explicit per-token frame positions and an explicit attention mask
(per head if wanted), softmax written out. Slow and simple on purpose.
"""
import math

import torch


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ln(x, eps, w=None, b=None):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w + b
    return y


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x * torch.sigmoid(x)


def rope_complex(pos_t, pos_h, pos_w, head_dim, theta=10000.0):
    """Per-token rotation e^{i angle} as a complex tensor [L, head_dim/2]."""
    dh = 2 * (head_dim // 6)
    dt = head_dim - 2 * dh
    parts = []
    for pos, d in ((pos_t, dt), (pos_h, dh), (pos_w, dh)):
        inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        parts.append(pos.double()[:, None] * inv[None, :])
    ang = torch.cat(parts, dim=1)
    return torch.polar(torch.ones_like(ang), ang)


def _apply_rope(x, rot):  # x [L, H, D]
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot[:, None, :]).flatten(-2)


def token_positions(frame_ids, h, w):
    """Frame / row / column of every token, frames given explicitly (any order)."""
    t = torch.tensor(frame_ids, dtype=torch.float64).repeat_interleave(h * w)
    hh = torch.arange(h, dtype=torch.float64).repeat_interleave(w).repeat(len(frame_ids))
    ww = torch.arange(w, dtype=torch.float64).repeat(h * len(frame_ids))
    return t, hh, ww


def reference_forward(sd, heads, x, timesteps, context, frame_ids, mask, eps=1e-6, freq_dim=None, capture=None):
    """x [C, F, H, W] (one sample); timesteps [F]; context [Lt, text_dim];
    frame_ids: absolute frame index of each of the F frames; mask: bool [L, L],
    [heads, L, L] or [layers, heads, L, L] (True = may attend). Returns the flow [C_out, F, H, W], float64.
    capture: a list that gets, per layer, the self-attention (k, v) [L, heads, D] (k RoPE-rotated)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    pe_w = sd["patch_embedding.weight"]  # [dim, C, 1, 2, 2]
    dim, C, pt, ph, pw = pe_w.shape
    Fr, Hh, Ww = x.shape[1:]
    h, w = Hh // ph, Ww // pw
    # patchify: token (f, i, j) gets x[:, f, i*ph:(i+1)*ph, j*pw:(j+1)*pw]
    patches = x.reshape(C, Fr, h, ph, w, pw).permute(1, 2, 4, 0, 3, 5).reshape(Fr * h * w, C * ph * pw)
    tok = patches @ pe_w.reshape(dim, -1).T + sd["patch_embedding.bias"]
    L = tok.shape[0]
    D = dim // heads
    fd = freq_dim or sd["time_embedding.0.weight"].shape[1]

    half = fd // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = timesteps.double()[:, None] * freqs[None, :]
    sinus = torch.cat([ang.cos(), ang.sin()], dim=1)  # [F, fd]
    e = _lin(sd, "time_embedding.2", _silu(_lin(sd, "time_embedding.0", sinus)))  # [F, dim]
    e0 = _lin(sd, "time_projection.1", _silu(e)).reshape(Fr, 6, dim)
    per_tok = lambda m: m.repeat_interleave(h * w, dim=0)  # noqa: E731  [F, dim] -> [L, dim]

    ctx = _lin(sd, "text_embedding.2", _gelu_tanh(_lin(sd, "text_embedding.0", context.double())))
    rot = rope_complex(*token_positions(frame_ids, h, w), D)
    if mask.ndim == 2:
        mask = mask[None].expand(heads, L, L)
    layer_masks = mask if mask.ndim == 4 else None

    i = 0
    while f"blocks.{i}.modulation" in sd:
        p = f"blocks.{i}."
        mod = sd[p + "modulation"][0][None] + e0  # [F, 6, dim]
        sh1, sc1, g1, sh2, sc2, g2 = (per_tok(mod[:, k]) for k in range(6))
        y = _ln(tok, eps) * (1 + sc1) + sh1
        q = _rms(_lin(sd, p + "self_attn.q", y), sd[p + "self_attn.norm_q.weight"], eps).reshape(L, heads, D)
        k = _rms(_lin(sd, p + "self_attn.k", y), sd[p + "self_attn.norm_k.weight"], eps).reshape(L, heads, D)
        v = _lin(sd, p + "self_attn.v", y).reshape(L, heads, D)
        q, k = _apply_rope(q, rot), _apply_rope(k, rot)
        if capture is not None:
            capture.append((k, v))
        logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        logits = logits.masked_fill(~(mask if layer_masks is None else layer_masks[i]), float("-inf"))
        att = torch.softmax(logits, dim=-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(L, dim)
        tok = tok + _lin(sd, p + "self_attn.o", o) * g1

        y = _ln(tok, eps, sd[p + "norm3.weight"], sd[p + "norm3.bias"])
        cq = _rms(_lin(sd, p + "cross_attn.q", y), sd[p + "cross_attn.norm_q.weight"], eps).reshape(L, heads, D)
        ck = _rms(_lin(sd, p + "cross_attn.k", ctx), sd[p + "cross_attn.norm_k.weight"], eps).reshape(-1, heads, D)
        cv = _lin(sd, p + "cross_attn.v", ctx).reshape(-1, heads, D)
        catt = torch.softmax(torch.einsum("qhd,khd->hqk", cq, ck) / math.sqrt(D), dim=-1)
        tok = tok + _lin(sd, p + "cross_attn.o", torch.einsum("hqk,khd->qhd", catt, cv).reshape(L, dim))

        y = _ln(tok, eps) * (1 + sc2) + sh2
        y = _lin(sd, p + "ffn.2", _gelu_tanh(_lin(sd, p + "ffn.0", y)))
        tok = tok + y * g2
        i += 1

    hm = sd["head.modulation"][0][None] + e[:, None, :]  # [F, 2, dim]
    y = _ln(tok, eps) * (1 + per_tok(hm[:, 1])) + per_tok(hm[:, 0])
    out = _lin(sd, "head.head", y)  # [L, C_out * ph * pw]
    c_out = out.shape[1] // (pt * ph * pw)
    out = out.reshape(Fr, h, w, pt, ph, pw, c_out).permute(6, 0, 3, 1, 4, 2, 5)
    return out.reshape(c_out, Fr * pt, h * ph, w * pw)


def visible(q_frame, k_frame, chunk_of, history_rule):
    """Helper for masks: chunk_of(frame) -> chunk index; history_rule(q_chunk_start, k_frame)
    -> whether a context frame is kept. Same chunk: visible; later chunk: not."""
    cq, ck = chunk_of(q_frame), chunk_of(k_frame)
    if ck == cq:
        return True
    if ck > cq:
        return False
    return history_rule(q_frame, k_frame)
