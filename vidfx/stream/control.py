"""Control messages → session actions, for any transport (ZeroMQ ROUTER now, a WebRTC data channel next).

`ControlHandler.handle(raw, client)` takes the undecoded message (msgpack bytes, or a map a transport already
decoded) and the sender's identity, and returns the reply map. It never raises: every failure is an
`{"ok": false, "error": …}` reply for that client only. It runs on the event loop and does no model work
(parameter changes are picked up by the worker with the session's next chunk).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from vidfx.config import LimitSettings
from vidfx.protocol import (
    ClaimOp,
    ControlMessage,
    PauseOp,
    ProtocolError,
    ResetOp,
    ResumeOp,
    SetOp,
    StatusOp,
    check_token,
    parse_control,
    reply_error,
    reply_ok,
    unpack_map,
)
from vidfx.stream.engine import Engine, SessionLimitError
from vidfx.stream.session import Session


class RateLimiter:
    """Token bucket per client: `rate` messages a second, bursts of `burst`.

    Lifecycle: a client's bucket is created full on its first message and refilled lazily; the least recently
    seen buckets are forgotten beyond `max_clients`, so a flood of fresh identities costs bounded memory.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 4096) -> None:
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tokens, last time)

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed


class ControlHandler:
    """Validates, authorises and applies control messages; one per transport (its own rate-limit buckets).

    Authorisation, after the node token (demanded on every message once the node has one):
    - `status` reads; anyone who passed the node token may read.
    - `claim`/`set` on a stream nobody has opened claims it: the reply carries the stream's key (configured,
      the client's own `key`, or a fresh one). A client (peer address) may hold `unclaimed_per_client` such
      streams with no publisher yet, and the engine frees each after `unclaimed_grace_s` if no publisher comes.
    - Every other op on an open stream needs the stream's `key`, or the node token, or comes from the stream's
      own WebRTC peer (`own_stream`).
    Rate limits apply per client (its connection identity) and per peer address (all its connections
    together, `control_address_factor` × the client budget), so fresh identities do not buy more messages.
    """

    def __init__(self, engine: Engine, limits: LimitSettings, token: str | None = None) -> None:
        """`token`: required on every message when set (the node sets it whenever one is configured)."""
        self.engine = engine
        self.limits = limits
        self.token = token
        self.rate = RateLimiter(limits.control_rate, limits.control_burst)
        factor = limits.control_address_factor
        self.address_rate = RateLimiter(limits.control_rate * factor, round(limits.control_burst * factor))

    def handle(
        self, raw: bytes | dict[str, Any], client: str = "", address: str | None = None, own_stream: str | None = None
    ) -> dict[str, Any]:
        """`client`: the sender's connection identity; `address`: its peer address (None: same as `client`);
        `own_stream`: the stream the sender feeds itself (a WebRTC peer's data channel), steerable without key."""
        metrics = self.engine.metrics
        address = client if address is None else address
        if not self.rate.allow(client) or not self.address_rate.allow(address):
            metrics.control.labels("-", "rate_limited").inc()
            return reply_error("rate limited: too many control messages")
        request_id: int | str | None = None
        try:
            obj = unpack_map(raw, self.limits.max_control_bytes) if isinstance(raw, bytes | bytearray) else raw
            request_id = obj.get("id") if type(obj.get("id")) in (int, str) else None
            if not check_token(obj.get("token"), self.token):
                metrics.control.labels("-", "unauthorized").inc()
                return reply_error("unauthorized: missing or wrong token", request_id)
            msg = parse_control(obj, self.limits)
        except ProtocolError as exc:
            metrics.control.labels("-", "invalid").inc()
            return reply_error(str(exc), request_id)
        try:
            reply = self._apply(msg, address, own_stream)
        except PermissionError as exc:
            metrics.control.labels(msg.op, "forbidden").inc()
            return reply_error(f"forbidden: {exc}", msg.id)
        except (ProtocolError, ValueError, SessionLimitError) as exc:
            metrics.control.labels(msg.op, "error").inc()
            return reply_error(str(exc), msg.id)
        metrics.control.labels(msg.op, "ok").inc()
        return reply

    def _claim(self, msg: SetOp | ClaimOp, address: str) -> Session:
        """Open a stream nobody has opened, for a control client (no publisher yet), within its quota."""
        if msg.key is not None and len(msg.key) < 16:
            raise ProtocolError("a stream key must be at least 16 characters")
        waiting = sum(
            1 for s in self.engine.sessions.values() if s.opened_by == address and s.owner is None and not s.frames_in
        )
        if waiting >= self.limits.unclaimed_per_client:
            raise SessionLimitError(
                f"this client already holds {waiting} streams without a publisher "
                f"(limit {self.limits.unclaimed_per_client}): send their frames first"
            )
        return self.engine.open_session(msg.stream, opened_by=address, key=msg.key)

    def _authorise(self, session: Session, msg: ControlMessage, own_stream: str | None) -> None:
        if session.id == own_stream or self.token is not None or session.key_matches(getattr(msg, "key", None)):
            return
        raise PermissionError(f"stream {session.id!r} belongs to another client: give its key")

    def _apply(self, msg: ControlMessage, address: str, own_stream: str | None) -> dict[str, Any]:
        engine = self.engine
        if isinstance(msg, StatusOp):
            if msg.stream is None:
                return reply_ok(msg, **engine.status())
            session = engine.session(msg.stream)
            if session is None:
                raise ProtocolError(f"no session for stream {msg.stream!r}")
            return reply_ok(msg, session=session.status())
        session = engine.session(msg.stream)
        claimed: dict[str, Any] = {}
        if session is None and isinstance(msg, SetOp | ClaimOp):
            session = self._claim(msg, address)
            claimed["key"] = session.key
        elif session is None:
            raise ProtocolError(f"no session for stream {msg.stream!r}")
        else:
            self._authorise(session, msg, own_stream)
        if isinstance(msg, ClaimOp):
            return reply_ok(msg, stream=msg.stream, key=session.key)
        if isinstance(msg, SetOp):
            changes: dict[str, Any] = {}
            prompts = msg.weighted_prompts()
            if prompts is not None:
                changes["prompts"] = prompts
            for name in ("transition_s", "strength", "seed", "fixed_noise", "motion_aware"):
                value = getattr(msg, name)
                if value is not None:
                    changes[name] = value
            if msg.steps is not None:
                changes["steps"] = tuple(msg.steps)
            params = session.update(**changes)
            return reply_ok(msg, stream=msg.stream, applied=sorted(changes), strength=params.strength, **claimed)
        if isinstance(msg, ResetOp):
            session.reset()
        elif isinstance(msg, PauseOp):
            session.pause()
        elif isinstance(msg, ResumeOp):
            session.resume()
        return reply_ok(msg, stream=msg.stream)
