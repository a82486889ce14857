"""How fast the looks training set is made: source rendering, each look, H.264 encoding, and `write_dataset`.

    PYTHONPATH=. python benchmarks/looks_generation.py [--clips 48] [--frames 17] [--size 128]

Reports wall and process-CPU seconds: on a shared machine the CPU time is the number that does not depend on
what else is running. The goal: a few thousand 128x128 clips of 17-33 frames (each in every look) in minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from vidfx.data.looks import LOOKS, make_clip, write_dataset, write_video
from vidfx.data.scenes import render_source_clip


def timed(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w) / repeat, (time.process_time() - c) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    size = (args.size, args.size)
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    wall, cpu = timed(lambda: render_source_clip(rng, args.frames, size), 10)
    print(f"source clip          {wall * 1e3:7.1f} ms wall {cpu * 1e3:7.1f} ms cpu")
    src = render_source_clip(np.random.default_rng(1), args.frames, size).frames
    for name, look in LOOKS.items():
        wall, cpu = timed(lambda look=look: look.filter(src, 3), 5)
        print(f"{name:20s} {wall * 1e3:7.1f} ms wall {cpu * 1e3:7.1f} ms cpu")
    clip = make_clip(0, 1, args.frames, size)
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = timed(lambda: write_video(f"{tmp}/a.mp4", clip.source, 16), 10)
        print(f"encode one mp4       {wall * 1e3:7.1f} ms wall {cpu * 1e3:7.1f} ms cpu")
        c0 = time.process_time()
        info = write_dataset(tmp, args.clips, seed=0, num_frames=args.frames, size=size, workers=args.workers,
                             progress=False)  # fmt: skip
        cpu = time.process_time() - c0
    per_clip = cpu / args.clips
    print(
        f"write_dataset        {args.clips} clips x {1 + len(LOOKS)} files: {info.seconds:.1f} s wall "
        f"({args.clips / info.seconds:.2f} clips/s), {per_clip:.3f} cpu-s a clip "
        f"-> 3000 clips on 2 free cores ~ {3000 * per_clip / 2 / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
