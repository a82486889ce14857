"""Files in, files out: `vidfx run` (video-to-video) and `vidfx generate` (text/image-to-video).

Both drive the live node's `StylePipeline` one chunk at a time with one `StreamState` — the same encoder
and decoder caches, rolling KV cache and prompt schedule the engine's worker uses — so a file of any length
runs in bounded memory and looks as it would streamed live. What the live engine adds (dropping frames
when behind, batching sessions) has no place here: a file never drops a frame.

Input is anything PyAV decodes; the output is H.264 (yuv420p, or yuv444p when a side is odd, which 4:2:0
cannot hold) in an MP4 unless the name or `codec` says otherwise. `vidfx run` keeps the input's audio: its
first audio stream is re-encoded (AAC, or Opus into WebM) beside the stylised video, on the same clock, cut where
the video ends.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidfx.pipeline import StreamParams, StylePipeline

Progress = Callable[[int], None]  # called with the frames just written


@dataclass
class RunStats:
    frames: int
    size: tuple[int, int]  # (H, W)
    fps: float
    chunks: int


class VideoWriter:
    """Frames (H, W, 3) uint8 → an encoded file at a constant frame rate.

    x264/x265 get `crf` and `pix_fmt` (default yuv420p, which plays anywhere, or yuv444p when a side is odd).
    """

    def __init__(
        self,
        path: str | Path,
        size: tuple[int, int],
        fps: Fraction,
        codec: str = "libx264",
        crf: int = 18,
        pix_fmt: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.height, self.stream.width = size
        if codec in ("libx264", "h264", "libx265", "hevc"):
            even = size[0] % 2 == 0 and size[1] % 2 == 0
            self.stream.pix_fmt = pix_fmt or ("yuv420p" if even else "yuv444p")
            self.stream.options = {"crf": str(crf), **(options or {})}
        else:  # e.g. png, ffv1, vp9: the given format, else the encoder's first
            formats = self.stream.codec_context.codec.video_formats or []
            self.stream.pix_fmt = pix_fmt or (formats[0].name if formats else "yuv420p")
            self.stream.options = options or {}
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AudioCopier:
    """The first audio stream of `src` re-encoded into `writer`'s container, in step with the video.

    Lifecycle: created right after the writer and before its first frame (a container's streams are fixed once
    it writes); `write_until(t)` muxes the audio up to `t` seconds of output video (so the file stays
    interleaved), `finish(t)` the rest up to `t` and flushes the encoder; `close()` closes the source. Audio is
    placed on the video's clock: input time − the first video frame's time (audio before that is dropped)."""

    def __init__(self, src: str | Path, writer: VideoWriter, video_start_s: float) -> None:
        self.source = av.open(str(src))
        self.input = self.source.streams.audio[0]
        rate = self.input.codec_context.sample_rate or 48_000
        webm = Path(writer.container.name).suffix.lower() in (".webm", ".mkv")
        self.output = writer.container.add_stream("libopus" if webm else "aac", rate=48_000 if webm else rate)
        self.output.layout = "stereo" if (self.input.codec_context.channels or 2) > 1 else "mono"
        self.resampler = av.AudioResampler(
            format=self.output.codec_context.format, layout=self.output.layout, rate=self.output.codec_context.rate
        )
        self.container = writer.container
        self.start_s = video_start_s
        self.samples = 0  # written so far, on the output's clock
        self._frames = self.source.decode(self.input)
        self._pending: av.AudioFrame | None = None  # decoded but beyond the last write_until

    @staticmethod
    def has_audio(src: str | Path) -> bool:
        with av.open(str(src)) as container:
            return bool(container.streams.audio)

    def write_until(self, t_s: float) -> None:
        rate = self.output.codec_context.rate
        while self.samples < t_s * rate:
            frame = self._pending or next(self._frames, None)
            self._pending = None
            if frame is None:
                return
            start = (frame.time or 0.0) - self.start_s
            if start >= t_s:
                self._pending = frame
                return
            for out in self.resampler.resample(frame):
                skip = max(0, round(-start * rate)) if start < 0 else 0  # before the first video frame
                if skip >= out.samples:
                    continue
                if skip:
                    out = _audio_tail(out, skip)
                out.pts, out.time_base = self.samples, Fraction(1, rate)
                self.samples += out.samples
                self.container.mux(self.output.encode(out))

    def finish(self, t_s: float) -> None:
        self.write_until(t_s)
        self.container.mux(self.output.encode(None))

    def close(self) -> None:
        self.source.close()


def _audio_tail(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """`frame` without its first `skip` samples (planar or packed)."""
    data = frame.to_ndarray()
    data = data[:, skip:] if frame.format.is_planar else data[:, skip * len(frame.layout.channels) :]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    return out


def count_frames(path: str | Path) -> int | None:
    """The frame count the container states (None if it states none); raises as PyAV does on a bad file."""
    with av.open(str(path)) as container:
        return container.streams.video[0].frames or None if container.streams.video else None


def open_video(path: str | Path) -> tuple[Iterator[tuple[np.ndarray, int]], Fraction, int | None]:
    """(frames as (rgb24 (H, W, 3), pts in µs), frame rate, frame count if the container knows it).
    The file closes when the frame iterator is exhausted or closed."""
    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = stream.average_rate or stream.guessed_rate or Fraction(30)

    def frames() -> Iterator[tuple[np.ndarray, int]]:
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / float(fps)
                yield frame.to_ndarray(format="rgb24"), int(round(t * 1e6))
        finally:
            container.close()

    return frames(), Fraction(fps), (stream.frames or None)


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3) (short clips: the whole clip is in memory)."""
    frames, _, _ = open_video(path)
    return np.stack([f for f, _ in frames])


