"""The embedded default model on this machine: streaming FPS at 1, 2 and 3 steps, peak memory of `vidfx run`
at two lengths, and a picture (input frames above, each look below).

    python benchmarks/bench_default_model.py [--model default] [--seconds 10] [--short 500] [--long 5000]
                                             [--skip-memory] [--threads 2]

FPS: one stream through `StylePipeline.process_chunk` (what the node's worker runs) at 128×128 from 320×240
camera frames, strength 1 so that every step of the list runs, `--seconds` of sustained chunks after a
warm-up; the live default (strength 0.7) is measured too. Memory: `vidfx run` as a subprocess on synthetic
320×240 clips of `--short` and `--long` frames; its peak RSS from `wait4`. Writes the "Default model" section
of RESULTS.md, benchmarks/default_model.json and benchmarks/default_model_grid.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vidfx.benchmarking.results import update_section
from vidfx.config import ModelSettings
from vidfx.data.look_eval import prompt_for
from vidfx.data.looks import LOOKS, make_clip, read_video
from vidfx.loading import load_pipeline
from vidfx.offline import VideoWriter, stylize_video
from vidfx.pipeline import StreamParams
from vidfx.plots import save_image_grid

HERE = Path(__file__).resolve().parent
CAMERA = (240, 320)
STEP_LISTS = {1: (1000,), 2: (1000, 757), 3: (1000, 757, 522)}


def camera_clip(frames: int, seed: int = 7) -> np.ndarray:
    """A held-out-seed scene from vidfx.data (not in the training set) at the camera size, looped."""
    clip = make_clip(seed, 0, num_frames=min(frames, 64), size=CAMERA, looks=[]).source
    reps = -(-frames // len(clip))
    return np.concatenate([clip, clip[::-1]] * reps)[:frames]


def stream_fps(pipe, params: StreamParams, seconds: float) -> float:  # type: ignore[no-untyped-def]
    state = pipe.new_stream_state(params)
    frames = camera_clip(256)
    pos = 0

    def next_chunk() -> np.ndarray:
        nonlocal pos
        n = pipe.frames_per_chunk(state.first)
        chunk = np.take(frames, range(pos, pos + n), axis=0, mode="wrap")
        pos += n
        return chunk

    for _ in range(4):  # warm-up: first kernels, prompt cache, the KV window fills
        pipe.process_chunk(state, next_chunk(), params)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += len(pipe.process_chunk(state, next_chunk(), params))
    return done / (time.perf_counter() - start)


def peak_rss_of_run(model: str, frames: int, workdir: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `vidfx run` on a synthetic clip of `frames` frames."""
    src = workdir / f"in_{frames}.mp4"
    clip = camera_clip(256)
    with VideoWriter(src, CAMERA, Fraction(30)) as writer:
        for i in range(0, frames, 256):
            writer.write(clip[: min(256, frames - i)])
    cmd = [sys.executable, "-m", "vidfx.cli", "run", str(src), "-o", str(workdir / f"out_{frames}.mp4")]
    cmd += ["--prompt", "a pencil sketch", "--model", model, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"vidfx run failed: {proc.stderr.read() if proc.stderr else ''}")
    return usage.ru_maxrss / 1024, seconds


def look_grid(pipe, path: Path, columns: int = 6) -> None:  # type: ignore[no-untyped-def]
    """Input frames in the first row, the same frames in every look below (`vidfx run` at strength 0.7)."""
    clip = make_clip(11, 3, num_frames=33, size=(128, 128), looks=[]).source
    picks = np.linspace(4, len(clip) - 1, columns).astype(int)
    videos = [("input", clip)]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.mov"
        with VideoWriter(src, clip.shape[1:3], Fraction(16), codec="png") as writer:
            writer.write(clip)
        for i, prompt in enumerate(pipe.looks or [prompt_for(look) for look in LOOKS]):  # its card's looks
            dst = Path(tmp) / f"{i}.mov"
            stylize_video(pipe, src, dst, StreamParams(prompts=((prompt, 1.0),)), codec="png")
            videos.append((prompt, read_video(dst)))
    save_image_grid(path, [(name, [(f"frame {t}", frames[t]) for t in picks]) for name, frames in videos])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--short", type=int, default=500)
    p.add_argument("--long", type=int, default=5000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(ModelSettings(name=args.model))
    results: dict = {"model": args.model, "threads": args.threads, "cpu_count": os.cpu_count(), "fps": {}}
    prompt = (("a pencil sketch", 1.0),)
    for n, steps in STEP_LISTS.items():
        fps = stream_fps(pipe, StreamParams(prompts=prompt, steps=steps, strength=1.0), args.seconds)
        results["fps"][str(n)] = fps
        print(f"{n} step(s): {fps:.1f} FPS", flush=True)
    results["fps_live_default"] = stream_fps(pipe, StreamParams(prompts=prompt), args.seconds)
    print(f"live default (strength 0.7 → 2 steps): {results['fps_live_default']:.1f} FPS", flush=True)
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            for frames in (args.short, args.long):
                rss, seconds = peak_rss_of_run(args.model, frames, Path(tmp))
                results.setdefault("memory", {})[str(frames)] = {"peak_rss_mib": rss, "seconds": seconds}
                print(f"vidfx run, {frames} frames: peak RSS {rss:.0f} MiB, {seconds:.0f} s", flush=True)
    look_grid(pipe, HERE / "default_model_grid.png")
    (HERE / "default_model.json").write_text(json.dumps(results, indent=1) + "\n")

    lines = [
        "## Default model (issue 6)",
        "",
        f"`python benchmarks/bench_default_model.py` — model `{args.model}`, {args.threads} torch threads on "
        f"{os.cpu_count()} cores, 320×240 camera frames → 128×128 model → back, one stream, "
        f"{args.seconds:g} s sustained after a warm-up.",
        "",
        "| denoising steps (strength 1) | FPS |",
        "|---|---|",
        *[f"| {n} | {fps:.1f} |" for n, fps in results["fps"].items()],
        f"| live default (strength 0.7: 2 steps) | {results['fps_live_default']:.1f} |",
        "",
    ]
    if "memory" in results:
        mem = results["memory"]
        short, long = mem[str(args.short)], mem[str(args.long)]
        lines += [
            "`vidfx run` peak RSS (whole process, from `wait4`):",
            "",
            "| frames | peak RSS (MiB) | wall (s) |",
            "|---|---|---|",
            *[f"| {f} | {m['peak_rss_mib']:.0f} | {m['seconds']:.0f} |" for f, m in mem.items()],
            "",
            f"{args.long} / {args.short} frames: {long['peak_rss_mib'] / short['peak_rss_mib']:.3f}× the peak RSS "
            "(flat: the stream's caches are fixed-size rings).",
            "",
        ]
    lines += [
        "![input frames above, each look below](default_model_grid.png)",
        "",
        "`default_model_grid.png`: a scene from a seed the training set never used; first row the input, then "
        "`vidfx run --prompt '<look>'` at the default strength 0.7.",
    ]
    update_section("## Default model (issue 6)", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
