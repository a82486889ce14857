"""The overlapped decode (`accel.overlap_decode`): a batch decodes while the next one is encoded and denoised.

On the CPU the pipeline defers the decode to the worker's next call (no decode stream), which runs the same
work in the overlapped order; every check here holds that order to the in-order path, exactly. On CUDA the
decode runs on its own stream, checked against the in-order path to rounding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tests.serve_harness import make_video
from vidfx.accel import apply_acceleration
from vidfx.config import AccelSettings, ModelSettings, Settings
from vidfx.loading import load_pipeline
from vidfx.pipeline import ChunkRequest, StreamParams, StylePipeline
from vidfx.stream.engine import Engine

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def pipe() -> StylePipeline:
    torch.set_num_threads(1)
    return load_pipeline(ModelSettings())  # the default model: its refiner reads the prompt and keeps a blend


@contextmanager
def overlapped(pipe: StylePipeline, on: bool = True) -> Iterator[StylePipeline]:
    """`pipe` with the decode deferred to the worker's next call (the CPU form of the overlap)."""
    before = pipe.overlap_decode
    pipe.overlap_decode = on
    try:
        yield pipe
    finally:
        pipe.overlap_decode = before


def _chunks(pipe: StylePipeline, video: np.ndarray) -> list[np.ndarray]:
    n0, n = pipe.frames_per_chunk(True), pipe.frames_per_chunk(False)
    return [video[:n0]] + [video[i : i + n] for i in range(n0, len(video) - n + 1, n)]


def test_decoding_beside_the_next_batch_equals_decoding_in_order(pipe: StylePipeline) -> None:
    """Two streams; the prompt of one changes mid-stream (its refiner reads the prompt the chunk was denoised
    with, not the one the next chunk set meanwhile): denoise chunk j + 1, then decode chunk j, exactly as in
    order."""
    video = make_video(1 + 4 * 5)
    chunks = _chunks(pipe, video)
    params = [StreamParams(prompts=(("watercolor painting", 1.0),), seed=s) for s in (1, 2)]

    def steer(j: int) -> list[StreamParams]:
        return [params[0].with_(prompts=(("comic book style", 1.0),)) if j >= 2 else params[0], params[1]]

    def requests(states: list, j: int, chunk: np.ndarray) -> list[ChunkRequest]:
        return [ChunkRequest(st, chunk, p) for st, p in zip(states, steer(j), strict=True)]

    states = [pipe.new_stream_state(p) for p in params]
    in_order = [pipe.process_chunks(requests(states, j, c)) for j, c in enumerate(chunks)]
    states = [pipe.new_stream_state(p) for p in params]
    overlapped_out, decoding = [], None
    for j, c in enumerate(chunks):
        denoised = pipe.denoise_chunks(requests(states, j, c))
        launched = pipe.start_decode(denoised)
        if decoding is not None:
            overlapped_out.append(pipe.collect(decoding))
        decoding = launched
    overlapped_out.append(pipe.collect(decoding))
    assert len(overlapped_out) == len(in_order)
    for got, want in zip(overlapped_out, in_order, strict=True):
        for g, w in zip(got, want, strict=True):
            assert isinstance(g, np.ndarray) and np.array_equal(g, w)
    assert not np.array_equal(in_order[-1][0], in_order[-1][1])  # the streams differ: the check can fail


async def _serve(pipe: StylePipeline, video: np.ndarray, reset_at: int | None = None) -> tuple[list, list]:
    """One stream through an engine, each chunk submitted as soon as the previous one is at the worker (so the
    worker always has the next batch: the overlap's case); `reset_at`: reset the stream before that chunk.
    Returns the output frames and the worker calls as (jobs, something decoding)."""
    settings = Settings(_env_file=None, stream={"flush_after_s": 0})
    settings.model.warmup_chunks = 0
    engine = Engine(pipe, settings)
    calls: list[tuple[int, bool]] = []
    run_batch = engine._run_batch

    def spy(jobs, decoding):  # type: ignore[no-untyped-def]
        calls.append((len(jobs), decoding is not None))
        return run_batch(jobs, decoding)

    engine._run_batch = spy  # type: ignore[method-assign]
    await engine.start()
    try:
        session = engine.open_session("s", params=StreamParams(prompts=(("night vision", 1.0),), seed=5))
        seq = 0
        chunk = pipe.frames_per_chunk(True)
        while seq < len(video):
            while session.pending:  # the previous chunk is not taken yet
                await asyncio.sleep(0.001)
            if reset_at is not None and seq == reset_at:
                session.reset()
                chunk = pipe.frames_per_chunk(True)
            for frame in video[seq : seq + chunk]:
                session.submit(frame, 1000 * seq, seq)
                seq += 1
            chunk = pipe.frames_per_chunk(False)
        out = []
        async with asyncio.timeout(60):
            async for f in session.frames():
                out.append(f)
                if len(out) == len(video):
                    break
        assert session.in_flight == 0 and not session.dropped
    finally:
        await engine.stop()
    return out, calls


