"""Frame conversion cost per frame: camera frames -> model clip tensor -> camera frames, for each size policy.

    python benchmarks/bench_frames.py [--camera 720x1280] [--model 480x832] [--frames 4] [--threads 1]
                                      [--device cpu|cuda] [--repeats 10]

Prints milliseconds per frame for rgb24 numpy input, av yuv420p input (a decoded WebRTC frame), rgb24 output
and av yuv420p output (what the encoder takes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import av
import numpy as np
import torch

from vidfx.frames import Fit, FrameGeometry, frames_to_tensor, tensor_to_frames, tensor_to_rgb


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camera", type=_size, default=(720, 1280), help="HxW")
    p.add_argument("--model", type=_size, default=(480, 832), help="hxw")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rgb = np.random.default_rng(0).integers(0, 256, (args.frames, *args.camera, 3), dtype=np.uint8)
    yuv = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in rgb]
    n = args.frames
    print(
        f"camera {args.camera} -> model {args.model}, {n} frames a call, {args.threads} thread(s)",
        args.device,
    )
    print(f"{'fit':8} {'in rgb24':>10} {'in av yuv':>10} {'out rgb24':>10} {'out av yuv':>11}   (ms a frame)")
    for fit in Fit:
        geo = FrameGeometry(args.camera, args.model, fit)
        x = frames_to_tensor(rgb, geometry=geo, device=args.device)
        times = [
            _ms(
                lambda g=geo: frames_to_tensor(rgb, geometry=g, device=args.device), args.repeats, args.device
            ),
            _ms(
                lambda g=geo: frames_to_tensor(yuv, geometry=g, device=args.device), args.repeats, args.device
            ),
            _ms(lambda g=geo, x=x: tensor_to_rgb(x, g), args.repeats, args.device),
            _ms(lambda g=geo, x=x: tensor_to_frames(x, "yuv420p", g), args.repeats, args.device),
        ]
        print(f"{fit.value:8} " + " ".join(f"{t / n:10.2f}" for t in times[:3]) + f" {times[3] / n:11.2f}")


if __name__ == "__main__":
    main()
