"""A hostile client on loopback against `vidfx serve` (real subprocess, real ZeroMQ sockets and HTTP): stream
ownership, quotas that survive a change of identity, and the ten defects of issue 19, each reproduced."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio
from aiortc import RTCSessionDescription

from tests.serve_harness import REPO, make_video, recv_frames, running_node, send_frame
from tests.test_serve import mean_diff, stream_paced, wait_until
from tests.webrtc_harness import new_pc, wait_frames, whep_view, whip_exchange
from tests.webrtc_harness import running_node as webrtc_node
from vidfx.webrtc.stamp import SyntheticVideoTrack

pytestmark = pytest.mark.timeout(240)
TOKEN = "0123456789abcdef-hardening"


async def test_hijack_and_foreign_control_are_refused_and_counted():
    async with running_node() as node:
        owner, attacker = await node.publisher(), await node.publisher()  # two connections
        sub = await node.subscriber()
        video = make_video(9)
        tiny = np.zeros((16, 16, 3), np.uint8)
        attempts, out, i = 0, [], 0
        for n in (1, 4, 4):  # the owner's chunks, with the attacker's 16x16 frames under its id in between
            for j in range(n):
                await send_frame(owner, "victim", i + j, video[i + j])
                if i == 0:
                    continue  # the owner's first frame is out (the stream is its own) before the attack starts
                await send_frame(attacker, "victim", 1000 + attempts, tiny)
                await send_frame(attacker, "victim", 2000 + attempts, tiny, key="not-the-key-of-victim")
                attempts += 2
            out += await recv_frames(sub, n, timeout=60)
            i += n
        assert [h["seq"] for h, _ in out] == list(range(9)) and all(h["stream"] == "victim" for h, _ in out)
        assert all(px.shape == (96, 128, 3) and mean_diff(px, f) > 5 for (_, px), f in zip(out, video, strict=True))
        st = (await node.control({"op": "status", "stream": "victim"}))["session"]
        assert st["frames_in"] == 9 and st["refused"] == attempts and "resized" not in st["dropped"]
        assert (await node.metrics())["vidfx_frames_dropped_total{reason=foreign}"] == attempts

        # Foreign control: nobody but the key holder (or the node token) steers an owned stream.
        for op in ({"op": "pause"}, {"op": "reset"}, {"op": "resume"}, {"op": "set", "prompt": "hijacked"}):
            for key in ({}, {"key": "x" * 24}):
                reply = await node.control({**op, "stream": "victim", **key})
                assert reply["ok"] is False and "belongs to another client" in reply["error"], reply
        assert (await node.control({"op": "claim", "stream": "victim"}))["ok"] is False  # no key handed out twice
        assert (await node.metrics())["vidfx_control_messages_total{op=pause,result=forbidden}"] == 2
        # A stream claimed first: its key steers it, and its publisher (the first to give the key) owns it.
        key = (await node.control({"op": "claim", "stream": "mine"}))["key"]
        assert (await node.control({"op": "pause", "stream": "mine"}))["ok"] is False
        await send_frame(attacker, "mine", 0, video[0])  # no key: refused, the stream stays unfed
        await send_frame(owner, "mine", 0, video[0], key=key)
        await send_frame(attacker, "mine", 1, video[1], key=key + "x")
        ((h, _),) = await recv_frames(sub, 1, timeout=60)
        assert h["stream"] == "mine" and h["seq"] == 0
        assert (await node.control({"op": "pause", "stream": "mine", "key": key}))["ok"]
        st = (await node.control({"op": "status", "stream": "mine"}))["session"]
        assert st["paused"] and st["refused"] == 2 and st["frames_in"] == 1


async def test_junk_claims_leave_a_real_stream_its_slot_and_rotating_identities_share_one_budget():
    flags = ("--stream-unclaimed-grace-s", "1", "--limits-control-rate", "5", "--limits-control-burst", "10")
    async with running_node(*flags) as node:
        pub, sub = await node.publisher(), await node.subscriber()
        # 100 `set`s on made-up ids, a fresh identity (connection) every 10 messages.
        replies = []
        for n in range(100):
            if n % 10 == 0:
                dealer = node.dealer()
            replies.append(await node.control({"op": "set", "stream": f"junk-{n}", "seed": 1}, sock=dealer))
        ok = [r for r in replies if r["ok"]]
        assert len(ok) <= 2, ok  # limits.unclaimed_per_client: one address holds at most 2 unfed streams
        assert all("without a publisher" in r["error"] or "rate limited" in r["error"] for r in replies if not r["ok"])
        out = await stream_paced(pub, sub, "real", make_video(5))  # the real stream gets its slot and its frames
        assert [h["seq"] for h, _ in out] == list(range(5))

        async def junk_freed() -> bool:
            sessions = (await node.control({"op": "status"}, sock=node.dealer()))["sessions"]
            return not any(s.startswith("junk") for s in sessions) and "real" in sessions

        await wait_until(junk_freed, timeout=10, what="unfed claims to be freed after the grace period")

        # Rotating identities: every fresh DEALER is a new connection with a new identity, yet all of them
        # share one peer-address budget of control_address_factor (4) x the client's: 20/s, bursts of 40.
        await asyncio.sleep(3)  # let the address bucket refill after the messages above
        dealers = [node.dealer() for _ in range(30)]
        start = time.monotonic()
        for d in dealers:
            for _ in range(20):
                await d.send(msgpack.packb({"op": "status"}))
        answers = [msgpack.unpackb(await asyncio.wait_for(d.recv(), 10)) for d in dealers for _ in range(20)]
        elapsed = time.monotonic() - start
        accepted = sum(a["ok"] for a in answers)
        assert accepted <= 40 + 20 * elapsed + 1, (accepted, elapsed)  # not 30 identities x 10 burst = 300
        assert all("rate limited" in a["error"] for a in answers if not a["ok"])


async def test_strict_envelopes_and_stream_ids_over_zeromq():
    async with running_node() as node:
        pub, sub = await node.publisher(), await node.subscriber()
        px = np.zeros((8, 8, 3), np.uint8)
        # Defect 5: the version is an int, exactly 1 (True and 1.0 compare equal to 1 in Python).
        await send_frame(pub, "strict", 0, px, v=True)
        await send_frame(pub, "strict", 1, px, v=1.0)
        # Defect 8: stream ids follow one rule on every transport; escapes never reach the log.
        evil = "\x00\n\x1b[31mred"
        await send_frame(pub, evil, 0, px)
        await send_frame(pub, "ok-stream", 0, px)
        ((h, _),) = await recv_frames(sub, 1, timeout=60)
        assert h["stream"] == "ok-stream"
        m = await node.metrics()
        assert m["vidfx_frames_dropped_total{reason=malformed}"] == 3
        reply = await node.control({"op": "set", "stream": evil, "prompt": "x"})
        assert reply["ok"] is False and "stream id must be" in reply["error"] and "\x1b" not in reply["error"]
        # Defect 6: a null is a type error, not "not given"; a `set` that changes nothing is an error too.
        reply = await node.control({"op": "set", "stream": "s", "prompt": None})
        assert reply["ok"] is False and "null is not a value" in reply["error"], reply
        reply = await node.control({"op": "set", "stream": "s", "id": 3})
        assert reply == {"ok": False, "error": reply["error"], "id": 3} and "changes nothing" in reply["error"]
        assert (await node.control({"op": "status", "id": True}))["ok"] is False  # a bool is not an int id
        sessions = (await node.control({"op": "status"}))["sessions"]
        assert sorted(sessions) == ["ok-stream"]  # neither refused message opened a session
        # Defect 7: a control message far above the limit (and below the transport's 1 MiB) gets its reason.
        big = msgpack.packb({"op": "set", "stream": "s", "prompt": "x" * 100_000})
        reply = await node.control(big)
        assert reply == {"ok": False, "error": f"message of {len(big)} bytes exceeds the limit of 16384"}
        assert (await node.control({"op": "status"}))["ok"]  # the same connection still works
        await asyncio.sleep(0.3)
        log = "".join(node.stderr)
        assert "\x1b" not in log and "\x00" not in log and "red\n" not in log


async def _raw_http(url: str, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (headers no client library would send)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return int(data.split(b" ", 2)[1]), data


async def test_token_file_is_enforced_everywhere_and_http_errors_are_client_errors(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    flags = ("--token-file", str(token_file), "--stream-prompt", "the operator's secret prompt")
    async with running_node(*flags) as node:
        # Defect 4 and 9: a token (from a file, never on the command line) is demanded on loopback ZeroMQ too.
        assert "unauthorized" in (await node.control({"op": "status"}))["error"]
        assert (await node.control({"op": "status", "token": TOKEN}))["ok"]
        pub, sub = await node.publisher(), await node.subscriber_with_token(TOKEN)
        video = make_video(2)
        await send_frame(pub, "no-token", 0, video[0])
        await send_frame(pub, "with-token", 0, video[0], token=TOKEN)
        ((h, _),) = await recv_frames(sub, 1, timeout=60)
        assert h["stream"] == "with-token"
        assert (await node.metrics())["vidfx_frames_dropped_total{reason=unauthorized}"] == 1
        url = node.endpoints["http"]
        # Defect 10: without the token /config.json does not show the operator's prompt (nor ICE servers).
        status, body = await node.get("/config.json")
        assert status == 200 and body["authorised"] is False and body["defaults"]["prompt"] is None
        assert "secret prompt" not in str(body)
        code, raw = await _raw_http(url, f"GET /config.json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                                         "Connection: close\r\n\r\n".encode())  # fmt: skip
        assert code == 200 and b"the operator's secret prompt" in raw
        # Defect 2: a bearer that is not UTF-8 is a 401, not a 500.
        request = b"GET /webrtc/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n"
        request += b"\r\n"
        code, raw = await _raw_http(url, request)
        assert code == 401, raw
        # Defect 1: deeply nested JSON is a 400 with a reason, not a RecursionError's 500.
        body = b"[" * 5000 + b"]" * 5000
        code, raw = await _raw_http(
            url, b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + TOKEN.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body,
        )  # fmt: skip
        assert code == 400 and b"expected a JSON body" in raw, raw[:300]
        assert (await node.get("/healthz"))[0] == 200


async def _serve_exit(*flags: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vidfx.cli", "serve", "--http-port", "0", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO / "tests"),
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode(errors="replace")


async def test_http_beyond_loopback_needs_a_token_without_webrtc_and_token_flag_is_flagged():
    # Defect 3: the HTTP host check is the node's, not only the WebRTC gateway's.
    code, err = await _serve_exit("--no-webrtc-enabled", "--http-host", "0.0.0.0")
    assert code == 2 and "HTTP on 0.0.0.0 reaches beyond loopback: set a token" in err, err
    # Defect 9: a token on the command line works but is called out (it is in /proc/<pid>/cmdline).
    code, err = await _serve_exit("--token", "too-short")
    assert code == 2 and "at least 16 characters" in err and "--token is readable by every local user" in err, err


async def test_webrtc_publishers_own_their_streams_like_zeromq_ones():
    async def whip(url: str, path: str) -> tuple[int, dict, str, object]:
        pc = new_pc()
        pc.addTransceiver(SyntheticVideoTrack(128, 96, fps=15), direction="sendonly")
        status, headers, body = await whip_exchange(url, path, pc)
        if status == 201:
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return status, headers, body, pc

    async with webrtc_node() as node:
        ctx = zmq.asyncio.Context()
        dealer, pub = ctx.socket(zmq.DEALER), ctx.socket(zmq.XPUB)
        pcs = []
        try:
            dealer.connect(node.endpoints["control"])
            pub.connect(node.endpoints["input"])
            await asyncio.wait_for(pub.recv(), 10)

            async def control(msg: dict) -> dict:
                await dealer.send(msgpack.packb(msg))
                return msgpack.unpackb(await asyncio.wait_for(dealer.recv(), 10))

            key = (await control({"op": "claim", "stream": "claimed"}))["key"]
            status, _, body, pc = await whip(node.url, "/whip/claimed")  # a claimed stream wants its key
            pcs.append(pc)
            assert status == 403 and "give its key" in body
            status, headers, body, pc = await whip(node.url, f"/whip/claimed?key={key}")
            pcs.append(pc)
            assert status == 201, body
            assert headers["X-Vidfx-Stream-Key"] == key
            status, _, body, pc = await whip(node.url, f"/whip/claimed?key={key}")  # one publisher per stream
            pcs.append(pc)
            assert status == 409
            viewer = await whep_view(node.url, "claimed")
            pcs.append(viewer.pc)
            await wait_frames(viewer.rx, 3, timeout=30)  # the WHIP publisher's stream flows
            # ZeroMQ frames under its id are refused, even with the key (a WebRTC-fed stream is not taken over).
            px = np.zeros((96, 128, 3), np.uint8)
            await send_frame(pub, "claimed", 0, px)
            await send_frame(pub, "claimed", 1, px, key=key)
            await asyncio.sleep(0.5)
            st = await control({"op": "status", "stream": "claimed"})
            assert st["session"]["refused"] == 2 and st["session"]["fed"] is True
            assert "belongs to another client" in (await control({"op": "pause", "stream": "claimed"}))["error"]
            assert (await control({"op": "pause", "stream": "claimed", "key": key}))["ok"]
        finally:
            for pc in pcs:
                await pc.close()
            dealer.close(0)
            pub.close(0)
            ctx.term()
