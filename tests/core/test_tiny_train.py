"""Training the tiny model: teacher forcing equals cached chunk inference; a few CPU steps learn."""
import math

import pytest

import torch

from dummy_forcing_core.kv_cache import Retention
from dummy_forcing_core.tiny.model import file_size_estimate, load_tiny, read_tiny_metadata, save_tiny
from tiny_model_tools.train import (Trainer, build, flow_sample, load_config, make_attend, teacher_forcing_forward,
                                           teacher_forcing_mask)
from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.wan_model import WanConfig, WanModel

SMALL = ["model.dim=32", "model.ffn_dim=64", "model.num_heads=2", "model.num_layers=2", "model.text_dim=16",
         "model.freq_dim=16", "text.dim=16", "text.layers=1", "text.heads=2", "text.ffn=32", "data.frames=6",
         "data.size=16", "train.batch=4", "train.warmup_steps=1", "train.lr=0.003", "train.val_clips=4"]


def test_mask_structure():
    m = teacher_forcing_mask(frames=6, tpf=2, chunk=3)  # 2 chunks of 6 tokens, doubled: 24 tokens
    assert m.shape == (24, 24)
    c0, c1, n0, n1 = slice(0, 6), slice(6, 12), slice(12, 18), slice(18, 24)
    assert m[c0, c0].all() and not m[c0, c1].any() and not m[c0, n0].any()
    assert m[c1, c0].all() and m[c1, c1].all() and not m[c1, n1].any()
    assert m[n0, n0].all() and not m[n0, c0].any() and not m[n0, n1].any()
    assert m[n1, c0].all() and not m[n1, c1].any() and m[n1, n1].all() and not m[n1, n0].any()


def test_teacher_forcing_equals_cached_chunk_inference():
    torch.manual_seed(0)
    cfg = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=12, out_dim=12, text_dim=16, freq_dim=16)
    model = WanModel(cfg).init_random(1).double().eval()
    B, Fr, H, W, chunk = 2, 9, 8, 8, 3
    x0 = torch.randn(B, 12, Fr, H, W, dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.6, 0.3], [0.9, 0.2, 0.75]], dtype=torch.float64)
    xt, _, t = flow_sample(x0, chunk, 5.0, sigma)
    ctx = torch.randn(B, 5, 16, dtype=torch.float64)
    tpf = (H // 2) * (W // 2)
    with torch.no_grad():
        tf = teacher_forcing_forward(model, x0, xt, t, ctx, make_attend("sdpa", Fr, tpf, chunk, "cpu"), torch.float64)
        runner = ChunkRunner(model)
        cache = runner.new_cache(B, H, W, Fr, chunk, Retention())
        text = runner.encode_text(ctx)
        for i in range(0, Fr, chunk):
            sl = slice(i, i + chunk)
            out = runner.forward(xt[:, :, sl], t[:, sl], i, text, cache)
            assert torch.allclose(out, tf[:, :, sl], atol=1e-9, rtol=1e-9), (i, (out - tf[:, :, sl]).abs().max())
            runner.forward(x0[:, :, sl], torch.zeros(B, chunk, dtype=torch.float64), i, text, cache, commit=True)


@pytest.mark.slow
def test_a_few_cpu_steps_learn_a_fixed_batch(tmp_path):
    cfg = load_config(None, SMALL)
    tr = Trainer(cfg, "cpu", attn="sdpa")
    x0, tokens = tr.data(0, 4)
    losses = [float(tr.step(x0, tokens, lr=3e-3)) for _ in range(24)]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert math.isfinite(tr.val_loss())
    # save / load round trip (EMA weights, fp16, Wan names + text_encoder.*)
    size = tr.save(str(tmp_path), last, {"note": "test"})["model_bytes"]
    meta = read_tiny_metadata(str(tmp_path / "model.safetensors"))
    assert meta["steps"] == 24 and meta["config"]["model"]["dim"] == 32 and meta["config"]["text"]["vocab"]
    model, text = load_tiny(str(tmp_path / "model.safetensors"))
    assert model.config.num_heads == 2 and size > 0
    for k, v in tr.ema_model.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v.half().float())


def test_shipped_config_fits_the_size_budget():
    cfg = load_config()
    model, text = build(cfg)
    assert file_size_estimate(model, text) <= 15 * 10**6
    assert cfg["model"]["in_dim"] == 12 and cfg["train"]["chunk_frames"] == 3 and cfg["data"]["frames"] >= 21


def test_recipe_knobs_context_noise_and_first_chunk_weight():
    cfg = load_config(None, SMALL + ["train.context_noise=0.5", "train.context_noise_prob=1.0",
                                     "train.first_chunk_weight=3.0"])
    tr = Trainer(cfg, "cpu", attn="sdpa")
    x0, tokens = tr.data(0, 4)
    att = tr.attend_fn()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        plain = tr.loss(tr.model, tr.text, x0, tokens, att, generator=g())
        aug = tr.loss(tr.model, tr.text, x0, tokens, att, generator=g(), augment=True)
        again = tr.loss(tr.model, tr.text, x0, tokens, att, generator=g(), augment=True)
    assert math.isfinite(float(aug)) and float(aug) != float(plain) and float(aug) == float(again)
    losses = [float(tr.step(x0, tokens, lr=3e-3)) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)


def test_resume_from_a_model_file_with_an_older_vocabulary(tmp_path):
    """Fine-tuning a shipped file whose vocabulary lacks a word: word embeddings follow the
    word, both weight copies start from the file, the step count carries on."""
    cfg = load_config(None, SMALL)
    old_cfg = load_config(None, SMALL)
    old_cfg["text"]["vocab"] = [w for w in Trainer(cfg).text.config.vocab if w != "red"]
    old = Trainer(old_cfg)
    path = str(tmp_path / "old.safetensors")
    save_tiny(path, old.ema_model, old.ema_text, {k: v for k, v in old_cfg.items() if k not in ("model", "text")},
              steps=7)
    new = Trainer(cfg)
    fresh_red = new.text.embed.weight[new.text.config.vocab.index("red")].detach().clone()
    new.load_resume(path)
    assert new.step_count == 7
    for w in ("blue", "circle", ","):
        want = old.ema_text.embed.weight[old_cfg["text"]["vocab"].index(w)].half().float()
        for t in (new.text, new.ema_text):
            assert torch.equal(t.embed.weight[t.config.vocab.index(w)].detach(), want)
    assert torch.equal(new.text.embed.weight[new.text.config.vocab.index("red")].detach(), fresh_red)
    k = "blocks.0.self_attn.q.weight"
    assert torch.equal(new.model.state_dict()[k], new.ema_model.state_dict()[k])
