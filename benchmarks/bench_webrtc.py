"""Glass-to-glass latency through WebRTC vs ZeroMQ on loopback, and the CPU the WebRTC codec costs per stream.

    PYTHONPATH=. python benchmarks/bench_webrtc.py                 # default model, 320x240 @ 15 fps, updates RESULTS.md
    PYTHONPATH=. python benchmarks/bench_webrtc.py --seconds 5 --no-write

`vidfx serve` runs as a subprocess with its default model; this process is the camera and the screen.

Frame identity, end to end. Every frame leaves the sender stamped twice: its index n is drawn into the pixels
(vidfx.webrtc.stamp) and set as its pts (n · 90000/fps). The model does not keep the pixels, but the node keeps
pts (output pts = input pts) and RTP carries them, up to a constant the receiver cannot know (each RTP receiver
re-bases timestamps at its first packet). So each WebRTC run starts paused (the node passes frames through
unchanged): the counters read back from the pixels give that constant; then the node is resumed and every
stylised frame is identified by its pts. ZeroMQ frames carry their seq. Latency = time the decoded frame is handed
to the receiver − time the frame was handed to the sender's encoder (WebRTC) or socket (ZeroMQ).

CPU: the node's own CPU time (/proc) over each run, so WebRTC − ZeroMQ is what WebRTC costs the node per stream
(decode, encode, colour conversion, SRTP, RTP), plus a codec-only micro-benchmark of aiortc's VP8 encoder and
decoder at the same size. Both as a fraction of the frame time (1/fps).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import zmq
import zmq.asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from vidfx.benchmarking.results import cpu_name, update_section
from vidfx.protocol import frame_header
from vidfx.webrtc.gateway import enable_loopback_candidates
from vidfx.webrtc.jitter import enable_marker_frames
from vidfx.webrtc.stamp import SyntheticVideoTrack, pattern_frame, read_counter

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## WebRTC"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Run:
    transport: str
    mode: str  # "model" or "pass-through"
    sent: int = 0
    received: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    node_cpu_s: float = 0.0
    mismatched: int = 0  # pass-through frames whose pixel counter disagrees with their pts (should be 0)
    node_stats: list[dict] = field(default_factory=list)  # the node's stats messages during the run (WebRTC)

    @property
    def fps_out(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    def row(self, fps: float) -> str:
        cpu_frac = self.node_cpu_s / self.seconds if self.seconds else float("nan")
        inside = [st["latency_ms"]["p50"] for st in self.node_stats if st["latency_ms"]["p50"] is not None]
        node_ms = f"{statistics.median(inside):.0f}" if inside else "—"
        drops: dict[str, int] = self.node_stats[-1]["dropped"] if self.node_stats else {}
        return (
            f"| {self.transport} | {self.mode} | {self.received}/{self.sent} | {self.fps_out:.1f} "
            f"| {pct(self.latencies_ms, 50):.0f} | {pct(self.latencies_ms, 95):.0f} | {node_ms} | {cpu_frac:.2f} "
            f"| {', '.join(f'{k} {v}' for k, v in drops.items()) or '—'} |"
        )


# -- the node --------------------------------------------------------------------------------------------------------


async def start_node(flags: list[str]) -> tuple[asyncio.subprocess.Process, dict]:
    cmd = [sys.executable, "-m", "vidfx.cli", "serve", "--http-port", "0", "--zmq-input", "tcp://127.0.0.1:*",
           "--zmq-output", "tcp://127.0.0.1:*", "--zmq-control", "tcp://127.0.0.1:*",
           "--webrtc-loopback-candidates", *flags]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 180)
        if not line:
            raise RuntimeError("the node exited before it was ready")
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "ready":
            return proc, ev


# -- WebRTC ------------------------------------------------------------------------------------------------------------


async def webrtc_run(
    ev: dict, size: tuple[int, int], fps: float, seconds: float, warmup: float, model: bool, label: str = "WebRTC"
) -> Run:
    enable_loopback_candidates()
    tick = round(90_000 / fps)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source = SyntheticVideoTrack(size[0], size[1], fps=fps)
    pc.addTransceiver(source, direction="sendrecv")
    channel = pc.createDataChannel("control")
    received: list[tuple[float, int, int | None]] = []  # (time, pts, pixel counter or None)
    counting = {"read": True}

    async def pull(track) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                counter = None
                if counting["read"]:
                    rgb = await loop.run_in_executor(None, lambda f=frame: f.to_ndarray(format="rgb24"))
                    counter = read_counter(rgb)
                received.append((now, frame.pts, counter))
        except MediaStreamError:
            pass

    tasks: list[asyncio.Task] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(pull(track))))
    opened = asyncio.Event()
    channel.on("open", opened.set)
    stats: list[tuple[float, dict]] = []

    def on_message(message: bytes) -> None:
        obj = msgpack.unpackb(message)
        if obj.get("event") == "stats":
            stats.append((time.monotonic(), obj))

    channel.on("message", on_message)
    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(ev["http"] + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r,
    ):
        answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await asyncio.wait_for(opened.wait(), 10)
    channel.send(msgpack.packb({"op": "pause"}))

    # Calibrate the receiver's RTP origin from pass-through frames whose pixels still carry their counter.
    deadline = time.monotonic() + 30
    while sum(c is not None for _, _, c in received) < 10:
        assert time.monotonic() < deadline, "no readable pass-through frames"
        await asyncio.sleep(0.05)
    offsets = [p - c * tick for _, p, c in received if c is not None]
    origin = statistics.median(offsets)
    assert max(abs(o - origin) for o in offsets) <= 8, offsets

    def index(pts: int) -> int:
        return round((pts - origin) / tick)

    run = Run(label, "model" if model else "pass-through")
    if model:
        channel.send(msgpack.packb({"op": "resume"}))
        counting["read"] = False  # the model's pixels carry no counter; pts identify frames from here on
    await asyncio.sleep(warmup)
    pid = ev["pid"]
    t0, cpu0, first_sent, start = time.monotonic(), cpu_seconds(pid), source.count, len(received)
    await asyncio.sleep(seconds)
    t1, cpu1, last_sent = time.monotonic(), cpu_seconds(pid), source.count
    run.seconds, run.node_cpu_s, run.sent = t1 - t0, cpu1 - cpu0, last_sent - first_sent
    await asyncio.sleep(1.0)  # frames sent near the end are still on their way
    for t, p, c in received[start:]:
        n = index(p)
        sent_at = source.sent.get(n & 0xFFFF)
        if sent_at is None or not first_sent <= n < last_sent:
            continue
        run.received += 1
        run.latencies_ms.append(1000 * (t - sent_at))
        if not model and c is not None and c != (n & 0xFFFF):
            run.mismatched += 1
    run.node_stats = [st for t, st in stats if t0 + 2.0 <= t <= t1]
    await pc.close()
    for task in tasks:
        task.cancel()
    return run


# -- ZeroMQ ------------------------------------------------------------------------------------------------------------


async def zmq_run(ev: dict, size: tuple[int, int], fps: float, seconds: float, warmup: float, model: bool) -> Run:
    ctx = zmq.asyncio.Context()
    pub, sub, ctl = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
    for s in (pub, sub, ctl):
        s.setsockopt(zmq.LINGER, 0)
    stream = f"bench-{'model' if model else 'pass'}"
    sent: dict[int, float] = {}
    got: list[tuple[float, int]] = []
    try:
        pub.connect(ev["input"])
        await asyncio.wait_for(pub.recv(), 10)  # the node's subscription arrived
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ev["output"])
        ctl.connect(ev["control"])
        # Claim the stream with our own key before its first frame: frames and the pause then both carry it.
        key = secrets.token_hex(16)
        await ctl.send(msgpack.packb({"op": "claim", "stream": stream, "key": key}))
        claimed = msgpack.unpackb(await ctl.recv())
        assert claimed["ok"], claimed
        await asyncio.sleep(0.3)
        w, h = size
        frames = [pattern_frame(h, w, n).tobytes() for n in range(int(fps))]  # pre-rendered: a camera costs nothing

        async def receive() -> None:
            while True:
                header, _ = await sub.recv_multipart()
                got.append((time.monotonic(), msgpack.unpackb(header)["seq"]))

        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        total = warmup + seconds
        seq = 0
        paused = False
        t0 = cpu0 = 0.0
        first_seq = 0
        while True:
            due = start + seq / fps
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if not model and not paused and seq == int(fps):  # the session exists after its first frames
                await ctl.send(msgpack.packb({"op": "pause", "stream": stream, "key": key}))
                reply = msgpack.unpackb(await ctl.recv())
                assert reply["ok"], reply
                paused = True
            if t0 == 0.0 and time.monotonic() - start >= warmup:
                t0, cpu0, first_seq = time.monotonic(), cpu_seconds(ev["pid"]), seq
            if time.monotonic() - start >= total:
                break
            sent[seq] = time.monotonic()
            await pub.send_multipart(
                [frame_header(stream, seq, round(seq * 1e6 / fps), w, h, key=key), frames[seq % len(frames)]]
            )
            seq += 1
        t1, cpu1 = time.monotonic(), cpu_seconds(ev["pid"])
        await asyncio.sleep(1.0)
        receiver.cancel()
        run = Run("ZeroMQ", "model" if model else "pass-through", sent=seq - first_seq)
        run.seconds, run.node_cpu_s = t1 - t0, cpu1 - cpu0
        for t, s in got:
            if s >= first_seq and s in sent:
                run.received += 1
                run.latencies_ms.append(1000 * (t - sent[s]))
        return run
    finally:
        for s in (pub, sub, ctl):
            s.close(0)
        ctx.term()


# -- codec cost ---------------------------------------------------------------------------------------------------


def codec_cost(size: tuple[int, int], frames: int = 150) -> dict[str, float]:
    """Thread CPU ms per frame of what a WebRTC stream adds on the node: decode the camera (VP8 → yuv420p →
    rgb24) and encode the result (rgb24 → yuv420p → VP8), with aiortc's own codec classes and default bitrate."""
    from aiortc.codecs import get_decoder, get_encoder
    from aiortc.codecs.vpx import vp8_depayload
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from av import VideoFrame

    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
    enc, dec = get_encoder(codec), get_decoder(codec)
    w, h = size
    images = [pattern_frame(h, w, n) for n in range(frames)]
    t_enc = t_dec = t_conv = 0.0
    for n, rgb in enumerate(images):
        c0 = time.thread_time()
        frame = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = n * 6000, fractions.Fraction(1, 90000)
        c1 = time.thread_time()
        payloads, ts = enc.encode(frame)
        c2 = time.thread_time()
        out = dec.decode(JitterFrame(data=b"".join(vp8_depayload(p) for p in payloads), timestamp=ts))
        c3 = time.thread_time()
        for o in out:
            o.to_ndarray(format="rgb24")
        c4 = time.thread_time()
        t_conv += (c1 - c0) + (c4 - c3)
        t_enc += c2 - c1
        t_dec += c3 - c2
    return {
        "encode_ms": 1000 * t_enc / frames,
        "decode_ms": 1000 * t_dec / frames,
        "convert_ms": 1000 * t_conv / frames,
    }