def stylize_frames(
    pipe: StylePipeline, frames: Iterable[tuple[np.ndarray, int]], params: StreamParams
) -> Iterator[np.ndarray]:
    """(rgb24 (H, W, 3), pts µs) frames of one stream → its stylised frames, a chunk at a time.

    Frames are gathered into the pipeline's chunks (1 + k·(n−1) frames first, k·n after); a last partial
    chunk is padded with its final frame and the padding's outputs dropped, so every input frame gets one
    output frame.
    """
    state = pipe.new_stream_state(params)
    pending: list[np.ndarray] = []
    first_pts = 0
    size: tuple[int, ...] | None = None
    for rgb, pts_us in frames:
        if size is None:
            size = rgb.shape
        elif rgb.shape != size:
            raise ValueError(f"frame {state.chunks}:{len(pending)} is {rgb.shape}, the first was {size}")
        if not pending:
            first_pts = pts_us
        pending.append(rgb)
        if len(pending) == pipe.frames_per_chunk(state.first):
            yield pipe.process_chunk(state, np.stack(pending), params, first_pts)
            pending.clear()
    if pending:
        real = len(pending)
        pending += [pending[-1]] * (pipe.frames_per_chunk(state.first) - real)
        yield pipe.process_chunk(state, np.stack(pending), params, first_pts)[:real]


def stylize_video(
    pipe: StylePipeline,
    src: str | Path,
    dst: str | Path,
    params: StreamParams,
    codec: str = "libx264",
    crf: int = 18,
    max_frames: int | None = None,
    progress: Progress | None = None,
) -> RunStats:
    """Re-render every frame of `src` through the pipeline into `dst` (same frame count, size and rate), with
    `src`'s audio (if any) re-encoded beside it."""
    frames, fps, _ = open_video(src)
    first_pts_us: list[int] = []

    def noting_start(items: Iterable[tuple[np.ndarray, int]]) -> Iterator[tuple[np.ndarray, int]]:
        for rgb, pts_us in items:
            if not first_pts_us:
                first_pts_us.append(pts_us)
            yield rgb, pts_us

    writer: VideoWriter | None = None
    audio: AudioCopier | None = None
    count = chunks = 0
    try:
        for out in stylize_frames(pipe, noting_start(itertools.islice(frames, max_frames)), params):
            if writer is None:
                writer = VideoWriter(dst, out.shape[1:3], fps, codec, crf)
                if AudioCopier.has_audio(src):
                    audio = AudioCopier(src, writer, first_pts_us[0] / 1e6)
            writer.write(out)
            count += len(out)
            chunks += 1
            if audio is not None:
                audio.write_until(count / float(fps))
            if progress:
                progress(len(out))
        if writer is None:
            raise ValueError(f"{src}: no frames decoded")
        if audio is not None:
            audio.finish(count / float(fps))
    finally:
        frames.close()  # type: ignore[attr-defined]
        if audio is not None:
            audio.close()
        if writer is not None:
            writer.close()
    return RunStats(count, (writer.stream.height, writer.stream.width), float(fps), chunks)


def generated_chunks(pipe: StylePipeline, seconds: float, fps: float) -> int:
    """Chunks `generate_video` makes: the fewest whose frames cover seconds·fps."""
    first, later = pipe.frames_per_chunk(True), pipe.frames_per_chunk(False)
    return 1 + max(0, math.ceil((seconds * fps - first) / later))


def generate_frames(
    pipe: StylePipeline,
    params: StreamParams,
    seconds: float,
    fps: float = 16.0,
    size: tuple[int, int] | None = None,
    image: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Text-to-video (or image-to-video with `image` as the first frame and context): uint8 (T, H, W, 3)
    chunks of one stream, `generated_chunks` of them; `size` (H, W) defaults to the image's size, else the
    model resolution."""
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be positive")
    if size is None:
        size = (image.shape[0], image.shape[1]) if image is not None else (pipe.settings.height, pipe.settings.width)
    state = pipe.new_stream_state(params)
    written = 0
    for c in range(generated_chunks(pipe, seconds, fps)):
        # With an image, the first chunk is that image alone (one latent frame), then generation goes on.
        out = pipe.generate_chunk(state, size, image=image if c == 0 else None, pts_us=int(written / fps * 1e6))
        written += len(out)
        yield out


def generate_video(
    pipe: StylePipeline,
    dst: str | Path,
    params: StreamParams,
    seconds: float,
    fps: float = 16.0,
    size: tuple[int, int] | None = None,
    image: np.ndarray | None = None,
    codec: str = "libx264",
    crf: int = 18,
    progress: Progress | None = None,
) -> RunStats:
    """`generate_frames` written to `dst`: 1 + k·(chunks·n − 1) frames, the shortest such length ≥ seconds·fps."""
    rate = Fraction(fps).limit_denominator(1001)
    writer: VideoWriter | None = None
    written = chunks = 0
    try:
        for out in generate_frames(pipe, params, seconds, fps, size, image):
            if writer is None:
                writer = VideoWriter(dst, out.shape[1:3], rate, codec, crf)
            writer.write(out)
            written += len(out)
            chunks += 1
            if progress:
                progress(len(out))
    finally:
        if writer is not None:
            writer.close()
    assert writer is not None  # generated_chunks ≥ 1
    return RunStats(written, (writer.stream.height, writer.stream.width), float(rate), chunks)
