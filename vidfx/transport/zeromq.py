"""ZeroMQ transport: the data plane (input SUB, output XPUB) and the control channel (ROUTER).

Data: two-part messages `[msgpack header, raw rgb24 pixels]`, or three with the frame's audio (see
`vidfx.protocol`); the audio goes back out as the third part of that frame's output. One session per `stream`
id, opened on its first frame. The input socket keeps a small receive HWM and the receive loop drains every
queued message at once, handing each to its session, whose bounded pending buffer keeps only the newest frames
(CONFLATE would be simpler but drops multipart messages' parts). Output is an XPUB so the node can count its
subscribers (status, /metrics); it publishes like a PUB and never blocks (frames beyond the HWM are dropped by
ZeroMQ for that subscriber only).

Control: a ROUTER; the last frame of a message is the msgpack request, the frames before it (identity, and
the empty delimiter of REQ clients) are echoed back with the reply, so DEALER and REQ clients both work.

Who sent a frame: a SUB socket does not say which connection a message came from, so the node runs a ZAP
handler (`ConnectionIds`, ZeroMQ's own authentication hook, RFC 27) that every connection's handshake passes
through and that gives each connection a unique User-Id; libzmq then stamps every message of that connection
with it (`zmq.Frame.get("User-Id")`), next to its `Peer-Address`. A stream belongs to the connection that
opened it (docs/serving.md, "Stream ownership"); quotas apply per connection (frame rate, streams fed) and,
for control, per client identity and per peer address.

This module knows frames, sockets and sessions — nothing about models.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from vidfx.config import Settings
from vidfx.protocol import (
    FRAME_FORMATS,
    FrameHeader,
    ProtocolError,
    check_audio_part,
    check_token,
    frame_header,
    pack,
    parse_frame,
)
from vidfx.stream.control import ControlHandler, RateLimiter
from vidfx.stream.engine import Engine, SessionLimitError
from vidfx.stream.session import AudioPart, OutputFrame, Session

log = logging.getLogger("vidfx.zmq")

_DRAIN_MAX = 1024  # messages handled per wake-up before yielding to the rest of the loop


def curve_public_key(settings: Settings) -> str | None:
    """The Z85 public key clients need (`socket.curve_serverkey`), when CURVE is on."""
    key = settings.zmq.curve_secret_key
    return zmq.curve_public(key.get_secret_value().encode()).decode() if key else None


def _secure(sock: zmq.asyncio.Socket, settings: Settings) -> None:
    """CURVE server role (independent of bind/connect): traffic is encrypted, and only clients that know the
    node's public key can talk to it."""
    key = settings.zmq.curve_secret_key
    if key is not None:
        sock.curve_secretkey = key.get_secret_value().encode()
        sock.curve_server = True


def _property(frame: zmq.Frame, name: str) -> str:
    """A message property libzmq attached on receipt ("" when the transport has none, e.g. inproc)."""
    try:
        return str(frame.get(name))
    except zmq.ZMQError:
        return ""


class ConnectionIds:
    """The context's ZAP handler: lets every connection in (access control is the token's and CURVE's job) and
    names each one `c<N>`, which libzmq then attaches to each of its messages as the `User-Id` property.

    Lifecycle: bound on the context before any socket that uses it; `run` answers until cancelled; one per
    context (ZeroMQ's fixed endpoint)."""

    ENDPOINT = "inproc://zeromq.zap.01"
    DOMAIN = b"vidfx"  # sockets with a ZAP domain go through the handler even without CURVE

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.ENDPOINT)
        self.issued = 0

    async def run(self) -> None:
        while True:
            msg = await self.socket.recv_multipart()
            try:
                split = msg.index(b"")
                envelope, request = msg[: split + 1], msg[split + 1 :]
                version, request_id = request[0], request[1]
            except (ValueError, IndexError):
                continue  # not a ZAP request: libzmq never sends one
            self.issued += 1
            reply = [version, request_id, b"200", b"OK", f"c{self.issued}".encode(), b""]
            await self.socket.send_multipart([*envelope, *reply])

    def close(self) -> None:
        self.socket.close(0)


