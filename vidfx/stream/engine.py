"""The streaming engine: sessions' frames → chunks → the model worker → stylised frames, with bounded latency.

Threads: everything here runs on the asyncio event loop except `_run_batch`, which runs on the engine's single
model worker thread (one worker per device: two threads would only fight over the same cores or GPU).
The scheduler hands the worker one batch at a time — up to `max_batch` sessions whose next chunk is complete,
oldest waiting first — and meanwhile the loop keeps receiving, so input never waits on the model, and sends the
previous batch's frames, so the worker does not wait for the loop between batches. A session has at most one
chunk at the worker at a time, which keeps its output in order and its model state single-threaded.

With the pipeline's `overlap_decode` (on CUDA: the decode on its own stream) a worker call encodes and
denoises batch j + 1, launches its decode, then collects batch j's frames: the GPU decodes one batch beside the
next one's denoise. When no batch is ready, the worker collects at once, so a stream's frames never wait for a
later chunk.

Latency is bounded by construction: a session holds at most `pending_bound` frames (about one chunk); when
input outruns the model the oldest are dropped and counted, so a frame waits at most one chunk to fill plus
one model call in progress plus its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidfx.accel import warmup_chunks
from vidfx.config import Settings
from vidfx.pipeline import ChunkRequest, DecodingChunks, StreamParams, StylePipeline
from vidfx.protocol import check_token
from vidfx.stream.metrics import Metrics
from vidfx.stream.session import InputFrame, OutputFrame, Session, Sink

log = logging.getLogger("vidfx.engine")


class SessionLimitError(RuntimeError):
    """Every session slot is taken."""


@dataclass
class ChunkJob:
    """One session's chunk on its way to the worker: a snapshot, so the loop may keep steering meanwhile."""

    session: Session
    frames: list[InputFrame]
    pixels: np.ndarray  # (T, H, W, 3) uint8, padded with the last frame when `real` < T
    real: int  # frames to emit
    params: StreamParams
    reset: bool


ChunkResult = tuple[ChunkJob, "np.ndarray | Exception"]  # a job and its frames (T, H, W, 3) uint8, or its error
Decoding = tuple[list[ChunkJob], DecodingChunks]  # a batch's jobs and their decode, under way or deferred


def default_params(settings: Settings) -> StreamParams:
    return StreamParams.from_settings(settings.model, settings.stream)


