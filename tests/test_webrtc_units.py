"""The small pieces of the WebRTC path, on their own: the drop-oldest hand-off, the play-out clock, the marker-bit
jitter buffer, size limits and pts conversion."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket
from av import VideoFrame

from vidfx.webrtc.handoff import HandoffClosed, LatestSlot
from vidfx.webrtc.jitter import MarkerJitterBuffer
from vidfx.webrtc.media import PlayoutClock, fit_within, frame_pts_us, frame_to_rgb, rgb_to_frame


async def test_latest_slot_keeps_only_the_newest() -> None:
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.dropped == 4 and await slot.get() == 4
    getter = asyncio.create_task(slot.get())
    await asyncio.sleep(0.01)
    assert not getter.done()  # empty: waits
    slot.put(7)
    assert await asyncio.wait_for(getter, 1) == 7
    slot.put(8)
    slot.close()
    assert await slot.get() == 8  # drained first…
    with pytest.raises(HandoffClosed):
        await slot.get()  # …then closed
    slot.put(9)
    assert slot.take_nowait() is None


def test_playout_clock_spreads_bursts_at_a_typical_delay() -> None:
    clock = PlayoutClock()
    dt = 1 / 15

    def play(first: int, arrival: float, n: int = 4) -> list[float]:
        """A chunk of n frames (pts first·dt…) arriving together; their release times, released in order."""
        out = []
        for i in range(first, first + n):
            clock.arrive(i * dt, arrival)
        for i in range(first, first + n):
            at = max(clock.release_at(i * dt, arrival), arrival)  # the pacer releases a due frame at once
            clock.released(i * dt, at)
            out.append(at)
        return out

    # Chunks whose first frame always arrives 300 ms after its pts: frames leave one interval apart, 300 ms late.
    for k in range(10):
        times = play(4 * k, 4 * k * dt + 0.3)
        assert np.allclose(np.array(times) - np.arange(4 * k, 4 * k + 4) * dt, 0.3)
    # One chunk 200 ms later than usual: released at once and then at twice the frame rate, not all together.
    times = play(40, 40 * dt + 0.5)
    assert times[0] == pytest.approx(40 * dt + 0.5)
    assert np.allclose(np.diff(times), dt / 2)
    # A single late chunk does not raise the delay of the ones after it (a quantile, not a running maximum).
    times = play(44, 44 * dt + 0.3)
    assert times[-1] - 47 * dt == pytest.approx(0.3)
    # Paused, frames pass through one at a time, each almost on time: the delay shrinks back within the window
    # even though frames are still waiting in the play-out queue meanwhile.
    for i in range(56, 56 + 30):
        clock.arrive(i * dt, i * dt + 0.005)
    assert clock.delay == pytest.approx(0.005)
    # A pts jump (a new source) starts afresh instead of holding frames for the gap.
    assert play(100_000, 5.0, n=1)[0] == pytest.approx(5.0)


def _packets(frames: list[int], first_seq: int = 100, marker: bool = True) -> list[RtpPacket]:
    """`frames[i]` packets for frame i (timestamp 3000·i), the last one marked."""
    out = []
    seq = first_seq
    for i, n in enumerate(frames):
        for k in range(n):
            p = RtpPacket(sequence_number=seq % 65536, timestamp=3000 * i, marker=int(marker and k == n - 1))
            p._data = bytes([i, k])  # type: ignore[attr-defined]
            out.append(p)
            seq += 1
    return out


def _feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that released a frame, frame timestamp, frame data)."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_marker_jitter_buffer_releases_frames_a_frame_earlier() -> None:
    packets = _packets([3, 1, 2, 4], first_seq=65534)  # wraps the 16-bit sequence number
    stock = _feed(JitterBuffer(capacity=128, is_video=True), packets)
    marked = _feed(MarkerJitterBuffer(capacity=128, is_video=True), packets)
    # Same frames, same bytes…
    assert [(ts, data) for _, ts, data in marked] == [(3000 * i, bytes(sum(([i, k] for k in range(n)), [])))
                                                      for i, n in enumerate([3, 1, 2, 4])]  # fmt: skip
    assert [(ts, d) for _, ts, d in stock] == [(ts, d) for _, ts, d in marked[:3]]  # stock still holds the last
    # …each released by its own last packet, not by the next frame's first one.
    assert [i for i, _, _ in marked] == [2, 3, 5, 9]
    assert [i for i, _, _ in stock] == [3, 4, 6]
    # Unmarked frames complete as before, and a gap holds the frame until the missing packet arrives.
    unmarked = _packets([2, 2, 1], marker=False)
    assert [i for i, _, _ in _feed(MarkerJitterBuffer(capacity=128, is_video=True), unmarked)] == [2, 4]
    gap = _packets([3, 1])
    buf = MarkerJitterBuffer(capacity=128, is_video=True)
    assert _feed(buf, [gap[0], gap[2]]) == []
    _, frame = buf.add(gap[1])
    assert frame is not None and frame.data == bytes([0, 0, 0, 1, 0, 2])


def test_marker_jitter_buffer_releases_audio_packets_on_arrival() -> None:
    """aiortc holds audio 4 packets (80 ms of Opus) plus one; the node's buffer passes each packet on at once,
    in order (a packet after a gap waits for the missing one)."""
    packets = _packets([1] * 8, first_seq=65533)
    stock = _feed(JitterBuffer(capacity=16, prefetch=4), packets)
    fast = _feed(MarkerJitterBuffer(capacity=16, prefetch=4), packets)
    assert [i for i, _, _ in fast] == list(range(8))
    assert [i for i, _, _ in stock] == [4, 5, 6, 7]  # packet 0 comes out when packet 4 arrives
    assert [(ts, d) for _, ts, d in stock] == [(ts, d) for _, ts, d in fast[:4]]
    buf = MarkerJitterBuffer(capacity=16, prefetch=4)
    assert _feed(buf, [packets[0], packets[2]]) == [(0, 0, bytes([0, 0]))]
    _, frame = buf.add(packets[1])
    assert frame is not None and frame.timestamp == 3000


def test_frames_fit_the_limits_and_pts_round_trip() -> None:
    assert fit_within(1920, 1080, 1280, 720) == (1280, 720)
    assert fit_within(640, 480, 1920, 1080) == (640, 480)
    assert fit_within(1000, 1000, 300, 200) == (200, 200)
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    frame = VideoFrame.from_ndarray(rgb, format="rgb24")
    assert frame_to_rgb(frame, 64, 64).shape == (48, 64, 3)
    assert np.array_equal(frame_to_rgb(frame, 1920, 1080), rgb)
    for pts in (0, 6000, 11999, 2**31 + 3):
        frame.pts, frame.time_base = pts, fractions.Fraction(1, 90000)
        assert rgb_to_frame(rgb, frame_pts_us(frame)).pts == pts  # type: ignore[arg-type]
    odd = rgb_to_frame(rgb[:95, :127], 0)
    assert (odd.height, odd.width) == (94, 126)  # 4:2:0 codecs need even sizes


def test_dtls_adjustment_offers_rsa_suites_and_is_idempotent() -> None:
    """`allow_rsa_dtls` wraps aiortc's context factory once (however often it is called): the context then offers
    ECDHE-RSA beside aiortc's ECDHE-ECDSA suites. If aiortc renames what it wraps, the call raises."""
    from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80, RTCCertificate
    from OpenSSL import SSL

    from vidfx.webrtc.aiortc_adjust import allow_rsa_dtls

    def ciphers() -> list[str]:
        ctx = RTCCertificate.generateCertificate()._create_ssl_context([SRTP_AES128_CM_SHA1_80])
        return SSL.Connection(ctx, None).get_cipher_list()

    stock = RTCCertificate.__dict__["_create_ssl_context"]
    stock = getattr(stock, "vidfx_original", stock)
    allow_rsa_dtls()
    allow_rsa_dtls()
    assert RTCCertificate._create_ssl_context.vidfx_original is stock  # wrapped once, around aiortc's own
    offered = ciphers()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in offered and "ECDHE-ECDSA-AES128-GCM-SHA256" in offered
    assert offered.index("ECDHE-ECDSA-AES128-GCM-SHA256") < offered.index("ECDHE-RSA-AES128-GCM-SHA256")


async def test_ice_gathering_waits_a_bounded_time_for_a_dead_stun_server() -> None:
    """aioice waits 5 s for a STUN server that never answers; bounded, gathering returns the host candidates once
    the bound has passed, and the dead server's srflx candidate is simply missing."""
    import socket
    import time

    import aioice

    from vidfx.webrtc.aiortc_adjust import bound_ice_gathering

    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        bound_ice_gathering(0.3)
        conn = aioice.Connection(ice_controlling=True, stun_server=dead.getsockname())
        t0 = time.monotonic()
        await conn.gather_candidates()
        took = time.monotonic() - t0
        assert dead.recv(2048)  # it was asked
        assert took < 2.0, f"gathering took {took:.2f} s (aioice alone: 5 s)"
        types = {c.type for c in conn.local_candidates}
        assert types == {"host"}, types
        await conn.close()
    finally:
        bound_ice_gathering(5.0)
        dead.close()
