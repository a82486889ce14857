"""Frames between aiortc and an engine session, every hop bounded so latency cannot pile up:

    remote track ─recv─▶ LatestSlot ─convert (pool)─▶ Session.submit                              IngestPump
    session sink/tap ─▶ play-out queue (paced by pts) ─▶ LatestSlot per consumer ─▶ OutputTrack    StreamOutput
                                                             OutputTrack.recv: convert (pool) ─▶ its encoder

The "transform track" of the usual aiortc recipe (recv() pulls a camera frame, returns a processed one) is split
in two on purpose: the engine works in chunks (several frames in, several out, a chunk later), a WHIP publisher
has no return track at all, WHEP viewers have no input, and an input that is only read when an encoder asks for
output is an input whose queue grows. So the camera track is drained as fast as it arrives (keeping only the
newest decoded frame), and each consumer's track hands its encoder the newest stylised frame. Every pixel
conversion runs on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler, VideoFrame

from vidfx.stream.session import AudioPart, OutputFrame, Session
from vidfx.webrtc.handoff import HandoffClosed, LatestSlot

log = logging.getLogger("vidfx.webrtc")

VIDEO_CLOCK = 90_000  # RTP video clock: pts of the frames we send are in 1/90000 s
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_QUEUE = 250  # audio frames a consumer may hold back (5 s of 20 ms frames): more than any video latency
MAX_AUDIO_DELAY_S = 2.0


# -- conversions (thread pool) ------------------------------------------------------------------------------------


def fit_within(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest even size ≤ the limits with the frame's aspect ratio (the frame's own size if it fits)."""
    scale = min(1.0, max_width / width, max_height / height)
    if scale >= 1.0:
        return width, height
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def frame_to_rgb(frame: VideoFrame, max_width: int, max_height: int) -> np.ndarray:
    """A decoded frame → (H, W, 3) uint8 RGB, scaled down (one swscale pass) when it exceeds the limits."""
    w, h = fit_within(frame.width, frame.height, max_width, max_height)
    if (w, h) != (frame.width, frame.height):
        return frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    return frame.to_ndarray(format="rgb24")


def rgb_to_frame(pixels: np.ndarray, pts_us: int) -> VideoFrame:
    """(H, W, 3) uint8 → a VideoFrame on the 90 kHz clock; odd sizes lose their last row/column (4:2:0 codecs)."""
    h, w = pixels.shape[:2]
    if h % 2 or w % 2:
        pixels = pixels[: h // 2 * 2, : w // 2 * 2]
    frame = VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
    frame.pts = round(pts_us * VIDEO_CLOCK / 1_000_000)  # round trips exactly with frame_pts_us
    frame.time_base = VIDEO_TIME_BASE
    return frame


def frame_pts_us(frame: VideoFrame) -> int | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base * 1_000_000)


# -- rates and latencies for the stats message ----------------------------------------------------------------------


