"""Transports: how frames and control messages reach sessions (ZeroMQ, HTTP probes; WebRTC next)."""
