"""WebRTC peers of the node: publishers (the page's `/offer`, WHIP) feeding engine sessions, viewers (WHEP, and
the page's own return video) playing a session's stylised output.

A `Peer` owns one RTCPeerConnection. Its lifecycle: created by `WebRTCGateway.publish` / `.view` (slot taken,
offer applied, ICE gathered, answer ready) → connected (ICE + DTLS) → closed by exactly one of: the client
(DELETE, hang-up, DTLS close), the watchdog (not connected within `connect_timeout_s`; a publisher silent for
`media_timeout_s`; its session closed by the engine) or the node shutting down. Closing frees the slot at once,
closes the publisher's engine session and the stream's output, and with it every viewer of that stream.

Everything here runs on the event loop; pixels are converted on the gateway's thread pool and the model runs
on the engine's worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import SessionDescription
from prometheus_client import Counter, Gauge

from vidfx.config import Settings, WebRTCSettings
from vidfx.protocol import ProtocolError, check_stream_id, pack, reply_error, unpack_map
from vidfx.stream.control import ControlHandler
from vidfx.stream.engine import Engine, SessionLimitError
from vidfx.stream.session import Session
from vidfx.transport import auth
from vidfx.webrtc.aiortc_adjust import adjust_aiortc
from vidfx.webrtc.media import AudioIngest, AudioOutputTrack, IngestPump, OutputTrack, StreamOutput

log = logging.getLogger("vidfx.webrtc")

Role = Literal["publisher", "viewer"]
Via = Literal["offer", "whip", "whep"]
# Why a peer ended (the metric's label; the status also keeps the sentence).
CloseKind = Literal[
    "hangup", "delete", "connect_timeout", "media_timeout", "session_closed", "stream_ended", "connection",
    "signalling", "shutdown",
]  # fmt: skip
_STREAM_OPS = ("set", "reset", "pause", "resume", "status")
FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){15,63}")  # RFC 8122: 16-64 hex bytes
# The video directions each signalling path accepts: WHIP publishers send, WHEP viewers receive, the page does
# both (sendrecv: its stylised video comes back on the same m-line) or only sends.
OFFER_DIRECTIONS: dict[Via, tuple[str, ...]] = {
    "whip": ("sendonly",), "whep": ("recvonly",), "offer": ("sendrecv", "sendonly"),
}  # fmt: skip


class SignallingError(Exception):
    """A request the gateway refuses; `status` is the HTTP status to answer with, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(auth.ConfigError):
    """WebRTC settings that would make the node unsafe or unusable."""


# -- settings helpers -----------------------------------------------------------------------------------------------


def ice_servers(settings: WebRTCSettings) -> list[RTCIceServer]:
    """STUN/TURN servers from the settings (validated: a malformed URL is a ConfigError)."""
    servers = []
    for url in settings.ice_servers:
        try:
            parsed = parse_stun_turn_uri(url)
        except ValueError as exc:
            raise ConfigError(f"webrtc.ice_servers: {url!r}: {exc}") from None
        if parsed["scheme"].startswith("turn"):
            if not settings.turn_username or settings.turn_credential is None:
                raise ConfigError(f"webrtc.ice_servers: {url!r} needs turn_username and turn_credential")
            servers.append(RTCIceServer(url, settings.turn_username, settings.turn_credential.get_secret_value()))
        else:
            servers.append(RTCIceServer(url))
    return servers


def link_headers(servers: list[RTCIceServer]) -> list[str]:
    """RFC 9725 §4.6 `Link: <url>; rel="ice-server"` values, with TURN credentials."""
    out = []
    for s in servers:
        urls = s.urls if isinstance(s.urls, list) else [s.urls]
        for url in urls:
            value = f'<{url}>; rel="ice-server"'
            if s.username is not None:
                value += f'; username="{s.username}"; credential="{s.credential}"; credential-type="password"'
            out.append(value)
    return out


