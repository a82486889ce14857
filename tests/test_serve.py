"""`vidfx serve` end to end: a real subprocess, real ZeroMQ sockets and HTTP on loopback."""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest
import zmq

from tests.serve_harness import make_video, recv_frame, recv_frames, running_node, send_frame

pytestmark = pytest.mark.timeout(180)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def stream_paced(pub, sub, stream: str, video: np.ndarray, first_seq: int = 0, at_start: bool | None = None,
                       key: str | None = None):  # fmt: skip
    """Send a stream never faster than the node processes it, on any machine: one chunk's frames (a stream's
    first chunk is 1 frame, later ones 4), then wait for their outputs before sending the next. `key`: the
    stream's key, for a stream a control client claimed first."""
    at_start = first_seq == 0 if at_start is None else at_start
    out, i = [], 0
    while i < len(video):
        n = 1 if (at_start and i == 0) else 4
        group = video[i : i + n]
        for j, frame in enumerate(group):
            await send_frame(pub, stream, first_seq + i + j, frame, **({"key": key} if key else {}))
        out += await recv_frames(sub, len(group), timeout=60)
        i += n
    return out


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_frames_in_order_same_envelope_then_idle_reclaimed():
    video = make_video(11)  # 1 + 4 + 4 + a partial chunk of 2, flushed after --stream-flush-after-s
    async with running_node("--stream-idle-timeout-s", "1.5", "--stream-flush-after-s", "0.2") as node:
        status, body = await node.get("/readyz")
        assert status == 200 and body["ready"] is True
        assert (await node.get("/healthz"))[0] == 200
        pub, sub = await node.publisher(), await node.subscriber()
        out = await stream_paced(pub, sub, "cam-1", video)
        assert [h["seq"] for h, _ in out] == list(range(11))
        assert all(h["stream"] == "cam-1" and h["v"] == 1 and h["fmt"] == "rgb24" for h, _ in out)
        assert [h["pts_us"] for h, _ in out] == [i * 33_333 for i in range(11)]
        for (h, px), frame in zip(out, video, strict=True):
            assert (h["w"], h["h"]) == (128, 96) and px.shape == frame.shape
            assert mean_diff(px, frame) > 5  # stylised, not passed through
        st = await node.control({"op": "status", "stream": "cam-1"})
        assert st["ok"] and st["session"]["frames_in"] == 11 and st["session"]["frames_out"] == 11
        assert st["session"]["dropped"] == {}
        m = await node.metrics()
        assert m["vidfx_frames_received_total"] == 11 and m["vidfx_frames_emitted_total"] == 11
        assert m["vidfx_sessions"] == 1
        assert m["vidfx_frames_dropped_total{reason=overload}"] == 0
        assert m["vidfx_e2e_latency_seconds_count"] == 11 and m["vidfx_chunk_latency_seconds_count"] >= 4
        assert any(k.startswith("vidfx_build_info{") and "model=default" in k for k in m)

        # Idle for longer than the timeout: the session is reclaimed.
        async def gone() -> bool:
            return not (await node.control({"op": "status"}))["sessions"]

        await wait_until(gone, what="the idle session to be reclaimed")
        assert (await node.metrics())["vidfx_sessions"] == 0
        reply = await node.control({"op": "pause", "stream": "cam-1"})
        assert reply == {"ok": False, "error": "no session for stream 'cam-1'"}


