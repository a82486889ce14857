"""`vidfx obs-bridge`: its WHEP and ZeroMQ sources against a live node, and a clear error where no virtual-camera
backend exists (no v4l2loopback device here)."""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import sys

import numpy as np
import pytest
import zmq
import zmq.asyncio

from tests.webrtc_harness import REPO, running_node, whip_publish
from vidfx.protocol import frame_header
from vidfx.webrtc.obs_bridge import BridgeError, WhepSource, ZmqSource, open_virtual_camera
from vidfx.webrtc.stamp import pattern_frame


async def test_bridge_cli_over_whep_reports_missing_backend_clearly() -> None:
    async with running_node() as node:
        pub = await whip_publish(node.url, "obs")
        assert pub.status == 201
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vidfx.cli", "obs-bridge", "--stream", "obs", "--url", node.url, "--frames", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        text = err.decode()
        if importlib.util.find_spec("pyvirtualcam") is None:
            assert proc.returncode == 2 and "pip install 'vidfx[obs]'" in text, text
        elif glob.glob("/dev/video*"):  # a machine with v4l2loopback: the frames really go to the camera
            assert proc.returncode == 0 and "5 frames sent" in text, text
        else:
            assert proc.returncode == 2, text
            assert "cannot open a virtual camera" in text and "modprobe v4l2loopback" in text, text
        # Either way the bridge was a real WHEP viewer, and it hung up after itself.
        await node.wait_for(lambda st: st["viewers"] == 0 and st["publishers"] == 1, 5, "bridge's viewer gone")
        assert any(c["role"] == "viewer" and c["stream"] == "obs" for c in (await node.status())["recent_closes"])
        await pub.pc.close()


async def test_bridge_sources_deliver_the_stream() -> None:
    async with running_node() as node:
        pub = await whip_publish(node.url, "cam")
        async with WhepSource(node.url + "/whep/cam") as src:
            got = []
            async for rgb, _pts in src.frames():
                got.append(rgb)
                if len(got) == 5:
                    break
        assert all(f.shape == (96, 128, 3) and f.dtype == np.uint8 for f in got)
        await pub.pc.close()

        with pytest.raises(BridgeError, match=r"refused \(404\): no stream 'nope' is live"):
            async with WhepSource(node.url + "/whep/nope"):
                pass

        # ZeroMQ: frames of the chosen stream only, from the node's output socket.
        ctx = zmq.asyncio.Context()
        pub_sock = ctx.socket(zmq.XPUB)
        pub_sock.setsockopt(zmq.LINGER, 0)
        try:
            pub_sock.connect(node.endpoints["input"])
            assert (await asyncio.wait_for(pub_sock.recv(), 10))[:1] == b"\x01"
            async with ZmqSource(node.endpoints["output"], "mine") as src:
                await asyncio.sleep(0.3)

                async def feed() -> None:
                    for seq in range(200):
                        for stream, (h, w) in (("mine", (48, 64)), ("other", (32, 32))):
                            px = pattern_frame(h, w, seq)
                            await pub_sock.send_multipart([frame_header(stream, seq, seq * 66_667, w, h), px.tobytes()])
                        await asyncio.sleep(1 / 15)

                feeder = asyncio.create_task(feed())
                frames = []
                async for rgb, pts in src.frames():
                    frames.append((rgb.shape, pts))
                    if len(frames) == 5:
                        break
                feeder.cancel()
            assert {shape for shape, _ in frames} == {(48, 64, 3)}
            pts = [p for _, p in frames]
            assert pts == sorted(pts) and all(p % 66_667 == 0 for p in pts)
        finally:
            pub_sock.close(0)
            ctx.term()


def test_missing_pyvirtualcam_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # as if the extra were not installed
    with pytest.raises(BridgeError, match=r"pip install 'vidfx\[obs\]'"):
        open_virtual_camera(64, 48, 30.0, None, None)
