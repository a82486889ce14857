"""Per-chunk cost of streaming with the rolling KV cache against recomputing the visible history.

For chunks 1…N on one model, time (a) `denoise_chunk` against the rolling cache and (b) the cache-free
baseline that a model without a KV cache must run: a block-causal forward over every latent frame so far
for each denoising step (the same steps), keeping only the newest chunk. Reports time(chunk N)/time(chunk 2)
for both and the peak memory of each (run in its own subprocess so the peaks do not mix).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from vidfx.generation import denoise_chunk
from vidfx.model import CausalDiT, DiTConfig
from vidfx.sampling import noise_to, step_sigmas, velocity_to_x0


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def run_mode(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = DiTConfig.preset(args.preset)
    model = CausalDiT(cfg).eval()
    sigmas = step_sigmas(args.steps)
    lh = lw = args.latent_size
    context = torch.randn(1, cfg.text_len, cfg.text_dim)
    cross = model.cross_attention_cache(context)
    gen = torch.Generator().manual_seed(0)
    n = args.chunks
    timed_recompute = {1, 2, 3, 4, 5, *range(8, 14), n // 4, n // 2, 3 * n // 4, n - 2, n - 1, n}
    times: dict[int, float] = {}
    history: list[torch.Tensor] = []
    cache = model.new_kv_cache(1, lh, lw, window_frames=args.window, sink_frames=args.sink)
    with torch.no_grad():
        warm = model.new_kv_cache(1, lh, lw, window_frames=args.window, sink_frames=args.sink)
        for _ in range(3):  # first calls pay for allocator and kernel selection; keep them out of the timings
            denoise_chunk(model, torch.randn(1, cfg.out_dim, args.chunk_frames, lh, lw), sigmas, cross, warm)
        for chunk_index in tqdm(range(args.chunks), desc=f"{args.mode} chunks", disable=not args.progress):
            x = torch.randn(1, cfg.out_dim, args.chunk_frames, lh, lw, generator=gen)
            start = time.perf_counter()
            if args.mode == "cache":
                denoise_chunk(model, x, sigmas, cross, cache, generator=gen)
            elif chunk_index + 1 not in timed_recompute:
                # The quadratic baseline is only timed at a few chunks (it would take hours at every chunk);
                # in between the history just grows, which is all the later timings depend on.
                history.append(x)
                continue
            else:
                # No cache: every step re-runs the whole history (clean, t=0) plus the noisy chunk.
                xt = x
                for i, sigma in enumerate(sigmas):
                    clip = torch.cat(history + [xt], dim=2)
                    t = torch.zeros(1, clip.shape[2])
                    t[:, -args.chunk_frames :] = 1000 * sigma
                    v = model(clip, t, cross, chunk_frames=args.chunk_frames)[:, :, -args.chunk_frames :]
                    x0 = velocity_to_x0(xt, v, sigma)
                    if i + 1 < len(sigmas):
                        xt = noise_to(x0, torch.randn(x0.shape, generator=gen), sigmas[i + 1])
                history.append(x0)
            times[chunk_index + 1] = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": args.mode, "times": times, "peak_rss_mib": peak_mib, "cache_mib": cache.nbytes() / 2**20}


def _at(times: dict[int, float], chunk: int) -> float:
    """Median time of the chunks timed nearest `chunk` (three of them): single chunks are noisy."""
    nearest = sorted(times, key=lambda k: (abs(k - chunk), k))[:3]
    return _median([times[k] for k in nearest])


def run(args: argparse.Namespace) -> int:
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    results = {}
    for mode in ("cache", "recompute"):
        cmd = [sys.executable, "-m", "vidfx.cli", "bench", "cache", "--mode", mode, *args.forward_fn(args)]
        out = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["times"] = {int(k): v for k, v in r["times"].items()}
        results[mode] = r
    n = args.chunks
    filled = args.sink + args.window + 1  # first chunk whose cache window is full
    lines = [
        f"| mode | ms/chunk 2 | ms/chunk {filled} (window full) | ms/chunk {n} | chunk {n} / chunk 2 "
        f"| chunk {n} / chunk {filled} | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        t = r["times"]
        early, fill, late = _at(t, 2), _at(t, filled), _at(t, n)
        lines.append(
            f"| {mode} | {early * 1e3:.1f} | {fill * 1e3:.1f} | {late * 1e3:.1f} | {late / early:.2f} | "
            f"{late / fill:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for mode, r in results.items():
            chunks = sorted(r["times"])
            ax.plot(
                chunks, [1e3 * r["times"][k] for k in chunks], marker="." if mode == "recompute" else None, label=mode
            )
        ax.set_xlabel("chunk")
        ax.set_ylabel("ms per chunk")
        ax.set_yscale("log")
        ax.set_title(f"{args.preset}: rolling KV cache vs recompute")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    return 0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny")
    p.add_argument("--chunks", type=int, default=200)
    p.add_argument("--chunk-frames", type=int, default=1, help="latent frames per chunk")
    p.add_argument("--latent-size", type=int, default=16, help="latent height=width (128 px / 8)")
    p.add_argument("--window", type=int, default=8, help="rolling window, latent frames")
    p.add_argument("--sink", type=int, default=1, help="sink latent frames")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 757, 522])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of per-chunk times")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write the raw per-chunk times")
    p.add_argument("--mode", choices=["cache", "recompute"], default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)

    def forward_args(ns: argparse.Namespace) -> list[str]:
        out = ["--preset", ns.preset, "--chunks", str(ns.chunks), "--chunk-frames", str(ns.chunk_frames)]
        out += ["--latent-size", str(ns.latent_size), "--window", str(ns.window), "--sink", str(ns.sink)]
        out += ["--threads", str(ns.threads), "--steps", *map(str, ns.steps)]
        return out + (["--progress"] if ns.progress else [])

    p.set_defaults(forward_fn=forward_args)