@pytest.mark.parametrize(("reset_at", "frames"), [(None, 1 + 4 * 6), (9, 1 + 4 * 2 + 1 + 4 * 3)])
async def test_the_engine_overlapped_delivers_every_frame_in_order_as_in_order(
    pipe: StylePipeline, reset_at: int | None, frames: int
) -> None:
    """The overlapped engine against the in-order one on the same input: the same frames in the same order, the
    last chunk's too (collected when no batch follows, not held for one), and a reset between two chunks applied
    after the first one's decode. The overlap did happen: worker calls took a batch while one was decoding."""
    video = make_video(frames)
    want, calls_in_order = await _serve(pipe, video, reset_at)
    with overlapped(pipe):
        got, calls = await _serve(pipe, video, reset_at)
    assert [f.seq for f in got] == list(range(len(video))) == [f.seq for f in want]
    for g, w in zip(got, want, strict=True):
        assert g.stylized and np.array_equal(g.pixels, w.pixels)
    assert not any(decoding for _, decoding in calls_in_order)
    assert any(jobs and decoding for jobs, decoding in calls), calls
    assert calls[-1] == (0, True)  # the last chunk: collected with nothing else to do


async def test_a_session_paused_while_its_chunk_decodes_passes_frames_through_after_it(pipe: StylePipeline) -> None:
    settings = Settings(_env_file=None, stream={"flush_after_s": 0})
    settings.model.warmup_chunks = 0
    with overlapped(pipe):
        engine = Engine(pipe, settings)
        await engine.start()
        try:
            session = engine.open_session("s")
            video = make_video(8)
            session.submit(video[0], 0, 0)
            while not session.in_flight:
                await asyncio.sleep(0.001)
            session.pause()
            for i in range(1, 4):
                session.submit(video[i], 1000 * i, i)
            out = []
            async with asyncio.timeout(30):
                async for f in session.frames():
                    out.append(f)
                    if len(out) == 4:
                        break
        finally:
            await engine.stop()
    assert [(f.seq, f.stylized) for f in out] == [(0, True), (1, False), (2, False), (3, False)]


async def test_a_chunk_whose_decode_fails_costs_only_its_own_stream(pipe: StylePipeline, monkeypatch) -> None:
    """A decode that raises for one stream (collected beside the next batch): that stream's frames are dropped as
    errors and it starts afresh; the other stream of the same batches loses nothing."""
    settings = Settings(_env_file=None, stream={"flush_after_s": 0})
    settings.model.warmup_chunks = 0
    decode = StylePipeline._decode
    broken: list[object] = []

    def failing(self: StylePipeline, p):  # type: ignore[no-untyped-def]
        if p.request.state in broken:
            raise RuntimeError("decoder fault")
        return decode(self, p)

    monkeypatch.setattr(StylePipeline, "_decode", failing)
    video = make_video(9)
    with overlapped(pipe):
        engine = Engine(pipe, settings)
        await engine.start()
        try:
            good, bad = engine.open_session("good"), engine.open_session("bad")
            for i, frame in enumerate(video[:1]):
                good.submit(frame, 0, i)
                bad.submit(frame, 0, i)
            while bad.model_state is None:
                await asyncio.sleep(0.001)
            broken.append(bad.model_state)
            for i in range(1, 9):
                while i in (1, 5) and (good.pending or bad.pending):  # a chunk at a time: none is dropped
                    await asyncio.sleep(0.001)
                good.submit(video[i], 1000 * i, i)
                bad.submit(video[i], 1000 * i, i)
            out = []
            async with asyncio.timeout(30):
                async for f in good.frames():
                    out.append(f.seq)
                    if len(out) == 9:
                        break
            while bad.in_flight:
                await asyncio.sleep(0.001)
        finally:
            await engine.stop()
    assert out == list(range(9)) and not good.dropped
    assert bad.dropped.get("error", 0) >= 1 and bad.model_state is not broken[0]


def test_overlap_decode_is_refused_off_cuda() -> None:
    if CUDA:
        pytest.skip("this checks the CPU refusal")
    with pytest.raises(ValueError, match="CUDA"):
        apply_acceleration(load_pipeline(ModelSettings(name="tiny-random")), AccelSettings(overlap_decode=True))


@pytest.mark.skipif(not CUDA, reason="the decode stream is CUDA's: no CUDA device here")
def test_the_decode_stream_equals_decoding_in_order_on_cuda() -> None:
    """On a GPU: chunk j decoded on its own stream while chunk j + 1 is denoised, against the in-order path."""
    video = make_video(1 + 4 * 5)
    outs = []
    for overlap in (False, True):
        pipe = apply_acceleration(load_pipeline(ModelSettings(device="cuda")), AccelSettings(overlap_decode=overlap))
        st = pipe.new_stream_state(StreamParams(seed=3))
        frames, decoding = [], None
        for c in _chunks(pipe, video):
            launched = pipe.start_decode(pipe.denoise_chunks([ChunkRequest(st, c, st.params)]))
            if decoding is not None:
                frames += pipe.collect(decoding)
            decoding = launched
        frames += pipe.collect(decoding)
        outs.append(np.concatenate(frames).astype(np.int16))
    assert np.abs(outs[0] - outs[1]).max() <= 1
