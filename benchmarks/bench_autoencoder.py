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
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vidfx.autoencoder import VideoAutoencoder, build_autoencoder
from vidfx.benchmarking.results import cpu_name, update_section

RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## Autoencoders"


@dataclass
class Timing:
    name: str
    height: int
    width: int
    mode: str  # "steady" (later 4-frame chunks) or "first frame" (a stream's first chunk)
    encode_ms: list[float]  # per frame, one entry per timed chunk
    decode_ms: list[float]

    @property
    def total_ms(self) -> list[float]:
        return [e + d for e, d in zip(self.encode_ms, self.decode_ms, strict=True)]

    @property
    def best(self) -> int:
        """Index of the fastest timed chunk (its encode + decode are reported together)."""
        totals = self.total_ms
        return totals.index(min(totals))

    @property
    def best_ms(self) -> float:
        return min(self.total_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.total_ms)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1000


def time_stream(
    ae: VideoAutoencoder, name: str, height: int, width: int, chunks: int, first_only: bool = False
) -> Timing:
    """Steady state: after an untimed first frame, `chunks` timed chunks of k frames on one stream.
    `first_only`: `chunks` fresh streams, timing only their first frame (1 frame → 1 latent → 1 frame)."""
    device, dtype = ae.param_device, ae.param_dtype
    k = ae.temporal_factor
    gen = torch.Generator().manual_seed(0)
    total = 1 if first_only else 1 + k * chunks
    frames = (torch.rand(1, 3, total, height, width, generator=gen) * 2 - 1).to(device, dtype)
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    enc_ms, dec_ms = [], []
    if first_only:
        for _ in range(chunks):
            enc.reset()
            dec.reset()
            z, te = timed(lambda: enc.encode(frames), device)
            _, td = timed(lambda z=z: dec.decode(z), device)
            enc_ms.append(te)
            dec_ms.append(td)
        return Timing(name, height, width, "first frame", enc_ms, dec_ms)
    dec.decode(enc.encode(frames[:, :, :1]))  # the stream's first frame: once per stream, not timed
    for i in range(chunks):
        chunk = frames[:, :, 1 + k * i : 1 + k * (i + 1)]
        z, te = timed(lambda chunk=chunk: enc.encode(chunk), device)
        _, td = timed(lambda z=z: dec.decode(z), device)
        enc_ms.append(te / k)
        dec_ms.append(td / k)
    return Timing(name, height, width, "steady", enc_ms, dec_ms)


def markdown(timings: list[Timing], header: str) -> str:
    tiny = {(t.height, t.width, t.mode): t for t in timings if t.name == "tiny"}
    lines = [
        header,
        "",
        "| autoencoder | resolution | mode | encode ms/frame | decode ms/frame | total ms/frame (best) "
        "| total ms/frame (median) | frames/s (best) | tiny speed-up (best) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        ref = tiny.get((t.height, t.width, t.mode))
        speedup = f"{t.best_ms / ref.best_ms:,.0f}×" if ref is not None and t.name != "tiny" else "—"
        lines.append(
            f"| {t.name} | {t.height}×{t.width} | {t.mode} | {t.encode_ms[t.best]:,.2f} "
            f"| {t.decode_ms[t.best]:,.2f} | {t.best_ms:,.2f} | {t.median_ms:,.2f} | {1000 / t.best_ms:,.3g} "
            f"| {speedup} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--tiny-chunks", type=int, default=40, help="timed chunks (or first frames) for the tiny AE")
    p.add_argument("--wan-chunks", type=int, default=2, help="timed chunks for the Wan VAE at 128×128")
    p.add_argument(
        "--wan-large-steady",
        action="store_true",
        help="also time the Wan VAE's steady state at 480×832 (5 frames' work: ~10 min on 2 CPU cores)",
    )
    p.add_argument("--skip-wan-large", action="store_true", help="no Wan VAE at 480×832 at all")
    p.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.manual_seed(0)
    tiny = build_autoencoder("tiny").to(device, dtype).eval()
    torch.manual_seed(0)
    wan = build_autoencoder("wan2.1").to(device, dtype).eval()

    n_tiny = args.tiny_chunks
    plan: list[tuple[VideoAutoencoder, str, int, int, int, bool]] = [
        (tiny, "tiny", 128, 128, n_tiny, False),
        (wan, "wan2.1-vae", 128, 128, args.wan_chunks, False),
        (tiny, "tiny", 128, 128, n_tiny, True),
        (wan, "wan2.1-vae", 128, 128, 1, True),
        (tiny, "tiny", 480, 832, max(3, n_tiny // 5), False),
        (tiny, "tiny", 480, 832, max(3, n_tiny // 5), True),
    ]
    if not args.skip_wan_large:
        # One frame through the full-size VAE at 480×832 takes minutes on 2 CPU cores: by default only a
        # stream's first frame is timed (every level runs at the full frame rate, so it is close to an
        # upper bound of the steady-state cost per frame).
        plan.append((wan, "wan2.1-vae", 480, 832, 1, True))
        if args.wan_large_steady:
            plan.append((wan, "wan2.1-vae", 480, 832, 1, False))
    timings = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for ae, name, h, w, chunks, first_only in plan:
        t = time_stream(ae, name, h, w, chunks, first_only=first_only)
        timings.append(t)
        print(f"{name} {h}×{w} {t.mode}: best {t.best_ms:,.2f}, median {t.median_ms:,.2f} ms/frame", flush=True)
    elapsed = time.perf_counter() - started
    # How much of its threads' time the process actually got: well below 100 % means other processes
    # competed for the cores and every number above is inflated by waiting.
    cpu_share = (time.process_time() - cpu_started) / (elapsed * args.threads) if device.type == "cpu" else 1.0

    where = (
        f"{cpu_name()}, {args.threads} torch threads"
        if device.type == "cpu"
        else f"{torch.cuda.get_device_name(device)}"
    )
    header = "\n".join(
        [
            SECTION,
            "",
            f"`python benchmarks/bench_autoencoder.py` on {where}, {args.dtype}, torch {torch.__version__}, "
            f"batch 1, random weights (Wan VAE at its official size), {time.strftime('%Y-%m-%d')}.",
            "",
            "* *steady*: after a stream's first frame, chunks of 4 frames are encoded to one latent frame",
            "  and decoded back (the per-chunk work of a live pipeline); per frame = chunk time / 4.",
            "* *first frame*: a fresh stream's first frame (1 frame → 1 latent → 1 frame). The Wan VAE then",
            "  runs its deep levels at the full frame rate (in steady state at 1/2 and 1/4 of it), so this",
            "  is close to an upper bound of its steady-state cost per frame.",
            "* *best* / *median* over the timed chunks; encode/decode are those of the best chunk. "
            f"Load average at start {load_before:.1f};",
            f"  the process got {cpu_share:.0%} of {args.threads} cores' time over the {elapsed:.0f} s run "
            "(a shared machine: the median carries",
            "  other processes' noise, *best* is the closer estimate of the cost).",
        ]
    )
    table = markdown(timings, header)
    print()
    print(table)
    if not args.no_write:
        update_section(SECTION, table, RESULTS)
        print(f"\nupdated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
