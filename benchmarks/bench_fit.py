"""Live speed of the fits on one camera size: `aspect` (the default: the model works at the camera's aspect,
more tokens on a non-square camera) against `cover` (a square centre crop), same model, same run.

    python benchmarks/bench_fit.py [--model default] [--camera 480x640] [--chunks 24] [--threads 2]
                                   [--rounds 3] [--out benchmarks/fit_speed.json]

Each round streams `--chunks` chunks of a moving camera-sized clip through `StylePipeline.process_chunk` (the
live path: resize, encode, denoise against the KV cache, decode, resize back) for each fit in turn, after a
warm-up stream; reported: frames per second (median over rounds) and aspect's FPS as a ratio of cover's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vidfx.config import ModelSettings
from vidfx.loading import load_pipeline
from vidfx.pipeline import StreamParams, StylePipeline


def moving_clip(frames: int, height: int, width: int) -> np.ndarray:
    """A smooth picture panning 3 px a frame: uint8 (T, H, W, 3)."""
    yy, xx = np.mgrid[:height, : width + 3 * frames]
    base = np.stack(
        [128 + 100 * np.sin(xx / 17.0), 128 + 90 * np.cos(yy / 11.0), 128 + 60 * np.sin((xx + yy) / 23.0)], -1
    )
    return np.stack([base[:, 3 * t : 3 * t + width] for t in range(frames)]).astype(np.uint8)


def stream_fps(pipe: StylePipeline, clip: np.ndarray, chunks: int) -> float:
    """Frames per second of one fresh stream over `chunks` chunks after its first (not timed)."""
    state = pipe.new_stream_state(StreamParams())
    first = pipe.frames_per_chunk(True)
    pipe.process_chunk(state, clip[:first])
    k = pipe.frames_per_chunk(False)
    start = time.perf_counter()
    for i in range(chunks):
        pipe.process_chunk(state, clip[first + i * k : first + (i + 1) * k])
    return chunks * k / (time.perf_counter() - start)


def speed_arguments(p: argparse.ArgumentParser) -> None:
    """The flags the live-speed benchmarks share (this one and bench_models.py)."""
    p.add_argument("--camera", default="480x640", help="HEIGHTxWIDTH")
    p.add_argument("--chunks", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")


def camera_of(args: argparse.Namespace) -> tuple[int, int]:
    """`--camera HxW` as (H, W); also sets the torch threads of `--threads`."""
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.camera.lower().split("x"))
    return h, w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    speed_arguments(p)
    args = p.parse_args()
    h, w = camera_of(args)
    pipes = {fit: load_pipeline(ModelSettings(name=args.model, fit=fit)) for fit in ("aspect", "cover")}
    clip = moving_clip(
        pipes["aspect"].frames_per_chunk(True) + args.chunks * pipes["aspect"].frames_per_chunk(False), h, w
    )
    for pipe in pipes.values():
        stream_fps(pipe, clip, 2)  # warm-up: kernels, allocator, prompt cache
    fps: dict[str, list[float]] = {fit: [] for fit in pipes}
    for _ in range(args.rounds):
        for fit, pipe in pipes.items():
            fps[fit].append(stream_fps(pipe, clip, args.chunks))
    sizes = {fit: list(pipe.geometry((h, w)).model) for fit, pipe in pipes.items()}
    result = {
        "model": args.model,
        "camera": [h, w],
        "threads": args.threads,
        "model_size": sizes,
        "fps": {fit: statistics.median(v) for fit, v in fps.items()},
        "fps_rounds": fps,
    }
    result["aspect_over_cover"] = result["fps"]["aspect"] / result["fps"]["cover"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
