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
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import torch
import zmq
import zmq.asyncio

from vidfx.accel import apply_acceleration, warmup_chunks
from vidfx.config import AccelSettings, ModelSettings, add_settings_flags, resolve_threads, settings_from_args
from vidfx.generation import denoise_chunk
from vidfx.loading import load_pipeline
from vidfx.pipeline import ChunkRequest, StreamParams, StylePipeline
from vidfx.sampling import chunk_sigmas, noise_to


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


_PIPELINES: dict[str, StylePipeline] = {}  # standalone pipelines of this process, by their settings


def standalone_pipeline(model: ModelSettings, accel: AccelSettings) -> StylePipeline:
    """The standalone pipeline of these settings, built once per process (a compiled 1.3B model compiles once)."""
    key = model.model_dump_json() + accel.model_dump_json()
    if key not in _PIPELINES:
        _PIPELINES[key] = apply_acceleration(load_pipeline(model), accel)
    return _PIPELINES[key]


def standalone(
    model: ModelSettings, accel: AccelSettings, streams: int, seconds: float, size: tuple[int, int], batch: bool
) -> dict[str, float]:
    """Frames per second and per CPU-second of the pipeline alone for `streams` concurrent streams (with the
    node's acceleration settings)."""
    pipe = standalone_pipeline(model, accel)
    pipe.warm_up(warmup_chunks(pipe, accel, 2))
    states = [pipe.new_stream_state(StreamParams(prompts=((f"style {i}", 1.0),), seed=i)) for i in range(streams)]
    video = _video(8, size[0], size[1], 0)
    frames = 0
    # First chunks (1 frame) are not representative: run them before the clock starts.
    pipe.process_chunks([ChunkRequest(s, video[:1], s.params) for s in states], batch=batch)
    decoding = None  # with `overlap_decode`, as the engine's worker runs it: decode j beside denoising j + 1
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        n = pipe.frames_per_chunk(False)
        requests = [ChunkRequest(s, video[:n], s.params) for s in states]
        launched = pipe.start_decode(pipe.denoise_chunks(requests, batch=batch))
        if decoding is not None:
            pipe.collect(decoding)
        if pipe.overlap_decode:
            decoding = launched
        else:
            pipe.collect(launched)
        frames += n * streams
    if decoding is not None:
        pipe.collect(decoding)
    return {"fps": frames / (time.perf_counter() - start), "per_cpu_s": frames / (time.process_time() - cpu)}


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _scrape(http: str) -> dict[str, float]:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(http + "/metrics") as r:
        text = await r.text()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def _clock(model: ModelSettings) -> Callable[[], float]:
    """This thread's CPU time when torch computes on this thread alone (immune to other processes' load), else
    wall time; on a GPU, wall time after the device has finished what was queued."""
    if model.device.startswith("cuda"):

        def synced() -> float:
            torch.cuda.synchronize(model.device)
            return time.perf_counter()

        return synced
    return time.thread_time if model.threads == 1 else time.perf_counter


def chunk_breakdown(model: ModelSettings, reps: int = 30) -> dict[str, float]:
    """Median ms per (regular, cache-full) chunk of: autoencoder encode, DiT denoise + cache write, decode."""
    pipe = load_pipeline(model)
    dit, ae = pipe.dit, pipe.autoencoder
    clock = _clock(model)
    device = pipe.device
    h, w = pipe.latent_hw
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    kv = dit.new_kv_cache(1, h, w, model.window_frames, model.sink_frames)
    cross = dit.cross_attention_cache(pipe.embed((("a benchmark", 1.0),))[None].to(device))
    sigmas = chunk_sigmas(model.steps, model.strength)
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.rand(1, 3, 1 + 4 * (reps + 10), model.height, model.width) * 2 - 1
    times: dict[str, list[float]] = {"encode": [], "dit": [], "decode": []}
    start, first = 0, True
    with torch.no_grad():
        for i in range(reps + 10):  # the first 10 fill the KV cache and warm up
            n = pipe.frames_per_chunk(first)
            t0 = clock()
            z = enc.encode(video[:, :, start : start + n])
            t1 = clock()
            noise = torch.randn(z.shape, generator=gen, device=device, dtype=z.dtype)
            x0 = denoise_chunk(dit, noise_to(z, noise, sigmas[0]), sigmas, cross, kv, gen)
            t2 = clock()
            dec.decode(x0)
            t3 = clock()
            if i >= 10:
                for key, dt in (("encode", t1 - t0), ("dit", t2 - t1), ("decode", t3 - t2)):
                    times[key].append(dt * 1e3)
            start, first = start + n, False
    return {k: float(np.median(v)) for k, v in times.items()}


