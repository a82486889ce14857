"""The one place where vidfx changes how aiortc and aioice behave, process-wide. Each change is idempotent, says
why it exists, and fails loudly (RuntimeError) if an aiortc/aioice upgrade removed what it adjusts; each has a test
in tests/test_webrtc_units.py and an end-to-end one with a real peer (tests/test_whip_whep.py).

1. Video frames released on the RTP marker bit (`vidfx.webrtc.jitter`): aiortc waits for the next frame's first
   packet, one whole frame interval per hop. Setting `webrtc.marker_frames`.
2. DTLS with RSA peers (`allow_rsa_dtls`): aiortc's DTLS context offers only ECDHE-ECDSA cipher suites. A peer
   whose certificate is RSA (GStreamer's webrtcbin by default, many SIP/media servers) that ends up the DTLS
   *server* must pick a suite matching its certificate, finds none, and the handshake fails with "no shared
   cipher" after ICE succeeded. Offering the ECDHE-RSA suites too lets either role work with either key type;
   our own certificate stays ECDSA, so what we negotiate with aiortc and browsers is unchanged.
3. A bounded ICE gathering wait (`bound_ice_gathering`): aioice waits up to 5 s for every STUN/TURN server while
   gathering, and aiortc answers only once gathering is done (non-trickle). A dead STUN server made every WHIP
   answer take 5 s and the client then missed its connect window. Host candidates are ready at once; the
   server-derived ones get `webrtc.ice_gather_timeout_s`, and whatever has not answered by then is left out.
"""

from __future__ import annotations

from typing import Any

from vidfx.webrtc.jitter import enable_marker_frames

# ECDHE with either certificate type, AEAD first (RFC 8827 requires ECDHE-ECDSA-AES128-GCM-SHA256 at least).
DTLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)

_gather_timeout_s = 5.0  # aioice's own default until bound_ice_gathering is called


def _original(cls: type, name: str) -> Any:
    current = cls.__dict__.get(name)
    if current is None:
        raise RuntimeError(
            f"{cls.__module__}.{cls.__qualname__}.{name} no longer exists: the aiortc/aioice upgrade needs "
            "vidfx/webrtc/aiortc_adjust.py revisited"
        )
    return getattr(current, "vidfx_original", current)


def allow_rsa_dtls() -> None:
    """Offer ECDHE-RSA cipher suites beside aiortc's ECDHE-ECDSA ones in every DTLS context made from now on."""
    from aiortc.rtcdtlstransport import RTCCertificate

    original = _original(RTCCertificate, "_create_ssl_context")

    def _create_ssl_context(self: RTCCertificate, srtp_profiles: list[Any]) -> Any:
        ctx = original(self, srtp_profiles)
        ctx.set_cipher_list(DTLS_CIPHERS.encode())
        return ctx

    _create_ssl_context.vidfx_original = original  # type: ignore[attr-defined]
    RTCCertificate._create_ssl_context = _create_ssl_context  # type: ignore[method-assign]


def bound_ice_gathering(timeout_s: float) -> None:
    """Wait at most `timeout_s` for STUN/TURN servers while gathering candidates (host candidates never wait)."""
    global _gather_timeout_s
    import aioice.ice

    _gather_timeout_s = timeout_s
    original = _original(aioice.ice.Connection, "get_component_candidates")

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: float = 5
    ) -> Any:
        return await original(self, component, addresses, timeout=min(timeout, _gather_timeout_s))

    get_component_candidates.vidfx_original = original  # type: ignore[attr-defined]
    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


def adjust_aiortc(marker_frames: bool, ice_gather_timeout_s: float) -> None:
    """Apply every adjustment above (the gateway calls this once, from its settings)."""
    enable_marker_frames(marker_frames)
    allow_rsa_dtls()
    bound_ice_gathering(ice_gather_timeout_s)
