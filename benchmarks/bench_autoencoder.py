"""Encode + decode milliseconds per frame of the video autoencoders, streaming in steady state.

Each measurement opens a stream, feeds the 1-frame first chunk (not timed: it is paid once per stream), then
times later chunks of `temporal_factor` frames: encode the chunk to one latent frame, decode that latent
frame back to `temporal_factor` frames — the per-chunk work of a live pipeline. The reported time is the
median over the timed chunks divided by the frames per chunk. Weights are random (speed does not depend on
them); the Wan VAE runs at its official size.

    PYTHONPATH=. python benchmarks/bench_autoencoder.py                 # CPU, 2 threads, updates RESULTS.md
    PYTHONPATH=. python benchmarks/bench_autoencoder.py --device cuda --dtype bfloat16 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vidfx.autoencoder import VideoAutoencoder, build_autoencoder

RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## Autoencoders"


@dataclass
class Timing:
    name: str
    height: int
    width: int
    encode_ms: float  # per frame
    decode_ms: float  # per frame
    chunks: int

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.decode_ms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stream(
    ae: VideoAutoencoder, name: str, height: int, width: int, chunks: int, seed: int = 0
) -> Timing:
    device, dtype = ae.param_device, ae.param_dtype
    k = ae.temporal_factor
    gen = torch.Generator().manual_seed(seed)
    frames = (torch.rand(1, 3, 1 + k * chunks, height, width, generator=gen) * 2 - 1).to(device, dtype)
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    dec.decode(enc.encode(frames[:, :, :1]))  # the stream's first frame: once per stream, not timed
    enc_ms, dec_ms = [], []
    for i in range(chunks):
        chunk = frames[:, :, 1 + k * i : 1 + k * (i + 1)]
        sync(device)
        t0 = time.perf_counter()
        z = enc.encode(chunk)
        sync(device)
        t1 = time.perf_counter()
        dec.decode(z)
        sync(device)
        t2 = time.perf_counter()
        enc_ms.append((t1 - t0) * 1000 / k)
        dec_ms.append((t2 - t1) * 1000 / k)
    return Timing(name, height, width, statistics.median(enc_ms), statistics.median(dec_ms), chunks)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(timings: list[Timing], header: str) -> str:
    tiny = {(t.height, t.width): t for t in timings if t.name == "tiny"}
    lines = [
        header,
        "",
        "| autoencoder | resolution | encode ms/frame | decode ms/frame | total ms/frame | frames/s "
        "| tiny speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        ref = tiny.get((t.height, t.width))
        speedup = f"{t.total_ms / ref.total_ms:.0f}×" if ref is not None and t.name != "tiny" else "—"
        lines.append(
            f"| {t.name} | {t.height}×{t.width} | {t.encode_ms:.2f} | {t.decode_ms:.2f} | {t.total_ms:.2f} "
            f"| {1000 / t.total_ms:.1f} | {speedup} |"
        )
    return "\n".join(lines)


def update_results(section_body: str, path: Path = RESULTS) -> None:
    """Replace the `## Autoencoders` section of RESULTS.md (up to the next `## ` heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.rstrip("\n").splitlines()
    body = section_body.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        out = [*lines, "", *body]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        out = [*lines[:start], *body, *([""] + lines[end:] if end < len(lines) else [])]
    new = "\n".join(out) + "\n"
    path.write_text(new)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--tiny-chunks", type=int, default=25, help="timed 4-frame chunks for the tiny AE")
    p.add_argument("--wan-chunks-small", type=int, default=2, help="timed chunks for the Wan VAE at 128×128")
    p.add_argument("--wan-chunks-large", type=int, default=1, help="timed chunks for the Wan VAE at 480×832")
    p.add_argument("--skip-wan-large", action="store_true", help="skip the (slow on CPU) Wan VAE at 480×832")
    p.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.manual_seed(0)
    tiny = build_autoencoder("tiny").to(device, dtype).eval()
    torch.manual_seed(0)
    wan = build_autoencoder("wan2.1").to(device, dtype).eval()

    plan: list[tuple[VideoAutoencoder, str, int, int, int]] = [
        (tiny, "tiny", 128, 128, args.tiny_chunks),
        (wan, "wan2.1-vae", 128, 128, args.wan_chunks_small),
        (tiny, "tiny", 480, 832, max(3, args.tiny_chunks // 5)),
    ]
    if not args.skip_wan_large:
        plan.append((wan, "wan2.1-vae", 480, 832, args.wan_chunks_large))
    timings = []
    started = time.perf_counter()
    for ae, name, h, w, chunks in plan:
        timings.append(time_stream(ae, name, h, w, chunks))
        t = timings[-1]
        print(f"{name} {h}×{w}: encode {t.encode_ms:.2f} + decode {t.decode_ms:.2f} ms/frame", flush=True)
    elapsed = time.perf_counter() - started

    where = (
        f"{cpu_name()}, {args.threads} torch threads"
        if device.type == "cpu"
        else f"{torch.cuda.get_device_name(device)}"
    )
    header = "\n".join(
        [
            SECTION,
            "",
            f"`python benchmarks/bench_autoencoder.py` — {where}, {args.dtype}, torch {torch.__version__}, "
            f"batch 1, random weights (Wan VAE at its official size), {time.strftime('%Y-%m-%d')}.",
            "Steady-state streaming: after the stream's first frame, chunks of 4 frames are encoded to one",
            "latent frame and decoded back; median over the timed chunks, per frame "
            f"(load average {load_before:.1f} at start: the machine was shared, so expect noise; "
            f"the whole run took {elapsed:.0f} s).",
        ]
    )
    table = markdown(timings, header)
    print()
    print(table)
    if not args.no_write:
        update_results(table)
        print(f"\nupdated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
