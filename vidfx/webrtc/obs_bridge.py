"""vidfx → OBS as a virtual camera: subscribe to a stream's stylised output (WHEP or ZeroMQ) and feed pyvirtualcam.

Sources are async iterators of `(rgb (H, W, 3) uint8, pts_us)`, newest frame first when the consumer lags:

    WhepSource(url, token)                 a WHEP viewer of http://node:8080/whep/<stream>
    ZmqSource(address, stream, token)      a SUB on the node's output socket, frames of one stream

`run_bridge` opens the virtual camera at the first frame's size and sends every frame it gets; pixel conversion
and device writes run on threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("vidfx.obs")

Frame = tuple[np.ndarray, int]  # (rgb (H, W, 3) uint8, pts_us)


class BridgeError(RuntimeError):
    """A problem the user must fix (missing package, no virtual-camera backend, refused subscription)."""


def virtual_camera_hint() -> str:
    system = platform.system()
    if system == "Linux":
        return (
            "no v4l2loopback device: install v4l2loopback (Debian/Ubuntu: apt install v4l2loopback-dkms) and load it, "
            "e.g. `sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=vidfx exclusive_caps=1`, then run "
            "obs-bridge with --device /dev/video10"
        )
    if system in ("Windows", "Darwin"):
        return "install OBS Studio 26 or newer and start its Virtual Camera once, so its driver is registered"
    return f"pyvirtualcam has no backend on {system}"


def open_virtual_camera(width: int, height: int, fps: float, device: str | None, backend: str | None) -> Any:
    """A pyvirtualcam.Camera taking RGB frames, or a BridgeError that says what to install."""
    try:
        import pyvirtualcam
    except ImportError:
        raise BridgeError("vidfx obs-bridge needs pyvirtualcam: pip install 'vidfx[obs]'") from None
    try:
        return pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, backend=backend)
    except RuntimeError as exc:
        raise BridgeError(f"cannot open a virtual camera ({exc}).\n{virtual_camera_hint()}") from None


# -- sources ----------------------------------------------------------------------------------------------------------


class WhepSource:
    """Plays a node's stylised stream as a WHEP viewer (aiortc, recvonly) and ends the session on close."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.location: str | None = None
        self._pc: Any = None

    def _headers(self, **extra: str) -> dict[str, str]:
        return {**extra, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    async def __aenter__(self) -> WhepSource:
        import aiohttp
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from yarl import URL

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc
        self._track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pc.on("track", lambda track: self._track.done() or self._track.set_result(track))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.url, data=pc.localDescription.sdp, headers=self._headers(**{"Content-Type": "application/sdp"})
            ) as r,
        ):
            body = await r.text()
            if r.status != 201:
                await pc.close()
                raise BridgeError(f"WHEP {self.url} refused ({r.status}): {body.strip()}")
            self.location = str(URL(self.url).join(URL(r.headers["Location"])))
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return self

    async def frames(self) -> AsyncIterator[Frame]:
        from aiortc.mediastreams import MediaStreamError

        track = await asyncio.wait_for(self._track, 30)
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            rgb = await loop.run_in_executor(None, lambda f=frame: f.to_ndarray(format="rgb24"))
            pts = int(frame.pts * frame.time_base * 1_000_000) if frame.pts is not None and frame.time_base else 0
            yield rgb, pts

    async def __aexit__(self, *exc: object) -> None:
        import aiohttp

        if self.location is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.delete(self.location, headers=self._headers()):
                    pass
        if self._pc is not None:
            await self._pc.close()


class ZmqSource:
    """Frames of one stream from the node's ZeroMQ output (SUB), skipping to the newest queued frame."""

    def __init__(self, address: str, stream: str, rcvhwm: int = 4, curve_server_key: str | None = None) -> None:
        self.address = address
        self.stream = stream
        self.rcvhwm = rcvhwm
        self.curve_server_key = curve_server_key
        self._ctx: Any = None
        self._sock: Any = None

    async def __aenter__(self) -> ZmqSource:
        import zmq
        import zmq.asyncio

        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.curve_server_key:  # the node encrypts: be a CURVE client with a throwaway key pair
            self._sock.curve_serverkey = self.curve_server_key.encode()
            self._sock.curve_publickey, self._sock.curve_secretkey = zmq.curve_keypair()
        self._sock.connect(self.address)
        return self

    async def frames(self) -> AsyncIterator[Frame]:
        import zmq

        from vidfx.config import LimitSettings
        from vidfx.protocol import ProtocolError, parse_frame

        limits = LimitSettings()
        while True:
            batch = [await self._sock.recv_multipart()]
            while True:  # drain what is queued: only the newest frame of our stream matters to a camera
                try:
                    batch.append(await self._sock.recv_multipart(flags=zmq.NOBLOCK))
                except zmq.Again:
                    break
            for parts in reversed(batch):
                if len(parts) != 2:
                    continue
                try:
                    header = parse_frame(parts[0], parts[1], limits)
                except ProtocolError as exc:
                    log.warning("skipping a malformed output frame: %s", exc)
                    continue
                if header.stream == self.stream:
                    yield np.frombuffer(parts[1], np.uint8).reshape(header.h, header.w, 3), header.pts_us
                    break

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close(0)
        if self._ctx is not None:
            self._ctx.term()


# -- the bridge -------------------------------------------------------------------------------------------------------


@dataclass
class BridgeStats:
    frames: int = 0
    size: tuple[int, int] | None = None
    started: float = 0.0


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames whose size changed mid-stream are rescaled to the camera's (a virtual camera keeps its size)."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return np.ascontiguousarray(rgb)
    from av import VideoFrame

    return (
        VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        .reformat(width, height)
        .to_ndarray(format="rgb24")
    )


async def run_bridge(
    source: WhepSource | ZmqSource,
    fps: float = 30.0,
    device: str | None = None,
    backend: str | None = None,
    max_frames: int | None = None,
) -> BridgeStats:
    """Frames from `source` → a virtual camera opened at the first frame's size, until the source ends."""
    stats = BridgeStats(started=time.monotonic())
    loop = asyncio.get_running_loop()
    cam: Any = None
    try:
        async with source:
            async for rgb, _pts in source.frames():
                if cam is None:
                    h, w = rgb.shape[:2]
                    cam = await loop.run_in_executor(None, open_virtual_camera, w, h, fps, device, backend)
                    stats.size = (w, h)
                    log.info("virtual camera %s open at %dx%d", cam.device, w, h)
                frame = await loop.run_in_executor(None, _fit, rgb, *stats.size)  # type: ignore[misc]
                await loop.run_in_executor(None, cam.send, frame)
                stats.frames += 1
                if max_frames is not None and stats.frames >= max_frames:
                    break
    finally:
        if cam is not None:
            cam.close()
    return stats
