"""Decode (and encode) milliseconds per frame of the Wan 2.1 TAEHV against the Wan VAE, streaming, in one run.

Both at their official sizes with random weights (speed does not depend on the values). Each measurement
opens a stream, feeds its first chunk untimed (paid once per stream), then times later chunks of
`--latents` latent frames (3: the CausVid-family chunk) = 4·latents pixel frames; per frame = chunk time /
frames. The ratio Wan VAE / TAE is taken between the two *best* chunks (the closest estimate of the cost on a
shared machine) and between the medians.

    PYTHONPATH=. python benchmarks/bench_tae.py              # CPU, 2 threads, 128×128, updates RESULTS.md
    PYTHONPATH=. python benchmarks/bench_tae.py --device cuda --dtype bfloat16 --height 480 --width 832 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_autoencoder import sync  # this folder (run as a script)

from vidfx.autoencoder import VideoAutoencoder, build_autoencoder
from vidfx.benchmarking.results import cpu_name, update_section

RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## TAEHV (taew2_1) vs the Wan VAE (issue 22)"


@dataclass
class Timing:
    name: str
    what: str  # "decode" or "encode"
    ms_per_frame: list[float]  # one entry per timed chunk

    @property
    def best(self) -> float:
        return min(self.ms_per_frame)

    @property
    def median(self) -> float:
        return statistics.median(self.ms_per_frame)


def time_decode(ae: VideoAutoencoder, name: str, h: int, w: int, latents: int, chunks: int) -> Timing:
    device, dtype = ae.param_device, ae.param_dtype
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, ae.latent_channels, 1 + latents * chunks, h // 8, w // 8, generator=gen).to(device, dtype)
    dec = ae.stream_decoder()
    dec.decode(z[:, :, :1])  # the stream's first latent frame: once per stream, not timed
    ms = []
    for i in range(chunks):
        part = z[:, :, 1 + latents * i : 1 + latents * (i + 1)]
        sync(device)
        t0 = time.perf_counter()
        frames = dec.decode(part)
        sync(device)
        ms.append((time.perf_counter() - t0) * 1000 / frames.shape[2])
    return Timing(name, "decode", ms)


def time_encode(ae: VideoAutoencoder, name: str, h: int, w: int, latents: int, chunks: int) -> Timing:
    device, dtype = ae.param_device, ae.param_dtype
    k = ae.temporal_factor
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 3, 1 + k * latents * chunks, h, w, generator=gen) * 2 - 1).to(device, dtype)
    enc = ae.stream_encoder()
    enc.encode(x[:, :, :1])  # the stream's first frame, not timed
    ms = []
    for i in range(chunks):
        part = x[:, :, 1 + k * latents * i : 1 + k * latents * (i + 1)]
        sync(device)
        t0 = time.perf_counter()
        enc.encode(part)
        sync(device)
        ms.append((time.perf_counter() - t0) * 1000 / part.shape[2])
    return Timing(name, "encode", ms)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--latents", type=int, default=3, help="latent frames per timed chunk")
    p.add_argument("--tae-chunks", type=int, default=8, help="timed chunks for the TAE")
    p.add_argument("--wan-chunks", type=int, default=2, help="timed chunks for the Wan VAE")
    p.add_argument("--no-encode", action="store_true", help="time decoding only")
    p.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    h, w, n = args.height, args.width, args.latents
    torch.manual_seed(0)
    tae = build_autoencoder("taew2.1").to(device, dtype).eval()
    wan = build_autoencoder("wan2.1").to(device, dtype).eval()
    params = {name: sum(q.numel() for q in ae.parameters()) for name, ae in (("tae", tae), ("wan", wan))}

    started, cpu_started = time.perf_counter(), time.process_time()
    timings: list[tuple[Timing, Timing]] = []  # (tae, wan) per operation
    for what, fn in (("decode", time_decode), ("encode", time_encode)):
        if what == "encode" and args.no_encode:
            continue
        pair = (fn(tae, "taew2.1", h, w, n, args.tae_chunks), fn(wan, "wan2.1-vae", h, w, n, args.wan_chunks))
        for t in pair:
            print(f"{t.name} {t.what}: best {t.best:,.2f}, median {t.median:,.2f} ms/frame", flush=True)
        timings.append(pair)
    elapsed = time.perf_counter() - started
    cpu_share = (time.process_time() - cpu_started) / (elapsed * args.threads) if device.type == "cpu" else 1.0

    where = (
        f"CPU ({cpu_name()}), {args.threads} torch threads"
        if device.type == "cpu"
        else f"GPU ({torch.cuda.get_device_name(device)})"
    )
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_tae.py` on {where}, {args.dtype}, torch {torch.__version__}, batch 1, "
        f"{h}×{w}, random weights at the official sizes (TAE {params['tae'] / 1e6:.1f} M parameters, Wan VAE "
        f"{params['wan'] / 1e6:.1f} M), {time.strftime('%Y-%m-%d')}. Streaming: after a stream's untimed first "
        f"chunk, chunks of {n} latent frames ({4 * n} pixel frames); ms per pixel frame. The process got "
        f"{cpu_share:.0%} of {args.threads} cores' time over the {elapsed:.0f} s run (shared machine: *best* is "
        "the closer estimate of the cost).",
        "",
        "| operation | TAE ms/frame (best / median) | Wan VAE ms/frame (best / median) "
        "| Wan VAE ÷ TAE (best / median) |",
        "|---|---:|---:|---:|",
    ]
    for tae_t, wan_t in timings:
        lines.append(
            f"| {tae_t.what} | {tae_t.best:,.2f} / {tae_t.median:,.2f} | {wan_t.best:,.1f} / {wan_t.median:,.1f} "
            f"| {wan_t.best / tae_t.best:,.0f}× / {wan_t.median / tae_t.median:,.0f}× |"
        )
    lines += [
        "",
        "Speed only: with random weights nothing here says how the pictures compare (the TAE is the lower-quality,",
        "much cheaper option: docs/decoders.md). Both stream exactly (tests/test_tae.py, tests/test_autoencoder.py).",
        "The TAE's cost is all 2D convolutions at ≤ 256 channels and its cache is one frame per MemBlock; the Wan",
        "VAE runs 3D convolutions at up to 384 channels with per-frame attention at the latent resolution.",
    ]
    if device.type == "cpu":
        lines.append("Measured on CPU: a GPU changes both numbers and the ratio (`--device cuda`).")
    table = "\n".join(lines)
    print()
    print(table)
    if not args.no_write:
        update_section(SECTION, table, RESULTS)
        print(f"\nupdated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