class RateWindow:
    """Events over the last `window_s` seconds: a rate and latency percentiles. Event loop only.

    Lifecycle: created empty; `add` appends (time, value) and forgets what fell out of the window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, float]] = deque()

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, value))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        return len(self._events) / self.window_s

    def percentile(self, q: float) -> float | None:
        if not self._events:
            return None
        return float(np.percentile([v for _, v in self._events], q))


# -- ingest ---------------------------------------------------------------------------------------------------------


class IngestPump:
    """Drains a remote video track into an engine session.

    Lifecycle: `start()` creates the receive and convert tasks; they run until the track ends, the session
    closes or `stop()` cancels them. `last_frame` (time.monotonic()) is how the peer's watchdog sees a publisher
    that went silent."""

    def __init__(
        self, track: MediaStreamTrack, session: Session, pool: Executor, max_width: int, max_height: int
    ) -> None:
        self.track = track
        self.session = session
        self.pool = pool
        self.max_size = (max_width, max_height)
        self.slot: LatestSlot[tuple[VideoFrame, float]] = LatestSlot()  # (decoded frame, when it arrived)
        self.last_frame: float | None = None
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (W, H) as submitted
        self.rate = RateWindow()
        self.ended = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._receive(), name=f"vidfx-ingest-{self.session.id}"),
            asyncio.create_task(self._convert(), name=f"vidfx-convert-{self.session.id}"),
        ]

    async def _receive(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.last_frame = time.monotonic()
                if not isinstance(frame, VideoFrame):
                    continue
                before = self.slot.dropped
                self.slot.put((frame, self.last_frame))
                if self.slot.dropped > before:  # conversion fell behind: the older decoded frame went
                    self.session.engine.metrics.drop("overload")
        except MediaStreamError:
            pass
        except Exception:
            log.exception("receiving video for session %s failed", self.session.id)
        finally:
            self.slot.close()
            self.ended.set()

    async def _convert(self) -> None:
        loop = asyncio.get_running_loop()
        metrics = self.session.engine.metrics
        try:
            while not self.session.closed:
                frame, arrived = await self.slot.get()
                pts_us = frame_pts_us(frame)
                pixels = await loop.run_in_executor(self.pool, frame_to_rgb, frame, *self.max_size)
                metrics.frames_received.inc()
                if pts_us is None:
                    pts_us = int(time.monotonic() * 1e6)
                self.size = (pixels.shape[1], pixels.shape[0])
                self.frames += 1
                self.rate.add()
                if not self.session.submit(pixels, pts_us, received=arrived):
                    break
        except HandoffClosed:
            pass
        except Exception:
            log.exception("converting video for session %s failed", self.session.id)
        finally:
            self.ended.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(frozen=True)
class AudioChunk:
    """One decoded audio frame as the node passes it on: packed s16 samples, shared read-only by every consumer."""

    samples: np.ndarray  # (1, n · channels) int16, interleaved
    layout: str  # "mono" or "stereo"
    sample_rate: int
    received: float  # time.monotonic() when it reached the node
    delayed: bool = True  # held back by the video latency; False: it left with its own video frame (ZeroMQ)


def audio_part_chunks(part: AudioPart, now: float) -> list[AudioChunk]:
    """A ZeroMQ frame's audio (any length) → 20 ms chunks (a WebRTC audio frame each; aiortc's encoders send one
    RTP timestamp per frame) and a shorter last one, already in sync with the frame it rode with."""
    samples = np.frombuffer(part.pcm, "<i2").reshape(-1, part.channels)
    step = max(1, part.rate // 50)
    layout = "stereo" if part.channels == 2 else "mono"
    return [
        AudioChunk(np.ascontiguousarray(samples[i : i + step]).reshape(1, -1), layout, part.rate, now, delayed=False)
        for i in range(0, len(samples), step)
    ]


class AudioIngest:
    """Drains a publisher's remote audio track into its stream's output (`StreamOutput.push_audio`), whatever codec
    aiortc negotiated (decoded frames are brought to s16 mono/stereo, which every aiortc encoder takes).

    Lifecycle: `start()` creates the receive task; it runs until the track ends or `stop()` cancels it."""

    def __init__(self, track: MediaStreamTrack, output: StreamOutput) -> None:
        self.track = track
        self.output = output
        self.frames = 0
        self._resampler: AudioResampler | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._receive(), name=f"vidfx-audio-{self.output.stream}")

    def _chunks(self, frame: AudioFrame, received: float) -> list[AudioChunk]:
        frames = [frame]
        if frame.format.name != "s16" or frame.layout.name not in ("mono", "stereo"):
            if self._resampler is None:
                self._resampler = AudioResampler(format="s16", layout="stereo", rate=frame.sample_rate)
            frames = self._resampler.resample(frame)
        return [AudioChunk(f.to_ndarray(), f.layout.name, f.sample_rate, received) for f in frames]

    async def _receive(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                received = time.monotonic()
                if not isinstance(frame, AudioFrame):
                    continue
                for chunk in self._chunks(frame, received):  # 20 ms of samples: cheap enough for the loop
                    self.frames += 1
                    self.output.push_audio(chunk)
        except MediaStreamError:
            pass
        except Exception:
            log.exception("receiving audio for stream %s failed", self.output.stream)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- output ---------------------------------------------------------------------------------------------------------


class PlayoutClock:
    """When to release each stylised frame, so a chunk's frames (which the engine emits together) leave about one
    frame interval apart instead of in a burst that a size-1 hand-off would mostly drop.

        release(frame) = max(pts + delay, previous release + ½ · (pts − previous pts))

    `delay` is a high quantile of how late the first frame of each recent burst arrived (arrival − pts): every
    frame then leaves with about the delay of a typical chunk's first (longest-waiting) frame, which is the least
    any smooth playback can add. A chunk later than that is not held for ever: its frames go out at up to twice
    the frame rate until they are on schedule again. Bursts are told apart by arrival time (a chunk's frames
    arrive within one event-loop turn), not by whether frames are still waiting, so a delay that turned out too
    long — say after the stream was paused and frames pass through one by one — shrinks again. Lifecycle: empty
    until the first frame; `arrive` records bursts and `released` the last release; a pts jump (a new source)
    starts it afresh."""

    BURST_GAP_S = 0.005  # frames arriving closer together than this came out of one chunk

    def __init__(self, window: int = 30, quantile: float = 90.0, max_hold_s: float = 1.0) -> None:
        self.quantile = quantile
        self.max_hold_s = max_hold_s
        self.lateness: deque[float] = deque(maxlen=window)
        self.delay = 0.0
        self.last_pts: float | None = None  # last arrival's
        self.last_arrival: float | None = None
        self._released: tuple[float, float] | None = None  # (pts, wall time) of the last release

    def arrive(self, pts_s: float, now: float) -> None:
        burst_start = self.last_arrival is None or now - self.last_arrival > self.BURST_GAP_S
        if self.last_pts is not None and not 0 <= pts_s - self.last_pts <= self.max_hold_s:
            self.lateness.clear()
            self._released = None
            burst_start = True
        self.last_pts, self.last_arrival = pts_s, now
        if burst_start:
            self.lateness.append(now - pts_s)
            self.delay = float(np.percentile(self.lateness, self.quantile))

    def release_at(self, pts_s: float, now: float) -> float:
        due = pts_s + self.delay
        if self._released is not None:
            last_pts, last_at = self._released
            due = max(due, last_at + 0.5 * max(pts_s - last_pts, 0.0))
        return min(due, now + self.max_hold_s)

    def released(self, pts_s: float, at: float) -> None:
        self._released = (pts_s, at)


class OutputTrack(MediaStreamTrack):
    """One consumer's view of a stream's stylised output: the newest released frame each time its encoder pulls
    (a size-1 drop-oldest slot of its own), as a VideoFrame of its own, with the input frame's pts on the 90 kHz
    clock. Ends (MediaStreamError) when the stream closes; `stop()` unsubscribes."""

    kind = "video"

    def __init__(self, output: StreamOutput) -> None:
        super().__init__()
        self._output = output
        self.slot: LatestSlot[OutputFrame] = LatestSlot()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            item = await self.slot.get()
        except HandoffClosed:
            self.stop()
            raise MediaStreamError from None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._output.pool, rgb_to_frame, item.pixels, item.pts_us)

    def stop(self) -> None:
        super().stop()
        self._output.subscribers.discard(self)


class AudioOutputTrack(MediaStreamTrack):
    """One consumer's copy of a stream's audio, each frame released `StreamOutput.audio_delay_s()` after it reached
    the node, so it leaves together with the video frames of the same instant (which the model holds back for as
    long). A FIFO of up to `AUDIO_QUEUE` frames (oldest dropped); frames of its own with a continuous pts (samples
    sent so far) for its encoder. Ends (MediaStreamError) when the stream closes; `stop()` unsubscribes."""

    kind = "audio"

    def __init__(self, output: StreamOutput) -> None:
        super().__init__()
        self._output = output
        self.queue: deque[AudioChunk] = deque()
        self.dropped = 0
        self.closed = False
        self._wake = asyncio.Event()
        self._samples = 0  # pts of the next frame, in samples

    def put(self, chunk: AudioChunk) -> None:
        self.queue.append(chunk)
        if len(self.queue) > AUDIO_QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def recv(self) -> AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if not self.queue:
                if self.closed:
                    self.stop()
                    raise MediaStreamError
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self.queue[0]
            wait = head.received + (self._output.audio_delay_s() if head.delayed else 0.0) - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)  # woken early: the head may have been dropped
                continue
            chunk = self.queue.popleft()
            frame = AudioFrame.from_ndarray(chunk.samples, format="s16", layout=chunk.layout)
            frame.sample_rate = chunk.sample_rate
            frame.pts = self._samples
            frame.time_base = fractions.Fraction(1, chunk.sample_rate)
            self._samples += frame.samples
            return frame

    def stop(self) -> None:
        super().stop()
        self._output.audio_subscribers.discard(self)


class StreamOutput:
    """One stream's stylised frames for every consumer: the page's own return video and WHEP viewers.

        session sink/tap ─push─▶ play-out queue ─(paced by pts)─▶ one LatestSlot per OutputTrack ─▶ its encoder

    The play-out queue only spreads a chunk's frames over their frame intervals and is bounded (`max_queue`
    frames, oldest dropped); each subscriber's size-1 slot drops the older frame when its encoder falls behind.
    Why not aiortc's MediaRelay: it hands one VideoFrame object to every consumer, and PyAV encoders running in
    different threads then convert and re-time that one frame concurrently (a shared swscale context: the node
    segfaulted with a browser and a WHEP viewer on one stream). Here every consumer converts its own frame from
    the shared, read-only pixels.

    Lifecycle: created (its pacer task started) when the first consumer needs it; `subscribe` adds a track;
    `push` (the session's sink or tap, on the event loop) queues a frame; `close` stops the pacer and ends every
    subscriber's track."""

    def __init__(self, stream: str, pool: Executor, max_queue: int = 16) -> None:
        self.stream = stream
        self.pool = pool
        self.max_queue = max_queue
        self.queue: deque[OutputFrame] = deque()
        self.clock = PlayoutClock()
        self.subscribers: set[OutputTrack] = set()
        self.audio_subscribers: set[AudioOutputTrack] = set()
        self.audio_frames = 0  # audio frames pushed (from the stream's publisher)
        self._audio_delay_s = 0.0  # the last measured video latency (kept while no video flows)
        self.session: Session | None = None  # the session whose frames these are (set by the gateway)
        self.closed = False
        self.frames_sent = 0
        self.queue_dropped = 0
        self.rate = RateWindow()
        self.latency = RateWindow()  # node latency in ms: frame submitted → released to the encoders
        self._wake = asyncio.Event()
        self._pacer = asyncio.create_task(self._pace(), name=f"vidfx-pace-{stream}")

    def subscribe(self) -> OutputTrack:
        track = OutputTrack(self)
        if self.closed:
            track.slot.close()
        else:
            self.subscribers.add(track)
        return track

    def subscribe_audio(self) -> AudioOutputTrack:
        track = AudioOutputTrack(self)
        if self.closed:
            track.close()
        else:
            self.audio_subscribers.add(track)
        return track

    def push_audio(self, chunk: AudioChunk) -> None:
        if self.closed:
            return
        self.audio_frames += 1
        for track in self.audio_subscribers:
            track.put(chunk)

    def audio_delay_s(self) -> float:
        """How long audio is held back: the median video latency of the last 2 s (arrival at the node → released to
        the encoders), or the last one measured while no video flows. Paused, the video passes through at once
        and the delay follows it down within the window."""
        p50 = self.latency.percentile(50)
        if p50 is not None:
            self._audio_delay_s = min(max(p50 / 1000.0, 0.0), MAX_AUDIO_DELAY_S)
        return self._audio_delay_s

    def push(self, frame: OutputFrame) -> None:
        if self.closed:
            return
        self.clock.arrive(frame.pts_us / 1e6, time.monotonic())
        self.queue.append(frame)
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.queue_dropped += 1
        self._wake.set()

    async def _pace(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            now = time.monotonic()
            wait = self.clock.release_at(self.queue[0].pts_us / 1e6, now) - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # the head may have been dropped meanwhile
            frame = self.queue.popleft()
            self.clock.released(frame.pts_us / 1e6, time.monotonic())
            self._release(frame)

    def _release(self, frame: OutputFrame) -> None:
        now = time.monotonic()
        self.frames_sent += 1
        self.rate.add(now=now)
        self.latency.add(1000.0 * (now - frame.received), now=now)
        for track in self.subscribers:
            track.slot.put(frame)
        if frame.audio is not None:  # a ZeroMQ frame's own audio: it leaves with it
            for chunk in audio_part_chunks(frame.audio, now):
                self.push_audio(chunk)

    @property
    def dropped(self) -> int:
        """Frames dropped on the way out: play-out overflow plus the slowest consumer's slot drops."""
        return self.queue_dropped + max((t.slot.dropped for t in self.subscribers), default=0)

    def close(self) -> None:
        self.closed = True
        self._pacer.cancel()
        self.queue.clear()
        for track in list(self.subscribers):
            track.slot.close()
        self.subscribers.clear()
        for audio in list(self.audio_subscribers):
            audio.close()
        self.audio_subscribers.clear()
