"""Bad peers never cost a slot for long nor disturb the others: garbage SDP is refused with a reason, an ICE that
never completes and a client that vanishes mid-stream free their slot within 5 s, and a healthy session keeps
flowing all the while."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time

import aiohttp
from aiortc import RTCSessionDescription

from tests.webrtc_harness import REPO, new_pc, open_page_peer, running_node, wait_frames, whip_publish
from vidfx.webrtc.stamp import SyntheticVideoTrack

FLAGS = ["--webrtc-max-peers", "2", "--webrtc-connect-timeout-s", "2", "--webrtc-media-timeout-s", "2"]


async def test_garbage_sdp_gets_400_with_a_reason() -> None:
    async with running_node() as node, aiohttp.ClientSession() as http:
        cases = [
            ("", "empty SDP offer"),
            ("garbage\x00\x01", "must start with 'v=0'"),
            ("v=0\r\nm=video notaport UDP/TLS/RTP/SAVPF 96\r\n", "malformed SDP"),
            ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no video m= section"),
        ]
        for sdp, reason in cases:
            async with http.post(node.url + "/offer", json={"sdp": sdp, "type": "offer"}) as r:
                assert r.status == 400, (sdp, r.status)
                assert reason in await r.text()
            async with http.post(
                node.url + "/whip", data=sdp.encode(), headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 400 and reason in await r.text()
        # An offer that parses but that aiortc cannot use (no ICE credentials).
        pc = new_pc()
        pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        crippled = re.sub(r"a=(ice-ufrag|ice-pwd):.*\r\n", "", pc.localDescription.sdp)
        await pc.close()
        async with http.post(node.url + "/whip", data=crippled, headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and "invalid SDP offer" in await r.text()
        async with http.post(node.url + "/offer", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "JSON" in await r.text()
        assert (await node.status())["publishers"] == 0  # nothing was left behind


async def _offer_sdp(direction: str) -> str:
    pc = new_pc()
    if direction == "recvonly":
        pc.addTransceiver("video", direction="recvonly")
    else:
        pc.addTransceiver(SyntheticVideoTrack(), direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_sdp_that_cannot_work_is_refused_at_once_without_a_slot() -> None:
    """No fingerprint, an unknown hash, a malformed fingerprint, no codec the node decodes, the wrong direction:
    400 with the reason before any peer connection exists, so no slot is ever taken (the node used to answer 201
    and fail five seconds later, holding the slot meanwhile)."""
    send, receive = await _offer_sdp("sendonly"), await _offer_sdp("recvonly")
    page = await _offer_sdp("sendrecv")
    no_fingerprint = re.sub(r"a=fingerprint:.*\r\n", "", send)
    bad_hash = re.sub(r"a=fingerprint:.*\r\n", "a=fingerprint:sha-999 ZZ:ZZ\r\n", send)
    bad_value = re.sub(r"a=fingerprint:(\S+) .*\r\n", r"a=fingerprint:\1 ZZ:ZZ\r\n", send)
    # Only AV1 on offer: rename every video codec (the node decodes VP8 and H.264).
    head, video = send.split("m=video", 1)
    av1_only = head + "m=video" + re.sub(r"a=rtpmap:(\d+) \S+/90000", r"a=rtpmap:\1 AV1/90000", video)
    cases = [
        ("/whip/x", no_fingerprint, "no DTLS a=fingerprint"),
        ("/whip/x", bad_hash, "unknown DTLS fingerprint hash sha-999"),
        ("/whip/x", bad_value, "malformed DTLS fingerprint"),
        ("/whip/x", av1_only, "no usable video codec: offered AV1"),
        ("/whip/x", receive, "must send only"),
        ("/whip/x", page, "must send only"),
        ("/whep/x", send, "must receive only"),
        ("/whep/x", page, "must receive only"),
        ("/whep/x", re.sub(r"a=fingerprint:.*\r\n", "", receive), "no DTLS a=fingerprint"),
    ]
    async with running_node("--webrtc-max-peers", "1") as node, aiohttp.ClientSession() as http:
        for path, sdp, reason in cases:
            async with http.post(node.url + path, data=sdp, headers={"Content-Type": "application/sdp"}) as r:
                body = await r.text()
                assert r.status == 400 and reason in body, (path, reason, r.status, body)
        async with http.post(node.url + "/offer", json={"sdp": no_fingerprint, "type": "offer"}) as r:
            assert r.status == 400 and "no DTLS a=fingerprint" in await r.text()
        st = await node.status()
        assert st["publishers"] == st["viewers"] == st["closed_peers"] == 0, st  # no slot was ever taken
        # The one publisher slot is free: a good offer is answered.
        good = await whip_publish(node.url, "x")
        assert good.status == 201, good.body
        await good.pc.close()


def _closes(st: dict, stream: str) -> list[dict]:
    return [c for c in st["recent_closes"] if c["stream"] == stream]


async def test_dead_ice_and_vanished_client_free_their_slot_while_others_flow() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes ICE checks, never answers
    silent.bind(("127.0.0.1", 0))
    async with running_node(*FLAGS) as node:
        good = await open_page_peer(node.url, fps=15.0)
        try:
            await wait_frames(good.rx, 10, timeout=20)

            # 1. An offer whose only candidate is a black hole: ICE can never complete.
            pc = new_pc()
            pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            port = silent.getsockname()[1]
            sdp = re.sub(r"a=candidate:.*\r\n", "", pc.localDescription.sdp)
            sdp = sdp.replace("a=end-of-candidates", f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"
                              "a=end-of-candidates")  # fmt: skip
            await pc.close()
            t0 = time.monotonic()
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    node.url + "/whip/deadice", data=sdp, headers={"Content-Type": "application/sdp"}
                ) as r:
                    assert r.status == 201, await r.text()
                st = await node.status()
                assert st["publishers"] == 2
                # Every slot is taken now: a third publisher is refused (not queued).
                third = await whip_publish(node.url, "third")
                assert third.status == 503 and "slots are in use" in third.body
                await third.pc.close()
            frames_before = len(good.rx)
            await node.wait_for(lambda st: _closes(st, "deadice"), 6, "dead-ICE peer freed")
            freed_after = time.monotonic() - t0
            close = _closes(await node.status(), "deadice")[0]
            assert "not connected within 2 s" in close["reason"]
            assert freed_after < 5.0 and close["after_s"] < 5.0, (freed_after, close)
            # The healthy session kept flowing meanwhile (15 fps input; at least half of it out).
            assert len(good.rx) - frames_before >= 0.5 * 15 * (time.monotonic() - t0 - 1.0), good.rx.times[-5:]

            # 2. A publisher that vanishes mid-stream: its process is SIGKILLed (no DELETE, no DTLS close).
            env = dict(os.environ, PYTHONPATH=str(REPO))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.webrtc_client_proc", node.url, "vanisher",
                stdout=asyncio.subprocess.PIPE, cwd=str(REPO), env=env,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line.strip() == b"connected", line

                def streaming(st: dict) -> bool:
                    return any(p["stream"] == "vanisher" and p.get("frames_in", 0) >= 10 for p in st["peers"])

                await node.wait_for(streaming, 10, "the vanisher streams")
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            t1 = time.monotonic()
            frames_before = len(good.rx)
            await node.wait_for(lambda st: _closes(st, "vanisher"), 6, "vanished peer freed")
            freed_after = time.monotonic() - t1
            close = _closes(await node.status(), "vanisher")[0]
            assert "no video for 2 s" in close["reason"]
            assert freed_after < 5.0, freed_after
            assert len(good.rx) - frames_before >= 0.5 * 15 * (time.monotonic() - t1 - 1.0)

            # The slot is usable again, and the healthy peer is still there.
            again = await whip_publish(node.url, "again")
            assert again.status == 201, again.body
            st = await node.status()
            assert {p["stream"] for p in st["peers"]} == {good.answer["stream"], "again"}
            await again.pc.close()
        finally:
            await good.close()
            silent.close()


async def test_dead_stun_server_costs_a_bounded_wait_and_late_answers_still_connect() -> None:
    """A configured STUN server that never answers: the WHIP answer still comes within a second on loopback (host
    candidates at once, the server gets `ice_gather_timeout_s`, 0.5 s), and the connect timeout counts from the
    answer, so a client that applies it a second later still connects (before: 5 s answers, then dropped)."""
    dead_stun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead_stun.bind(("127.0.0.1", 0))
    port = dead_stun.getsockname()[1]
    try:
        async with running_node(
            "--webrtc-ice-servers", f"stun:127.0.0.1:{port}", "--webrtc-connect-timeout-s", "2"
        ) as node:  # fmt: skip
            pc = new_pc()
            pc.addTransceiver(SyntheticVideoTrack(128, 96, fps=15), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            t0 = time.monotonic()
            async with (
                aiohttp.ClientSession() as http,
                http.post(node.url + "/whip/late", data=pc.localDescription.sdp,
                          headers={"Content-Type": "application/sdp"}) as r,
            ):  # fmt: skip
                answered_after = time.monotonic() - t0
                assert r.status == 201, await r.text()
                assert r.headers.getall("Link") == [f'<stun:127.0.0.1:{port}>; rel="ice-server"']
                answer = await r.text()
            assert dead_stun.recv(2048)  # the node did ask the dead server
            assert answered_after < 1.0, f"WHIP answer took {answered_after:.2f} s with a dead STUN server"
            assert "typ host" in answer and "typ srflx" not in answer
            await asyncio.sleep(1.5)  # a slow client: 1.5 s of the 2 s connect window pass before it applies it
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

            def streaming(st: dict) -> bool:
                return any(p["stream"] == "late" and p.get("frames_in", 0) >= 5 for p in st["peers"])

            await node.wait_for(streaming, 15, "the late publisher streams")
            assert pc.connectionState == "connected"
            await pc.close()
    finally:
        dead_stun.close()


async def test_sigkilled_viewer_is_freed_within_five_seconds() -> None:
    """A WHEP viewer whose process is SIGKILLed (no DELETE, no DTLS close) stops sending RTCP; the node frees its
    slot after `media_timeout_s` (3 s) of silence instead of waiting 30 s for ICE consent to expire."""
    async with running_node() as node:
        pub = await whip_publish(node.url, "watched")
        assert pub.status == 201, pub.body
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.webrtc_client_proc", node.url, "watched", "view",
            stdout=asyncio.subprocess.PIPE, cwd=str(REPO), env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 40)
            assert line.strip() == b"connected", line
            await asyncio.sleep(4.0)  # a live viewer outlasts the timeout: its RTCP keeps it
            assert (await node.status())["viewers"] == 1
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        t1 = time.monotonic()
        await node.wait_for(lambda st: st["viewers"] == 0, 10, "killed viewer freed")
        freed_after = time.monotonic() - t1
        close = _closes(await node.status(), "watched")[0]
        assert close["role"] == "viewer" and "no RTCP from the viewer for 3 s" in close["reason"], close
        assert freed_after <= 5.0, f"the dead viewer held its slot {freed_after:.1f} s"
        st = await node.status()
        assert st["publishers"] == 1  # the publisher is untouched
        await pub.pc.close()
