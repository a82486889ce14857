"""Prompts are encoded off the model worker: while a new prompt's embedding is being computed, the stream keeps
flowing with its previous prompt, and the new one takes over once it is ready (vidfx.stream.engine)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from tests.serve_harness import make_video
from vidfx.config import ModelSettings, Settings
from vidfx.loading import load_pipeline
from vidfx.pipeline import StreamParams
from vidfx.stream.engine import Engine
from vidfx.stream.session import Session

pytestmark = pytest.mark.timeout(120)
SLOW = "an oil painting of a harbour"


class GatedEncoder:
    """The pipeline's real text encoder, held back on one prompt until `gate` is set."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate
        self.text_dim, self.max_tokens = inner.text_dim, inner.max_tokens

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if SLOW in prompts:
            assert self.gate.wait(60), "test never opened the gate"
        return self.inner.encode(prompts)


async def next_frames(session: Session, n: int) -> list[np.ndarray]:
    out = []
    frames = session.frames()
    while len(out) < n:
        out.append((await asyncio.wait_for(anext(frames), 30)).pixels)
    return out


async def test_a_prompt_being_encoded_never_stalls_frames_and_takes_over_when_ready():
    torch.set_num_threads(1)
    pipe = load_pipeline(ModelSettings(name="tiny-random", warmup_chunks=0))
    gate = threading.Event()
    pipe.embeddings.encoder = GatedEncoder(pipe.text, gate)
    settings = Settings(_env_file=None, stream={"flush_after_s": 0.05})
    settings.model.warmup_chunks = 0
    engine = Engine(pipe, settings)
    await engine.start()
    try:
        video = make_video(9, 64, 64)
        fox = StreamParams(prompts=(("a red fox", 1.0),))
        changed, reference = engine.open_session("changed", params=fox), engine.open_session("reference", params=fox)
        sizes = [pipe.frames_per_chunk(True)] + [pipe.frames_per_chunk(False)] * 2
        bounds = np.cumsum([0, *sizes])
        outs: dict[str, list[np.ndarray]] = {"changed": [], "reference": []}

        async def chunk(i: int) -> None:
            for s in (changed, reference):
                for j in range(bounds[i], bounds[i + 1]):
                    s.submit(video[j], j * 1000, j)
                outs[s.id] += await next_frames(s, sizes[i])

        await chunk(0)
        changed.update(prompts=((SLOW, 1.0),))
        await chunk(1)  # the gate is closed: frames flow, with the old prompt
        assert changed.status()["prompt_pending"] is True
        assert all(np.array_equal(a, b) for a, b in zip(outs["changed"], outs["reference"], strict=True))
        gate.set()
        for _ in range(100):  # the text worker finishes, then the next chunk runs with the new prompt
            if pipe.prompts_ready(((SLOW, 1.0),)):
                break
            await asyncio.sleep(0.05)
        await chunk(2)
        assert changed.status()["prompt_pending"] is False
        new = slice(bounds[2], bounds[3])
        diff = np.mean([np.abs(a.astype(int) - b).mean() for a, b in
                        zip(outs["changed"][new], outs["reference"][new], strict=True)])  # fmt: skip
        assert diff > 0.3
    finally:
        gate.set()
        await engine.stop()