def enable_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate too (it leaves loopback out). Process-wide and
    idempotent; meant for single-machine setups and test machines whose only interface is loopback."""
    import aioice.ice

    current = aioice.ice.get_host_addresses
    if getattr(current, "with_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = current(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    get_host_addresses.with_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


# -- peers ------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Peer:
    id: str
    role: Role
    via: Via
    stream: str
    pc: RTCPeerConnection
    created: float = field(default_factory=time.monotonic)
    answered_at: float | None = None  # when the answer left: the connect timeout counts from here
    connected_at: float | None = None
    last_inbound: float | None = None  # viewers: when the last packet (RTCP, DTLS) came from the client
    inbound_packets: int = 0
    session: Session | None = None  # publishers: the engine session they feed
    owns_session: bool = False  # opened by this peer (closed with it)
    ingest: IngestPump | None = None
    audio: AudioIngest | None = None  # publishers that send audio: it goes out with the stylised video
    channel: RTCDataChannel | None = None
    closed: bool = False
    close_reason: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "via": self.via,
            "stream": self.stream,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 3),
        }
        if self.ingest is not None:
            d.update(frames_in=self.ingest.frames, size=self.ingest.size)
        if self.audio is not None:
            d.update(audio_frames_in=self.audio.frames)
        return d


class WebRTCGateway:
    """Peers, their slots and the per-stream outputs. Created with the HTTP app; `attach` hands it the engine
    once the model is loaded (signalling answers 503 until then); `close` ends every peer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.webrtc
        self.token = auth.node_token(settings)  # the same rule as every other transport
        self.ice = ice_servers(self.cfg)
        if self.cfg.loopback_candidates:
            enable_loopback_candidates()
        adjust_aiortc(self.cfg.marker_frames, self.cfg.ice_gather_timeout_s)
        self.engine: Engine | None = None
        self.control: ControlHandler | None = None
        self.pool = ThreadPoolExecutor(self.cfg.convert_threads, thread_name_prefix="vidfx-webrtc")
        self.peers: dict[str, Peer] = {}
        self.outputs: dict[str, StreamOutput] = {}
        self.closed_peers = 0  # peers ended so far (any reason)
        self.recent_closes: deque[dict[str, Any]] = deque(maxlen=16)  # why the last peers ended (status)
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._gauge: Gauge | None = None
        self._ended: Counter | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        self.engine = engine
        # Auth happened at signalling; data-channel messages need no token of their own.
        self.control = ControlHandler(engine, self.settings.limits, token=None)
        registry = engine.metrics.registry
        self._gauge = Gauge("vidfx_webrtc_peers", "WebRTC peers, by role", ["role"], registry=registry)
        self._ended = Counter(
            "vidfx_webrtc_peers_closed", "WebRTC peers closed, by reason", ["reason"], registry=registry
        )
        for role in ("publisher", "viewer"):
            self._gauge.labels(role)

    async def close(self) -> None:
        """End every peer and stop the conversion threads. Idempotent."""
        if self._closing:
            return
        self._closing = True
        await asyncio.gather(*(self.close_peer(p, "shutdown", "node shutting down") for p in list(self.peers.values())))
        for out in self.outputs.values():
            out.close()
        self.outputs.clear()
        self.pool.shutdown(wait=True)

    # -- accounting -----------------------------------------------------------------------------------------------
    def count(self, role: Role) -> int:
        return sum(1 for p in self.peers.values() if p.role == role)

    def _update_gauge(self) -> None:
        if self._gauge is not None:
            for role in ("publisher", "viewer"):
                self._gauge.labels(role).set(self.count(role))  # type: ignore[arg-type]

    def _ready_engine(self) -> Engine:
        if self.engine is None or not self.engine.ready or self._closing:
            raise SignallingError(503, "the node is not ready yet (model loading)")
        return self.engine

    def status(self) -> dict[str, Any]:
        return {
            "peers": [p.info() for p in self.peers.values()],
            "publishers": self.count("publisher"),
            "viewers": self.count("viewer"),
            "max_peers": self.cfg.max_peers,
            "max_viewers": self.cfg.max_viewers,
            "closed_peers": self.closed_peers,
            "recent_closes": list(self.recent_closes),
            "outputs": {
                s: {
                    "frames_sent": o.frames_sent,
                    "dropped": o.dropped,
                    "subscribers": len(o.subscribers),
                    "audio_frames": o.audio_frames,
                    "audio_subscribers": len(o.audio_subscribers),
                    "audio_delay_ms": round(1000 * o.audio_delay_s(), 1),
                }
                for s, o in self.outputs.items()
            },
        }

    # -- signalling ------------------------------------------------------------------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice)))

    @staticmethod
    def _check_offer(sdp: str, via: Via) -> tuple[RTCSessionDescription, str]:
        """Parse and check the offer before a peer connection exists, so an offer that cannot work costs no slot
        and gets its reason at once. Returns the offer and the direction of its (first usable) video section."""
        if not sdp.strip():
            raise SignallingError(400, "empty SDP offer")
        if not sdp.lstrip().startswith("v=0"):
            raise SignallingError(400, "not an SDP offer: it must start with 'v=0'")
        try:
            parsed = SessionDescription.parse(sdp)
        except Exception as exc:  # the parser raises whatever the malformed line provokes
            raise SignallingError(400, f"malformed SDP: {type(exc).__name__}: {str(exc)[:160]}") from None
        video = [m for m in parsed.media if m.kind == "video"]
        if not video:
            raise SignallingError(400, "the SDP offer has no video m= section")
        wanted = OFFER_DIRECTIONS[via]
        sending = [m for m in video if m.direction in wanted]
        if not sending:
            what = "send only" if via == "whip" else "receive only" if via == "whep" else "send"
            raise SignallingError(400, f"the offer's video must {what} (a=({' or '.join(wanted)}) on {via.upper()})")
        supported = {c.mimeType.lower() for c in RTCRtpReceiver.getCapabilities("video").codecs} - {"video/rtx"}
        usable = [m for m in sending if any(c.mimeType.lower() in supported for c in m.rtp.codecs)]
        if not usable:
            offered = sorted({c.mimeType.split("/")[-1] for m in sending for c in m.rtp.codecs}) or ["none"]
            takes = sorted(t.split("/")[-1].upper() for t in supported)
            raise SignallingError(
                400, f"no usable video codec: offered {', '.join(offered)}; the node takes {', '.join(takes)}"
            )
        for m in parsed.media:
            fingerprints = m.dtls.fingerprints if m.dtls is not None else []
            if not fingerprints:
                raise SignallingError(400, f"the {m.kind} m= section has no DTLS a=fingerprint (or no a=setup)")
            known = [f for f in fingerprints if f.algorithm.lower() in X509_DIGEST_ALGORITHMS]
            if not known:
                algorithms = ", ".join(sorted({f.algorithm for f in fingerprints}))
                raise SignallingError(
                    400, f"unknown DTLS fingerprint hash {algorithms}: use one of {', '.join(X509_DIGEST_ALGORITHMS)}"
                )
            if not all(FINGERPRINT.fullmatch(f.value) for f in known):
                raise SignallingError(400, "malformed DTLS fingerprint: expected colon-separated hex bytes")
        return RTCSessionDescription(sdp=sdp, type="offer"), str(usable[0].direction)

    def stream_name(self, requested: str | None, via: Via, peer_id: str) -> str:
        if requested is None:
            return f"{via}-{peer_id[:8]}"
        try:
            return check_stream_id(requested, self.settings.limits)
        except ProtocolError as exc:
            raise SignallingError(400, str(exc)) from None

    async def _answer(
        self, peer: Peer, offer: RTCSessionDescription, before_answer: Callable[[], None] | None = None
    ) -> None:
        pc = peer.pc
        try:
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError, KeyError, InvalidStateError… on unusable SDP
            raise SignallingError(400, f"invalid SDP offer: {type(exc).__name__}: {str(exc)[:160]}") from None
        for t in pc.getTransceivers():
            if t.kind not in ("video", "audio"):
                t.direction = "inactive"
        if before_answer is not None:
            before_answer()
        await pc.setLocalDescription(await pc.createAnswer())  # aiortc gathers every candidate here

    async def publish(self, offer_sdp: str, via: Via, stream: str | None = None, key: str | None = None) -> Peer:
        """A client sends video (and, from the page, receives the stylised video back on the same transceiver).
        The peer owns its stream (docs/serving.md, "Stream ownership"): a stream a control client claimed is
        adopted only with its `key`; one another publisher feeds is refused."""
        engine = self._ready_engine()
        offer, direction = self._check_offer(offer_sdp, via)
        if self.count("publisher") >= self.cfg.max_peers:
            raise SignallingError(503, f"all {self.cfg.max_peers} WebRTC publisher slots are in use")
        peer_id = uuid.uuid4().hex
        name = self.stream_name(stream, via, peer_id)
        if any(p.role == "publisher" and p.stream == name for p in self.peers.values()):
            raise SignallingError(409, f"stream {name!r} already has a WebRTC publisher")
        existing = engine.session(name)
        if existing is not None and (existing.sink is not None or existing.owner is not None):
            raise SignallingError(409, f"stream {name!r} is already fed by another source")
        if existing is not None and not existing.key_matches(key):
            raise SignallingError(403, f"stream {name!r} is claimed: give its key")
        owner = f"webrtc:{peer_id}"
        peer = Peer(peer_id, "publisher", via, name, self._new_pc())
        self.peers[peer_id] = peer
        self._update_gauge()
        try:
            if existing is not None:  # claimed by a control client before any frame: adopt it (key checked)
                peer.session = existing
                existing.owner = owner
            else:
                try:
                    peer.session = engine.open_session(name, owner=owner, key=key)
                except SessionLimitError as exc:
                    raise SignallingError(503, str(exc)) from None
                except PermissionError as exc:
                    raise SignallingError(403, str(exc)) from None
                peer.owns_session = True
            output = self._output_for(peer.session, feed=True)
            peer.session.sink = output.push
            self._wire_publisher(peer)

            def return_video() -> None:
                # The page offers sendrecv and gets the stylised video back on the same m-line (and its audio,
                # delayed to match, if it sends audio sendrecv too); WHIP offers sendonly and gets nothing back.
                if via == "offer" and direction == "sendrecv":
                    peer.pc.addTrack(output.subscribe())
                    self._add_audio(peer, output, ("sendrecv",))  # the page sends audio and takes it back

            await self._answer(peer, offer, return_video)
            peer.answered_at = time.monotonic()
            peer.tasks.append(asyncio.create_task(self._watch(peer), name=f"vidfx-peer-{peer_id[:8]}"))
        except BaseException:
            await self.close_peer(peer, "signalling", "signalling failed")
            raise
        log.info("publisher %s (%s) for stream %s", peer_id[:8], via, name)
        return peer

    async def view(self, offer_sdp: str, stream: str) -> Peer:
        """A WHEP client receives the stylised video of `stream` (fed by WebRTC or ZeroMQ)."""
        engine = self._ready_engine()
        offer, _ = self._check_offer(offer_sdp, "whep")
        name = self.stream_name(stream, "whep", "")
        session = engine.session(name)
        if session is None:
            raise SignallingError(404, f"no stream {name!r} is live")
        if self.count("viewer") >= self.cfg.max_viewers:
            raise SignallingError(503, f"all {self.cfg.max_viewers} WHEP viewer slots are in use")
        peer = Peer(uuid.uuid4().hex, "viewer", "whep", name, self._new_pc())
        self.peers[peer.id] = peer
        self._update_gauge()
        try:
            output = self._output_for(session, feed=False)
            peer.pc.on("connectionstatechange", lambda: self._on_state(peer))

            def send_stream() -> None:
                peer.pc.addTrack(output.subscribe())
                self._add_audio(peer, output, ("sendonly", "sendrecv"))  # the viewer takes audio

            await self._answer(peer, offer, send_stream)
            peer.answered_at = time.monotonic()
            peer.tasks.append(asyncio.create_task(self._watch(peer), name=f"vidfx-peer-{peer.id[:8]}"))
        except BaseException:
            await self.close_peer(peer, "signalling", "signalling failed")
            raise
        log.info("viewer %s for stream %s", peer.id[:8], name)
        return peer

    @staticmethod
    def _add_audio(peer: Peer, output: StreamOutput, directions: tuple[str, ...]) -> None:
        """Send the stream's audio on the offer's audio m-line when the offer lets us (`directions`: what the offer
        allows *us*, aiortc's `_offerDirection`, the offer's own direction reversed). The stream may have no audio
        yet: the track then stays silent until a publisher with audio feeds it."""
        for t in peer.pc.getTransceivers():
            if t.kind == "audio" and t._offerDirection in directions and t.sender.track is None:
                t.sender.replaceTrack(output.subscribe_audio())
                t.direction = "sendrecv"  # answered as the offer allows: sendonly to recvonly, sendrecv to sendrecv
                return

    def find(self, peer_id: str, role: Role | None = None, stream: str | None = None) -> Peer | None:
        peer = self.peers.get(peer_id)
        if peer is None or (role is not None and peer.role != role) or (stream is not None and peer.stream != stream):
            return None
        return peer

    # -- stream outputs -------------------------------------------------------------------------------------------
    def _output_for(self, session: Session, feed: bool) -> StreamOutput:
        """The shared output of `session`: the existing one, or a new one (replacing one left from an older session
        of the same name). `feed`: the caller makes it the session's sink (a WebRTC publisher); otherwise it taps
        the session, whoever feeds it (ZeroMQ, or nobody yet)."""
        out = self.outputs.get(session.id)
        if out is not None and not out.closed and out.session is session:
            return out
        if out is not None:
            self._detach(out)
        out = StreamOutput(session.id, self.pool)
        out.session = session
        if not feed:
            session.taps.append(out.push)
        self.outputs[session.id] = out
        return out

    @staticmethod
    def _detach(out: StreamOutput) -> None:
        out.close()
        if out.session is not None and out.push in out.session.taps:
            out.session.taps.remove(out.push)

    def _release_output(self, stream: str) -> None:
        """Close a stream's output when nobody publishes or views it any more."""
        if any(p.stream == stream for p in self.peers.values()):
            return
        out = self.outputs.pop(stream, None)
        if out is not None:
            self._detach(out)

    # -- publisher wiring ----------------------------------------------------------------------------------------
    def _wire_publisher(self, peer: Peer) -> None:
        pc = peer.pc
        lim = self.settings.limits

        @pc.on("track")
        def on_track(track: Any) -> None:
            if peer.session is None:
                return
            if track.kind == "video" and peer.ingest is None:
                peer.ingest = IngestPump(track, peer.session, self.pool, lim.max_width, lim.max_height)
                peer.ingest.start()
            elif track.kind == "audio" and peer.audio is None and peer.stream in self.outputs:
                peer.audio = AudioIngest(track, self.outputs[peer.stream])
                peer.audio.start()

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "control" or peer.channel is not None:
                return
            peer.channel = channel
            channel.on("message", lambda message: self._on_control(peer, channel, message))
            peer.tasks.append(asyncio.create_task(self._send_stats(peer, channel), name=f"vidfx-stats-{peer.id[:8]}"))

        pc.on("connectionstatechange", lambda: self._on_state(peer))

    def _on_state(self, peer: Peer) -> None:
        state = peer.pc.connectionState
        if state == "connected" and peer.connected_at is None:
            peer.connected_at = time.monotonic()
        elif state in ("failed", "closed") and not peer.closed:
            self._close_soon(peer, "connection", f"connection {state}")

    def _on_control(self, peer: Peer, channel: RTCDataChannel, message: bytes | str) -> None:
        """A msgpack control map on the data channel → the same handler as the ZeroMQ ROUTER; the stream defaults
        to the peer's own."""
        assert self.control is not None
        if isinstance(message, str):
            reply = reply_error("control messages are msgpack maps sent as binary")
        else:
            try:
                obj = unpack_map(message, self.settings.limits.max_control_bytes)
            except ProtocolError as exc:
                reply = reply_error(str(exc))
            else:
                if obj.get("op") in _STREAM_OPS and "stream" not in obj:
                    obj["stream"] = peer.stream
                reply = self.control.handle(obj, client=f"webrtc-{peer.id}", own_stream=peer.stream)
        if channel.readyState == "open":
            channel.send(pack(reply))

    async def _send_stats(self, peer: Peer, channel: RTCDataChannel) -> None:
        """{"event": "stats", …} every `stats_interval_s` while the channel is open."""
        while not peer.closed:
            await asyncio.sleep(self.cfg.stats_interval_s)
            if channel.readyState != "open":
                if channel.readyState == "closed":
                    return
                continue
            channel.send(pack(self.peer_stats(peer)))

    def peer_stats(self, peer: Peer) -> dict[str, Any]:
        session, ingest, out = peer.session, peer.ingest, self.outputs.get(peer.stream)
        p50 = out.latency.percentile(50) if out else None
        p95 = out.latency.percentile(95) if out else None
        dropped = dict(session.dropped) if session else {}
        if out is not None and out.dropped:
            dropped["output_handoff"] = out.dropped
        if ingest is not None and ingest.slot.dropped:
            dropped["ingest_handoff"] = ingest.slot.dropped
        return {
            "event": "stats",
            "stream": peer.stream,
            "fps_in": round(ingest.rate.rate(), 2) if ingest else 0.0,
            "fps_out": round(out.rate.rate(), 2) if out else 0.0,
            "latency_ms": {
                "p50": None if p50 is None else round(p50, 1),
                "p95": None if p95 is None else round(p95, 1),
            },
            "frames_in": session.frames_in if session else 0,
            "frames_out": session.frames_out if session else 0,
            "frames_sent": out.frames_sent if out else 0,
            "dropped": dropped,
            "size": list(ingest.size) if ingest and ingest.size else None,
            "paused": bool(session and session.paused),
        }

    # -- watchdog and teardown ---------------------------------------------------------------------------------------
    async def _watch(self, peer: Peer) -> None:
        cfg = self.cfg
        period = min(0.25, cfg.connect_timeout_s / 4, cfg.media_timeout_s / 4)
        while not peer.closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            if peer.connected_at is None:
                if now - (peer.answered_at or peer.created) > cfg.connect_timeout_s:
                    reason = f"not connected within {cfg.connect_timeout_s:g} s (ICE/DTLS never completed)"
                    self._close_soon(peer, "connect_timeout", reason)
                    return
                continue
            if peer.role == "publisher":
                session = peer.session
                if session is None or session.closed:
                    self._close_soon(peer, "session_closed", "its session was closed")
                    return
                last = peer.ingest.last_frame if peer.ingest and peer.ingest.last_frame else peer.connected_at
                if now - last > cfg.media_timeout_s:
                    self._close_soon(peer, "media_timeout", f"no video for {cfg.media_timeout_s:g} s")
                    return
            elif peer.role == "viewer":
                # A viewer sends RTCP receiver reports (browsers and aiortc about every second): silence means
                # it is gone (killed, unplugged), long before ICE consent would expire (30 s).
                if now - await self._last_inbound(peer, now) > cfg.media_timeout_s:
                    self._close_soon(peer, "media_timeout", f"no RTCP from the viewer for {cfg.media_timeout_s:g} s")
                    return
                out = self.outputs.get(peer.stream)
                if (
                    out is None
                    or out.closed
                    or self.engine is None
                    or self.engine.session(peer.stream) is not out.session
                ):
                    self._close_soon(peer, "stream_ended", "the stream ended")
                    return

    @staticmethod
    async def _last_inbound(peer: Peer, now: float) -> float:
        """When a packet last arrived from the peer on its DTLS transport (RTCP, DTLS; STUN is not counted)."""
        report = await peer.pc.getStats()
        packets = sum(getattr(s, "packetsReceived", 0) for s in report.values() if s.type == "transport")
        if packets != peer.inbound_packets or peer.last_inbound is None:
            peer.inbound_packets = packets
            peer.last_inbound = now
        return peer.last_inbound

    def _close_soon(self, peer: Peer, kind: CloseKind, reason: str) -> None:
        """Close from a callback or the watchdog (which the closing cancels), keeping the task referenced."""
        task = asyncio.create_task(self.close_peer(peer, kind, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close_peer(self, peer: Peer, kind: CloseKind, reason: str) -> None:
        """Idempotent: frees the slot first (so a new peer may take it at once), then tears down media."""
        if peer.closed:
            await peer.done.wait()
            return
        peer.closed = True
        peer.close_reason = reason
        self.peers.pop(peer.id, None)
        self.closed_peers += 1
        self.recent_closes.append(
            {"id": peer.id, "role": peer.role, "stream": peer.stream, "kind": kind, "reason": reason,
             "after_s": round(time.monotonic() - peer.created, 3)}
        )  # fmt: skip
        self._update_gauge()
        if self._ended is not None:
            self._ended.labels(kind).inc()
        log.info("%s %s (%s) closed: %s", peer.role, peer.id[:8], peer.stream, reason)
        current = asyncio.current_task()
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        if peer.ingest is not None:
            await peer.ingest.stop()
        if peer.audio is not None:
            await peer.audio.stop()
        if peer.role == "publisher" and peer.session is not None:
            if peer.owns_session and self.engine is not None and self.engine.session(peer.stream) is peer.session:
                self.engine.close_session(peer.stream)
            elif peer.session.sink is not None:
                peer.session.sink = None
                peer.session.owner = None  # free to be claimed again (with its key) until it idles out
            out = self.outputs.pop(peer.stream, None)
            if out is not None:
                self._detach(out)  # ends the stream's tracks: its viewers' watchdogs close them next
        for sender in peer.pc.getSenders():
            if isinstance(sender.track, (OutputTrack, AudioOutputTrack)):
                sender.track.stop()  # unsubscribes from the stream's output
        self._release_output(peer.stream)
        try:
            await asyncio.wait_for(peer.pc.close(), timeout=5.0)
        except (TimeoutError, Exception):  # a half-dead transport must not keep the slot or the caller waiting
            log.debug("closing peer %s did not finish cleanly", peer.id[:8], exc_info=True)
        peer.done.set()
