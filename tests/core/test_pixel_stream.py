"""Pixels out: chunk decoders with carried state equal one decode of the whole latent; the stream
hands frames to sinks in order; the video file is whole or absent.

References are written here independently: a causal temporal convolution over the whole video
(zero history before frame 0) for the Wan-style decoder, and a frame-by-frame loop for the
TAEHV-style decoder. ComfyUI's own VAE classes are compared in tests/real_comfyui.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dummy_forcing_core.chunk_runner import ChunkRunner
from dummy_forcing_core.pixel_stream import FrameCollector, PixelStream
from dummy_forcing_core.sampler import SamplerSettings, generate
from dummy_forcing_core.vae_stream import TAEHVDecoder, WanCausalDecoder

CACHE_T = 2


class _CausalConv(nn.Module):
    """Temporal kernel 3, causal: each call sees the last CACHE_T inputs it was given before."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, (3, 3, 3), padding=(0, 1, 1))

    def forward(self, x, cache):
        hist = cache if cache is not None else x[:, :, :0]
        pad = torch.zeros_like(x[:, :, :1]).expand(-1, -1, 2 - hist.shape[2], -1, -1)
        return self.conv(torch.cat([pad, hist, x], dim=2))

    def whole(self, x):
        return self.conv(F.pad(x, (0, 0, 0, 0, 2, 0)))


class _FakeWanDecoder(nn.Module):
    """Two causal convs with a feature cache, as the Wan2.1 decoder's interface has it."""

    def __init__(self, c=4):
        super().__init__()
        self.c1, self.c2 = _CausalConv(c, 8), _CausalConv(8, 3)

    def forward(self, x, feat_cache=None, feat_idx=(0,)):
        for i, conv in enumerate((self.c1, self.c2)):
            cache = torch.cat([feat_cache[i], x], 2)[:, :, -CACHE_T:] if feat_cache[i] is not None else x[:, :, -CACHE_T:]
            x_out = conv(x, feat_cache[i])
            feat_cache[i] = cache
            x = torch.tanh(x_out) if i == 0 else x_out
        return [x[:, :, :1], x[:, :, 1:]] if x.shape[2] > 1 else [x]  # a list of chunks, as ComfyUI 0.2x

    def whole(self, x):
        return self.c2.whole(torch.tanh(self.c1.whole(x)))


