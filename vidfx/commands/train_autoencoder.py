"""`vidfx train-autoencoder OUT_DIR`: train the tiny video autoencoder, then fit its latent statistics.

Clips come from `--source`; only `procedural` (random smooth moving scenes, `train.procedural_clips`) exists
here — a video dataset source plugs in at `clip_source`. Re-running with the same OUT_DIR resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from vidfx.autoencoder import TinyAEConfig, TinyAutoencoder, load_autoencoder, save_autoencoder
from vidfx.autoencoder.train import fit_latent_stats, procedural_clips, train_autoencoder


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="checkpoint folder (resumed if it holds checkpoints)")
    p.add_argument("--source", default="procedural", choices=["procedural"], help="where clips come from")
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=9, help="frames a clip (1 + 4·n)")
    p.add_argument("--size", type=int, default=128, help="clip height and width")
    p.add_argument("--edge-weight", type=float, default=0.5, help="weight of the image-gradient L1 term")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--stats-batches", type=int, default=32, help="batches for the latent mean/std")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def clip_source(args: argparse.Namespace, seed: int) -> Iterator[torch.Tensor]:
    return procedural_clips(args.batch, args.frames, args.size, seed=seed, device=args.device)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ae = TinyAutoencoder(TinyAEConfig()).to(args.device)
    losses = train_autoencoder(
        ae,
        clip_source(args, args.seed),
        steps=args.steps,
        lr=args.lr,
        edge_weight=args.edge_weight,
        progress=not args.no_progress,
        checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every,
    )
    # Statistics on clips the training never drew (another seed), then the final file holds them too.
    mean, std = fit_latent_stats(ae, clip_source(args, args.seed + 1), batches=args.stats_batches)
    final = f"{args.out}/autoencoder.safetensors"
    save_autoencoder(ae, final)
    load_autoencoder(final)  # fail here, not in the pipeline, if the file does not load
    last = f"{losses[-1]:.4f}" if losses else "n/a (already trained)"
    print(f"final loss {last}; latent std {std.min():.3f}…{std.max():.3f}, |mean| ≤ {mean.abs().max():.3f}")
    print(f"wrote {final}")
    return 0
