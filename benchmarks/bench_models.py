"""Live speed of several models (or dtypes) on one camera size, in the same run: FPS and the ratio to the first.

    python benchmarks/bench_models.py --models BASELINE=PATH NEW=PATH [NEW_BF16=PATH:bfloat16]
                                      [--camera 480x640] [--chunks 24] [--rounds 3] [--threads 2] [--out JSON]

Each round streams `--chunks` chunks of a moving camera-sized clip through `StylePipeline.process_chunk` (the
live path: resize, encode, denoise against the KV cache, decode, refine where the model has a refiner, resize
back) for each model in turn, after a warm-up stream; the rounds interleave the models so drift in the
machine's speed hits all alike. Reported: frames per second (median over rounds), the model resolution, and
the ratio to the first model's FPS.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench_fit import camera_of, moving_clip, speed_arguments, stream_fps  # this folder (run as a script)

from vidfx.config import ModelSettings
from vidfx.loading import load_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, metavar="LABEL=MODEL[:DTYPE]")
    speed_arguments(p)
    args = p.parse_args()
    h, w = camera_of(args)
    pipes = {}
    for item in args.models:
        label, _, spec = item.partition("=")
        name, _, dtype = spec.partition(":")
        pipes[label] = load_pipeline(ModelSettings(name=name, dtype=dtype or "float32", device="cpu"))
    chunks = args.chunks
    clip = moving_clip(1 + 4 * (chunks + 1), h, w)
    for pipe in pipes.values():
        stream_fps(pipe, clip, 2)  # warm-up: first kernels, allocator, prompt cache
    fps: dict[str, list[float]] = {label: [] for label in pipes}
    for _ in range(args.rounds):
        for label, pipe in pipes.items():
            fps[label].append(stream_fps(pipe, clip, chunks))
    first = next(iter(pipes))
    rows = []
    for label, pipe in pipes.items():
        median = statistics.median(fps[label])
        rows.append({
            "model": label, "resolution": list(pipe.geometry((h, w)).model), "dtype": pipe.settings.dtype,
            "fps": median, "fps_rounds": fps[label], "ratio": median / statistics.median(fps[first]),
        })  # fmt: skip
        print(f"{label:>12}: {median:6.1f} FPS at {rows[-1]['resolution']} ({rows[-1]['ratio']:.2f}× {first})")
    if args.out:
        result = {"camera": [h, w], "chunks": chunks, "rounds": args.rounds, "threads": args.threads, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
