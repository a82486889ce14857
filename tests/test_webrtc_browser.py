"""A real browser on the page: headless Chromium with its fake camera opens `/`, goes live over WebRTC, shows
stylised frames (seen in the node's counters and in pixels read from the page's output <video>), changes the
prompt from the page, and leaves a screenshot in artifacts/webrtc_page.png."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from tests.webrtc_harness import REPO, running_node

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = REPO / "artifacts"

# Draw the output <video> into a canvas and summarise its pixels (and the camera's, for comparison).
READ_PIXELS = """
const grab = (v) => {
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return {w: c.width, h: c.height, rgb: sum.map((x) => x / n), frames: v.getVideoPlaybackQuality().totalVideoFrames};
};
return {out: grab(document.getElementById('output')), cam: grab(document.getElementById('camera'))};
"""


# Audio RTP packets the page has received (its return leg), from the page's own RTCPeerConnection stats.
AUDIO_PACKETS_IN = """
const done = arguments[arguments.length - 1];
window.vidfx.pc.getStats().then((report) => {
  let n = 0;
  report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') n += s.packetsReceived; });
  done(n);
});
"""


def _browser(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp}", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection", "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def _distance(pixels: dict) -> float:
    """Largest per-channel difference of the mean colours of the output and camera videos."""
    return max(abs(a - b) for a, b in zip(pixels["out"]["rgb"], pixels["cam"]["rgb"], strict=True))


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        await asyncio.sleep(0.2)


async def _control(endpoint: str, msg: dict) -> dict:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        await sock.send(msgpack.packb(msg))
        return msgpack.unpackb(await asyncio.wait_for(sock.recv(), 10))
    finally:
        sock.close(0)
        ctx.term()


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh --dev installs them as root)",
)
async def test_page_in_headless_chromium() -> None:
    from selenium.webdriver.common.by import By

    async with running_node() as node:
        with tempfile.TemporaryDirectory() as profile:
            driver = await asyncio.to_thread(_browser, Path(profile))
            try:
                await asyncio.to_thread(driver.get, node.url + "/")
                assert driver.title.startswith("vidfx")
                looks = await _until(
                    lambda: [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#looks button")], 10, "looks"
                )
                # the default model's claimed looks (model.json), not ones it cannot render
                assert looks == ["pencil sketch", "thermal camera", "watercolor painting", "vintage sepia",
                                 "comic book style", "night vision"]  # fmt: skip

                driver.find_element(By.ID, "audio").click()  # the fake microphone (a beep) goes along
                driver.find_element(By.ID, "start").click()
                await _until(lambda: driver.execute_script("return window.vidfx.state") == "live", 30, "page live")
                stream = driver.execute_script("return window.vidfx.stream")
                assert stream.startswith("offer-")
                # The microphone reaches the node and comes back on the return leg, into the output <video>.
                await node.wait_for(lambda st: st["outputs"][stream]["audio_frames"] > 50, 20, "page audio in")
                await _until(lambda: driver.execute_async_script(AUDIO_PACKETS_IN) > 50, 20, "audio back")
                tracks = "return document.getElementById('output').srcObject.getAudioTracks().length"
                assert driver.execute_script(tracks) == 1

                # Stylised frames reach the page: the output <video> plays and its pixels are a real picture.
                # (With no prompt the default model keeps the input's colours; a look chip asks for a change.)
                driver.find_element(By.XPATH, "//div[@id='looks']/button[text()='thermal camera']").click()
                first = await _until(lambda: (driver.execute_script(READ_PIXELS)["out"] or {}).get("frames", 0) > 10 and
                                     driver.execute_script(READ_PIXELS), 30, "output frames")  # fmt: skip
                assert first["out"]["w"] > 0 and first["out"]["h"] > 0
                # The pixels are the node's: stylised, they are far from the camera's; paused from the page (the
                # node passes frames through), they match the camera's; resumed, they are the model's again.
                await _until(lambda: _distance(driver.execute_script(READ_PIXELS)) > 20, 15, "thermal pixels")
                driver.find_element(By.ID, "pause").click()
                await _until(lambda: _distance(driver.execute_script(READ_PIXELS)) < 8, 15, "pass-through pixels")
                driver.find_element(By.ID, "pause").click()
                await _until(lambda: _distance(driver.execute_script(READ_PIXELS)) > 20, 15, "stylised pixels")
                # …and the node counts them: frames in from the browser, stylised frames out to it.
                st = await node.status()
                (peer,) = st["peers"]
                assert peer["stream"] == stream and peer["frames_in"] > 10
                assert st["outputs"][stream]["frames_sent"] > 10
                stats = await _until(lambda: driver.execute_script("return window.vidfx.stats"), 10, "stats")
                assert stats["fps_out"] > 0 and stats["stream"] == stream
                assert driver.find_element(By.ID, "fps-out").text not in ("", "–")

                # Change the prompt from the page: type a look and press Enter.
                box = driver.find_element(By.ID, "prompt")
                box.clear()
                box.send_keys("neon edges\n")
                await _until(
                    lambda: any(r.get("ok") and r.get("op") == "set" and r.get("applied") == ["prompts"]
                                for r in driver.execute_script("return window.vidfx.replies")),
                    10, "prompt applied",
                )  # fmt: skip
                status = await _control(node.endpoints["control"], {"op": "status", "stream": stream})
                assert status["session"]["params"]["prompts"] == [{"text": "neon edges", "weight": 1.0}]
                # A look chip does the same.
                driver.find_element(By.XPATH, "//div[@id='looks']/button[text()='pencil sketch']").click()

                async def prompt_is(text: str) -> bool:
                    s = await _control(node.endpoints["control"], {"op": "status", "stream": stream})
                    return s["session"]["params"]["prompts"][0]["text"] == text

                deadline = time.monotonic() + 10
                while not await prompt_is("pencil sketch"):
                    assert time.monotonic() < deadline, "the look chip did not reach the node"
                    await asyncio.sleep(0.1)
                # Frames keep coming after the change.
                before = driver.execute_script(READ_PIXELS)["out"]["frames"]
                await _until(lambda: driver.execute_script(READ_PIXELS)["out"]["frames"] > before + 10, 20,
                             "frames after the prompt change")  # fmt: skip
                await asyncio.sleep(1.0)  # let the stats panel refresh before the picture is taken
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "webrtc_page.png"
                assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

                # The same stream in a second tab through the WHEP viewer page (what an OBS Browser Source loads).
                page_tab = driver.current_window_handle
                driver.switch_to.new_window("tab")
                await asyncio.to_thread(driver.get, f"{node.url}/watch/{stream}")
                watched = """const v = document.getElementById('video');
                             return v.videoWidth ? v.getVideoPlaybackQuality().totalVideoFrames : 0;"""
                await _until(lambda: driver.execute_script(watched) > 10, 30, "frames in the WHEP viewer page")
                st = await node.status()
                assert st["viewers"] == 1 and st["publishers"] == 1
                driver.close()
                driver.switch_to.window(page_tab)
                await node.wait_for(lambda st: st["viewers"] == 0, 10, "viewer tab closed")

                driver.find_element(By.ID, "stop").click()
                await node.wait_for(lambda st: st["publishers"] == 0, 5, "publisher freed after Stop")
            finally:
                await asyncio.to_thread(driver.quit)
