"""Send frames to `vidfx serve` over ZeroMQ: a video file, a camera, or a synthetic test pattern.

    python examples/zmq_publish.py                              # synthetic pattern, stream "demo"
    python examples/zmq_publish.py --file clip.mp4 --loop       # a video file (any format PyAV reads)
    python examples/zmq_publish.py --camera /dev/video0         # a V4L2 camera (Linux), via PyAV
    python examples/zmq_publish.py --prompt "a watercolor painting" --strength 0.6

Each frame is the two-part message of the node's data plane: a msgpack header
{"v": 1, "stream", "seq", "pts_us", "w", "h", "fmt": "rgb24"} and the raw RGB bytes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import av
import msgpack
import numpy as np
import zmq


def synthetic(width: int, height: int) -> Iterator[np.ndarray]:
    """A moving colour gradient with a bouncing square."""
    yy, xx = np.mgrid[0:height, 0:width]
    i = 0
    while True:
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (i * 2) % 256)], -1).astype(np.uint8)
        s = max(8, min(width, height) // 5)
        x = abs((i * 4) % (2 * (width - s)) - (width - s))
        y = abs((i * 3) % (2 * (height - s)) - (height - s))
        img[y : y + s, x : x + s] = 255
        yield img
        i += 1


def from_container(source: str, loop: bool, **options: str) -> Iterator[np.ndarray]:
    while True:
        with av.open(source, **options) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        if not loop:
            return


def curve_client(sock: zmq.Socket, server_key: str | None) -> zmq.Socket:
    """Talk CURVE to a node started with a curve secret key (its public key is in its `ready` line)."""
    if server_key:
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    return sock


def send_control(ctx: zmq.Context, address: str, msg: dict, server_key: str | None = None) -> dict:
    sock = curve_client(ctx.socket(zmq.DEALER), server_key)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(msgpack.packb(msg))
    if not sock.poll(5000):
        raise SystemExit(f"no reply from the control channel at {address}")
    reply = msgpack.unpackb(sock.recv())
    sock.close()
    return reply


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", help="video file to send")
    src.add_argument("--camera", help="V4L2 device, e.g. /dev/video0")
    p.add_argument("--loop", action="store_true", help="restart the file at its end")
    p.add_argument("--input", default="tcp://127.0.0.1:5555", help="the node's input address")
    p.add_argument("--bind", action="store_true", help="bind instead of connect (node started with connect)")
    p.add_argument("--curve-server-key", default=None, help="the node's CURVE public key, when it encrypts")
    p.add_argument("--control", default="tcp://127.0.0.1:5557", help="the node's control address")
    p.add_argument("--stream", default="demo")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("W", "H"), help="synthetic size")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = never)")
    p.add_argument("--token", default=None, help="the node's token, when it listens beyond loopback")
    p.add_argument("--key", default=None, help="the stream's key (configured, or one you choose: 16+ characters)")
    p.add_argument("--prompt", default=None, help="send this prompt first (claims the stream: its key is printed)")
    p.add_argument("--strength", type=float, default=None)
    args = p.parse_args()

    ctx = zmq.Context()
    key = args.key
    if args.prompt is not None or args.strength is not None:
        msg: dict = {"op": "set", "stream": args.stream, **({"key": key} if key else {})}
        if args.prompt is not None:
            msg["prompt"] = args.prompt
        if args.strength is not None:
            msg["strength"] = args.strength
        if args.token:
            msg["token"] = args.token
        reply = send_control(ctx, args.control, msg, args.curve_server_key)
        print("control:", reply)  # a `set` that claimed the stream returns its key: it steers the stream later
        key = reply.get("key", key)

    # XPUB: wait for the node's subscription so the first frames are not lost to the PUB/SUB slow joiner.
    pub = curve_client(ctx.socket(zmq.XPUB), args.curve_server_key)
    pub.setsockopt(zmq.SNDHWM, 8)  # a stalled node drops our oldest frames instead of buffering seconds
    (pub.bind if args.bind else pub.connect)(args.input)
    if not pub.poll(10_000):
        raise SystemExit(f"no subscriber on {args.input} (is `vidfx serve` running?)")
    pub.recv()

    if args.file:
        frames = from_container(args.file, args.loop)
    elif args.camera:
        frames = from_container(args.camera, False, format="v4l2")
    else:
        frames = synthetic(*args.size)
    start = time.perf_counter()
    for seq, rgb in enumerate(frames):
        if args.frames and seq >= args.frames:
            break
        h, w = rgb.shape[:2]
        header = {"v": 1, "stream": args.stream, "seq": seq, "pts_us": time.time_ns() // 1000, "w": w, "h": h,
                  "fmt": "rgb24"}  # fmt: skip
        if args.token:
            header["token"] = args.token
        if key:
            header["key"] = key  # the stream was claimed (by the `set` above): its frames must show the key
        pub.send_multipart([msgpack.packb(header), np.ascontiguousarray(rgb)])
        time.sleep(max(0.0, start + (seq + 1) / args.fps - time.perf_counter()))
        if seq % int(args.fps * 5) == 0:
            print(f"sent {seq + 1} frames")
    pub.close(linger=1000)
    ctx.term()


if __name__ == "__main__":
    main()