# -- report -------------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, model_name: str, resolution: list[int], runs: list[Run],
           codec: dict[str, dict[str, float]]) -> str:  # fmt: skip
    w, h = args.size
    frame_ms = 1000 / args.fps
    lines = [
        SECTION,
        "",
        f"`benchmarks/bench_webrtc.py` — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu_name()}), no GPU. "
        f"Model: the pipeline default, `{model_name}` at {resolution[0]}×{resolution[1]}. One stream of {w}×{h} "
        f"frames at {args.fps:g} fps, {args.seconds:g} s measured after {args.warmup:g} s warm-up; the node "
        "(`vidfx serve`, subprocess) and this client share the machine's cores (1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end: other jobs ran too). Loopback only.",
        "",
        "Glass-to-glass: from the frame handed to the sender's encoder (WebRTC) or socket (ZeroMQ) to the decoded "
        "frame handed to the receiver. WebRTC frames are identified by pts (calibrated from the pixel counter "
        "while the node passes frames through); ZeroMQ frames by seq. *Pass-through* = the session paused (no "
        "model), i.e. the transport alone. Node CPU = the node process's CPU time / wall time (cores busy). "
        "Every frame the model makes leaves the node one frame interval apart (paced by pts, so playback is "
        "smooth); ZeroMQ delivers a chunk's frames in a burst, which is why its model-run average is lower by "
        "about half a chunk. *aiortc's stock jitter buffer* rows: the node and this client with "
        "`--no-webrtc-marker-frames`, where aiortc waits for the next frame's first packet before releasing a "
        "frame (one frame interval per aiortc receiver; a browser receiver does not do this).",
        "",
        "| transport | mode | frames out/in | fps out | p50 ms | p95 ms | in node p50 ms | node CPU (cores) "
        "| node drops (session total) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(r.row(args.fps) for r in runs),
        "",
    ]
    by = {(r.transport, r.mode): r for r in runs}
    rt, zq = by.get(("WebRTC", "model")), by.get(("ZeroMQ", "model"))
    rtp, zqp = by.get(("WebRTC", "pass-through")), by.get(("ZeroMQ", "pass-through"))
    if rt and zq and rtp and zqp and rt.latencies_ms and zq.latencies_ms:
        lines += [
            f"Reading it: through the model WebRTC is {pct(rt.latencies_ms, 50) - pct(zq.latencies_ms, 50):.0f} ms "
            "slower at p50. The transport itself costs "
            f"{pct(rtp.latencies_ms, 50) - pct(zqp.latencies_ms, 50):.0f} ms (pass-through rows: two VP8 "
            "encodes and decodes, SRTP, the aiortc stacks); the rest is pacing: each stylised frame leaves at "
            "about the delay of a chunk's first frame (which waited for the chunk to fill), where ZeroMQ "
            f"sends a chunk's later frames early in a burst — compare the ZeroMQ p95 ({pct(zq.latencies_ms, 95):.0f} "
            "ms) with WebRTC's in-node latency.",
            "",
        ]

    def outside(run: Run | None) -> float | None:
        """Glass-to-glass p50 minus the node's own p50: the transport's share of a model run."""
        inside = (
            [st["latency_ms"]["p50"] for st in run.node_stats if st["latency_ms"]["p50"] is not None] if run else []
        )
        return pct(run.latencies_ms, 50) - statistics.median(inside) if run and inside else None

    stock = by.get(("WebRTC, aiortc's stock jitter buffer", "model"))
    if outside(rt) is not None and outside(stock) is not None:
        lines += [
            f"Outside the node (glass-to-glass p50 − in-node p50, model runs): {outside(rt):.0f} ms with the "
            f"marker-bit jitter buffer, {outside(stock):.0f} ms with aiortc's stock one. The in-node column moves "
            "with the machine's load from run to run (other jobs shared these two cores).",
            "",
        ]
    if rt and zq and rt.received and zq.received:
        extra_ms = 1000 * (rt.node_cpu_s / max(rt.received, 1) - zq.node_cpu_s / max(zq.received, 1))
        lines += [
            f"WebRTC's extra node CPU per stylised frame (WebRTC − ZeroMQ, model runs): {extra_ms:.1f} ms = "
            f"{extra_ms / frame_ms:.0%} of the {frame_ms:.0f} ms frame time at {args.fps:g} fps.",
            "",
        ]
    lines += [
        "Codec alone (aiortc's VP8 classes, one thread, CPU ms per frame; per stream the node decodes the camera and "
        "encodes the result once per consumer):",
        "",
        "| frame | VP8 encode | VP8 decode | rgb↔yuv | total | of frame time at 15 fps | at 30 fps |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c in codec.items():
        total = c["encode_ms"] + c["decode_ms"] + c["convert_ms"]
        lines.append(
            f"| {label} | {c['encode_ms']:.2f} | {c['decode_ms']:.2f} | {c['convert_ms']:.2f} | {total:.2f} "
            f"| {total / (1000 / 15):.0%} | {total / (1000 / 30):.0%} |"
        )
    bad = [r for r in runs if r.mismatched]
    if bad:
        lines += ["", f"Warning: {sum(r.mismatched for r in bad)} pass-through frames had a counter ≠ their pts."]
    return "\n".join(lines) + "\n"


async def measure(args: argparse.Namespace) -> tuple[str, list[int], list[Run]]:
    size = tuple(args.size)
    runs = []
    variants = [(True, "WebRTC")] + ([(False, "WebRTC, aiortc's stock jitter buffer")] if args.compare_stock else [])
    model_name = "?"
    for marker, label in variants:
        enable_marker_frames(marker)  # this process is an aiortc receiver too: same buffer as the node
        flags = [*args.node_flag, *([] if marker else ["--no-webrtc-marker-frames"])]
        proc, ev = await start_node(flags)
        ev["pid"] = proc.pid
        try:
            async with aiohttp.ClientSession() as http, http.get(ev["http"] + "/config.json") as r:
                model_name = (await r.json())["model"]
            for model in (True, False):
                runs.append(await webrtc_run(ev, size, args.fps, args.seconds, args.warmup, model, label))
                print(runs[-1].row(args.fps), flush=True)
                await asyncio.sleep(args.media_gap)  # the previous session is reaped before the next run
                if marker:
                    runs.append(await zmq_run(ev, size, args.fps, args.seconds, args.warmup, model))
                    print(runs[-1].row(args.fps), flush=True)
                    await asyncio.sleep(args.media_gap)
        finally:
            proc.terminate()
            await proc.wait()
    from vidfx.config import Settings

    settings = Settings()
    return model_name, [settings.model.width, settings.model.height], runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring, per run")
    p.add_argument("--media-gap", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--node-flag", action="append", default=[], help="extra `vidfx serve` flag (repeatable)")
    p.add_argument("--no-compare-stock", dest="compare_stock", action="store_false",
                   help="skip the runs with aiortc's stock jitter buffer")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = p.parse_args(argv)
    model_name, resolution, runs = asyncio.run(measure(args))
    codec = {f"{w}×{h}": codec_cost((w, h)) for w, h in (tuple(args.size), (640, 480))}
    text = report(args, model_name, resolution, runs, codec)
    print(text)
    if not args.no_write:
        update_section(SECTION, text, RESULTS)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