def dit_batch_cost(model: ModelSettings, rows: int, reps: int = 20) -> tuple[float, float]:
    """ms of one DiT chunk forward at batch 1 and at batch `rows` (cache full)."""
    clock = _clock(model)
    pipe = load_pipeline(model)
    dit = pipe.dit
    device = pipe.device
    h, w = pipe.latent_hw
    n = model.latent_frames_per_chunk
    setups = []
    for b in (1, rows):
        cache = dit.new_kv_cache(b, h, w, model.window_frames, model.sink_frames)
        cross = dit.cross_attention_cache(torch.randn(b, dit.cfg.text_len, dit.cfg.text_dim, device=device))
        x = torch.randn(b, dit.cfg.out_dim, n, h, w, device=device)
        t = torch.full((b,), 500.0, device=device)
        with torch.no_grad():
            for _ in range(model.window_frames + model.sink_frames):  # fill the cache (and warm up)
                dit.forward_chunk(x, t, cross, cache, write_cache=True)
        setups.append((x, t, cross, cache))
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        for _ in range(reps):  # interleaved, so load from elsewhere hits both alike; medians
            for i, (x, t, cross, cache) in enumerate(setups):
                start = clock()
                dit.forward_chunk(x, t, cross, cache)
                times[i].append(clock() - start)
    return float(np.median(times[0])) * 1e3, float(np.median(times[1])) * 1e3


# -- served -----------------------------------------------------------------------------------------------------


async def start_node(*flags: str, ready_timeout_s: float = 180.0) -> tuple[asyncio.subprocess.Process, dict]:
    """`vidfx serve` as a subprocess on ephemeral loopback ports (ZeroMQ and HTTP), the environment's VIDFX_*
    variables left out, this checkout first on the path; returns it with its `ready` event."""
    cmd = [sys.executable, "-m", "vidfx.cli", "serve", "--zmq-input", "tcp://127.0.0.1:*",
           "--zmq-output", "tcp://127.0.0.1:*", "--zmq-control", "tcp://127.0.0.1:*", "--http-port", "0",
           "--log-level", "warning", *flags]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    checkout = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = checkout + os.pathsep + env.get("PYTHONPATH", "")
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout_s)
        if not line:
            raise RuntimeError("vidfx serve exited before it was ready")
        ev = json.loads(line)
        if ev["event"] == "ready":
            return proc, ev


async def _start_node(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, dict]:
    return await start_node(
        "--model-name", args.model, "--model-threads", str(args.threads), "--model-max-batch", str(args.max_batch),
        "--model-device", args.device, "--model-dtype", args.dtype, "--stream-max-sessions", "16", *args.node_flag,
    )  # fmt: skip


async def _served_run(ev: dict, pid: int, ctx: zmq.asyncio.Context, streams: int, fps: float, seconds: float,
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
    last_at = [time.perf_counter()]

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
                last_at[0] = time.perf_counter()

    receiver = asyncio.create_task(receive())
    metrics0, cpu0 = await _scrape(ev["http"]), _proc_cpu_s(pid)
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
    cpu1, metrics1 = _proc_cpu_s(pid), await _scrape(ev["http"])
    busy = metrics1["vidfx_chunk_latency_seconds_sum"] - metrics0["vidfx_chunk_latency_seconds_sum"]
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
        "per_cpu_s": round(received / max(cpu1 - cpu0, 1e-9), 1),
        "worker_busy": round(busy / max(last_at[0] - start, 1e-9), 3),
    }


