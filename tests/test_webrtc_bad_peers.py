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
        # An offer that parses but that aiortc cannot use (no ICE credentials, no DTLS fingerprint).
        pc = new_pc()
        pc.addTransceiver(SyntheticVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        crippled = re.sub(r"a=(ice-ufrag|ice-pwd|fingerprint):.*\r\n", "", pc.localDescription.sdp)
        await pc.close()
        async with http.post(node.url + "/whip", data=crippled, headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and "invalid SDP offer" in await r.text()
        async with http.post(node.url + "/offer", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "JSON" in await r.text()
        assert (await node.status())["publishers"] == 0  # nothing was left behind


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