class _FakeWanVAE(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv2 = nn.Conv3d(c, c, 1)
        self.decoder = _FakeWanDecoder(c)


def _decode_in_chunks(decoder, z, chunk):
    outs = [decoder.push(z[:, :, f0:f0 + chunk]) for f0 in range(0, z.shape[2], chunk)]
    outs.append(decoder.finish())
    return torch.cat([o for o in outs if o is not None], dim=1)


@pytest.mark.parametrize("segment", [1, 2])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
@pytest.mark.parametrize("frames", [1, 6, 7])
def test_wan_decoder_in_chunks_equals_the_whole_decode(segment, chunk, frames):
    torch.manual_seed(frames * 10 + chunk)
    vae = _FakeWanVAE().double()
    z = torch.randn(2, 4, frames, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = vae.decoder.whole(vae.conv2(z)).add(1).div(2).clamp(0, 1).movedim(1, -1)
        got = _decode_in_chunks(WanCausalDecoder(vae, 2, segment, torch.float64, "cpu", torch.float64), z, chunk)
    assert got.shape == ref.shape == (2, frames, 5, 6, 3)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


class MemBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 3, padding=1)

    def forward(self, x, past):
        return torch.relu(self.conv(torch.cat([x, past], 1)) + x)


class TGrow(nn.Module):
    def __init__(self, c, stride):
        super().__init__()
        self.stride, self.conv = stride, nn.Conv2d(c, c * stride, 1)

    def forward(self, x):
        return self.conv(x).reshape(-1, x.shape[1], *x.shape[2:])


class _FakeTAEHV(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), MemBlock(6), TGrow(6, 2), MemBlock(6),
                                     nn.Upsample(scale_factor=2), TGrow(6, 2), nn.Conv2d(6, 3, 3, padding=1))
        self.frames_to_trim = 3
        self.process_in = lambda x: x * 0.5

    def sequential(self, z):
        """Frame by frame, every MemBlock fed the previous frame's input (zeros first)."""
        x = self.process_in(z).movedim(2, 1)           # [B, T, C, H, W]
        frames = [(x[:, t], 0) for t in range(x.shape[1])]
        mem, out = {}, []
        while frames:
            xt, i = frames.pop(0)
            if i == len(self.decoder):
                out.append(xt)
                continue
            b = self.decoder[i]
            if isinstance(b, MemBlock):
                past = mem.get(i, torch.zeros_like(xt))
                mem[i] = xt
                frames.insert(0, (b(xt, past), i + 1))
            elif isinstance(b, TGrow):
                parts = b.conv(xt).chunk(b.stride, 1)
                frames[:0] = [(p, i + 1) for p in parts]
            else:
                frames.insert(0, (b(xt), i + 1))
        y = torch.stack(out, 1)[:, self.frames_to_trim:]   # [B, T', 3, H, W]
        return y.movedim(2, -1)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_taehv_decoder_in_chunks_equals_the_frame_by_frame_decode(chunk):
    torch.manual_seed(chunk)
    tae = _FakeTAEHV().double()
    z = torch.randn(2, 4, 5, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = tae.sequential(z)
        got = _decode_in_chunks(TAEHVDecoder(tae, torch.float64, "cpu", torch.float64), z, chunk)
    assert got.shape == ref.shape == (2, 5 * 4 - 3, 8, 6, 3)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


class _Recorder:
    def __init__(self, fail_at=None):
        self.calls, self.closed, self.aborted, self.fail_at = [], False, False, fail_at

    def write(self, frames, first):
        if self.fail_at is not None and first >= self.fail_at:
            raise OSError(28, "No space left on device")
        self.calls.append((first, frames.clone()))

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


@pytest.mark.parametrize("overlap", [False, True])
def test_stream_hands_frames_in_order_and_collects_the_image_batch(overlap):
    vae = _FakeWanVAE().double()
    z = torch.randn(2, 4, 7, 5, 6, dtype=torch.float64)
    rec, col = _Recorder(), FrameCollector(torch.float64)
    stream = PixelStream(WanCausalDecoder(vae, 2, 2, torch.float64, "cpu", torch.float64), [rec, col],
                         overlap=overlap, max_pending=1, device="cpu")
    with torch.no_grad():
        for f0 in range(0, 7, 3):
            stream.push(z[:, :, f0:f0 + 3])
        stream.finish()
        ref = vae.decoder.whole(vae.conv2(z)).add(1).div(2).clamp(0, 1).movedim(1, -1)
    firsts = [f for f, _ in rec.calls]
    counts = [x.shape[1] for _, x in rec.calls]
    assert firsts == [sum(counts[:i]) for i in range(len(counts))] and sum(counts) == 7 == stream.frames
    assert rec.closed and not rec.aborted
    torch.testing.assert_close(torch.cat([x for _, x in rec.calls], 1), ref)
    torch.testing.assert_close(col.images(), ref.reshape(14, 5, 6, 3))  # video 0's frames, then video 1's


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_sink_aborts_every_sink_and_raises(overlap):
    vae = _FakeWanVAE().double()
    bad, good = _Recorder(fail_at=3), _Recorder()
    stream = PixelStream(WanCausalDecoder(vae, 2, 2, torch.float64, "cpu", torch.float64), [good, bad],
                         overlap=overlap, device="cpu")
    z = torch.randn(1, 4, 9, 5, 6, dtype=torch.float64)
    with pytest.raises(OSError, match="No space"), torch.no_grad():
        try:
            for f0 in range(0, 9, 3):
                stream.push(z[:, :, f0:f0 + 3])
            stream.finish()
        except BaseException:
            stream.abort()
            raise
    assert good.aborted and bad.aborted and not good.closed


def test_generate_hands_every_final_piece_in_frame_order(tiny_wan):
    runner = ChunkRunner(tiny_wan)
    pieces = []
    shape = (1, 16, 7, 4, 4)
    ctx = torch.randn(1, 8, 32, dtype=runner.dtype)  # make_tiny_wan: text_dim 32
    start = torch.randn(shape, dtype=runner.dtype)
    res = generate(runner, ctx, shape, SamplerSettings(chunk_frames=3, steps=2, timesteps=None),
                   start_latent=start, start_frames=2, chunk_done=lambda f0, x: pieces.append((f0, x.clone())))
    f0s = [f0 for f0, _ in pieces]
    assert f0s == sorted(f0s) and f0s[0] == 0
    assert sum(x.shape[2] for _, x in pieces) == 7
    torch.testing.assert_close(torch.cat([x for _, x in pieces], 2), res.latent)


def test_video_file_is_whole_or_absent(tmp_path):
    av = pytest.importorskip("av")
    from dummy_forcing_core.video_file import VideoFileWriter, VideoWriteError

    frames = torch.rand(1, 5, 32, 48, 3)
    frames[..., 0] = torch.linspace(0, 1, 48)  # a ramp survives compression
    path = str(tmp_path / "clip_00001_.mp4")
    w = VideoFileWriter([path], 16.0)
    w.write(frames[:, :3], 0)
    assert not os.path.exists(path)  # only the hidden partial file while writing
    w.write(frames[:, 3:], 3)
    w.close()
    assert os.listdir(tmp_path) == ["clip_00001_.mp4"]
    with av.open(path) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 5 and got[0].shape == (32, 48, 3)
    ramp = torch.from_numpy(got[2][..., 0].astype("float32") / 255).mean(0)
    assert (ramp - torch.linspace(0, 1, 48)).abs().mean() < 0.05

    aborted = str(tmp_path / "cancelled.mp4")
    w = VideoFileWriter([aborted], 16.0)
    w.write(frames, 0)
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["clip_00001_.mp4"]

    full = str(tmp_path / "full.mp4")
    w = VideoFileWriter([full], 16.0)
    w.write(frames[:, :1], 0)
    container, stream = w._open[0]

    class FullDisk:  # the container as a full disk leaves it: every packet written fails
        def mux(self, packet):
            raise OSError(28, "No space left on device")

        def close(self):
            container.close()

    w._open[0] = (FullDisk(), stream)
    with pytest.raises(VideoWriteError, match="full.mp4.*No space left"):
        for _ in range(40):  # the encoder buffers a few frames before the first packet
            w.write(frames, 0)
    assert sorted(os.listdir(tmp_path)) == ["clip_00001_.mp4"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_overlapped_cuda_decode_equals_the_inline_decode_while_the_caller_keeps_working():
    """The decode thread's own CUDA stream: same frames as inline, while the caller's stream
    keeps writing new tensors (the allocator must not hand a pushed chunk's memory to them)."""
    torch.manual_seed(0)
    vae = _FakeWanVAE().cuda()
    z = torch.randn(1, 4, 13, 32, 48, device="cuda")
    rec_inline, rec_overlap = _Recorder(), _Recorder()
    with torch.no_grad():
        inline = PixelStream(WanCausalDecoder(vae, 2, 2, torch.float32, "cuda"), [rec_inline])
        for f0 in range(0, 13, 3):
            inline.push(z[:, :, f0:f0 + 3].clone())
        inline.finish()
        stream = PixelStream(WanCausalDecoder(vae, 2, 2, torch.float32, "cuda"), [rec_overlap], overlap=True,
                             device="cuda")
        for f0 in range(0, 13, 3):
            stream.push(z[:, :, f0:f0 + 3].clone())  # a fresh tensor, dropped by the caller at once
            busy = torch.randn(4096, 4096, device="cuda") @ torch.randn(4096, 4096, device="cuda")  # caller work
            del busy
        stream.finish()
    a = torch.cat([x for _, x in rec_inline.calls], 1)
    b = torch.cat([x for _, x in rec_overlap.calls], 1)
    assert a.shape == b.shape == (1, 13, 32, 48, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
