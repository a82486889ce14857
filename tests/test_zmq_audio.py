"""ZeroMQ frames with audio: an optional third message part (PCM) rides with its frame through the model (or
through a paused session) and comes back as the third part of that frame's output; a malformed audio part is
refused like any malformed frame, and frames without audio are unchanged."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np

from tests.serve_harness import make_video, running_node

RATE = 48_000


def pcm_for(seq: int, channels: int = 1) -> bytes:
    """33 ms of s16 samples that say which frame they belong to."""
    return np.full(1600 * channels, seq * 100 + 1, "<i2").tobytes()


async def send(pub, seq: int, pixels: np.ndarray, audio: bytes | None, channels: int = 1, **extra: object) -> None:  # type: ignore[no-untyped-def]
    h, w = pixels.shape[:2]
    header = {"v": 1, "stream": "cam", "seq": seq, "pts_us": seq * 33_333, "w": w, "h": h, "fmt": "rgb24", **extra}
    parts = [np.ascontiguousarray(pixels).tobytes()]
    if audio is not None:
        header.setdefault("audio", {"rate": RATE, "channels": channels, "fmt": "s16"})
        parts.append(audio)
    await pub.send_multipart([msgpack.packb(header), *parts])


async def receive(sub, n: int, timeout: float = 60) -> list[list[bytes]]:  # type: ignore[no-untyped-def]
    return [await asyncio.wait_for(sub.recv_multipart(), timeout) for _ in range(n)]


async def test_audio_part_comes_back_with_its_frame() -> None:
    video = make_video(17)
    async with running_node("--limits-max-audio-bytes", "8000") as node:
        pub, sub = await node.publisher(), await node.subscriber()
        key = (await node.control({"op": "claim", "stream": "cam"}))["key"]  # steering a stream needs its key
        out: list[list[bytes]] = []
        for i, frame in enumerate(video[:13]):
            stereo = 2 if i % 3 == 2 else 1
            await send(pub, i, frame, None if i == 5 else pcm_for(i, stereo), channels=stereo, key=key)  # 5: no audio
            if i in (2, 7):  # malformed audio, on another stream, between good frames
                bad = make_video(1, 8, 8)[0]
                await pub.send_multipart([msgpack.packb({"v": 1, "stream": "x", "seq": 0, "pts_us": 0, "w": 8,
                                                         "h": 8, "fmt": "rgb24"}), bad.tobytes(), b"\0\0"])  # fmt: skip
                header = {"v": 1, "stream": "x", "seq": 0, "pts_us": 0, "w": 8, "h": 8, "fmt": "rgb24",
                          "audio": {"rate": RATE, "channels": 2, "fmt": "s16"}}  # fmt: skip
                await pub.send_multipart([msgpack.packb(header), bad.tobytes()])  # announced, missing
                await pub.send_multipart([msgpack.packb(header), bad.tobytes(), b"\0" * 6])  # not whole samples
                await pub.send_multipart([msgpack.packb(header), bad.tobytes(), b"\0" * 8004])  # over the limit
                header["audio"] = {"rate": RATE, "channels": 2, "fmt": "f32"}
                await pub.send_multipart([msgpack.packb(header), bad.tobytes(), b"\0" * 8])  # unknown format
            if i in (0, 4, 8, 12):
                out += await receive(sub, 1 if i == 0 else 4)
        # Paused: frames pass through, their audio with them.
        assert (await node.control({"op": "pause", "stream": "cam", "key": key}))["ok"]
        for i, frame in enumerate(video[13:], start=13):
            await send(pub, i, frame, pcm_for(i), key=key)
        out += await receive(sub, 4)
        assert [msgpack.unpackb(p[0])["seq"] for p in out] == list(range(17))
        for seq, parts in enumerate(out):
            header = msgpack.unpackb(parts[0])
            if seq == 5:
                assert len(parts) == 2 and "audio" not in header
                continue
            channels = 2 if seq % 3 == 2 and seq < 13 else 1
            assert header["audio"] == {"rate": RATE, "channels": channels, "fmt": "s16"}, header
            assert len(parts) == 3 and parts[2] == pcm_for(seq, channels), seq
        m = await node.metrics()
        assert m["vidfx_frames_dropped_total{reason=malformed}"] == 10
        st = await node.control({"op": "status"})
        assert list(st["sessions"]) == ["cam"]
