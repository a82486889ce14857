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
    ControlMessage,
    PauseOp,
    ProtocolError,
    ResetOp,
    ResumeOp,
    SetOp,
    StatusOp,
    parse_control,
    reply_error,
    reply_ok,
    unpack_map,
)
from vidfx.stream.engine import Engine, SessionLimitError
from vidfx.transport.auth import check_token

__all__ = ["ControlHandler", "RateLimiter", "check_token"]


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
    def __init__(self, engine: Engine, limits: LimitSettings, token: str | None = None) -> None:
        """`token`: required on every message when set (the node sets it when bound beyond loopback)."""
        self.engine = engine
        self.limits = limits
        self.token = token
        self.rate = RateLimiter(limits.control_rate, limits.control_burst)

    def handle(self, raw: bytes | dict[str, Any], client: str = "") -> dict[str, Any]:
        metrics = self.engine.metrics
        if not self.rate.allow(client):
            metrics.control.labels("-", "rate_limited").inc()
            return reply_error("rate limited: too many control messages")
        request_id: int | str | None = None
        try:
            obj = unpack_map(raw, self.limits.max_control_bytes) if isinstance(raw, bytes | bytearray) else raw
            request_id = obj.get("id") if isinstance(obj.get("id"), int | str) else None
            if not check_token(obj.get("token"), self.token):
                metrics.control.labels("-", "unauthorized").inc()
                return reply_error("unauthorized: missing or wrong token", request_id)
            msg = parse_control(obj, self.limits)
        except ProtocolError as exc:
            metrics.control.labels("-", "invalid").inc()
            return reply_error(str(exc), request_id)
        try:
            reply = self._apply(msg)
        except (ProtocolError, ValueError, SessionLimitError) as exc:
            metrics.control.labels(msg.op, "error").inc()
            return reply_error(str(exc), msg.id)
        metrics.control.labels(msg.op, "ok").inc()
        return reply

    def _apply(self, msg: ControlMessage) -> dict[str, Any]:
        engine = self.engine
        if isinstance(msg, StatusOp):
            if msg.stream is None:
                return reply_ok(msg, **engine.status())
            session = engine.session(msg.stream)
            if session is None:
                raise ProtocolError(f"no session for stream {msg.stream!r}")
            return reply_ok(msg, session=session.status())
        if isinstance(msg, SetOp):
            session = engine.session(msg.stream) or engine.open_session(msg.stream)
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
            return reply_ok(msg, stream=msg.stream, applied=sorted(changes), strength=params.strength)
        session = engine.session(msg.stream)
        if session is None:
            raise ProtocolError(f"no session for stream {msg.stream!r}")
        if isinstance(msg, ResetOp):
            session.reset()
        elif isinstance(msg, PauseOp):
            session.pause()
        elif isinstance(msg, ResumeOp):
            session.resume()
        return reply_ok(msg, stream=msg.stream)
