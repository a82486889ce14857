"""Who may talk to the node: the node token (one rule for every transport) and the checks that compare it.

`node_token(settings)` is the one place that decides whether the node demands a token: it refuses to start
with any socket or the HTTP server reachable beyond loopback and no token set, and once a token is set it is
demanded everywhere (ZeroMQ frames and control, every HTTP route that takes media or steering), whatever the
bind addresses. The ZeroMQ transport, the plain HTTP server and the WebRTC gateway all ask it.

This module knows settings and strings only (no sockets, no aiohttp), so every transport can import it.
"""

from __future__ import annotations

from vidfx.config import Settings, is_loopback_address
from vidfx.protocol import check_token

MIN_TOKEN_CHARS = 16


class ConfigError(ValueError):
    """Settings that would make the node unsafe or unusable."""


def exposed_endpoints(settings: Settings) -> list[str]:
    """The bound addresses (ZeroMQ sockets, HTTP) that other machines can reach."""
    z = settings.zmq
    zmq_bound = [a for a, bound in ((z.input, z.input_bind), (z.output, z.output_bind), (z.control, True)) if bound]
    http = [] if is_loopback_address(settings.http.host) else [f"HTTP on {settings.http.host}"]
    return [a for a in zmq_bound if not is_loopback_address(a)] + http


def node_token(settings: Settings) -> str | None:
    """The token every transport demands, or None on a loopback-only node without one. Raises ConfigError for a
    node reachable beyond loopback without a token, or a token too short to be a secret."""
    token = settings.token.get_secret_value() if settings.token else None
    exposed = exposed_endpoints(settings)
    if exposed and not token:
        raise ConfigError(
            f"{', '.join(exposed)} reach{'es' if len(exposed) == 1 else ''} beyond loopback: set a token "
            "(VIDFX_TOKEN or --token-file; --token is visible to local users in the process list)"
        )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the token must be at least {MIN_TOKEN_CHARS} characters")
    return token


def check_bearer(header: str | None, token: str | None) -> bool:
    """An HTTP `Authorization: Bearer <token>` header against the node token (None: nothing demanded)."""
    if token is None:
        return True
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235 §2.1: the auth scheme is case-insensitive
        return False
    return check_token(credentials.strip(), token)