def _open(sock: zmq.asyncio.Socket, address: str, bind: bool) -> str:
    """Bind or connect; returns the endpoint actually used (a bound `*` port is resolved)."""
    if bind:
        sock.bind(address)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.connect(address)
    return address


class ZmqDataPlane:
    def __init__(self, ctx: zmq.asyncio.Context, engine: Engine, settings: Settings, token: str | None) -> None:
        z, lim = settings.zmq, settings.limits
        self.engine = engine
        self.limits = lim
        self.token = token
        self.connections = ConnectionIds(ctx)  # before the input socket: its handshakes need it
        self.frame_rate = RateLimiter(lim.frames_per_connection, max(1, round(2 * lim.frames_per_connection)))
        self.input = ctx.socket(zmq.SUB)
        self.input.setsockopt(zmq.ZAP_DOMAIN, ConnectionIds.DOMAIN)
        self.input.setsockopt(zmq.RCVHWM, z.rcvhwm)
        # A peer sending anything larger than the largest allowed frame is disconnected by ZeroMQ itself.
        self.input.setsockopt(
            zmq.MAXMSGSIZE, max(lim.max_width * lim.max_height * max(FRAME_FORMATS.values()), lim.max_audio_bytes)
        )
        self.input.setsockopt(zmq.LINGER, 0)
        self.input.setsockopt(zmq.SUBSCRIBE, b"")
        self.output = ctx.socket(zmq.XPUB)
        self.output.setsockopt(zmq.SNDHWM, z.sndhwm)
        self.output.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, so subscribers can be counted
        self.output.setsockopt(zmq.LINGER, 0)
        _secure(self.input, settings)
        _secure(self.output, settings)
        self._input_now = zmq.Socket.shadow(self.input.underlying)  # same socket, synchronous API
        self.input_endpoint = _open(self.input, z.input, z.input_bind)
        self.output_endpoint = _open(self.output, z.output, z.output_bind)
        self.subscribers = 0
        self._warned: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(self.connections.run(), self._receive(), self._watch_subscribers())

    async def _receive(self) -> None:
        while True:
            parts = await self.input.recv_multipart(copy=False)
            self._handle(parts)
            for _ in range(_DRAIN_MAX):
                try:  # the plain socket: a non-blocking receive needs no Future (a flood's cost is per message)
                    parts = self._input_now.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(parts)

    def _handle(self, parts: list[zmq.Frame]) -> None:
        metrics = self.engine.metrics
        metrics.frames_received.inc()
        connection = "zmq:" + (_property(parts[0], "User-Id") or _property(parts[0], "Peer-Address"))
        if not self.frame_rate.allow(connection):  # before any parsing: a flood costs little
            metrics.drop("quota")
            self._warn_once("rate", f"dropping frames of a connection over {self.limits.frames_per_connection:g}/s")
            return
        try:
            if len(parts) not in (2, 3):
                raise ProtocolError(f"a frame is 2 message parts (header, pixels) or 3 (+ audio), got {len(parts)}")
            header = parse_frame(parts[0].bytes, parts[1].buffer, self.limits)
            check_audio_part(header, len(parts[2].buffer) if len(parts) == 3 else None, self.limits)
            if header.key is not None and len(header.key) < 16:
                raise ProtocolError("a stream key must be at least 16 characters")
        except ProtocolError as exc:
            metrics.drop("malformed")
            self._warn_once("malformed", f"dropping malformed frame: {exc}")
            return
        if not check_token(header.token, self.token):
            metrics.drop("unauthorized")
            self._warn_once("unauthorized", "dropping frames without the right token")
            return
        session = self._owned_session(header, connection, _property(parts[0], "Peer-Address"))
        if session is None:
            return
        pixels = np.frombuffer(parts[1].buffer, np.uint8).reshape(header.h, header.w, 3)  # zero-copy view
        audio = None
        if header.audio is not None:
            audio = AudioPart(parts[2].bytes, header.audio.rate, header.audio.channels)
        session.submit(pixels, header.pts_us, header.seq, audio=audio)

    def _owned_session(self, header: FrameHeader, connection: str, address: str) -> Session | None:
        """The session `connection` may feed with this frame: its own, a new one (claimed by this frame), or one
        it claims or takes back with the stream's key. None (counted) otherwise."""
        metrics = self.engine.metrics
        stream = header.stream
        session = self.engine.session(stream)
        if session is None:
            fed = sum(1 for s in self.engine.sessions.values() if s.owner == connection)
            if fed >= self.limits.sessions_per_connection:
                metrics.drop("quota")
                self._warn_once("quota", f"dropping stream {stream}: its connection already feeds {fed} streams")
                return None
            try:
                return self.engine.open_session(
                    stream, sink=self.publish, owner=connection, opened_by=address, key=header.key
                )
            except SessionLimitError:
                metrics.drop("too_many_sessions")
                self._warn_once("too_many_sessions", f"dropping stream {stream}: all sessions in use")
            except PermissionError:
                metrics.drop("foreign")
                self._warn_once("foreign", f"dropping stream {stream}: its configured key was not given")
            return None
        if session.owner == connection:
            return session
        if (session.owner is None or session.owner.startswith("zmq:")) and session.key_matches(header.key):
            # Claimed by a control client, or its publisher reconnected (a new connection): the key proves it.
            log.info("stream %s now fed by connection %s", stream, connection)
            session.owner = connection
            if session.sink is None:
                session.sink = self.publish
            return session
        session.refuse()
        self._warn_once("foreign", f"refusing frames for stream {stream}: it belongs to another publisher")
        return None

    def publish(self, frame: OutputFrame) -> None:
        h, w = frame.pixels.shape[:2]
        # A non-blocking send on the asyncio socket resolves at once; its failure is in the future, not raised.
        a = frame.audio
        parts: list[Any] = [
            frame_header(frame.stream, frame.seq, frame.pts_us, w, h, None if a is None else (a.rate, a.channels)),
            np.ascontiguousarray(frame.pixels),
        ]
        if a is not None:
            parts.append(a.pcm)
        sent = self.output.send_multipart(parts, flags=zmq.NOBLOCK)
        if sent.done() and sent.exception() is not None:  # Again: no peer yet in connect mode
            self.engine.metrics.drop("output_overflow")

    async def _watch_subscribers(self) -> None:
        while True:
            msg = await self.output.recv()
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            self.engine.metrics.output_subscribers.set(self.subscribers)
            self.engine.transport_status["output_subscribers"] = self.subscribers

    def _warn_once(self, kind: str, message: str) -> None:
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        log.log(level, message)

    def close(self) -> None:
        self.input.close(0)
        self.output.close(0)
        self.connections.close()