async def measure(args: argparse.Namespace, model: ModelSettings, accel: AccelSettings) -> tuple[dict, dict]:
    """For each stream count: standalone, served (camera, saturated), standalone again — interleaved so that
    load from elsewhere on the machine hits both sides of the overhead ratio alike."""
    proc, ev = await _start_node(args)
    ctx = zmq.asyncio.Context()
    alone: dict[int, dict[str, float]] = {}
    results: dict[str, list[dict]] = {"camera": [], "saturated": []}
    loop = asyncio.get_running_loop()
    try:
        for s in args.streams:
            pid = proc.pid
            before = await loop.run_in_executor(None, standalone, model, accel, s, args.seconds, args.size, True)
            cam = await _served_run(ev, pid, ctx, s, args.fps, args.seconds, args.size, f"cam{s}")
            results["camera"].append(cam)
            rate = 3 * before["fps"] / s  # per-stream input at three times what the engine alone sustains
            sat = await _served_run(ev, pid, ctx, s, rate, args.seconds, args.size, f"sat{s}")
            results["saturated"].append(sat)
            after = await loop.run_in_executor(None, standalone, model, accel, s, args.seconds, args.size, True)
            alone[s] = {k: (before[k] + after[k]) / 2 for k in before}
            if s > 1:
                unbatched = await loop.run_in_executor(
                    None, standalone, model, accel, s, args.seconds, args.size, False
                )
                alone[s]["unbatched_fps"] = unbatched["fps"]
                alone[s]["unbatched_per_cpu_s"] = unbatched["per_cpu_s"]
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
    # The node's extra flags (e.g. --accel-compile, --model-encoder tae) apply to the standalone pipeline too.
    flagged = argparse.ArgumentParser(add_help=False)
    add_settings_flags(flagged, ("model", "accel"))
    settings = settings_from_args(flagged.parse_args(args.node_flag))
    update = {"name": args.model, "threads": args.threads, "device": args.device, "dtype": args.dtype}
    model, accel = settings.model.model_copy(update=update), settings.accel
    load0 = f"{os.getloadavg()[0]:.1f}"
    alone, res = asyncio.run(measure(args, model, accel))
    rows = len(chunk_sigmas(model.steps, model.strength)) + 1  # denoising steps + the cache-write pass
    dit1, ditk = dit_batch_cost(model, rows)
    parts = chunk_breakdown(model)
    chunk_frames = standalone_pipeline(model, accel).frames_per_chunk(False)
    lines = [
        f"Model `{args.model}`, {args.size[1]}×{args.size[0]} input → "
        f"{model.width}×{model.height} model, {chunk_frames} frames/chunk, steps {model.steps} at strength "
        f"{model.strength}, on {args.device} ({args.dtype}), {args.threads} torch thread(s), {args.seconds:.0f} s "
        f"per row, batching up to {args.max_batch}; load average before/after: {load0} / {os.getloadavg()[0]:.1f}.",
        "",
        "| streams | standalone FPS (batched / unbatched) | served FPS, saturated | overhead (wall) "
        "| frames per CPU-s standalone (unbatched) / served | overhead (CPU) | worker busy, saturated "
        "| camera in → out FPS | latency p50 / p95 ms (camera) | drops camera / saturated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cam, sat in zip(res["camera"], res["saturated"], strict=True):
        s = cam["streams"]
        a = alone[s]
        alone_txt = f"{a['fps']:.1f}" + (f" / {a['unbatched_fps']:.1f}" if "unbatched_fps" in a else "")
        unb_cpu = f" ({a['unbatched_per_cpu_s']:.1f})" if "unbatched_per_cpu_s" in a else ""
        lines.append(
            f"| {s} | {alone_txt} | {sat['output_fps']:.1f} | {1 - sat['output_fps'] / a['fps']:.1%} "
            f"| {a['per_cpu_s']:.1f}{unb_cpu} / {sat['per_cpu_s']:.1f} | {1 - sat['per_cpu_s'] / a['per_cpu_s']:.1%} "
            f"| {sat['worker_busy']:.0%} | {cam['input_fps_per_stream'] * s:.0f} → {cam['output_fps']:.1f} "
            f"| {cam['latency_p50_ms']:.0f} / {cam['latency_p95_ms']:.0f} "
            f"| {cam['drop_rate']:.1%} / {sat['drop_rate']:.1%} |"
        )
    chunk_ms = 1e3 * chunk_frames / alone[1]["fps"]
    lines += [
        "",
        f"One chunk: {1e3 * chunk_frames / args.fps:.0f} ms of video at {args.fps:.0f} FPS, ≈{chunk_ms:.0f} ms of "
        f"compute standalone → latency goal p95 ≤ {1e3 * chunk_frames / args.fps + 2 * chunk_ms:.0f} ms.",
        f"One regular chunk, ms ({'CPU' if args.device == 'cpu' else 'wall, synchronised'}): encode "
        f"{parts['encode']:.1f}, DiT ({rows - 1} steps + cache write) {parts['dit']:.1f}, "
        f"decode {parts['decode']:.1f}.",
        f"Stream batch (StreamDiffusion): one DiT forward of {rows} rows (successive chunks at successive steps "
        f"+ the cache-write row) costs {ditk:.1f} ms against {rows} × {dit1:.1f} ms "
        f"({ditk / (rows * dit1):.0%}); a chunk would cost {parts['encode'] + ditk + parts['decode']:.1f} ms instead "
        f"of {sum(parts.values()):.1f} ms (+{sum(parts.values()) / (parts['encode'] + ditk + parts['decode']) - 1:.0%} "
        f"throughput at best) for {rows - 1} more chunks of latency "
        f"(+{1e3 * (rows - 1) * chunk_frames / args.fps:.0f} ms at {args.fps:.0f} FPS).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.json:
        dump = {"standalone": alone, "served": res, "dit_ms": [dit1, ditk], "chunk_ms": parts}
        args.json.write_text(json.dumps(dump, indent=1))
    return 0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model name or weights folder")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--fps", type=float, default=30.0, help="camera-mode input rate per stream")
    p.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    p.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"), help="input frame size")
    p.add_argument("--threads", type=int, default=0, help="torch threads, node and standalone (0 = auto)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--device", default="cpu", help="torch device of the node and the standalone pipeline")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument(
        "--node-flag", action="append", default=[], help="a `vidfx serve` model/accel flag for the node and the "
        "standalone pipeline alike, e.g. --node-flag=--accel-compile (repeatable)"
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=run)
