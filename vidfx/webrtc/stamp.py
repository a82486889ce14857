"""Frame counters written into pixels, for measuring glass-to-glass latency and frame identity end to end.

A counter (16 bits) and a 4-bit check are drawn as a 5×4 grid of black/white cells over the top-left quarter
of the frame: cells are large (≥ 16 px on a 128 px frame), so they survive VP8/H.264 at WebRTC bitrates and
resizing. `read_counter` returns None when the check fails (the cells were not read back faithfully).
"""

from __future__ import annotations

import fractions
import time

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

GRID_COLS, GRID_ROWS = 5, 4
DATA_BITS = 16
VIDEO_CLOCK = 90_000


def _check(n: int) -> int:
    return (n ^ (n >> 4) ^ (n >> 8) ^ (n >> 12) ^ 0x5) & 0xF


def _bits(n: int) -> list[int]:
    word = (n & 0xFFFF) | (_check(n & 0xFFFF) << DATA_BITS)
    return [(word >> i) & 1 for i in range(GRID_COLS * GRID_ROWS)]


def _cells(h: int, w: int) -> list[tuple[slice, slice]]:
    """Cell rectangles (rows, cols) in bit order, tiling the top-left quarter."""
    ch, cw = (h // 2) // GRID_ROWS, (w // 2) // GRID_COLS
    return [
        (slice(r * ch, (r + 1) * ch), slice(c * cw, (c + 1) * cw)) for r in range(GRID_ROWS) for c in range(GRID_COLS)
    ]


def stamp_counter(rgb: np.ndarray, n: int) -> np.ndarray:
    """Write counter `n` (mod 2**16) into `rgb` (H, W, 3) uint8 in place; returns it."""
    h, w = rgb.shape[:2]
    for bit, (rows, cols) in zip(_bits(n), _cells(h, w), strict=True):
        rgb[rows, cols] = 255 if bit else 0
    return rgb


def read_counter(rgb: np.ndarray) -> int | None:
    """The counter stamped into `rgb` (H, W, 3), or None if the cells do not carry a valid one."""
    h, w = rgb.shape[:2]
    luma = rgb.astype(np.float32).mean(axis=2)  # (H, W)
    word = 0
    for i, (rows, cols) in enumerate(_cells(h, w)):
        # Read each cell's centre only: codec ringing and resampling blur the borders.
        r0, r1 = rows.start, rows.stop
        c0, c1 = cols.start, cols.stop
        dr, dc = max((r1 - r0) // 4, 1), max((c1 - c0) // 4, 1)
        centre = luma[r0 + dr : r1 - dr, c0 + dc : c1 - dc]
        word |= int(centre.mean() > 127.5) << i
    n = word & 0xFFFF
    return n if (word >> DATA_BITS) == _check(n) else None


def pattern_frame(h: int, w: int, n: int) -> np.ndarray:
    """A moving colour gradient (so codecs and models see motion) with counter `n` stamped in."""
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    shift = (n * 4) % 256
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0] = ((x + shift) % 256).astype(np.uint8)
    rgb[..., 1] = ((y + shift) % 256).astype(np.uint8)
    rgb[..., 2] = ((x + y) / 2).astype(np.uint8)
    return stamp_counter(rgb, n)


class SyntheticVideoTrack(MediaStreamTrack):
    """A live video source: pattern frames at `fps`, each stamped with its index; the send time of every
    index is kept in `sent` (time.monotonic()), so a receiver can compute latency per frame."""

    kind = "video"

    def __init__(self, width: int = 160, height: int = 120, fps: float = 15.0, frames: int | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.limit = frames
        self.count = 0
        self.sent: dict[int, float] = {}
        self.override: np.ndarray | None = None  # when set, this image (H, W, 3) is sent instead of the pattern
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        import asyncio

        if self.readyState != "live" or (self.limit is not None and self.count >= self.limit):
            raise MediaStreamError
        n = self.count
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + n / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        rgb = self.override if self.override is not None else pattern_frame(self.height, self.width, n)
        frame = VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent[n & 0xFFFF] = time.monotonic()
        self.count += 1
        return frame


# -- A/V sync test signal ------------------------------------------------------------------------------------------

AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020  # seconds per audio frame (what WebRTC sends per Opus packet)


class FlashClick:
    """A test source whose video flashes white and whose audio clicks (a 20 ms 1 kHz burst) at the same instants,
    every `period_s` from a shared start, so a receiver can measure how far apart audio and video arrive.

    Lifecycle: `video` and `audio` are two tracks for one peer; the clock starts at whichever is pulled first.
    The period must be a whole number of video frames and of audio frames."""

    def __init__(self, width: int = 128, height: int = 96, fps: float = 15.0, period_s: float = 1.0) -> None:
        self.width, self.height, self.fps, self.period_s = width, height, fps, period_s
        self.frames_per_flash = round(period_s * fps)
        self.audio_per_click = round(period_s / AUDIO_PTIME)
        assert (
            abs(self.frames_per_flash / fps - period_s) < 1e-9
            and abs(self.audio_per_click * AUDIO_PTIME - period_s) < 1e-9
        )
        self.start: float | None = None
        self.video = _FlashVideo(self)
        self.audio = _ClickAudio(self)

    def anchor(self) -> float:
        if self.start is None:
            self.start = time.monotonic()
        return self.start


async def _pace(due: float) -> None:
    import asyncio

    wait = due - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


class _FlashVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, source: FlashClick) -> None:
        super().__init__()
        self.source = source
        self.count = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        s, n = self.source, self.count
        await _pace(s.anchor() + n / s.fps)
        rgb = pattern_frame(s.height, s.width, n) // 5  # dim moving pattern…
        if n % s.frames_per_flash == 0:
            rgb[:] = 255  # …and a white flash
        frame = VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = round(n * VIDEO_CLOCK / s.fps), fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


class _ClickAudio(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source: FlashClick) -> None:
        super().__init__()
        self.source = source
        self.count = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        s, n = self.source, self.count
        await _pace(s.anchor() + n * AUDIO_PTIME)
        samples = round(AUDIO_RATE * AUDIO_PTIME)
        mono = np.zeros(samples, np.int16)
        if n % s.audio_per_click == 0:
            t = np.arange(samples) / AUDIO_RATE
            mono[:] = (12000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(np.repeat(mono, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = AUDIO_RATE, n * samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.count += 1
        return frame


def onsets(
    times: list[float], levels: list[float], rise: float, baseline: int = 5, refractory_s: float = 0.3
) -> list[float]:
    """Arrival times where a level (frame brightness, audio RMS) rises more than `rise` above the median of the
    `baseline` values before it, at most one per `refractory_s` (the model smears a flash over a few frames)."""
    out: list[float] = []
    for i, (t, level) in enumerate(zip(times, levels, strict=True)):
        before = float(np.median(levels[max(0, i - baseline) : i])) if i else 0.0
        if level - before > rise and (not out or t - out[-1] > refractory_s):
            out.append(t)
    return out


def flash_phase(times: list[float], pts: list[int], levels: list[float], rise: float, pts_period: int) -> int | None:
    """The pts phase (pts mod `pts_period`) of the frames where the brightness rose most often. Meant for frames
    passed through unchanged (a paused stream): a model smears a flash over the neighbouring frames of its chunk,
    before and after it, so on stylised frames a flash is found by this phase instead (the node keeps each input
    frame's pts; a receiver's differ from the sender's by a constant). `pts`: relative to a fixed reference."""
    starts = set(onsets(times, levels, rise))
    phases = [p % pts_period for p, t in zip(pts, times, strict=True) if t in starts]
    return max(set(phases), key=phases.count) if phases else None


def at_phase(times: list[float], pts: list[int], phase: int, pts_period: int) -> list[float]:
    """Arrival times of the frames whose pts (relative, as for `flash_phase`) sits at `phase` of every period."""
    return [t for t, p in zip(times, pts, strict=True) if p % pts_period == phase]


def av_offsets(flashes: list[float], clicks: list[float], period_s: float) -> list[float]:
    """Audio − video arrival (s) for each click paired with the nearest flash within half a period."""
    offsets = []
    for c in clicks:
        near = min(flashes, key=lambda f: abs(c - f), default=None)
        if near is not None and abs(c - near) < period_s / 2:
            offsets.append(c - near)
    return offsets
