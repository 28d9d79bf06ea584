"""The tiny model's world, codec and text encoder."""
import numpy as np
import pytest
import torch

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.tiny.codec import CODEC, PixelCodec, to_uint8
from dummy_forcing_core.tiny.text import VOCAB, TextConfig, TextEncoder, tokenize, words_of
from dummy_forcing_core.tiny.world import DIRECTIONS, OBJECT_COLORS, POSITIONS, spec_from_prompt
from tiny_model_tools.dataset import ShapesWorld, render, track_colors


def test_world_is_deterministic_per_seed_and_index():
    a, b = ShapesWorld(seed=3), ShapesWorld(seed=3)
    va, pa, ta = a.clip(11)
    vb, pb, tb = b.clip(11)
    assert pa == pb and torch.equal(va, vb) and np.array_equal(ta.centers, tb.centers)
    assert a.spec(12).prompt != a.spec(11).prompt or not torch.equal(a.clip(12)[0], va)
    assert ShapesWorld(seed=4).spec(11).prompt != pa or not torch.equal(ShapesWorld(seed=4).clip(11)[0], va)
    # batch rendering equals one-by-one rendering
    vids, prompts, _ = a.batch([11, 12])
    assert torch.allclose(vids[0], va) and prompts[0] == pa


def test_clips_move_bounce_and_stay_in_frame():
    w = ShapesWorld(seed=0, frames=24, size=32)
    assert w.frames >= 24
    moved, bounced = 0, 0
    for i in range(40):
        s = w.spec(i)
        video, prompt, truth = w.clip(i)
        assert video.shape == (3, 24, 32, 32) and video.min() >= -1 and video.max() <= 1
        c = truth.centers
        assert np.all(c >= 0) and np.all(c <= 32)
        step = np.linalg.norm(np.diff(c, axis=0), axis=-1)  # [F-1, n]
        assert np.all(step.mean(0) > 0.4) and np.all(np.median(step, 0) > 0.4)  # everything keeps moving
        moved += 1
        v = np.diff(c, axis=0)
        bounced += int(np.any(np.sign(v[1:]) * np.sign(v[:-1]) < 0))
        assert 1 <= len(s.objects) <= 3
        assert all(o.color in prompt and o.shape in prompt for o in s.objects)
        assert truth.visible.shape == (24, len(s.objects)) and np.all(truth.visible <= 1 + 1e-5)
        # frames differ over time (real motion in pixels)
        assert (video[:, -1] - video[:, 0]).abs().max() > 0.5
    assert bounced > 5
    # occlusion happens somewhere: an object partly hidden behind one drawn later
    hidden = [w.clip(i)[2].visible.min() for i in range(60)]
    assert min(hidden) < 0.9


def test_tracking_finds_the_objects():
    w = ShapesWorld(seed=1)
    for i in range(5):
        video, prompt, truth = w.clip(i)
        tr = track_colors(video, truth.colors)
        ok = truth.visible > 0.9
        err = np.linalg.norm(tr["centers"] - truth.centers, axis=-1)[ok]
        assert np.nanmax(err) < 1.0
        parsed = spec_from_prompt(prompt)
        assert [p["color"] for p in parsed] == truth.color_names
        for p, o in zip(parsed, w.spec(i).objects):  # direction and start cell read back
            assert p["cell"] == next(c for c, words in POSITIONS.items() if words == o.position_word)
            d = np.asarray(DIRECTIONS[o.direction_word], dtype=float)
            assert np.allclose(p["direction"], d / np.linalg.norm(d))


def test_codec_round_trip_is_exact():
    codec = PixelCodec(2)
    w = ShapesWorld(seed=2)
    video, _, _ = w.batch(range(3))
    z = codec.encode(video)
    assert z.shape == (3, 12, 24, 16, 16)
    assert torch.equal(codec.decode(z), video)
    x = torch.randn(2, 3, 5, 8, 12)
    assert torch.equal(codec.decode(codec.encode(x)), x)
    assert torch.equal(codec.encode(x[0]), codec.encode(x)[0])
    # channel layout: channel c*4 + dy*2 + dx holds colour c of pixel (2y+dy, 2x+dx)
    assert z[0, 1 * 4 + 1 * 2 + 0, 5, 3, 7] == video[0, 1, 5, 2 * 3 + 1, 2 * 7]
    frames = to_uint8(video[0])
    assert frames.shape == (24, 32, 32, 3) and frames.dtype == np.uint8


