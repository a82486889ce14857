"""A victim stream's FPS and latency with and without a flooding neighbour, in one run (issue 19).

    python benchmarks/bench_flood.py [--seconds 15] [--flood-rate 9000] [--json benchmarks/flood.json]

One `vidfx serve` subprocess on loopback. The victim publishes 128x96 frames at `--fps` (15) on its own ZeroMQ
connection; phases alternate: victim alone, victim + flooder. The flooder is another connection sending 16x16
frames at `--flood-rate` (9000/s, what issue 19 measured): on a stream of its own ("neighbour flood": the
model is shared fairly, the per-connection frame quota bounds what the flood costs the event loop) or under
the victim's stream id ("hijack flood": refused by ownership, no model work). Reported: the victim's output
FPS and latency p50/p95 (send → receive, both in this process) per phase, and ratios against the mean of the
alone phases. Goal (issue 19): p95 ≤ 1.2× and FPS ≥ 95% of alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq
import zmq.asyncio

import vidfx.benchmarking.serve as serve_bench

REPO = Path(__file__).resolve().parents[1]


def node_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def start_node(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, dict]:
    return await serve_bench.start_node(
        "--model-name", args.model, "--model-threads", str(args.threads)
    )  # fmt: skip


async def publisher(ctx: zmq.asyncio.Context, endpoint: str, hwm: int) -> zmq.asyncio.Socket:
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, hwm)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    await asyncio.wait_for(pub.recv(), 10)  # the node's subscription: no slow-joiner loss
    return pub


def flood(endpoint: str, stream: str, rate: float) -> None:
    """The flooder process: 16x16 frames at `rate` a second (0: as fast as it can) until SIGINT, then prints
    how many it sent. Non-blocking sends: beyond the HWM ZeroMQ drops them."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    pub.recv()  # the node's subscription
    print("ready", flush=True)
    tiny = np.zeros((16, 16, 3), np.uint8).tobytes()
    sent = 0
    start = time.perf_counter()
    try:
        while True:
            if rate > 0:
                time.sleep(max(start + sent / rate - time.perf_counter(), 0))
            for _ in range(100):
                header = {"v": 1, "stream": stream, "seq": sent, "pts_us": 0, "w": 16, "h": 16, "fmt": "rgb24"}
                with contextlib.suppress(zmq.Again):
                    pub.send_multipart([msgpack.packb(header), tiny], flags=zmq.NOBLOCK)
                sent += 1
    except KeyboardInterrupt:
        pass
    pub.close(0)
    ctx.term()
    print(sent, flush=True)


async def phase(ev: dict, victim: zmq.asyncio.Socket, sub: zmq.asyncio.Socket,
                name: str, flood_stream: str | None, seconds: float, fps: float, seq0: int,
                flood_rate: float, node_pid: int) -> dict:  # fmt: skip
    video = np.random.default_rng(0).integers(0, 256, (16, 96, 128, 3), dtype=np.uint8)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    flooder = None
    if flood_stream is not None:
        # Its own process: a flood in this one would delay the victim's sends and receive timestamps.
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood", ev["input"], flood_stream, str(flood_rate),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert flooder.stdout is not None
        await asyncio.wait_for(flooder.stdout.readline(), 30)  # connected and subscribed

    async def receive() -> None:
        while True:
            header_b, _ = await sub.recv_multipart()
            h = msgpack.unpackb(header_b)
            if h["stream"] == "victim" and h["seq"] in sent_at:
                latencies.append(time.perf_counter() - sent_at.pop(h["seq"]))

    receiver = asyncio.create_task(receive())
    cpu0 = node_cpu_s(node_pid)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        seq = seq0 + i
        header = {"v": 1, "stream": "victim", "seq": seq, "pts_us": seq * 66_666, "w": 128, "h": 96, "fmt": "rgb24"}
        sent_at[seq] = time.perf_counter()
        await victim.send_multipart([msgpack.packb(header), video[i % len(video)]])
        i += 1
        await asyncio.sleep(max(start + i / fps - time.perf_counter(), 0))
    elapsed = time.perf_counter() - start
    node_cpu = (node_cpu_s(node_pid) - cpu0) / elapsed
    flooded = 0
    if flooder is not None:
        flooder.send_signal(signal.SIGINT)
        out, _ = await flooder.communicate()
        flooded = int(out.split()[-1])
    await asyncio.sleep(1.5)  # the last chunk's outputs
    receiver.cancel()
    steady = latencies[len(latencies) // 10 :]  # skip the phase's first chunks
    return {
        "phase": name,
        "sent": i,
        "out_fps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(pct(steady, 50) * 1e3, 1),
        "p95_ms": round(pct(steady, 95) * 1e3, 1),
        "flood_frames_per_s": round(flooded / elapsed),
        "node_cpu_cores": round(node_cpu, 2),
    }


async def main(args: argparse.Namespace) -> dict:
    proc, ev = await start_node(args)
    ctx = zmq.asyncio.Context()
    try:
        victim = await publisher(ctx, ev["input"], 1000)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.connect(ev["output"])
        await asyncio.sleep(0.5)
        plan = [("alone", None), ("neighbour flood", "neighbour"), ("alone", None), ("hijack flood", "victim"),
                ("alone", None), ("neighbour flood", "neighbour")]  # fmt: skip
        rows, seq = [], 0
        for name, flood_stream in plan:
            row = await phase(
                ev, victim, sub, name, flood_stream, args.seconds, args.fps, seq, args.flood_rate, proc.pid
            )
            seq += row["sent"]
            rows.append(row)
            print(json.dumps(row), flush=True)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(ev["control"])
        await dealer.send(msgpack.packb({"op": "status"}))
        status = msgpack.unpackb(await asyncio.wait_for(dealer.recv(), 10))
        dealer.close(0)
    finally:
        proc.terminate()
        await proc.wait()
        ctx.destroy(0)
    alone = [r for r in rows if r["phase"] == "alone"]
    base_fps = float(np.mean([r["out_fps"] for r in alone]))
    base_p95 = float(np.mean([r["p95_ms"] for r in alone]))
    for r in rows:
        r["fps_vs_alone"] = round(r["out_fps"] / base_fps, 3)
        r["p95_vs_alone"] = round(r["p95_ms"] / base_p95, 3)
    victim_status = status["sessions"].get("victim", {})
    return {
        "model": args.model,
        "threads": args.threads,
        "fps": args.fps,
        "seconds_per_phase": args.seconds,
        "flood_rate": args.flood_rate,
        "phases": rows,
        "victim_refused": victim_status.get("refused"),
        "dropped": status["dropped"],
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flood"]:
        flood(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    p.add_argument("--fps", type=float, default=15.0, help="the victim's frame rate")
    p.add_argument("--flood-rate", type=float, default=9000.0, help="flooder frames/s (0 = as fast as it can)")
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/flood.json")
    a = p.parse_args()
    result = asyncio.run(main(a))
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(
        "| phase | victim out FPS | p50 ms | p95 ms | FPS vs alone | p95 vs alone | flooder frames/s | node CPU cores |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in result["phases"]:
        print(f"| {r['phase']} | {r['out_fps']} | {r['p50_ms']} | {r['p95_ms']} | {r['fps_vs_alone']:.0%} | "
              f"{r['p95_vs_alone']:.2f}× | {r['flood_frames_per_s']} | {r['node_cpu_cores']} |")  # fmt: skip
    print("victim refused:", result["victim_refused"], "dropped:", result["dropped"])
