"""A GStreamer webrtcbin WHIP publisher, as `whipsink`/`whipclientsink` set it up: H.264 + Opus, every candidate
in the offer (no trickle), webrtcbin's own DTLS certificate (GStreamer generates an RSA one). Runs under the
system Python with Debian's python3-gi (not the project's virtualenv), so it imports nothing from vidfx.

    /usr/bin/python3 tests/gst_whip_publisher.py --check                 exit 0 if GStreamer and the elements exist
    /usr/bin/python3 tests/gst_whip_publisher.py http://127.0.0.1:PORT/whip/STREAM [TOKEN]

Prints `connected` once ICE and DTLS are up, streams until stdin closes, then sends DELETE to the session URL
and prints `deleted STATUS`. Any failure prints `error: …` and exits 1.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

ELEMENTS = ("webrtcbin", "nicesrc", "dtlssrtpenc", "x264enc", "rtph264pay", "opusenc", "rtpopuspay",
            "videotestsrc", "audiotestsrc")  # fmt: skip
PIPELINE = """
webrtcbin name=wb bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert
 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=800
 ! video/x-h264,profile=constrained-baseline
 ! rtph264pay config-interval=-1 pt=102 aggregate-mode=zero-latency
 ! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,packetization-mode=(string)1 ! wb.
audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample ! opusenc ! rtpopuspay pt=111
 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! wb.
"""


def fail(message: str) -> None:
    print(f"error: {message}", flush=True)
    sys.exit(1)


def load_gst():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    gi.require_version("GstSdp", "1.0")
    from gi.repository import Gst, GstSdp, GstWebRTC

    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        raise ImportError(f"GStreamer elements missing: {', '.join(missing)}")
    return Gst, GstSdp, GstWebRTC


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            fail(f"{what} not within {timeout} s")
        time.sleep(0.02)


def main(url: str, token: str | None) -> None:
    Gst, GstSdp, GstWebRTC = load_gst()
    pipe = Gst.parse_launch(PIPELINE)
    wb = pipe.get_by_name("wb")
    pipe.set_state(Gst.State.PLAYING)
    # webrtcbin makes a sendrecv transceiver per linked pad; a WHIP publisher only sends.
    for i in range(2):
        wb.emit("get-transceiver", i).set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)

    promise = Gst.Promise.new()
    wb.emit("create-offer", None, promise)
    if promise.wait() != Gst.PromiseResult.REPLIED:
        fail("webrtcbin made no offer")
    reply = promise.get_reply()  # owns the offer: a temporary would free it under our feet (PyGObject)
    offer = reply.get_value("offer")
    wb.emit("set-local-description", offer, Gst.Promise.new())
    complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
    wait_for(lambda: wb.get_property("ice-gathering-state") == complete, 10, "ICE gathering")
    offer_sdp = wb.get_property("local-description").sdp.as_text()  # every candidate inside: no trickle

    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=offer_sdp.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            status, location, answer_sdp = r.status, r.headers["Location"], r.read().decode()
    except urllib.error.HTTPError as exc:
        fail(f"WHIP POST answered {exc.code}: {exc.read().decode().strip()}")
    if status != 201 or not location:
        fail(f"WHIP POST answered {status} without a Location")
    ok, sdp = GstSdp.SDPMessage.new_from_text(answer_sdp)
    if ok != GstSdp.SDPResult.OK:
        fail("unparsable SDP answer")
    answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
    wb.emit("set-remote-description", answer, Gst.Promise.new())
    connected = GstWebRTC.WebRTCPeerConnectionState.CONNECTED
    wait_for(lambda: wb.get_property("connection-state") == connected, 20, "ICE + DTLS connection")
    print("connected", flush=True)

    sys.stdin.read()  # stream until the test closes our stdin
    bus = pipe.get_bus()  # what went wrong, if anything, for the test's failure message
    while (msg := bus.pop_filtered(Gst.MessageType.ERROR)) is not None:
        print(f"gstreamer: {msg.parse_error()[0].message}", file=sys.stderr)
    request = urllib.request.Request(urljoin(url, location), headers=headers, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            print(f"deleted {r.status}", flush=True)
    except urllib.error.HTTPError as exc:
        print(f"deleted {exc.code}", flush=True)
    pipe.set_state(Gst.State.NULL)


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        try:
            load_gst()
        except (ImportError, ValueError) as exc:
            print(f"{type(exc).__name__}: {exc}")
            sys.exit(1)
        sys.exit(0)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
