"""WebRTC test clients: real aiortc peers (page-style /offer, WHIP publisher, WHEP viewer) against `vidfx serve`
running as a subprocess on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import zmq
import zmq.asyncio
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from tests.serve_harness import NodeOutput
from vidfx.webrtc.gateway import enable_loopback_candidates
from vidfx.webrtc.stamp import SyntheticVideoTrack, read_counter

REPO = Path(__file__).resolve().parents[1]
# Small and quick: the tiny model at 64x64 on one thread, one warm-up chunk.
NODE_FLAGS = [
    "--model-threads", "1", "--model-warmup-chunks", "1", "--model-width", "64", "--model-height", "64",
    "--webrtc-loopback-candidates",
]  # fmt: skip


class Node(NodeOutput):
    @property
    def url(self) -> str:
        return self.endpoints["http"]

    def crashed(self) -> str:
        """'' while the node runs; its exit code and last log lines once it has died (for failure messages)."""
        if self.proc.returncode is None:
            return ""
        return f"node exited with {self.proc.returncode}:\n" + "".join(self.stderr[-30:])

    async def status(self, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + "/webrtc/status", headers=headers) as r:
                assert r.status == 200, await r.text()
                return await r.json()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.2)  # let the exit code arrive
            raise AssertionError(self.crashed() or "the node stopped answering") from None

    async def control(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """One msgpack control exchange on the node's ZeroMQ ROUTER (e.g. pause a WHIP-fed stream)."""
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoints["control"])
        try:
            await sock.send(msgpack.packb(msg))
            return msgpack.unpackb(await asyncio.wait_for(sock.recv(), timeout))
        finally:
            sock.close()

    async def wait_for(self, predicate: Any, timeout: float, what: str, token: str | None = None) -> float:
        """Poll /webrtc/status until predicate(status) holds; returns the seconds it took."""
        start = time.monotonic()
        while True:
            st = await self.status(token)
            if predicate(st):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout} s; status {st}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_node(*flags: str, env: dict[str, str] | None = None) -> AsyncIterator[Node]:
    """`vidfx serve` with every socket on an ephemeral loopback port; SIGTERM and a wait on exit."""
    cmd = [sys.executable, "-m", "vidfx.cli", "serve", "--zmq-input", "tcp://127.0.0.1:*",
           "--zmq-output", "tcp://127.0.0.1:*", "--zmq-control", "tcp://127.0.0.1:*", "--http-port", "0",
           *NODE_FLAGS, *flags]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(REPO / "tests"), env=full_env
    )
    node = Node(proc)
    pump = asyncio.create_task(node._pump_stderr())
    try:
        ready = await node.wait_event("ready")
        node.endpoints = {k: v for k, v in ready.items() if k not in ("event", "model")}
        yield node
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        pump.cancel()
        with suppress(asyncio.CancelledError):
            await pump


# -- client peers ----------------------------------------------------------------------------------------------------


def new_pc() -> RTCPeerConnection:
    enable_loopback_candidates()  # the node offers 127.0.0.1 too; so do we (machines with no other interface)
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


@dataclass
class Received:
    """Frames a client got: arrival time, pts, time_base, and the pixels (H, W, 3)."""

    times: list[float] = field(default_factory=list)
    pts: list[int] = field(default_factory=list)
    time_base: list[Any] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __len__(self) -> int:
        return len(self.times)

    def counters(self, start: int = 0) -> list[int | None]:
        return [read_counter(p) for p in self.pixels[start:]]

    def since(self, t: float) -> int:
        return sum(1 for x in self.times if x >= t)


@dataclass
class AudioReceived:
    """Audio frames a client got: arrival time, RMS level (int16 units) and sample rate of each."""

    times: list[float] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)
    rates: list[int] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __len__(self) -> int:
        return len(self.times)


def collect_audio(track: MediaStreamTrack, into: AudioReceived) -> asyncio.Task[None]:
    async def pull() -> None:
        try:
            while True:
                frame = await track.recv()
                into.times.append(time.monotonic())
                into.rms.append(float(np.sqrt(np.mean(frame.to_ndarray().astype(np.float64) ** 2))))
                into.rates.append(frame.sample_rate)
        except MediaStreamError:
            pass
        finally:
            into.ended.set()

    return asyncio.ensure_future(pull())


