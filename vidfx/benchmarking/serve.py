"""Serving cost of `vidfx serve`: output FPS, end-to-end latency and drops at 1, 2 and 4 streams, against the
standalone engine measured in the same run.

1. Standalone: the pipeline in this process, no sockets — one stream chunk after chunk, and S streams' chunks
   per call (batched into one DiT forward, and unbatched) → frames/s. Also the DiT alone at batch 1 vs batch
   = steps + 1 (what StreamDiffusion's "stream batch" would fold into one forward).
2. Served: `vidfx serve` as a subprocess with the same model settings; a publisher sends S streams of
   `--size` frames, the receiver timestamps every output.
   * camera mode: each stream at `--fps` (a webcam) → output FPS, latency (input pts → output received)
     p50/p95, drop rate;
   * saturated mode: input at twice the standalone capacity → the node's sustained output FPS, so
     serving overhead = 1 − served FPS / standalone FPS at the same stream count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import torch
import zmq
import zmq.asyncio

from vidfx.config import ModelSettings, resolve_threads
from vidfx.pipeline import ChunkRequest, StreamParams, load_pipeline


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _video(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    return np.stack(
        [
            np.stack([(xx + 3 * i + base[0]) % 256, (yy + base[1]) % 256, np.full_like(xx, base[2])], -1)
            for i in range(n)
        ]
    ).astype(np.uint8)


# -- standalone -------------------------------------------------------------------------------------------------


def standalone(model: ModelSettings, streams: int, seconds: float, size: tuple[int, int], batch: bool) -> float:
    """Frames/s of the pipeline alone for `streams` concurrent streams (one call per round of chunks)."""
    pipe = load_pipeline(model)
    pipe.warm_up(2)
    states = [pipe.new_stream_state(StreamParams(prompts=((f"style {i}", 1.0),), seed=i)) for i in range(streams)]
    video = _video(8, size[0], size[1], 0)
    frames = 0
    # First chunks (1 frame) are not representative: run them before the clock starts.
    pipe.process_chunks([ChunkRequest(s, video[:1], s.params) for s in states], batch=batch)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n = pipe.frames_per_chunk(False)
        pipe.process_chunks([ChunkRequest(s, video[:n], s.params) for s in states], batch=batch)
        frames += n * streams
    return frames / (time.perf_counter() - start)


def dit_batch_cost(model: ModelSettings, rows: int, reps: int = 20) -> tuple[float, float]:
    """ms of one DiT chunk forward at batch 1 and at batch `rows` (cache full)."""
    pipe = load_pipeline(model)
    dit = pipe.dit
    h, w = pipe.latent_hw
    n = model.latent_frames_per_chunk
    setups = []
    for b in (1, rows):
        cache = dit.new_kv_cache(b, h, w, model.window_frames, model.sink_frames)
        cross = dit.cross_attention_cache(torch.randn(b, dit.cfg.text_len, dit.cfg.text_dim))
        x = torch.randn(b, dit.cfg.in_dim, n, h, w)
        t = torch.full((b,), 500.0)
        with torch.no_grad():
            for _ in range(model.window_frames + model.sink_frames):  # fill the cache (and warm up)
                dit.forward_chunk(x, t, cross, cache, write_cache=True)
        setups.append((x, t, cross, cache))
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        for _ in range(reps):  # interleaved, so load from elsewhere hits both alike; medians
            for i, (x, t, cross, cache) in enumerate(setups):
                start = time.perf_counter()
                dit.forward_chunk(x, t, cross, cache)
                times[i].append(time.perf_counter() - start)
    return float(np.median(times[0])) * 1e3, float(np.median(times[1])) * 1e3


# -- served -----------------------------------------------------------------------------------------------------


async def _start_node(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, dict]:
    cmd = [sys.executable, "-m", "vidfx.cli", "serve", "--zmq-input", "tcp://127.0.0.1:*",
           "--zmq-output", "tcp://127.0.0.1:*", "--zmq-control", "tcp://127.0.0.1:*", "--http-port", "0",
           "--model-name", args.model, "--model-threads", str(args.threads), "--model-max-batch", str(args.max_batch),
           "--stream-max-sessions", "16", "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("vidfx serve exited before it was ready")
        ev = json.loads(line)
        if ev["event"] == "ready":
            return proc, ev


async def _served_run(ev: dict, ctx: zmq.asyncio.Context, streams: int, fps: float, seconds: float,
                      size: tuple[int, int], tag: str) -> dict:  # fmt: skip
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.connect(ev["input"])
    await asyncio.wait_for(pub.recv(), 10)  # the node's subscription: nothing sent is lost to the slow joiner
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(ev["output"])
    await asyncio.sleep(0.3)
    video = _video(16, size[0], size[1], 1)
    names = [f"{tag}-{i}" for i in range(streams)]
    latencies: list[float] = []
    received = 0
    sent = 0
    done = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        while True:
            try:
                header_b, _ = await asyncio.wait_for(sub.recv_multipart(), 2.0)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            h = msgpack.unpackb(header_b)
            if h["stream"] in names:
                latencies.append(time.time() - h["pts_us"] / 1e6)
                received += 1

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    period = 1.0 / fps
    i = 0
    while time.perf_counter() - start < seconds:
        for name in names:
            header = {"v": 1, "stream": name, "seq": i, "pts_us": time.time_ns() // 1000, "w": size[1],
                      "h": size[0], "fmt": "rgb24"}  # fmt: skip
            await pub.send_multipart([msgpack.packb(header), video[i % len(video)]])
            sent += 1
        i += 1
        await asyncio.sleep(max(start + i * period - time.perf_counter(), 0))
    send_time = time.perf_counter() - start
    done.set()
    await receiver
    pub.close(0)
    sub.close(0)
    # Steady state only: skip the first second (first chunks, session creation).
    steady = latencies[int(len(latencies) * 0.1) :]
    return {
        "streams": streams,
        "input_fps_per_stream": round(sent / streams / send_time, 1),
        "output_fps": round(received / send_time, 1),
        "latency_p50_ms": round(_pct(steady, 50) * 1e3, 1),
        "latency_p95_ms": round(_pct(steady, 95) * 1e3, 1),
        "drop_rate": round(1 - received / sent, 3) if sent else 0.0,
    }


async def measure(args: argparse.Namespace, model: ModelSettings) -> tuple[dict, dict]:
    """For each stream count: standalone, served (camera, saturated), standalone again — interleaved so that
    load from elsewhere on the machine hits both sides of the overhead ratio alike."""
    proc, ev = await _start_node(args)
    ctx = zmq.asyncio.Context()
    alone: dict[int, dict[str, float]] = {}
    results: dict[str, list[dict]] = {"camera": [], "saturated": []}
    loop = asyncio.get_running_loop()
    try:
        for s in args.streams:
            before = await loop.run_in_executor(None, standalone, model, s, args.seconds, args.size, True)
            results["camera"].append(await _served_run(ev, ctx, s, args.fps, args.seconds, args.size, f"cam{s}"))
            rate = 3 * before / s  # per-stream input at three times what the engine alone sustains
            results["saturated"].append(await _served_run(ev, ctx, s, rate, args.seconds, args.size, f"sat{s}"))
            after = await loop.run_in_executor(None, standalone, model, s, args.seconds, args.size, True)
            alone[s] = {"batched": (before + after) / 2}
            if s > 1:
                alone[s]["unbatched"] = await loop.run_in_executor(
                    None, standalone, model, s, args.seconds, args.size, False
                )
            print(s, alone[s], results["camera"][-1], results["saturated"][-1], file=sys.stderr)
    finally:
        ctx.term()
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    return alone, results


def run(args: argparse.Namespace) -> int:
    args.size = tuple(args.size)
    args.threads = resolve_threads(args.threads)
    torch.set_num_threads(args.threads)
    model = ModelSettings(name=args.model, threads=args.threads)
    alone, res = asyncio.run(measure(args, model))
    rows = len(model.steps) + 1
    dit1, ditk = dit_batch_cost(model, rows)
    chunk_frames = load_pipeline(model).frames_per_chunk(False)
    lines = [
        f"Model `{args.model}` (random tiny weights), {args.size[1]}×{args.size[0]} input → "
        f"{model.width}×{model.height} model, {chunk_frames} frames/chunk, steps {model.steps} at strength "
        f"{model.strength}, {args.threads} torch threads, {args.seconds:.0f} s per row, "
        f"batching up to {args.max_batch}.",
        "",
        "| streams | standalone FPS (batched / unbatched) | served FPS, saturated | overhead | camera input FPS "
        "| camera output FPS | latency p50 / p95 ms | drop rate (camera) | drop rate (saturated) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cam, sat in zip(res["camera"], res["saturated"], strict=True):
        s = cam["streams"]
        a = alone[s]
        overhead = 1 - sat["output_fps"] / a["batched"]
        alone_txt = f"{a['batched']:.1f}" + (f" / {a['unbatched']:.1f}" if "unbatched" in a else "")
        lines.append(
            f"| {s} | {alone_txt} | {sat['output_fps']:.1f} | {overhead:.1%} | {cam['input_fps_per_stream'] * s:.1f} "
            f"| {cam['output_fps']:.1f} | {cam['latency_p50_ms']:.0f} / {cam['latency_p95_ms']:.0f} "
            f"| {cam['drop_rate']:.1%} | {sat['drop_rate']:.1%} |"
        )
    chunk_ms = 1e3 * chunk_frames / max(alone[1].values())
    lines += [
        "",
        f"One chunk: {1e3 * chunk_frames / args.fps:.0f} ms of video at {args.fps:.0f} FPS, ≈{chunk_ms:.0f} ms of "
        f"compute standalone → latency goal p95 ≤ {1e3 * chunk_frames / args.fps + 2 * chunk_ms:.0f} ms.",
        f"DiT chunk forward: {dit1:.1f} ms at batch 1, {ditk:.1f} ms at batch {rows} "
        f"({ditk / (rows * dit1):.0%} of {rows} separate forwards) — the most a {rows}-row stream batch could save.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"standalone": alone, "served": res, "dit_ms": [dit1, ditk]}, indent=1))
    return 0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model name or weights folder")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--fps", type=float, default=30.0, help="camera-mode input rate per stream")
    p.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    p.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"), help="input frame size")
    p.add_argument("--threads", type=int, default=0, help="torch threads, node and standalone (0 = auto)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=run)
