"""A video jitter buffer that releases a frame on its RTP marker bit.

aiortc's `JitterBuffer` declares a video frame complete only when the first packet of the *next* frame arrives,
so every stream aiortc receives waits one whole frame interval for nothing (67 ms at 15 fps) — twice on a page
round trip through two aiortc peers. Senders (browsers, OBS, aiortc itself) set the RTP marker bit on the last
packet of each video frame (RFC 7741 for VP8, RFC 6184 for H.264), so a frame whose packets are contiguous from
the buffer's origin up to a marked packet is complete at once. Frames without a marker still complete the old
way, when the next timestamp shows up.

`enable_marker_frames()` makes aiortc's receivers use it (process-wide, idempotent); the node does so unless
`webrtc.marker_frames` is off.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video or self._prefetch:
            return super()._remove_frame(sequence_number)
        assert self._origin is not None
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for the missing packet (or for the buffer to overflow, as aiortc does)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the next frame began: the current one ended unmarked
                self.remove(count)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        return None


def enable_marker_frames(enabled: bool = True) -> None:
    """Make aiortc receivers created from now on use `MarkerJitterBuffer` (or, `enabled=False`, aiortc's own)."""
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer if enabled else JitterBuffer  # type: ignore[misc]