def collect(track: MediaStreamTrack, into: Received) -> asyncio.Task[None]:
    async def pull() -> None:
        try:
            while True:
                frame = await track.recv()
                into.times.append(time.monotonic())
                into.pts.append(frame.pts)
                into.time_base.append(frame.time_base)
                into.pixels.append(frame.to_ndarray(format="rgb24"))
        except MediaStreamError:
            pass
        finally:
            into.ended.set()

    return asyncio.ensure_future(pull())


async def wait_frames(rx: Received, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(rx) < n:
        assert time.monotonic() < deadline, f"only {len(rx)} of {n} frames arrived within {timeout} s"
        await asyncio.sleep(0.05)


@dataclass
class PagePeer:
    """What the page does: one sendrecv video transceiver + a `control` data channel, signalled by /offer."""

    pc: RTCPeerConnection
    source: SyntheticVideoTrack
    channel: Any
    rx: Received
    replies: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    answer: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    audio_rx: AudioReceived = field(default_factory=AudioReceived)

    async def control(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        n = len(self.replies)
        self.channel.send(msgpack.packb(msg))
        deadline = time.monotonic() + timeout
        while len(self.replies) == n:
            assert time.monotonic() < deadline, f"no reply to {msg}"
            await asyncio.sleep(0.02)
        return self.replies[n]

    async def close(self) -> None:
        await self.pc.close()
        for t in self.tasks:
            t.cancel()


async def open_page_peer(
    url: str, fps: float = 15.0, size: tuple[int, int] = (128, 96), audio: MediaStreamTrack | None = None, **body: Any
) -> PagePeer:
    """`audio`: also send this track sendrecv (the node returns it, delayed to match the stylised video)."""
    pc = new_pc()
    source = SyntheticVideoTrack(size[0], size[1], fps=fps)
    pc.addTransceiver(source, direction="sendrecv")
    if audio is not None:
        pc.addTransceiver(audio, direction="sendrecv")
    channel = pc.createDataChannel("control")
    peer = PagePeer(pc, source, channel, Received(), [], [])

    def on_message(message: bytes) -> None:
        obj = msgpack.unpackb(message)
        (peer.stats if obj.get("event") == "stats" else peer.replies).append(obj)

    channel.on("message", on_message)
    pc.on(
        "track",
        lambda track: peer.tasks.append(
            collect_audio(track, peer.audio_rx) if track.kind == "audio" else collect(track, peer.rx)
        ),
    )
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        payload = {"sdp": pc.localDescription.sdp, "type": "offer", **body}
        async with http.post(url + "/offer", json=payload) as r:
            assert r.status == 200, f"{r.status}: {await r.text()}"
            peer.answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(peer.answer["sdp"], "answer"))
    deadline = time.monotonic() + 10
    while channel.readyState != "open":
        assert time.monotonic() < deadline, "the control channel never opened"
        await asyncio.sleep(0.02)
    return peer


@dataclass
class WhipClient:
    """A WHIP publisher (sendonly video) or WHEP viewer (recvonly video) as an RFC 9725 client does it."""

    pc: RTCPeerConnection
    status: int
    headers: Any
    body: str
    base: str
    rx: Received = field(default_factory=Received)
    source: SyntheticVideoTrack | None = None
    audio_rx: AudioReceived = field(default_factory=AudioReceived)

    @property
    def location(self) -> str:
        return self.base + self.headers["Location"]

    async def delete(self, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.delete(self.location, headers=headers) as r:
            return r.status


async def whip_exchange(
    base: str, path: str, pc: RTCPeerConnection, token: str | None = None, content_type: str = "application/sdp"
) -> tuple[int, Any, str]:
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(base + path, data=pc.localDescription.sdp, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.text()


async def whip_publish(base: str, stream: str | None = None, token: str | None = None, fps: float = 15.0) -> WhipClient:
    pc = new_pc()
    source = SyntheticVideoTrack(128, 96, fps=fps)
    pc.addTransceiver(source, direction="sendonly")
    status, headers, body = await whip_exchange(base, "/whip" + (f"/{stream}" if stream else ""), pc, token)
    client = WhipClient(pc, status, headers, body, base, source=source)
    if status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return client


async def whep_view(base: str, stream: str, token: str | None = None, audio: bool = False) -> WhipClient:
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    client = WhipClient(pc, 0, {}, "", base)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            collect_audio(track, client.audio_rx)
        else:
            collect(track, client.rx)

    client.status, client.headers, client.body = await whip_exchange(base, f"/whep/{stream}", pc, token)
    if client.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(client.body, "answer"))
    return client


class ForeignRsaCertificate(RTCCertificate):
    """An RSA DTLS certificate with an OpenSSL-default cipher list, as GStreamer's webrtcbin and many media servers
    carry: as DTLS server it can only pick an ECDHE-RSA suite, which stock aiortc never offers."""

    @classmethod
    def generate(cls) -> ForeignRsaCertificate:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self._cert)
        ctx.use_privatekey(self._key)
        ctx.set_cipher_list(b"ALL:!ADH:!LOW:!EXP:!MD5:!RC4:!DSS:@STRENGTH")  # GStreamer's gstdtlsagent list
        ctx.set_tlsext_use_srtp(b":".join(x.openssl_profile for x in srtp_profiles))
        return ctx


def use_rsa_certificate(pc: RTCPeerConnection) -> None:
    """Give a (not yet negotiated) aiortc peer an RSA certificate instead of its ECDSA one. Reaches into aiortc's
    private state on purpose: if that changes, the tests using it fail loudly rather than test nothing."""
    assert isinstance(pc._RTCPeerConnection__certificates, list)  # type: ignore[attr-defined]
    pc._RTCPeerConnection__certificates = [ForeignRsaCertificate.generate()]  # type: ignore[attr-defined]


@dataclass
class AvSync:
    """Audio − video arrival at a WHEP viewer for clicks and flashes sent in the same instant (ms, one per pair),
    passed through (paused) and stylised; the node's audio delay in each phase."""

    paused_ms: list[float]
    model_ms: list[float]
    audio_delay_ms: dict[str, float]
    video_frames: int
    audio_frames: int


async def measure_av_sync(node: Node, stream: str, seconds: float = 8.0, video_codec: str | None = None) -> AvSync:
    """Publish a `FlashClick` source over WHIP (video + audio), watch it over WHEP with audio, and pair every
    click with its flash at the viewer: first with the stream paused (frames pass through unchanged, which also
    gives the flash frames' pts phase), then stylised for `seconds`."""
    from aiortc import RTCRtpSender

    from vidfx.webrtc.stamp import FlashClick, at_phase, av_offsets, flash_phase, onsets

    src = FlashClick(128, 96, fps=15.0, period_s=1.0)
    period = 90_000  # pts ticks per flash: 1 s on the 90 kHz video clock
    pc = new_pc()
    video = pc.addTransceiver(src.video, direction="sendonly")
    if video_codec is not None:
        codecs = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in codecs if c.mimeType == video_codec])
    pc.addTransceiver(src.audio, direction="sendonly")
    status, headers, answer = await whip_exchange(node.url, f"/whip/{stream}", pc)
    assert status == 201, answer
    key = headers["X-Vidfx-Stream-Key"]  # the publisher's stream key: what steering its stream takes
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    viewer = await whep_view(node.url, stream, audio=True)
    assert viewer.status == 201, viewer.body
    rx, arx = viewer.rx, viewer.audio_rx
    phase: int | None = None

    async def offsets_over(settle: float, length: float) -> tuple[list[float], float]:
        """Wait, then pair the clicks and flashes that arrived in the last `length` s; and the node's audio delay."""
        nonlocal phase
        start = time.monotonic() + settle
        await asyncio.sleep(settle + length)
        delay = (await node.status())["outputs"][stream]["audio_delay_ms"]
        vi = [k for k in range(len(rx)) if rx.times[k] >= start]
        ai = [k for k in range(len(arx)) if arx.times[k] >= start]
        rel = [(rx.pts[k] - rx.pts[0]) % 2**32 for k in vi]
        times = [rx.times[k] for k in vi]
        if phase is None:
            phase = flash_phase(times, rel, [float(rx.pixels[k].mean()) for k in vi], 25.0, period)
            assert phase is not None, "no flash seen while frames passed through"
        clicks = onsets([arx.times[k] for k in ai], [arx.rms[k] for k in ai], rise=3000.0)
        return [1000 * o for o in av_offsets(at_phase(times, rel, phase, period), clicks, 1.0)], delay

    try:
        await wait_frames(rx, 5, timeout=30)
        assert (await node.control({"op": "pause", "stream": stream, "key": key}))["ok"]
        paused, paused_delay = await offsets_over(3.5, 4.0)  # the delay follows the video down within ~3 s
        assert (await node.control({"op": "resume", "stream": stream, "key": key}))["ok"]
        model, model_delay = await offsets_over(2.5, seconds)
        return AvSync(paused, model, {"paused": paused_delay, "model": model_delay}, len(rx), len(arx))
    finally:
        await pc.close()
        await viewer.pc.close()
