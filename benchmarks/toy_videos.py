"""A toy video folder in vidfx.train.data's format, for smoke-testing the training recipe end to end.

    python benchmarks/toy_videos.py OUT [--videos 24] [--seconds 4] [--fps 8] [--size 64]

Each video: a coloured shape (circle, square or bar) gliding over a gradient background with slow stripes,
rendered in one of three looks (warm, cool, mono) and encoded as H.264 with PyAV; captions.jsonl names the
shape, its motion and the look. Not a real dataset: it only has to be learnable by a tiny model in minutes.
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidfx.offline import VideoWriter

LOOKS = {
    "warm": ((0.95, 0.55, 0.2), (0.35, 0.1, 0.05)),
    "cool": ((0.3, 0.6, 0.95), (0.02, 0.08, 0.25)),
    "mono": ((0.85, 0.85, 0.85), (0.1, 0.1, 0.1)),
}
SHAPES = ("circle", "square", "bar")
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def render(shape: str, motion: str, look: str, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    light, dark = (np.array(c) for c in LOOKS[look])
    ys, xs = np.mgrid[0:size, 0:size] / size
    vx, vy = MOTIONS[motion]
    x0, y0 = rng.uniform(0.3, 0.7, 2)
    phase, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.3)
    frames = []
    for t in range(n):
        u = t / max(n - 1, 1)
        bg = 0.25 + 0.15 * np.sin(2 * math.pi * (3 * xs + 2 * ys) + phase + 2 * u)
        img = dark + (light - dark) * bg[..., None] * 0.6
        cx, cy = (x0 + vx * speed * u * 2) % 1.0, (y0 + vy * speed * u * 2) % 1.0
        if shape == "circle":
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 < 0.12**2
        elif shape == "square":
            mask = (abs(xs - cx) < 0.1) & (abs(ys - cy) < 0.1)
        else:
            mask = (abs(xs - cx) < 0.05) & (abs(ys - cy) < 0.25)
        img[mask] = light
        frames.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    with VideoWriter(path, frames[0].shape[:2], Fraction(fps), options={"preset": "veryfast"}) as writer:
        writer.write(np.stack(frames))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    lines = []
    for i in range(args.videos):
        shape, motion = SHAPES[i % 3], list(MOTIONS)[(i // 3) % 4]
        look = list(LOOKS)[(i // 12 + i) % 3]
        name = f"toy{i:03d}.mp4"
        write_mp4(out / name, render(shape, motion, look, int(args.seconds * args.fps), args.size, rng), args.fps)
        caps = [f"a {shape} moving {motion}, {look} colours", f"{look} {shape} gliding {motion}"]
        lines.append(json.dumps({"file": name, "captions": caps, "look": look}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{args.videos} videos in {out}")


if __name__ == "__main__":
    main()
