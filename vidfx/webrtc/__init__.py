"""WebRTC for people: the page's `/offer`, WHIP ingest, WHEP egress, all on the node's aiohttp server."""

from vidfx.webrtc.gateway import ConfigError, Peer, SignallingError, WebRTCGateway
from vidfx.webrtc.http import GATEWAY_KEY, add_webrtc_routes

__all__ = ["GATEWAY_KEY", "ConfigError", "Peer", "SignallingError", "WebRTCGateway", "add_webrtc_routes"]
