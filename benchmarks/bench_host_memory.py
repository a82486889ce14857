"""Live speed with and without `accel.keep_freed_memory` (glibc's malloc keeping freed memory for reuse).

    python benchmarks/bench_host_memory.py [--model default] [--camera 480x640] [--chunks 24] [--rounds 3]
                                           [--threads 2] [--out benchmarks/host_memory.json]

The switch is process-wide and cannot be undone, so each side runs in a process of its own: every round starts
one process per side (alternating, so drift in the machine's speed hits both alike). A process loads the model
the way `vidfx serve` and `vidfx run` do (`apply_acceleration`), warms up with one stream, then streams
`--chunks` chunks of a moving camera-sized clip through `StylePipeline.process_chunk`. Reported per side: FPS
(median over rounds), system CPU time and minor page faults per chunk, and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_fit import camera_of, moving_clip, speed_arguments, stream_fps  # this folder (run as a script)

from vidfx.accel import apply_acceleration
from vidfx.config import AccelSettings, ModelSettings
from vidfx.loading import load_pipeline

SIDES = {"returned (glibc's default)": False, "kept (keep_freed_memory)": True}


def one_side(args: argparse.Namespace) -> dict[str, float]:
    """This process: one side's measurement."""
    h, w = camera_of(args)
    pipe = apply_acceleration(load_pipeline(ModelSettings(name=args.model)), AccelSettings(keep_freed_memory=args.keep))
    clip = moving_clip(pipe.frames_per_chunk(True) + args.chunks * pipe.frames_per_chunk(False), h, w)
    stream_fps(pipe, clip, 2)  # warm-up: kernels, allocator, prompt cache
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fps = stream_fps(pipe, clip, args.chunks)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    chunks = args.chunks + 1  # the stream's first chunk counts in the usage, not in the FPS
    return {
        "fps": fps,
        "sys_ms_per_chunk": 1e3 * (after.ru_stime - before.ru_stime) / chunks,
        "user_share": (after.ru_utime - before.ru_utime) / wall,
        "page_faults_per_chunk": (after.ru_minflt - before.ru_minflt) / chunks,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--keep", type=int, default=None, help=argparse.SUPPRESS)  # one side, in a child process
    speed_arguments(p)
    args = p.parse_args()
    if args.keep is not None:
        print(json.dumps(one_side(args)))
        return
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side, keep in SIDES.items():
            cmd = [sys.executable, __file__, "--keep", str(int(keep)), "--model", args.model, "--camera", args.camera,
                   "--chunks", str(args.chunks), "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {side}: {runs[side][-1]}", file=sys.stderr)
    base = statistics.median(x["fps"] for x in runs[next(iter(SIDES))])
    rows = []
    print(f"| freed memory | FPS (median of {args.rounds}) | × returned | system ms / chunk | page faults / chunk "
          "| peak RSS MiB |\n|---|---|---|---|---|---|")  # fmt: skip
    for side, results in runs.items():
        med = {k: statistics.median(x[k] for x in results) for k in results[0]}
        rows.append({"side": side, **med, "ratio": med["fps"] / base, "fps_rounds": [x["fps"] for x in results]})
        print(f"| {side} | {med['fps']:.1f} | {med['fps'] / base:.2f} | {med['sys_ms_per_chunk']:.1f} "
              f"| {med['page_faults_per_chunk']:.0f} | {med['peak_rss_mib']:.0f} |")  # fmt: skip
    if args.out:
        dump = {"model": args.model, "camera": args.camera, "chunks": args.chunks, "threads": args.threads,
                "rounds": args.rounds, "rows": rows}  # fmt: skip
        Path(args.out).write_text(json.dumps(dump, indent=1) + "\n")


if __name__ == "__main__":
    main()
