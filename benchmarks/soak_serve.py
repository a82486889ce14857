"""Soak: 8 ZeroMQ streams at once with churn for `--duration-s`, the node's RSS and latency over time (issue 19).

    python benchmarks/soak_serve.py --duration-s 600 [--streams 8] [--json benchmarks/soak.json]

One `vidfx serve` subprocess on loopback. `--streams` publishers (one ZeroMQ connection each, a stream each)
send 128x96 frames at `--fps`; every `--churn-s` seconds one of them is cut off abruptly mid-chunk (socket
closed with no linger) and replaced by a new connection on a new stream id, so sessions keep opening and
idling out. The node's RSS (/proc/<pid>/status VmRSS) is sampled every 2 s; the figure of merit is the median
RSS of the last 10% of the run over the median of the window after warm-up (20–30% of the run): goal ≤ 1.10.
Also reported: streams started and cut, sessions open at the end (after the idle timeout: 0), and the output
latency p95 per fifth of the run (bounded: no growth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq
import zmq.asyncio

import vidfx.benchmarking.serve as serve_bench

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def start_node(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, dict]:
    return await serve_bench.start_node(
        "--model-name", args.model, "--model-threads", str(args.threads), "--stream-max-sessions", "16",
        "--stream-idle-timeout-s", str(args.idle_timeout_s)
    )  # fmt: skip


class Publisher:
    """One connection feeding one stream until `cut`."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, stream: str, video: np.ndarray, fps: float) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.connect(endpoint)
        self.stream, self.video, self.fps = stream, video, fps
        self.sent_at: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        await asyncio.wait_for(self.sock.recv(), 10)  # the node's subscription
        start, seq = time.perf_counter(), 0
        while True:
            h, w = self.video.shape[1:3]
            header = {"v": 1, "stream": self.stream, "seq": seq, "pts_us": seq * 66_666, "w": w, "h": h, "fmt": "rgb24"}
            self.sent_at[seq] = time.perf_counter()
            await self.sock.send_multipart([msgpack.packb(header), self.video[seq % len(self.video)]])
            seq += 1
            await asyncio.sleep(max(start + seq / self.fps - time.perf_counter(), 0))

    def cut(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sock.close(0)  # abrupt: whatever is queued is lost, the node sees the connection drop


async def main(args: argparse.Namespace) -> dict:
    proc, ev = await start_node(args)
    ctx = zmq.asyncio.Context()
    rng = random.Random(0)
    video = np.random.default_rng(0).integers(0, 256, (8, 96, 128, 3), dtype=np.uint8)
    pubs: dict[str, Publisher] = {}
    latencies: list[tuple[float, float]] = []  # (time since start, latency s)
    rss: list[tuple[float, float]] = []
    started = cut = 0
    t0 = time.perf_counter()

    def start_stream() -> None:
        nonlocal started
        name = f"soak-{started}"
        started += 1
        pub = Publisher(ctx, ev["input"], name, video, args.fps)
        pub.task = asyncio.create_task(pub.run())
        pubs[name] = pub

    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(ev["output"])

    async def receive() -> None:
        while True:
            header_b, _ = await sub.recv_multipart()
            h = msgpack.unpackb(header_b)
            pub = pubs.get(h["stream"])
            if pub is not None and (sent := pub.sent_at.pop(h["seq"], None)) is not None:
                latencies.append((time.perf_counter() - t0, time.perf_counter() - sent))

    async def sample() -> None:
        while True:
            rss.append((time.perf_counter() - t0, rss_mib(proc.pid)))
            await asyncio.sleep(2.0)

    tasks = [asyncio.create_task(receive()), asyncio.create_task(sample())]
    try:
        for _ in range(args.streams):
            start_stream()
        next_churn = t0 + args.churn_s
        while time.perf_counter() - t0 < args.duration_s:
            await asyncio.sleep(0.1)
            if time.perf_counter() >= next_churn:
                victim = rng.choice(sorted(pubs))
                pubs.pop(victim).cut()
                cut += 1
                start_stream()
                next_churn += args.churn_s
        for name in list(pubs):
            pubs.pop(name).cut()
        await asyncio.sleep(args.idle_timeout_s + 2.5)  # every session idles out
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(ev["control"])
        await dealer.send(msgpack.packb({"op": "status"}))
        status = msgpack.unpackb(await asyncio.wait_for(dealer.recv(), 10))
        dealer.close(0)
        rss_end = rss_mib(proc.pid)
    finally:
        for t in tasks:
            t.cancel()
        proc.terminate()
        await proc.wait()
        ctx.destroy(0)
    d = args.duration_s
    base = [m for t, m in rss if 0.2 * d <= t <= 0.3 * d] or [rss[0][1]]
    last = [m for t, m in rss if 0.9 * d <= t <= d] or [rss[-1][1]]
    fifths = []
    for k in range(5):
        window = [lat for t, lat in latencies if k * d / 5 <= t < (k + 1) * d / 5]
        fifths.append(round(float(np.percentile(window, 95)) * 1e3, 1) if window else None)
    return {
        "duration_s": d,
        "streams": args.streams,
        "fps_per_stream": args.fps,
        "churn_s": args.churn_s,
        "streams_started": started,
        "streams_cut_mid_stream": cut,
        "frames_out": len(latencies),
        "rss_mib_after_warmup": round(float(np.median(base)), 1),
        "rss_mib_last_tenth": round(float(np.median(last)), 1),
        "rss_ratio": round(float(np.median(last)) / float(np.median(base)), 3),
        "rss_mib_after_idle_out": round(rss_end, 1),
        "latency_p95_ms_per_fifth": fifths,
        "sessions_open_at_end": len(status["sessions"]),
        "dropped": status["dropped"],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=600.0, help="length of the soak (the issue asks for 600)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--fps", type=float, default=15.0, help="frames a second per stream")
    p.add_argument("--churn-s", type=float, default=4.0, help="cut one publisher and start a new stream this often")
    p.add_argument("--idle-timeout-s", type=float, default=2.0, help="the node's --stream-idle-timeout-s")
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/soak.json")
    a = p.parse_args()
    result = asyncio.run(main(a))
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
