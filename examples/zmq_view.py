"""Receive stylised frames from `vidfx serve` and show them in a window, or write them to a video file.

    python examples/zmq_view.py                         # a window (matplotlib) when a display is available
    python examples/zmq_view.py --out styled.mp4        # an MP4 file (PyAV), e.g. on a headless machine
    python examples/zmq_view.py --stream demo --frames 300 --out styled.mp4

Prints the end-to-end latency of the frames (input pts stamped by zmq_publish.py → received here).
"""

from __future__ import annotations

import argparse
import os
import time
from fractions import Fraction

import av
import msgpack
import numpy as np
import zmq


class FileSink:
    def __init__(self, path: str, fps: float) -> None:
        self.container = av.open(path, mode="w")
        self.fps = fps
        self.stream: av.VideoStream | None = None

    def show(self, rgb: np.ndarray) -> None:
        if self.stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.width, self.stream.height = rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2
            self.stream.pix_fmt = "yuv420p"
        rgb = rgb[: self.stream.height, : self.stream.width]
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


class WindowSink:
    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        self.plt = plt
        plt.ion()
        self.fig, self.ax = plt.subplots()
        self.ax.axis("off")
        self.image = None

    def show(self, rgb: np.ndarray) -> None:
        if self.image is None:
            self.image = self.ax.imshow(rgb)
        else:
            self.image.set_data(rgb)
        self.plt.pause(0.001)

    def close(self) -> None:
        self.plt.close(self.fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="tcp://127.0.0.1:5556", help="the node's output address")
    p.add_argument("--bind", action="store_true", help="bind instead of connect (node started with connect)")
    p.add_argument("--curve-server-key", default=None, help="the node's CURVE public key, when it encrypts")
    p.add_argument("--stream", default=None, help="show only this stream id")
    p.add_argument("--out", default=None, help="write to this video file instead of a window")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the written file")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = never)")
    args = p.parse_args()

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    if args.curve_server_key:  # the node encrypts: be a CURVE client with a throwaway key pair
        sub.curve_serverkey = args.curve_server_key.encode()
        sub.curve_publickey, sub.curve_secretkey = zmq.curve_keypair()
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    (sub.bind if args.bind else sub.connect)(args.output)
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    sink = FileSink(args.out or "vidfx_view.mp4", args.fps) if args.out or headless else WindowSink()
    if isinstance(sink, FileSink):
        print(f"writing {sink.container.name}")
    latencies: list[float] = []
    n = 0
    try:
        while not args.frames or n < args.frames:
            header_b, pixels = sub.recv_multipart()
            h = msgpack.unpackb(header_b)
            if args.stream is not None and h["stream"] != args.stream:
                continue
            latencies.append(time.time() - h["pts_us"] / 1e6)
            sink.show(np.frombuffer(pixels, np.uint8).reshape(h["h"], h["w"], 3))
            n += 1
            if n % 100 == 0:
                print(f"{n} frames, latency p50 {1e3 * np.median(latencies[-100:]):.0f} ms")
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
        sub.close(0)
        ctx.term()


if __name__ == "__main__":
    main()