def test_codec_frames_are_the_video_enlarged_in_comfy_layout():
    """PixelCodec.frames (what Tiny Decode returns): IMAGE [B*F, H*s, W*s, 3] in [0, 1], each pixel
    repeated s x s, video after video; checked against numpy's repeat of the planted pixels."""
    video = torch.rand(2, 3, 4, 6, 8) * 2 - 1
    frames = CODEC.frames(CODEC.encode(video), 3)
    want = ((video.numpy() + 1) / 2).transpose(0, 2, 3, 4, 1).reshape(8, 6, 8, 3).repeat(3, 1).repeat(3, 2)
    assert frames.shape == (8, 18, 24, 3) and frames.dtype == torch.float32
    assert np.allclose(frames.numpy(), want, atol=1e-6)
    assert float(CODEC.frames(CODEC.encode(video * 5), 1).max()) == 1.0  # clamped to the image range


def test_codec_decodes_chunk_by_chunk_in_a_pixel_stream():
    """The codec as the pixel stream's chunk decoder: pushing a video's latent in chunks of 3
    gives the frames one decode of the whole latent gives."""
    from dummy_forcing_core.pixel_stream import FrameCollector, PixelStream

    latent = CODEC.encode(torch.rand(2, 3, 7, 8, 8) * 2 - 1)
    collector = FrameCollector()
    stream = PixelStream(CODEC.chunk_decoder(scale=2), [collector])
    for f0 in range(0, 7, 3):
        stream.push(latent[:, :, f0:f0 + 3])
    stream.finish()
    assert torch.equal(collector.images(), CODEC.frames(latent, 2))


@pytest.mark.parametrize("shape, words", [((1, 16, 6, 4, 4), ["16 channels", "Wan2.1", "VAE Decode", "12"]),
                                          ((1, 12, 16, 16), ["not a video latent"]),
                                          ((1, 4, 6, 4, 4), ["4 channels", "12"]),
                                          ((0, 12, 6, 4, 4), ["empty"])])
def test_codec_refuses_latents_that_are_not_its_own(shape, words):
    with pytest.raises(SettingError) as e:
        CODEC.check(shape, "latent")
    assert e.value.name == "latent" and all(w in str(e.value) for w in words), str(e.value)
    CODEC.check((2, 12, 24, 16, 16), "latent")  # its own


def test_text_encoder_shapes_and_vocabulary():
    w = ShapesWorld(seed=0)
    prompts = [w.spec(i).prompt for i in range(200)]
    for p in prompts:
        assert all(word in VOCAB for word in words_of(p)), p
        assert len(words_of(p)) <= 32
    tok = tokenize(prompts[:4])
    assert tok.shape == (4, 32) and tok.dtype == torch.long
    assert tokenize("a red ball falling")[0, :3].tolist() == tokenize("red circle moving down")[0, :3].tolist()
    enc = TextEncoder(TextConfig())
    out = enc.encode(prompts[:4])
    assert out.shape == (4, 32, 64) and torch.isfinite(out).all()
    assert enc.unknown_words("a purple circle") == ["purple"]
    # different prompts -> different contexts
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_object_colours_stand_out():
    names = list(OBJECT_COLORS)
    cols = np.array([OBJECT_COLORS[n] for n in names], dtype=float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(len(names)) * 1e9
    assert d.min() > 100


def test_prompt_following_metrics_tell_motion_apart():
    """direction / start_cell: high on ground-truth clips, zero for a frozen video, negative
    when the first frames play backwards; a wrong start cell is caught."""
    from tiny_model_tools.metrics import mean_metrics, world_metrics

    w = ShapesWorld(seed=5)
    clips = [w.clip(i)[:2] for i in range(30)]
    gt = mean_metrics([world_metrics(v, p) for v, p in clips])
    frozen = mean_metrics([world_metrics(v[:, :1].expand_as(v), p) for v, p in clips])
    backwards = mean_metrics([world_metrics(torch.cat([v[:, :6].flip(1), v[:, 6:]], 1), p) for v, p in clips])
    assert gt["direction"] > 0.7 and gt["start_cell"] > 0.9
    assert frozen["direction"] == 0.0
    assert backwards["direction"] < -0.5
    mirrored = mean_metrics([world_metrics(v.flip(-1), p) for v, p in clips])  # left <-> right
    assert mirrored["start_cell"] < 0.6 and mirrored["direction"] < gt["direction"] - 0.3
