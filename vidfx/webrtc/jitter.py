"""A video jitter buffer that releases a frame on its RTP marker bit.

aiortc's `JitterBuffer` declares a video frame complete only when the first packet of the *next* frame arrives,
so every stream aiortc receives waits one whole frame interval for nothing (67 ms at 15 fps) — twice on a page
round trip through two aiortc peers. Senders (browsers, OBS, aiortc itself) set the RTP marker bit on the last
packet of each video frame (RFC 7741 for VP8, RFC 6184 for H.264), so a frame whose packets are contiguous from
the buffer's origin up to a marked packet is complete at once. Frames without a marker still complete the old
way, when the next timestamp shows up.

Audio gets the same treatment: aiortc holds received audio back by four packets (`prefetch=4`, 80 ms of Opus) and
then one more until the next packet shows the current one ended. An audio RTP packet is a whole frame (Opus,
G.711), and the node re-times the audio it passes on anyway (delayed to match the video), so here each audio
packet is released as soon as it is next in sequence: the audio then arrives as early as the video does, which
is what keeping them in sync needs. (A packet that arrives out of order is released one packet late.)

`enable_marker_frames()` makes aiortc's receivers use it (process-wide, idempotent); the node does so unless
`webrtc.marker_frames` is off.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        if not self._is_video:
            packet = self._packets[self._origin % self.capacity]
            if packet is None:
                return None  # the next packet in sequence is still missing
            self.remove(1)
            return JitterFrame(data=packet._data, timestamp=packet.timestamp)
        if self._prefetch:
            return super()._remove_frame(sequence_number)
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
