"""One live stream as the transports see it: frames in, steering, stylised frames out.

A `Session` is transport-neutral. A transport (ZeroMQ today, WebRTC next) calls

    session = engine.open_session("cam-1", sink=callback_or_None)
    session.submit(pixels_uint8_HxWx3, pts_us, seq)          # never blocks; drops the oldest when overloaded
    session.update(prompts=(("a watercolor", 1.0),), strength=0.6)
    async for out in session.frames(): ...                   # or, with a sink, sink(out) on the event loop

and the engine takes chunks from it, runs them on the model worker and emits `OutputFrame`s carrying the
input frame's `seq` and `pts_us`.

Lifecycle: opened by `Engine.open_session` (first frame of a stream id, a control `set`, or a WebRTC peer);
fed and steered on the event loop; closed by `Engine.close_session` (idle timeout, hang-up or shutdown), which
drops and counts its pending frames and ends `frames()`. Everything here runs on the event loop; the model
state (`model_state`) is only touched by the model worker: while `at_worker` is set, or while a chunk of the
session is being decoded (the engine's worker decodes a batch beside the next one) — never by the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfx.pipeline import StreamParams, StreamState
from vidfx.protocol import check_token

if TYPE_CHECKING:
    from vidfx.stream.engine import Engine


@dataclass(frozen=True, slots=True)
class AudioPart:
    """The audio that rides with one frame (ZeroMQ's optional third message part): what was captured since the
    previous frame, interleaved signed 16-bit little-endian PCM. It leaves with that frame's output, so it stays
    in sync however long the model takes, and goes when the frame is dropped."""

    pcm: bytes  # n · channels · 2 bytes
    rate: int  # samples per second
    channels: int  # 1 or 2


@dataclass(slots=True)
class InputFrame:
    pixels: np.ndarray  # (H, W, 3) uint8
    seq: int
    pts_us: int
    received: float  # time.monotonic() on arrival
    audio: AudioPart | None = None


@dataclass(slots=True)
class OutputFrame:
    stream: str
    seq: int  # the input frame's
    pts_us: int  # the input frame's
    pixels: np.ndarray  # (H, W, 3) uint8, the input's size
    received: float  # when the input frame arrived (time.monotonic())
    stylized: bool  # False for frames passed through while paused
    audio: AudioPart | None = None  # the input frame's


Sink = Callable[[OutputFrame], None]


class Session:
    def __init__(
        self,
        stream_id: str,
        engine: Engine,
        params: StreamParams,
        sink: Sink | None = None,
        key: str = "",
        owner: str | None = None,
        opened_by: str = "",
    ) -> None:
        self.id = stream_id
        self.engine = engine
        self.params = params
        self.sink = sink
        # Ownership (docs/serving.md, "Stream ownership"): the publisher feeding the stream ("zmq:<connection>",
        # "webrtc:<peer>"; None while claimed by a control client and not yet fed), the stream's key (issued or
        # configured; never shown in status) and the client that opened it (per-client quotas).
        self.key = key
        self.owner = owner
        self.opened_by = opened_by
        self.refused = 0  # frames from publishers other than the owner, refused
        self.taps: list[Sink] = []  # more observers of the output (WHEP viewers), called before the sink
        self.pending: deque[InputFrame] = deque()
        self.output: asyncio.Queue[OutputFrame | None] = asyncio.Queue(engine.settings.stream.output_queue)
        self.model_state: StreamState | None = None  # created by the worker on the first chunk
        # The prompt blend the model runs with: `params.prompts` once their embeddings are ready (the engine's
        # text worker encodes them off the model worker), the previous blend until then; None before the first.
        self.ready_prompts: tuple[tuple[str, float], ...] | None = None
        self.in_flight = 0  # chunks taken from `pending` whose frames are not out yet (two while one decodes)
        self.at_worker = False  # a chunk of it is being encoded and denoised: its next one waits
        self.paused = False
        self.reset_requested = False
        self.closed = False
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self.last_seq: int | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.chunks = 0
        self.dropped: dict[str, int] = {}

    # -- input ---------------------------------------------------------------------------------------------
    def submit(
        self,
        pixels: np.ndarray,
        pts_us: int,
        seq: int | None = None,
        received: float | None = None,
        audio: AudioPart | None = None,
    ) -> bool:
        """Queue one frame (H, W, 3) uint8. Returns False if the session is closed. Never blocks: beyond the
        pending bound the oldest frames are dropped (counted as `overload`), so latency stays bounded.
        `received`: when the frame reached the node (time.monotonic(); default now), if decoding came first.
        `audio`: the audio riding with this frame, handed back with its output frame."""
        if self.closed:
            return False
        now = time.monotonic()
        if seq is None:
            seq = 0 if self.last_seq is None else self.last_seq + 1
        if self.last_seq is not None and seq > self.last_seq + 1:
            self._drop("gap", seq - self.last_seq - 1)  # lost before reaching us (publisher HWM, network)
        self.last_seq = seq
        self.frames_in += 1
        self.last_activity = now
        if self.pending and self.pending[-1].pixels.shape != pixels.shape:
            self._drop("resized", len(self.pending))
            self.pending.clear()
        self.pending.append(InputFrame(pixels, seq, pts_us, now if received is None else received, audio))
        if self.paused and not self.in_flight:
            self.pass_through()
            return True
        bound = self.engine.pending_bound(self)
        while len(self.pending) > bound:
            self.pending.popleft()
            self._drop("overload")
        # The scheduler only needs to look when a chunk completes, or to arm the partial-chunk flush timer.
        if len(self.pending) == 1 or len(self.pending) >= self.engine.frames_needed(self):
            self.engine.wake()
        return True

    # -- steering ------------------------------------------------------------------------------------------
    def update(self, **changes: Any) -> StreamParams:
        """Change steering parameters (fields of `StreamParams`); applied from the next chunk on."""
        self.params = self.params.with_(**changes)
        self.last_activity = time.monotonic()
        return self.params

    def reset(self) -> None:
        """Forget the video so far (KV cache, autoencoder caches, motion); prompt and parameters stay."""
        self.reset_requested = True
        self.last_activity = time.monotonic()
        self.engine.wake()

    def pause(self) -> None:
        """Stop stylising: frames pass through unchanged, the model state is kept for `resume`."""
        self.paused = True
        self.last_activity = time.monotonic()
        if not self.in_flight:
            self.pass_through()

    def resume(self) -> None:
        self.paused = False
        self.last_activity = time.monotonic()
        self.engine.wake()

    # -- output --------------------------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[OutputFrame]:
        """Stylised frames in order until the session closes (when no sink is set)."""
        while True:
            item = await self.output.get()
            if item is None:
                return
            yield item

    def emit(self, frame: OutputFrame) -> None:
        self.frames_out += 1
        for tap in tuple(self.taps):
            tap(frame)
        if self.sink is not None:
            self.sink(frame)
            return
        if self.output.full():
            self.output.get_nowait()
            self._drop("output_overflow")
        self.output.put_nowait(frame)

    def pass_through(self) -> None:
        """Emit every pending frame unchanged (paused session, nothing in flight)."""
        while self.pending:
            f = self.pending.popleft()
            self.engine.deliver(
                self, OutputFrame(self.id, f.seq, f.pts_us, f.pixels, f.received, stylized=False, audio=f.audio)
            )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._drop("closed", len(self.pending))
        self.pending.clear()
        if self.output.full():
            self.output.get_nowait()
        self.output.put_nowait(None)

    def key_matches(self, presented: object) -> bool:
        """`presented` is this stream's key (constant-time)."""
        return bool(self.key) and check_token(presented, self.key)

    def refuse(self) -> None:
        """A frame from a publisher that does not own the stream: counted, never queued."""
        self.refused += 1
        self.engine.metrics.drop("foreign")

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def _drop(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            self.engine.metrics.drop(reason, n)

    def status(self) -> dict[str, Any]:
        p = asdict(self.params)
        p["prompts"] = [{"text": t, "weight": w} for t, w in self.params.prompts]
        p["steps"] = list(self.params.steps)
        return {
            "stream": self.id,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "chunks": self.chunks,
            "dropped": dict(self.dropped),
            "refused": self.refused,
            "fed": self.owner is not None,
            "pending": len(self.pending),
            "paused": self.paused,
            "idle_s": round(time.monotonic() - self.last_activity, 3),
            "strength_now": round(self.model_state.last_strength, 4) if self.model_state else None,
            "prompt_pending": self.ready_prompts != self.params.prompts,
            "params": p,
        }
