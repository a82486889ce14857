"""WHIP ingest (RFC 9725) and WHEP egress with real aiortc peers: publish through /whip, watch the stylised stream
through /whep, DELETE frees the session; bearer tokens; ICE servers in Link headers; clear refusals."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import aiohttp
import numpy as np
import pytest
import zmq
import zmq.asyncio
from aioice import stun

from tests.webrtc_harness import REPO, new_pc, running_node, wait_frames, whep_view, whip_exchange, whip_publish
from vidfx.protocol import frame_header
from vidfx.webrtc.stamp import pattern_frame

TOKEN = "a-test-token-of-32-characters-xx"


async def test_whip_publish_whep_view_delete() -> None:
    async with running_node() as node:
        pub = await whip_publish(node.url, "cam1")
        assert pub.status == 201, pub.body
        assert pub.headers["Content-Type"].startswith("application/sdp")
        assert re.fullmatch(r"/whip/cam1/[0-9a-f]{32}", pub.headers["Location"])
        # ICE was gathered before answering (non-trickle): candidates are in the answer itself.
        assert "a=candidate:" in pub.body and "a=end-of-candidates" in pub.body
        assert "Link" not in pub.headers  # no STUN/TURN configured

        viewer = await whep_view(node.url, "cam1")
        assert viewer.status == 201, viewer.body
        assert re.fullmatch(r"/whep/cam1/[0-9a-f]{32}", viewer.headers["Location"])
        await wait_frames(viewer.rx, 15, timeout=20)
        assert viewer.rx.pixels[-1].shape == (96, 128, 3)
        # Stylised, not the publisher's frames echoed: most stamped counters do not read back (the shipped model
        # keeps the scene's layout in place, so some coarse stamps survive: see test_webrtc_offer).
        assert sum(c is not None for c in viewer.rx.counters(3)) < 0.5 * len(viewer.rx.counters(3))

        # A second viewer of the same stream (each gets its own frames from the one shared output).
        viewer2 = await whep_view(node.url, "cam1")
        assert viewer2.status == 201
        await wait_frames(viewer2.rx, 5, timeout=20)
        st = await node.status()
        assert st["publishers"] == 1 and st["viewers"] == 2
        assert st["outputs"]["cam1"]["subscribers"] == 2
        # A viewer that leaves (DELETE) unsubscribes; the other keeps watching.
        assert await viewer2.delete() == 200
        await node.wait_for(lambda st: st["viewers"] == 1, 5, "second viewer gone")
        assert (await node.status())["outputs"]["cam1"]["subscribers"] == 1
        before = len(viewer.rx)
        await wait_frames(viewer.rx, before + 5, timeout=10)

        # DELETE on the Location ends the WHIP session: the slot, the engine session, and its viewers go.
        assert await pub.delete() == 200
        await node.wait_for(lambda st: st["publishers"] == 0 and st["viewers"] == 0, 5, "WHIP session freed")
        await asyncio.wait_for(viewer.rx.ended.wait(), 10)
        assert await pub.delete() == 404  # already gone
        async with (
            aiohttp.ClientSession() as http,
            http.post(node.url + "/offer", json={"sdp": "v=0", "type": "offer"}) as r,
        ):
            assert r.status == 400
        gone = await whep_view(node.url, "cam1")
        assert gone.status == 404 and "no stream 'cam1'" in gone.body
        for c in (pub, viewer, viewer2, gone):
            await c.pc.close()


async def test_whep_views_a_zeromq_stream() -> None:
    """A session fed by ZeroMQ is watchable over WHEP, with the audio its frames carry; the ZeroMQ subscriber still
    gets every frame; when the publisher stops and the session is reclaimed, the viewer is let go."""
    async with running_node("--stream-idle-timeout-s", "1") as node:
        ctx = zmq.asyncio.Context()
        pub = ctx.socket(zmq.XPUB)
        sub = ctx.socket(zmq.SUB)
        try:
            pub.connect(node.endpoints["input"])
            assert (await asyncio.wait_for(pub.recv(), 10))[:1] == b"\x01"
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(node.endpoints["output"])
            await asyncio.sleep(0.3)

            async def send(seq: int) -> None:
                px = pattern_frame(96, 128, seq)
                t = (seq * 3200 + np.arange(3200)) / 48_000  # a continuous 440 Hz tone, 1/15 s with each frame
                pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
                header = frame_header("zcam", seq, seq * 66_667, 128, 96, audio=(48_000, 1))
                await pub.send_multipart([header, px.tobytes(), pcm])

            for seq in range(4):
                await send(seq)
            await asyncio.wait_for(sub.recv_multipart(), 20)  # the session exists and produces output
            viewer = await whep_view(node.url, "zcam", audio=True)
            assert viewer.status == 201, viewer.body
            got_zmq = 1
            seq = 4
            while len(viewer.rx) < 10 or len(viewer.audio_rx) < 25:
                await send(seq)
                seq += 1
                await asyncio.sleep(1 / 15)
                while True:
                    try:
                        await sub.recv_multipart(flags=zmq.NOBLOCK)
                        got_zmq += 1
                    except zmq.Again:
                        break
                assert seq < 400, "WHEP viewer got no frames"
            assert viewer.rx.pixels[-1].shape == (96, 128, 3)
            # The frames' audio reaches the viewer too (it leaves the node with its frame): the tone, not silence.
            assert float(np.median(viewer.audio_rx.rms[-10:])) > 2000, viewer.audio_rx.rms[-10:]
            assert got_zmq >= seq - 12  # the ZeroMQ output kept flowing beside the viewer
            # The ZeroMQ publisher goes quiet: the idle session is reclaimed and its viewer closed.
            await node.wait_for(lambda st: st["viewers"] == 0, 5, "viewer of a reclaimed session let go")
            (close,) = [c for c in (await node.status())["recent_closes"] if c["role"] == "viewer"]
            assert close["reason"] == "the stream ended"
            await asyncio.wait_for(viewer.rx.ended.wait(), 10)
            await viewer.pc.close()
        finally:
            pub.close(0)
            sub.close(0)
            ctx.term()


async def test_whip_bearer_token() -> None:
    async with running_node("--token", TOKEN) as node:
        for token in (None, "wrong-token-wrong-token-wrong-tok"):
            client = await whip_publish(node.url, "secure", token=token)
            assert client.status == 401, client.body
            assert client.headers["WWW-Authenticate"].startswith("Bearer")
            assert "unauthorized" in client.body
            await client.pc.close()
            viewer = await whep_view(node.url, "secure", token=token)
            assert viewer.status == 401
            await viewer.pc.close()
        async with aiohttp.ClientSession() as http:
            async with http.post(node.url + "/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                assert r.status == 401
            async with http.get(node.url + "/config.json") as r:
                cfg = await r.json()
                assert cfg["auth_required"] and not cfg["authorised"] and "ice_servers" not in cfg

        pub = await whip_publish(node.url, "secure", token=TOKEN)
        assert pub.status == 201, pub.body
        # What OBS and the common servers rely on: an ETag, and CORS exposing the headers a page must read.
        assert re.fullmatch(r'"[0-9a-f]{32}"', pub.headers["ETag"])
        exposed = {h.strip() for h in pub.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Location", "ETag", "Link"} <= exposed
        # The auth scheme is case-insensitive (RFC 7235): "bearer", "BEARER" work too; the token itself is not.
        async with aiohttp.ClientSession() as http:
            cases = [(f"bearer {TOKEN}", 200), (f"BEARER  {TOKEN}", 200), (f"Bearer {TOKEN.upper()}", 401),
                     (f"Basic {TOKEN}", 401), (TOKEN, 401)]  # fmt: skip
            for header, expected in cases:
                async with http.get(node.url + "/webrtc/status", headers={"Authorization": header}) as r:
                    assert r.status == expected, header
        viewer = await whep_view(node.url, "secure", token=TOKEN)
        assert viewer.status == 201
        await wait_frames(viewer.rx, 3, timeout=20)
        assert await pub.delete(token=None) == 401
        assert await pub.delete(token="nope") == 401
        assert (await node.status(TOKEN))["publishers"] == 1
        assert await pub.delete(token=TOKEN) == 200
        await node.wait_for(lambda st: st["publishers"] == 0, 5, "freed", token=TOKEN)
        await pub.pc.close()
        await viewer.pc.close()


async def test_token_required_beyond_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFX_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *["-m", "vidfx.cli", "serve", "--http-host", "0.0.0.0", "--http-port", "0"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO / "tests"),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"0.0.0.0 reaches beyond loopback: set a token" in err


class StunResponder(asyncio.DatagramProtocol):
    """A minimal STUN server on loopback: answers Binding requests with the sender's address."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.requests = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        self.requests += 1
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.transport.sendto(bytes(response), addr)  # type: ignore[attr-defined]