async def test_overload_drops_counted_latency_bounded():
    n = 600
    video = make_video(8)
    async with running_node() as node:
        pub, sub = await node.publisher(), await node.subscriber()
        received: list[tuple[int, float]] = []
        sent_at: dict[int, float] = {}

        async def collect() -> None:
            while True:
                h, _ = await recv_frame(sub, timeout=30)
                received.append((h["seq"], time.monotonic()))
                if h["seq"] == n - 1:
                    return

        collector = asyncio.create_task(collect())
        for i in range(n):  # ~500 fps: far beyond the model on one core
            sent_at[i] = time.monotonic()
            await send_frame(pub, "burst", i, video[i % len(video)])
            if i % 10 == 9:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(collector, 60)
        seqs = [s for s, _ in received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no duplicates
        st = (await node.control({"op": "status", "stream": "burst"}))["session"]
        m = await node.metrics()
        dropped = st["dropped"].get("overload", 0)
        assert dropped > 0 and m["vidfx_frames_dropped_total{reason=overload}"] == dropped
        # Every frame is accounted for: emitted or counted as dropped.
        assert st["frames_in"] == n and st["frames_out"] == len(received) and len(received) + dropped == n
        # Latency stays bounded: the newest frame comes out (no backlog), and no frame waited anywhere near
        # the time a backlog of this burst would take to drain.
        assert seqs[-1] == n - 1
        latencies = [t - sent_at[s] for s, t in received]
        backlog_s = n / (len(received) / (received[-1][1] - sent_at[0]))
        assert max(latencies) < backlog_s / 4, (max(latencies), backlog_s)
        assert m["vidfx_queue_depth"] <= 4


async def test_control_changes_output_and_two_prompts_stay_isolated():
    video = make_video(9, seed=3)
    async with running_node("--model-max-batch", "4", "--stream-max-sessions", "16",
                            "--limits-sessions-per-connection", "16") as node:  # fmt: skip
        pub, sub = await node.publisher(), await node.subscriber()
        # Reference: stream A alone with prompt P1.
        claimed = await node.control({"op": "set", "stream": "a", "prompt": "a red fox in the snow", "id": 7})
        assert claimed["id"] == 7 and len(claimed["key"]) >= 16  # a `set` on a new stream claims it: here is its key
        ref = [px for _, px in await stream_paced(pub, sub, "a", video, key=claimed["key"])]

        # C (prompt P1, same frames) runs interleaved with B (prompt P2, other frames): C must equal A.
        keys = {}
        for stream, prompt in (("b", "an oil painting of a harbour"), ("c", "a red fox in the snow")):
            keys[stream] = (await node.control({"op": "set", "stream": stream, "prompt": prompt}))["key"]
        other = make_video(9, seed=11)
        got = []
        for lo, hi in ((0, 1), (1, 5), (5, 9)):  # chunk by chunk, both streams at once
            for i in range(lo, hi):
                await send_frame(pub, "b", i, other[i], key=keys["b"])
                await send_frame(pub, "c", i, video[i], key=keys["c"])
            got += await recv_frames(sub, 2 * (hi - lo), timeout=60)
        c_out = [px for h, px in got if h["stream"] == "c"]
        b_out = [px for h, px in got if h["stream"] == "b"]
        assert [h["seq"] for h, _ in got if h["stream"] == "c"] == list(range(9))
        assert len(b_out) == 9
        iso = [mean_diff(x, y) for x, y in zip(ref, c_out, strict=True)]
        assert max(iso) < 0.05, iso  # batched with B or not: the same frames (up to float rounding)

        # The same stream and frames with another prompt differ; so do strength and seed.
        async def rerun(stream: str, **changes) -> list[np.ndarray]:
            reply = await node.control({"op": "set", "stream": stream, **changes})
            assert reply["ok"], reply
            return [px for _, px in await stream_paced(pub, sub, stream, video, key=reply["key"])]

        p2 = await rerun("d", prompt="an oil painting of a harbour")
        strength = await rerun("e", prompt="a red fox in the snow", strength=0.3)
        seed = await rerun("f", prompt="a red fox in the snow", seed=1234)
        blend = await rerun("g", prompts=[{"text": "a red fox in the snow", "weight": 0.5},
                                          {"text": "an oil painting of a harbour", "weight": 0.5}])  # fmt: skip
        for name, out in (("prompt", p2), ("strength", strength), ("seed", seed), ("blend", blend)):
            d = np.mean([mean_diff(x, y) for x, y in zip(ref, out, strict=True)])
            assert d > 0.3, (name, d)

        # Live change mid-stream: a prompt change reaches the very next chunk.
        h_key = (await node.control({"op": "claim", "stream": "h"}))["key"]
        h_ref = [px for _, px in await stream_paced(pub, sub, "h", video[:5], key=h_key)]
        change = {"op": "set", "stream": "h", "prompt": "an oil painting of a harbour"}
        assert "belongs to another client" in (await node.control(change))["error"]  # steering needs the key
        assert (await node.control({**change, "key": h_key}))["ok"]
        after = [px for _, px in await stream_paced(pub, sub, "h", video[5:9], first_seq=5)]
        i_ref = [px for _, px in await stream_paced(pub, sub, "i", video)]  # unchanged prompt all along
        assert np.array_equal(h_ref[0], i_ref[0])
        assert np.mean([mean_diff(x, y) for x, y in zip(after, i_ref[5:9], strict=True)]) > 0.3


async def test_bad_input_gets_errors_while_the_stream_keeps_flowing():
    video = make_video(13)
    async with running_node("--limits-control-burst", "20", "--limits-control-rate", "5") as node:
        pub, sub = await node.publisher(), await node.subscriber()
        out = []
        bad_frames = 0
        bad_control = [
            (b"\xc1\xff not msgpack", "malformed msgpack"),
            (msgpack.packb([1, 2, 3]), "expected a msgpack map"),
            (msgpack.packb({"op": "explode"}), "unknown op 'explode'"),
            (msgpack.packb({"op": "set", "stream": "cam", "strength": "high"}), "strength"),
            (msgpack.packb({"op": "set", "stream": "cam", "strength": 2.0}), "strength"),
            (msgpack.packb({"op": "set", "stream": "cam", "colour": "red"}), "colour"),
            (msgpack.packb({"op": "set", "stream": "cam", "prompt": "x" * 501}), "exceeds the limit of 500"),
            (msgpack.packb({"op": "set", "stream": "cam", "steps": [500, 900]}), "strictly decreasing"),
            (msgpack.packb({"op": "reset"}), "stream"),
            (msgpack.packb({"op": "set", "stream": "cam", "prompt": "a", "blob": b"\0" * 20000}), "exceeds the limit"),
        ]
        for i, frame in enumerate(video):
            await send_frame(pub, "cam", i, frame)
            if i < len(bad_control):
                raw, needle = bad_control[i]
                reply = await node.control(raw)
                assert reply["ok"] is False and needle in reply["error"], (needle, reply)
            if i in (2, 5, 8):  # bad data frames of another stream, between good ones
                await pub.send_multipart([b"only one part"])
                await pub.send_multipart([msgpack.packb({"v": 1, "stream": "x"}), b"\0" * 12])
                await send_frame(pub, "x", 0, np.zeros((4, 4, 3), np.uint8), w=5)  # 48 bytes, header says 60
                await pub.send_multipart([msgpack.packb({"v": 1, "stream": "x", "seq": 0, "pts_us": 0,
                                                         "w": 4000, "h": 4000, "fmt": "rgb24"}), b"\0"])  # fmt: skip
                await pub.send_multipart([b"\x92\x01", b"\0" * 3])
                bad_frames += 5
            if i in (0, 4, 8, 12):  # a chunk is complete: take its output before sending more (no overload)
                out += await recv_frames(sub, 1 if i == 0 else 4, timeout=60)
        assert [h["seq"] for h, _ in out] == list(range(len(video)))
        assert all(h["stream"] == "cam" for h, _ in out)
        m = await node.metrics()
        assert m["vidfx_frames_dropped_total{reason=malformed}"] == bad_frames
        assert m["vidfx_frames_emitted_total"] == len(video)
        st = await node.control({"op": "status"})
        assert list(st["sessions"]) == ["cam"]  # no session for the malformed stream

        # A flood from one client is rate limited; another client is unaffected.
        flooder = node.dealer()
        for _ in range(60):
            await flooder.send(msgpack.packb({"op": "status"}))
        replies = [msgpack.unpackb(await asyncio.wait_for(flooder.recv(), 10)) for _ in range(60)]
        limited = [r for r in replies if not r["ok"]]
        assert limited and all("rate limited" in r["error"] for r in limited)
        assert sum(r["ok"] for r in replies) >= 20
        other = node.dealer()
        assert (await node.control({"op": "status"}, sock=other))["ok"]
        assert (await node.metrics())["vidfx_control_messages_total{op=-,result=rate_limited}"] == len(limited)


async def test_pause_passes_frames_through_and_resume_stylises_again():
    video = make_video(13)
    async with running_node() as node:
        pub, sub = await node.publisher(), await node.subscriber()
        key = (await node.control({"op": "claim", "stream": "p"}))["key"]
        first = await stream_paced(pub, sub, "p", video[:5], key=key)
        assert (await node.control({"op": "pause", "stream": "p", "key": key}))["ok"]
        paused = await stream_paced(pub, sub, "p", video[5:9], first_seq=5)
        for (_, px), frame in zip(paused, video[5:9], strict=True):
            assert np.array_equal(px, frame)
        assert (await node.control({"op": "resume", "stream": "p", "key": key}))["ok"]
        assert (await node.control({"op": "reset", "stream": "p", "key": key}))["ok"]
        resumed = await stream_paced(pub, sub, "p", video[9:13], first_seq=9, at_start=True)  # after the reset
        assert [h["seq"] for h, _ in first + paused + resumed] == list(range(13))
        assert all(mean_diff(px, f) > 5 for (_, px), f in zip(resumed, video[9:13], strict=True))


async def test_sigterm_mid_stream_exits_zero():
    video = make_video(5)
    async with running_node() as node:
        pub, sub = await node.publisher(), await node.subscriber()
        for i in range(5):
            await send_frame(pub, "s", i, video[i])
        await recv_frame(sub)
        for i in range(5, 40):  # still streaming when the signal arrives
            await send_frame(pub, "s", i, video[i % 5])
        rc = await node.terminate()
        assert rc == 0
        assert (await node.wait_event("stopped"))["event"] == "stopped"
        assert not any("Traceback" in line for line in node.stderr), "".join(node.stderr)


async def test_readyz_before_model_then_token_beyond_loopback(tmp_path):
    async with running_node("--model-warmup-chunks", "12", wait_ready=False) as node:
        status, _ = await node.get("/readyz")
        assert status == 503
        assert (await node.get("/healthz"))[0] == 200
        ready = await node.wait_event("ready")
        node.endpoints.update({k: v for k, v in ready.items() if k not in ("event", "model")})
        assert (await node.get("/readyz"))[0] == 200

    # Bound beyond loopback without a token: refused at startup.
    with pytest.raises(RuntimeError, match="token"):
        async with running_node("--zmq-control", "tcp://0.0.0.0:*"):
            pass
    # With a token (from a .env file here): messages without it are refused, with it accepted.
    (tmp_path / ".env").write_text("VIDFX_TOKEN=0123456789abcdef-secret\n")
    async with running_node("--zmq-control", "tcp://0.0.0.0:*", cwd=tmp_path) as node:
        node.endpoints["control"] = node.endpoints["control"].replace("0.0.0.0", "127.0.0.1")
        reply = await node.control({"op": "status"})
        assert reply["ok"] is False and "unauthorized" in reply["error"]
        reply = await node.control({"op": "status", "token": "wrong-wrong-wrong"})
        assert reply["ok"] is False
        assert (await node.control({"op": "status", "token": "0123456789abcdef-secret"}))["ok"]
        # The data plane wants the token too: frames without it are dropped and counted.
        pub, sub = await node.publisher(), await node.subscriber_with_token("0123456789abcdef-secret")
        video = make_video(5)
        for i in range(5):
            await send_frame(pub, "no-token", i, video[i])
            await send_frame(pub, "with-token", i, video[i], token="0123456789abcdef-secret")
        out = await recv_frames(sub, 5)
        assert {h["stream"] for h, _ in out} == {"with-token"} and [h["seq"] for h, _ in out] == list(range(5))
        assert (await node.metrics())["vidfx_frames_dropped_total{reason=unauthorized}"] == 5


async def test_sigterm_during_warm_up_exits_zero_promptly():
    async with running_node("--model-warmup-chunks", "1000", wait_ready=False) as node:
        await asyncio.sleep(2.0)  # loading, then warming up
        start = time.monotonic()
        assert await node.terminate() == 0
        assert time.monotonic() - start < 15
        assert "ready" not in [e["event"] for e in node.events]


async def test_curve_encrypts_every_socket_and_shuts_out_plain_clients():
    secret = zmq.curve_keypair()[1].decode()
    async with running_node(env={"VIDFX_ZMQ__CURVE_SECRET_KEY": secret}) as node:
        assert node.endpoints["curve_public_key"] == zmq.curve_public(secret.encode()).decode()
        pub, sub = await node.publisher(), await node.subscriber()  # CURVE clients (the harness's default)
        video = make_video(5)
        for i in range(5):
            await send_frame(pub, "secret", i, video[i])
        assert [h["seq"] for h, _ in await recv_frames(sub, 5)] == list(range(5))
        plain = node.dealer(curve=False)
        with pytest.raises(TimeoutError):
            await node.control({"op": "status"}, sock=plain, timeout=1.0)
    with pytest.raises(RuntimeError, match="Z85"):
        async with running_node(env={"VIDFX_ZMQ__CURVE_SECRET_KEY": "not-a-key"}):
            pass