class ZmqControl:
    def __init__(self, ctx: zmq.asyncio.Context, handler: ControlHandler, settings: Settings) -> None:
        self.handler = handler
        self.socket = ctx.socket(zmq.ROUTER)
        # Messages up to this transport bound get a clear "exceeds the limit" reply from the handler; only beyond
        # it does ZeroMQ drop the connection.
        lim = settings.limits
        self.socket.setsockopt(zmq.MAXMSGSIZE, max(lim.control_transport_bytes, 4 * lim.max_control_bytes))
        self.socket.setsockopt(zmq.RCVHWM, 256)
        self.socket.setsockopt(zmq.SNDHWM, 256)
        self.socket.setsockopt(zmq.LINGER, 0)
        _secure(self.socket, settings)
        self.endpoint = _open(self.socket, settings.zmq.control, bind=True)

    async def run(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            envelope, payload = [f.bytes for f in frames[:-1]], frames[-1]
            client = envelope[0].hex()
            # The peer address is the rate limit's second key: a client cannot reset it by changing identity.
            address = _property(payload, "Peer-Address") or client
            reply: dict[str, Any] = self.handler.handle(payload.bytes, client=client, address=address)
            try:
                await self.socket.send_multipart([*envelope, pack(reply)], flags=zmq.NOBLOCK)
            except zmq.ZMQError:  # the client is gone or not reading: its reply is dropped, nobody else's
                log.debug("reply to %s dropped", client)

    def close(self) -> None:
        self.socket.close(0)
