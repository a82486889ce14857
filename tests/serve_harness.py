"""`vidfx serve` as a subprocess on ephemeral loopback ports, and real ZeroMQ/HTTP clients to talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import zmq
import zmq.asyncio
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
FAST_FLAGS = ["--model-threads", "1", "--model-warmup-chunks", "1"]


class NodeOutput:
    """A `vidfx serve` subprocess's JSON event lines (stdout) and log lines (stderr)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.endpoints: dict[str, str] = {}
        self.events: list[dict] = []
        self.stderr: list[str] = []

    async def wait_event(self, name: str, timeout: float = 90.0) -> dict:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("event") == name:
                    return ev
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(deadline - time.monotonic(), 0.01))
            if not line:
                raise RuntimeError(f"node exited before {name!r}:\n" + "".join(self.stderr[-40:]))
            with suppress(json.JSONDecodeError):
                self.events.append(json.loads(line))

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))


class NodeProcess(NodeOutput):
    def __init__(self, proc: asyncio.subprocess.Process, ctx: zmq.asyncio.Context) -> None:
        super().__init__(proc)
        self.ctx = ctx
        self._sockets: list[zmq.asyncio.Socket] = []

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise

    def close_sockets(self) -> None:
        for s in self._sockets:
            s.close(0)

    # -- clients --------------------------------------------------------------------------------------------
    async def publisher(self) -> zmq.asyncio.Socket:
        """An XPUB connected to the node's input, returned once the node's subscription has arrived (no frame
        sent earlier can be lost to the PUB/SUB slow-joiner race)."""
        pub = self._track(self.ctx.socket(zmq.XPUB))
        pub.setsockopt(zmq.SNDHWM, 100_000)
        pub.connect(self.endpoints["input"])
        msg = await asyncio.wait_for(pub.recv(), 10)
        assert msg[:1] == b"\x01"
        return pub

    async def subscriber(self) -> zmq.asyncio.Socket:
        """A SUB on the node's output, returned once the node counts it as a subscriber."""
        return await self.subscriber_with_token(None)

    async def subscriber_with_token(self, token: str | None) -> zmq.asyncio.Socket:
        status = {"op": "status"} | ({"token": token} if token else {})
        poller = self.dealer()  # its own identity (it still shares the per-address budget, 4x a client's)
        before = (await self.control(status, sock=poller)).get("output_subscribers", 0)
        sub = self._track(self.ctx.socket(zmq.SUB))
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.endpoints["output"])
        deadline = time.monotonic() + 10
        while (await self.control(status, sock=poller)).get("output_subscribers", 0) <= before:
            assert time.monotonic() < deadline, "the node never saw the subscription"
            await asyncio.sleep(0.05)
        return sub

    def dealer(self, curve: bool = True) -> zmq.asyncio.Socket:
        d = self._track(self.ctx.socket(zmq.DEALER), curve)
        d.connect(self.endpoints["control"])
        return d

    async def control(self, msg: dict | bytes, sock: zmq.asyncio.Socket | None = None, timeout: float = 10) -> dict:
        if sock is None:
            if not hasattr(self, "_dealer"):
                self._dealer = self.dealer()
            sock = self._dealer

        async def exchange() -> bytes:
            await sock.send(msg if isinstance(msg, bytes) else msgpack.packb(msg))
            return await sock.recv()

        # The send is inside the timeout too: a DEALER with no connected peer (a plain client whose handshake a
        # CURVE node refused) blocks on send, not only on recv.
        return msgpack.unpackb(await asyncio.wait_for(exchange(), timeout))

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as name{label=value,...} → value."""
        async with aiohttp.ClientSession() as http, http.get(self.endpoints["http"] + "/metrics") as r:
            text = await r.text()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    async def get(self, path: str) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.get(self.endpoints["http"] + path) as r:
            return r.status, await r.json()

    def _track(self, s: zmq.asyncio.Socket, curve: bool = True) -> zmq.asyncio.Socket:
        s.setsockopt(zmq.LINGER, 0)
        if curve and "curve_public_key" in self.endpoints:  # the node encrypts: be a CURVE client
            s.curve_serverkey = self.endpoints["curve_public_key"].encode()
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        self._sockets.append(s)
        return s


async def send_frame(pub: zmq.asyncio.Socket, stream: str, seq: int, pixels: np.ndarray, pts_us: int | None = None,
                     **extra: object) -> None:  # fmt: skip
    h, w = pixels.shape[:2]
    header = {"v": 1, "stream": stream, "seq": seq, "pts_us": seq * 33_333 if pts_us is None else pts_us,
              "w": w, "h": h, "fmt": "rgb24", **extra}  # fmt: skip
    await pub.send_multipart([msgpack.packb(header), np.ascontiguousarray(pixels).tobytes()])


async def recv_frame(sub: zmq.asyncio.Socket, timeout: float = 20) -> tuple[dict, np.ndarray]:
    header_b, pixels_b = await asyncio.wait_for(sub.recv_multipart(), timeout)
    header = msgpack.unpackb(header_b)
    return header, np.frombuffer(pixels_b, np.uint8).reshape(header["h"], header["w"], 3)


async def recv_frames(sub: zmq.asyncio.Socket, n: int, timeout: float = 30) -> list[tuple[dict, np.ndarray]]:
    deadline = time.monotonic() + timeout
    return [await recv_frame(sub, max(deadline - time.monotonic(), 0.01)) for _ in range(n)]


def make_video(n: int, h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A moving gradient with a square: (n, h, w, 3) uint8, smooth like camera frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([(xx * 2 + i * 5 + base[0]) % 256, (yy * 2 + base[1]) % 256, np.full_like(xx, base[2])], -1)
        x0 = (i * 4) % (w - 24)
        img[20:44, x0 : x0 + 24] = 255
        out[i] = img
    return out


@asynccontextmanager
async def running_node(*flags: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                       wait_ready: bool = True) -> AsyncIterator[NodeProcess]:  # fmt: skip
    """`vidfx serve` with every socket on an ephemeral loopback port; SIGTERM (and a wait) on exit."""
    cmd = [sys.executable, "-m", "vidfx.cli", "serve", "--zmq-input", "tcp://127.0.0.1:*",
           "--zmq-output", "tcp://127.0.0.1:*", "--zmq-control", "tcp://127.0.0.1:*", "--http-port", "0",
           *FAST_FLAGS, *flags]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(cwd or REPO / "tests"),
        env=full_env,
    )  # fmt: skip
    ctx = zmq.asyncio.Context()
    node = NodeProcess(proc, ctx)
    pump = asyncio.create_task(node._pump_stderr())
    try:
        node.endpoints = {k: v for k, v in (await node.wait_event("listening")).items() if k != "event"}
        if wait_ready:
            ready = await node.wait_event("ready")
            node.endpoints.update({k: v for k, v in ready.items() if k not in ("event", "model")})
        yield node
    finally:
        node.close_sockets()
        ctx.term()
        if proc.returncode is None:
            await node.terminate()
        pump.cancel()
        with suppress(asyncio.CancelledError):
            await pump
