"""`vidfx obs-bridge`: a stream's stylised output → a virtual camera (pyvirtualcam) that OBS and video-call apps
can pick as a webcam."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def register(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Linux needs a v4l2loopback device (sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=vidfx "
        "exclusive_caps=1); Windows and macOS use OBS Studio's virtual camera. Install with: pip install 'vidfx[obs]'."
    )
    src = p.add_argument_group("source")
    src.add_argument("--stream", required=True, help="the stream id to show (e.g. obs, cam-1, offer-…)")
    src.add_argument(
        "--source", choices=("whep", "zmq"), default="whep", help="subscribe by WHEP or ZeroMQ (default whep)"
    )
    src.add_argument("--url", default="http://127.0.0.1:8080", help="the node's HTTP base URL, for WHEP")
    src.add_argument("--zmq-output", default="tcp://127.0.0.1:5556", help="the node's ZeroMQ output address")
    src.add_argument("--token", default=None, help="bearer token of the node (env VIDFX_TOKEN)")
    src.add_argument("--curve-server-key", default=None, help="the node's CURVE public key, when its ZeroMQ encrypts")
    cam = p.add_argument_group("virtual camera")
    cam.add_argument("--device", default=None, help="device, e.g. /dev/video10 (default: the backend's first)")
    cam.add_argument("--backend", default=None, help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    cam.add_argument("--fps", type=float, default=30.0, help="frame rate announced to the camera (default 30)")
    cam.add_argument(
        "--frames", type=int, default=None, help="stop after this many frames (default: run until the stream ends)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from vidfx.webrtc.obs_bridge import BridgeError, WhepSource, ZmqSource, run_bridge

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    token = args.token or os.environ.get("VIDFX_TOKEN")
    if args.source == "whep":
        source: WhepSource | ZmqSource = WhepSource(f"{args.url.rstrip('/')}/whep/{args.stream}", token)
    else:
        source = ZmqSource(args.zmq_output, args.stream, curve_server_key=args.curve_server_key)
    try:
        stats = asyncio.run(run_bridge(source, args.fps, args.device, args.backend, args.frames))
    except BridgeError as exc:
        print(f"vidfx obs-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    print(f"vidfx obs-bridge: {stats.frames} frames sent", file=sys.stderr)
    return 0