async def test_whip_ice_servers_in_link_headers_and_refusals() -> None:
    loop = asyncio.get_running_loop()
    transport, stun_server = await loop.create_datagram_endpoint(StunResponder, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with running_node(
            "--webrtc-ice-servers", f"stun:127.0.0.1:{port}", "--webrtc-connect-timeout-s", "2"
        ) as node:  # fmt: skip
            pub = await whip_publish(node.url)
            assert pub.status == 201, pub.body
            assert pub.headers.getall("Link") == [f'<stun:127.0.0.1:{port}>; rel="ice-server"']
            assert stun_server.requests > 0  # the node used the configured STUN server while gathering
            assert re.fullmatch(r"/whip/whip-[0-9a-f]{8}/[0-9a-f]{32}", pub.headers["Location"])

            async with aiohttp.ClientSession() as http:
                # The endpoint's preflight/discovery answer carries them too.
                async with http.options(node.url + "/whip") as r:
                    assert r.status == 204 and r.headers["Accept-Post"] == "application/sdp"
                    assert r.headers.getall("Link") == [f'<stun:127.0.0.1:{port}>; rel="ice-server"']
                # Trickle ICE / ICE restart: not supported, said clearly.
                async with http.patch(
                    pub.location, data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
                    headers={"Content-Type": "application/trickle-ice-sdpfrag"},
                ) as r:  # fmt: skip
                    assert r.status == 405 and "trickle ICE" in await r.text()
                    assert r.headers["Allow"] == "DELETE, OPTIONS"
                async with http.get(node.url + "/whip") as r:
                    assert r.status == 405
                # Wrong content type, garbage, no video: 415/400 with a reason.
                async with http.post(node.url + "/whip", data="{}", headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 415 and "application/sdp" in await r.text()
                async with http.post(
                    node.url + "/whip", data="hello, world", headers={"Content-Type": "application/sdp"}
                ) as r:
                    assert r.status == 400 and "must start with 'v=0'" in await r.text()
                audio_only = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
                async with http.post(
                    node.url + "/whip", data=audio_only, headers={"Content-Type": "application/sdp"}
                ) as r:
                    assert r.status == 400 and "no video" in await r.text()
                async with http.post(
                    node.url + "/whip/bad stream!", data=pub.pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                ) as r:  # fmt: skip
                    assert r.status == 400 and "stream id" in await r.text()
            # A viewer's offer on the WHIP endpoint is refused (it does not send video).
            pc = new_pc()
            pc.addTransceiver("video", direction="recvonly")
            status, _, body = await whip_exchange(node.url, "/whip", pc)
            assert status == 400 and "must send" in body
            await pc.close()
            await pub.pc.close()
    finally:
        transport.close()


def test_turn_servers_need_credentials_and_carry_them_in_link_headers() -> None:
    from vidfx.config import Settings
    from vidfx.webrtc.gateway import ConfigError, ice_servers, link_headers

    turn = "turn:turn.example.net:3478?transport=udp"
    s = Settings(webrtc={"ice_servers": ["stun:stun.example.net", turn]})
    with pytest.raises(ConfigError, match="needs turn_username and turn_credential"):
        ice_servers(s.webrtc)
    s = Settings(
        webrtc={"ice_servers": ["stun:stun.example.net", turn], "turn_username": "alice", "turn_credential": "pw"}
    )
    assert link_headers(ice_servers(s.webrtc)) == [
        '<stun:stun.example.net>; rel="ice-server"',
        f'<{turn}>; rel="ice-server"; username="alice"; credential="pw"; credential-type="password"',
    ]
    with pytest.raises(ConfigError, match="malformed uri"):
        ice_servers(Settings(webrtc={"ice_servers": ["http://nope"]}).webrtc)


def test_stamp_survives_vp8() -> None:
    """The counter stamp (used to tell pass-through from stylised frames) survives a real VP8 round trip."""
    import fractions

    from aiortc.codecs import get_decoder, get_encoder
    from aiortc.codecs.vpx import vp8_depayload
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from av import VideoFrame

    from vidfx.webrtc.stamp import read_counter

    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
    enc, dec = get_encoder(codec), get_decoder(codec)
    read = []
    for n in range(30):
        f = VideoFrame.from_ndarray(pattern_frame(96, 128, n * 37), format="rgb24")
        f.pts, f.time_base = n * 6000, fractions.Fraction(1, 90000)
        payloads, ts = enc.encode(f)
        for out in dec.decode(JitterFrame(data=b"".join(vp8_depayload(p) for p in payloads), timestamp=ts)):
            read.append(read_counter(out.to_ndarray(format="rgb24")))
    assert read == [n * 37 for n in range(30)]
    assert read_counter(np.zeros((96, 128, 3), np.uint8)) is None


async def test_whip_like_obs_h264_video_and_opus_audio() -> None:
    """What OBS sends: H.264 video plus Opus audio. The video is decoded and stylised; the audio is received
    (answered `recvonly`) and goes out to WHEP viewers that ask for it."""
    from aiortc import AudioStreamTrack, RTCRtpSender, RTCSessionDescription

    from vidfx.webrtc.stamp import SyntheticVideoTrack

    async with running_node() as node:
        pc = new_pc()
        video = pc.addTransceiver(SyntheticVideoTrack(128, 96, fps=15), direction="sendonly")
        video.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        )
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        status, _, answer = await whip_exchange(node.url, "/whip/obs", pc)
        assert status == 201, answer
        sections = {part.split(" ", 1)[0]: part for part in answer.split("\r\nm=")[1:]}  # kind → its lines
        video_part, audio_part = sections["video"], sections["audio"]
        assert "H264/90000" in video_part and "VP8" not in video_part
        assert "a=recvonly" in audio_part and "opus/48000" in audio_part
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        viewer = await whep_view(node.url, "obs", audio=True)
        assert "a=sendonly" in viewer.body.split("m=audio", 1)[1]
        await wait_frames(viewer.rx, 10, timeout=20)
        (publisher,) = [p for p in (await node.status())["peers"] if p["role"] == "publisher"]
        assert publisher["frames_in"] >= 10 and publisher["size"] == [128, 96]
        assert publisher["audio_frames_in"] > 0
        await node.wait_for(lambda st: st["outputs"]["obs"]["audio_frames"] > 50, 10, "audio flows")
        while len(viewer.audio_rx) < 25:  # aiortc's AudioStreamTrack sends silence: frames, not levels
            assert viewer.pc.connectionState == "connected"
            await asyncio.sleep(0.1)
        assert set(viewer.audio_rx.rates) == {48000}
        await pc.close()
        await viewer.pc.close()


@pytest.mark.parametrize("node_role", ["client", "server"])
async def test_whip_publisher_with_an_rsa_certificate_connects_in_either_dtls_role(node_role: str) -> None:
    """GStreamer-like publisher: RSA DTLS certificate and OpenSSL's default cipher list. With the node as DTLS
    client (its default as answerer) the publisher, as server, must pick an ECDHE-RSA suite: this is what
    `vidfx.webrtc.aiortc_adjust.allow_rsa_dtls` makes possible; stock aiortc fails with "no shared cipher". With
    the node as DTLS server (the offer says a=setup:active) the node's ECDSA suite is picked and the client
    authenticates with its RSA key."""
    from aiortc import RTCSessionDescription

    from tests.webrtc_harness import use_rsa_certificate
    from vidfx.webrtc.stamp import SyntheticVideoTrack

    async with running_node() as node:
        pc = new_pc()
        use_rsa_certificate(pc)
        pc.addTransceiver(SyntheticVideoTrack(128, 96, fps=15), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if node_role == "server":
            offer = offer.replace("a=setup:actpass", "a=setup:active")
        async with (
            aiohttp.ClientSession() as http,
            http.post(node.url + "/whip/rsa", data=offer, headers={"Content-Type": "application/sdp"}) as r,
        ):
            assert r.status == 201, await r.text()
            answer = await r.text()
        assert ("a=setup:active" if node_role == "client" else "a=setup:passive") in answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        viewer = await whep_view(node.url, "rsa")
        assert viewer.status == 201, viewer.body
        await wait_frames(viewer.rx, 10, timeout=20)
        assert pc.connectionState == "connected"
        cipher = pc.getTransceivers()[0].sender.transport._ssl.get_cipher_name()  # whichever the server picked
        assert cipher.startswith("ECDHE-RSA-" if node_role == "client" else "ECDHE-ECDSA-"), cipher
        await pc.close()
        await viewer.pc.close()


async def test_audio_comes_back_in_sync_with_the_stylised_video() -> None:
    """A click and a white flash sent in the same instant reach a WHEP viewer together: the node holds the audio
    back by the measured video latency (about a chunk through the model; almost nothing while paused), so both
    come out, the click within a frame of its flash. Without the delay the click would lead by the whole
    latency (≈ 240 ms here). The figure for the record is benchmarks/bench_av_sync.py's."""
    from tests.webrtc_harness import measure_av_sync
    from vidfx.webrtc.jitter import enable_marker_frames

    enable_marker_frames(True)  # this viewer releases frames as a browser does (see vidfx.webrtc.jitter)
    try:
        async with running_node() as node:
            sync = await measure_av_sync(node, "av", seconds=6.0)
            # Both phases: every flash found has its click, and they line up.
            assert len(sync.paused_ms) >= 2 and len(sync.model_ms) >= 4, sync
            assert sync.audio_delay_ms["model"] > 100 and sync.audio_delay_ms["paused"] < 60, sync
            assert abs(float(np.median(sync.model_ms))) < 67, sync  # within a frame interval at 15 fps
            assert abs(float(np.median(sync.paused_ms))) < 67, sync
    finally:
        enable_marker_frames(False)


async def test_video_only_publisher_and_an_audio_viewer() -> None:
    """A publisher without audio works as before; a viewer that asks for audio gets the video and a silent
    (frameless) audio track, and nothing breaks."""
    async with running_node() as node:
        pub = await whip_publish(node.url, "mute")
        assert pub.status == 201 and "m=audio" not in pub.body
        viewer = await whep_view(node.url, "mute", audio=True)
        assert viewer.status == 201, viewer.body
        await wait_frames(viewer.rx, 10, timeout=20)
        st = await node.status()
        assert st["outputs"]["mute"]["audio_frames"] == 0 and st["outputs"]["mute"]["audio_subscribers"] == 1
        assert len(viewer.audio_rx) == 0
        assert await pub.delete() == 200
        await node.wait_for(lambda st: st["publishers"] == 0 and st["viewers"] == 0, 5, "freed")
        await asyncio.wait_for(viewer.audio_rx.ended.wait(), 10)
        await pub.pc.close()
        await viewer.pc.close()