class Engine:
    def __init__(self, pipeline: StylePipeline, settings: Settings, metrics: Metrics | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics or Metrics(pipeline.name, settings.model.device)
        self.sessions: dict[str, Session] = {}
        self.ready = False
        self.batch = settings.model.max_batch > 1
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidfx-model")
        # Prompts are encoded here, never on the model worker: a new prompt (seconds of umT5-XXL on a CPU) must
        # not stall any stream's frames. A stream keeps its previous prompt until the new embedding is cached.
        self._text = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidfx-text")
        self._encoding: set[tuple[tuple[str, float], ...]] = set()  # blends being encoded now
        self._failed: set[tuple[tuple[str, float], ...]] = set()  # blends the encoder refused: the worker reports
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.transport_status: dict[str, Any] = {}  # what transports report in `status` (e.g. subscribers)
        self._keys = settings.stream.configured_keys()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Warm the model up on the worker, then start scheduling. `ready` turns true at the end."""
        loop = asyncio.get_running_loop()
        state = None
        chunks = warmup_chunks(self.pipeline, self.settings.accel, self.settings.model.warmup_chunks)
        for _ in range(chunks):  # chunk by chunk: a shutdown waits for one at most
            state = await loop.run_in_executor(self._worker, self.pipeline.warm_up, 1, state)
        self._tasks = [asyncio.create_task(self._schedule(), name="vidfx-scheduler"),
                       asyncio.create_task(self._reap(), name="vidfx-reaper")]  # fmt: skip
        self.ready = True

    async def stop(self) -> None:
        """Finish the model call in progress, close every session, stop the worker."""
        self.ready = False
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            if task.get_name() == "vidfx-reaper":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sid in list(self.sessions):
            self.close_session(sid)
        self._worker.shutdown(wait=True)
        self._text.shutdown(wait=True, cancel_futures=True)

    # -- sessions --------------------------------------------------------------------------------------------
    def open_session(
        self,
        stream_id: str,
        sink: Sink | None = None,
        params: StreamParams | None = None,
        owner: str | None = None,
        opened_by: str = "",
        key: str | None = None,
    ) -> Session:
        """Open `stream_id`, owned by `owner` (the publisher feeding it; None: claimed, not fed yet). Its key is the
        configured one (which `key` must then be: PermissionError otherwise), else `key` (chosen by the claimer),
        else a fresh random one."""
        if stream_id in self.sessions:
            raise ValueError(f"session {stream_id!r} is already open")
        if len(self.sessions) >= self.settings.stream.max_sessions:
            raise SessionLimitError(f"all {self.settings.stream.max_sessions} session slots are in use")
        configured = self._keys.get(stream_id)
        if configured is not None and not check_token(key, configured):  # never handed to whoever comes first
            raise PermissionError(f"stream {stream_id!r} has a configured key: give it")
        stream_key = configured or key or secrets.token_urlsafe(18)
        params = params or default_params(self.settings)
        session = Session(stream_id, self, params, sink, key=stream_key, owner=owner, opened_by=opened_by)
        self.sessions[stream_id] = session
        self.metrics.sessions.set(len(self.sessions))
        log.info("session %s opened", stream_id)
        return session

    def session(self, stream_id: str) -> Session | None:
        return self.sessions.get(stream_id)

    def close_session(self, stream_id: str) -> None:
        session = self.sessions.pop(stream_id, None)
        if session is None:
            return
        session.close()
        self.metrics.sessions.set(len(self.sessions))
        self._update_depth()
        log.info("session %s closed (%d in, %d out)", stream_id, session.frames_in, session.frames_out)

    def frames_needed(self, session: Session) -> int:
        st = session.model_state
        first = st is None or session.reset_requested or st.first
        return self.pipeline.frames_per_chunk(first)

    def pending_bound(self, session: Session) -> int:
        """Frames a session may hold before the oldest are dropped: `max_pending_chunks` chunks — plus, while
        the stream's short first chunk is pending, that chunk (a burst at stream start is not an overload)."""
        need = self.frames_needed(session)
        chunk = self.pipeline.frames_per_chunk(False)
        bound = math.ceil(self.settings.stream.max_pending_chunks * chunk)
        return need + bound if need < chunk else max(need, bound)

    def wake(self) -> None:
        self._wake.set()

    def deliver(self, session: Session, frame: OutputFrame) -> None:
        """Send one output frame (event loop)."""
        try:
            session.emit(frame)
        except Exception:  # a transport's sink failing must not take the engine down
            log.exception("output of session %s failed", session.id)
            return
        self.metrics.frames_emitted.inc()
        self.metrics.e2e_latency.observe(time.monotonic() - frame.received)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "model": self.pipeline.name,
            "sessions": {sid: s.status() for sid, s in self.sessions.items()},
            "dropped": self.metrics.dropped(),
            "frames_per_chunk": [self.pipeline.frames_per_chunk(True), self.pipeline.frames_per_chunk(False)],
            "resolution": [self.pipeline.settings.width, self.pipeline.settings.height],
            "sampler": self.pipeline.sampler_status(default_params(self.settings)),
            **self.transport_status,
        }

    # -- prompts ---------------------------------------------------------------------------------------------
    def _model_params(self, session: Session) -> StreamParams | None:
        """The parameters the session's next chunk runs with: its own once its prompts are encoded, else the
        same with the last ready prompts (the encoding started meanwhile); None if it has none ready yet."""
        prompts = session.params.prompts
        if prompts in self._failed or self.pipeline.prompts_ready(prompts):
            session.ready_prompts = prompts
            return session.params
        self._encode_soon(prompts)
        if session.ready_prompts is None:
            return None
        return session.params.with_(prompts=session.ready_prompts)

    def _encode_soon(self, prompts: tuple[tuple[str, float], ...]) -> None:
        """Encode a blend's prompts on the text worker (once at a time per blend); wake the scheduler when done."""
        if prompts in self._encoding or self._stopping:
            return
        self._encoding.add(prompts)
        future = asyncio.get_running_loop().run_in_executor(self._text, self.pipeline.embed, prompts)

        def done(f: asyncio.Future[Any]) -> None:
            self._encoding.discard(prompts)
            if not f.cancelled() and f.exception() is not None:
                log.warning("encoding prompts %s failed: %s", [p for p, _ in prompts], f.exception())
                if len(self._failed) >= 256:  # bounded: a client sending ever new failing prompts
                    self._failed.clear()
                self._failed.add(prompts)  # the chunk runs with them and fails there, reported to its session
            self._wake.set()

        future.add_done_callback(done)

    # -- scheduling -------------------------------------------------------------------------------------------
    def _update_depth(self) -> None:
        self.metrics.queue_depth.set(sum(len(s.pending) for s in self.sessions.values()))

    def _take_jobs(self, now: float) -> tuple[list[ChunkJob], float | None]:
        """The next batch of complete chunks, and when a partial chunk will be due if nothing is ready."""
        flush = self.settings.stream.flush_after_s
        ready: list[Session] = []
        next_due: float | None = None
        params: dict[str, StreamParams] = {}
        for s in self.sessions.values():
            if s.at_worker or s.paused or not s.pending:
                continue
            ready_params = self._model_params(s)
            if ready_params is None:  # its first prompt is being encoded: its frames wait (bounded) meanwhile
                continue
            params[s.id] = ready_params
            if len(s.pending) >= self.frames_needed(s):
                ready.append(s)
            elif flush > 0:
                due = s.pending[-1].received + flush
                if due <= now:
                    ready.append(s)
                else:
                    next_due = due if next_due is None else min(next_due, due)
        ready.sort(key=lambda s: s.pending[0].received)
        jobs = []
        for s in ready[: self.settings.model.max_batch]:
            need = self.frames_needed(s)
            frames = [s.pending.popleft() for _ in range(min(need, len(s.pending)))]
            stack = [f.pixels for f in frames] + [frames[-1].pixels] * (need - len(frames))
            jobs.append(ChunkJob(s, frames, np.stack(stack), len(frames), params[s.id], s.reset_requested))
            s.reset_requested = False
            s.in_flight += 1
            s.at_worker = True
        return jobs, next_due

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        decoding: Decoding | None = None  # the last batch, decoding beside the next (`overlap_decode`)
        done: list[ChunkResult] = []  # the last worker call's finished chunks, to deliver
        while True:
            jobs, next_due = ([], None) if self._stopping else self._take_jobs(time.monotonic())
            self._update_depth()
            if jobs or decoding is not None:
                started = time.monotonic()
                call = loop.run_in_executor(self._worker, self._run_batch, jobs, decoding)
                self._deliver_results(done)  # the previous call's frames go out while the worker runs this one
                done, decoding = await call
                for job in jobs:
                    job.session.at_worker = False
                self.metrics.chunk_latency.observe(time.monotonic() - started)
                if jobs:
                    self.metrics.batch_size.observe(len(jobs))
                continue
            self._deliver_results(done)
            done = []
            if self._stopping:
                return
            timeout = None if next_due is None else max(next_due - time.monotonic(), 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _deliver_results(self, results: Sequence[ChunkResult]) -> None:
        for job, out in results:
            try:
                self._finish(job, out)
            except Exception:  # one session's delivery failing must not stop the others or the scheduler
                log.exception("delivering session %s's chunk failed", job.session.id)

    def _finish(self, job: ChunkJob, out: np.ndarray | Exception) -> None:
        s = job.session
        s.in_flight -= 1
        if s.closed:
            return
        if isinstance(out, Exception):
            s._drop("error", job.real)
        else:
            s.chunks += 1
            self.metrics.chunks.inc()
            for f, pixels in zip(job.frames, out[: job.real], strict=True):
                self.deliver(s, OutputFrame(s.id, f.seq, f.pts_us, pixels, f.received, stylized=True, audio=f.audio))
        if s.paused and not s.in_flight:
            s.pass_through()

    def _run_batch(
        self, jobs: Sequence[ChunkJob], decoding: Decoding | None
    ) -> tuple[list[ChunkResult], Decoding | None]:
        """Worker thread: encode and denoise `jobs`, decode them (at once, or launched for the next call to
        collect), and collect the previous call's `decoding`. Returns the chunks finished, in order, and what is
        still decoding. Exceptions become per-job results, never escape; a failed chunk's stream starts afresh."""
        done: list[ChunkResult] = []
        if decoding is not None and any(job.reset for job in jobs):
            done += self._collect(decoding)  # a reset must not clear a decoder cache that a decode still needs
            decoding = None
        failed: list[ChunkResult] = []
        started: Decoding | None = None
        try:
            requests = []
            for job in jobs:
                if job.session.model_state is None:
                    job.session.model_state = self.pipeline.new_stream_state(job.params)
                elif job.reset:
                    job.session.model_state.reset()
                state = job.session.model_state
                requests.append(ChunkRequest(state, job.pixels, job.params, job.frames[0].pts_us))
            if requests:
                started = (list(jobs), self.pipeline.start_decode(self.pipeline.denoise_chunks(requests, self.batch)))
        except Exception as exc:
            # The batch's states may be half advanced: every job of it fails and its session starts afresh.
            log.exception("chunk of sessions %s failed", ", ".join(j.session.id for j in jobs))
            for job in jobs:
                job.session.model_state = None
            failed = [(job, exc) for job in jobs]
        if decoding is not None:
            done += self._collect(decoding)  # after launching this batch's decode: the GPU never idles meanwhile
        done += failed
        if started is not None and not self.pipeline.overlap_decode:
            done += self._collect(started)
            started = None
        return done, started

    def _collect(self, decoding: Decoding) -> list[ChunkResult]:
        """Worker thread: a batch's frames from its decode; a chunk whose decode failed starts its stream afresh."""
        jobs, chunks = decoding
        try:
            results = self.pipeline.collect(chunks)
        except Exception as exc:  # the wait itself failed (a device error): none of the batch's frames came
            results = [exc] * len(jobs)
        for job, out, prepared in zip(jobs, results, chunks.prepared, strict=True):
            if isinstance(out, Exception):
                log.error("decoding session %s's chunk failed", job.session.id, exc_info=out)
                if job.session.model_state is prepared.request.state:
                    job.session.model_state = None
        return list(zip(jobs, results, strict=True))

    async def _reap(self) -> None:
        """Close sessions idle for `idle_timeout_s`, and sessions nobody feeds (claimed by a control client, no
        publisher) `unclaimed_grace_s` after they opened: steering them does not keep a slot."""
        idle, grace = self.settings.stream.idle_timeout_s, self.settings.stream.unclaimed_grace_s
        while True:
            await asyncio.sleep(min(1.0, idle / 4, grace / 4))
            now = time.monotonic()
            for sid, s in list(self.sessions.items()):
                if s.in_flight:
                    continue
                if s.owner is None and s.frames_in == 0 and now - s.opened > grace:
                    log.info("session %s closed: no publisher within %.1f s", sid, grace)
                    self.close_session(sid)
                elif now - s.last_activity > idle:
                    log.info("session %s idle for %.1f s", sid, now - s.last_activity)
                    self.close_session(sid)
