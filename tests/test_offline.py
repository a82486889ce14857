"""`vidfx run` and `vidfx generate` (vidfx.offline): file in, file out, through the live node's pipeline."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidfx.config import ModelSettings
from vidfx.loading import load_pipeline
from vidfx.offline import VideoWriter, generate_video, open_video, stylize_video
from vidfx.pipeline import StreamParams


def write_clip(path: Path, frames: int, size: tuple[int, int], fps: int = 24) -> np.ndarray:
    """A moving gradient with a square: (T, H, W, 3) uint8, also written to `path`."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    clip = np.zeros((frames, h, w, 3), np.uint8)
    for t in range(frames):
        clip[t, ..., 0] = (xx * 255 // w + 5 * t) % 256
        clip[t, ..., 1] = yy * 255 // h
        x0 = (3 * t) % max(1, w - 16)
        clip[t, 8:24, x0 : x0 + 16, 2] = 255
    with VideoWriter(path, size, Fraction(fps), pix_fmt="yuv444p") as writer:
        writer.write(clip)
    return clip


def decode(path: Path) -> tuple[np.ndarray, float]:
    frames, fps, _ = open_video(path)
    return np.stack([f for f, _ in frames]), float(fps)


def vidfx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vidfx.cli", *args], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    return load_pipeline(ModelSettings(name="tiny-random"))


@pytest.mark.parametrize("frames", [1, 5, 23])  # first chunk only; exactly 2 chunks; a padded partial chunk
def test_stylize_keeps_frame_count_size_and_rate(tmp_path: Path, pipe, frames: int) -> None:  # type: ignore[no-untyped-def]
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    clip = write_clip(src, frames, (72, 98))  # not the model's size, nor its aspect
    counted: list[int] = []
    stats = stylize_video(pipe, src, dst, StreamParams(prompts=(("a pencil sketch", 1.0),)), progress=counted.append)
    out, fps = decode(dst)
    assert out.shape == clip.shape and stats.frames == frames and sum(counted) == frames
    assert fps == 24.0
    assert np.abs(out.astype(int) - clip.astype(int)).mean() > 10  # restyled, not copied


def test_stylize_equals_the_pipeline_streamed_by_hand(tmp_path: Path, pipe) -> None:  # type: ignore[no-untyped-def]
    """The file path is the live path: same chunks through the same StreamState give the same pixels."""
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mov"
    write_clip(src, 9, (64, 64))
    frames, _ = decode(src)
    params = StreamParams(prompts=(("thermal camera", 1.0),), seed=3)
    stylize_video(pipe, src, dst, params, codec="png")  # lossless, so the comparison is exact
    state = pipe.new_stream_state(params)
    expected = [pipe.process_chunk(state, frames[:1], params, 0)]
    expected.append(pipe.process_chunk(state, frames[1:5], params, 0))
    expected.append(pipe.process_chunk(state, frames[5:9], params, 0))
    out, _ = decode(dst)
    np.testing.assert_array_equal(out, np.concatenate(expected))


def test_generate_text_and_image_to_video(tmp_path: Path, pipe) -> None:  # type: ignore[no-untyped-def]
    params = StreamParams(prompts=(("night vision", 1.0),), seed=1)
    stats = generate_video(pipe, tmp_path / "t2v.mp4", params, seconds=1.0, fps=16)
    out, fps = decode(tmp_path / "t2v.mp4")
    assert len(out) == stats.frames == 17 and out.shape[1:3] == (128, 128) and fps == 16
    again = generate_video(pipe, tmp_path / "again.mp4", params, seconds=1.0, fps=16)
    assert again.frames == 17
    np.testing.assert_array_equal(decode(tmp_path / "again.mp4")[0], out)  # a seed fixes the clip

    image = write_clip(tmp_path / "img.mp4", 1, (80, 120))[0]
    stats = generate_video(pipe, tmp_path / "i2v.mp4", params, seconds=0.5, fps=16, image=image)
    i2v, _ = decode(tmp_path / "i2v.mp4")
    assert i2v.shape[1:3] == (80, 120) and len(i2v) == stats.frames == 9  # 1 (the image) + 2 chunks of 4


def test_cli_run_and_generate(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    write_clip(src, 7, (64, 96))
    done = vidfx("run", str(src), "-o", str(tmp_path / "o.mp4"), "--prompt", "pixel art", "--strength", "0.5",
                 "--model", "tiny-random", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert decode(tmp_path / "o.mp4")[0].shape == (7, 64, 96, 3)
    done = vidfx("generate", "--prompt", "comic", "-o", str(tmp_path / "g.mp4"), "--seconds", "0.5",
                 "--model", "tiny-random", "--size", "48", "64", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert decode(tmp_path / "g.mp4")[0].shape == (9, 48, 64, 3)


def test_cli_run_reports_bad_input_clearly(tmp_path: Path) -> None:
    missing = vidfx("run", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4"), "--model", "tiny-random")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    bad = vidfx("run", str(garbage), "-o", str(tmp_path / "o.mp4"), "--model", "tiny-random")
    assert bad.returncode == 2 and "vidfx run:" in bad.stderr and "Traceback" not in bad.stderr
    bad_setting = vidfx("run", str(garbage), "-o", str(tmp_path / "o.mp4"), "--strength", "3")
    assert bad_setting.returncode == 2 and "strength" in bad_setting.stderr
    no_model = vidfx("run", str(garbage), "-o", str(tmp_path / "o.mp4"), "--model", str(tmp_path))
    assert no_model.returncode == 2 and "model.json" in no_model.stderr


def test_generate_refuses_an_image_after_the_start(pipe) -> None:  # type: ignore[no-untyped-def]
    state = pipe.new_stream_state(StreamParams())
    pipe.generate_chunk(state, (64, 64))
    with pytest.raises(ValueError, match="first chunk"):
        pipe.generate_chunk(state, (64, 64), image=np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(av.error.FFmpegError):  # type: ignore[attr-defined]
        open_video(Path(__file__))  # a Python file is no video: PyAV says so, vidfx run turns it into rc 2


def _write_clip_with_click(path: Path, seconds: float, click_s: float, fps: int = 24, rate: int = 44_100) -> None:
    """A moving gradient with a 20 ms 1 kHz click at `click_s`, silence elsewhere: H.264 + AAC in MP4."""
    frames = write_clip(path.with_suffix(".video.mp4"), round(seconds * fps), (64, 64), fps)
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        t = np.arange(round(seconds * rate)) / rate
        pcm = np.where((t >= click_s) & (t < click_s + 0.02), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
        for i in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024].astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            out.mux(audio.encode(frame))
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            out.mux(video.encode(vf))
        out.mux(audio.encode(None))
        out.mux(video.encode(None))


def _click_time(path: Path) -> tuple[float, float, int]:
    """(time of the first sample above half the click's amplitude, audio duration s, audio streams) of a file."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return float("nan"), 0.0, 0
        rate = c.streams.audio[0].codec_context.sample_rate
        pcm = np.concatenate(
            [
                f.to_ndarray().astype(np.float64).reshape(-1, len(f.layout.channels))
                if not f.format.is_planar
                else f.to_ndarray().T.astype(np.float64)
                for f in c.decode(audio=0)
            ]
        )
        return float(np.argmax(np.abs(pcm[:, 0]) > 0.25) / rate), len(pcm) / rate, len(c.streams.audio)


@pytest.mark.parametrize("max_frames", [None, 18])
def test_run_keeps_the_input_audio_in_sync(tmp_path: Path, pipe, max_frames: int | None) -> None:  # type: ignore[no-untyped-def]
    """`vidfx run` copies the input's audio beside the stylised video: a click at 0.5 s is still at 0.5 s (to
    within a few ms of AAC framing), and the audio ends with the video (also when cut short by --max-frames)."""
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    _write_clip_with_click(src, seconds=1.5, click_s=0.5)
    click_in, _, _ = _click_time(src)
    assert abs(click_in - 0.5) < 0.01  # the test input itself is right
    stats = stylize_video(pipe, src, dst, StreamParams(prompts=(("a pencil sketch", 1.0),)), max_frames=max_frames)
    click_out, duration, streams = _click_time(dst)
    assert streams == 1
    video_s = stats.frames / stats.fps
    assert stats.frames == (max_frames or 36)
    assert abs(click_out - click_in) < 0.01, (click_in, click_out)
    assert video_s - 0.05 < duration < video_s + 0.1, (duration, video_s)
    video, _ = decode(dst)
    assert video.shape == (stats.frames, 64, 64, 3)


def test_run_without_audio_writes_no_audio(tmp_path: Path, pipe) -> None:  # type: ignore[no-untyped-def]
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(src, 5, (64, 64))
    stylize_video(pipe, src, dst, StreamParams(prompts=(("a pencil sketch", 1.0),)))
    assert _click_time(dst)[2] == 0
