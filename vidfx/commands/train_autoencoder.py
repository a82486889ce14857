"""`vidfx train-autoencoder OUT_DIR`: train the tiny video autoencoder, then fit its latent statistics.

Clips come from `--videos FOLDER` (a folder with captions.jsonl, e.g. `vidfx dataset` output: every clip of
its videos, shuffled, drawn again each epoch) or, without it, from random smooth procedural scenes
(`train.procedural_clips`). Re-running with the same OUT_DIR resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from vidfx.autoencoder import TinyAEConfig, TinyAutoencoder, load_autoencoder, save_autoencoder
from vidfx.autoencoder.train import fit_latent_stats, procedural_clips, train_autoencoder


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="checkpoint folder (resumed if it holds checkpoints)")
    p.add_argument("--videos", default=None, help="video folder with captions.jsonl (default: procedural clips)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate clips are decoded at (with --videos)")
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=9, help="frames a clip (1 + 4·n)")
    p.add_argument("--size", type=int, default=128, help="clip height and width")
    p.add_argument("--edge-weight", type=float, default=0.5, help="weight of the image-gradient L1 term")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--init", default=None, help="start from these autoencoder weights (safetensors)")
    p.add_argument("--decoder-only", action="store_true", help="train the decoder alone (latents stay as they are)")
    p.add_argument("--latent-noise", type=float, default=0.0,
                   help="decode latents + noise up to this many latent stds (robust, steadier decoder)")  # fmt: skip
    p.add_argument("--look-repeats", nargs="*", default=[], metavar="LOOK=N",
                   help="with --videos: draw the clips of these looks N times an epoch (the rest once)")  # fmt: skip
    p.add_argument("--stats-batches", type=int, default=32, help="batches for the latent mean/std")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_look_repeats(items: list[str]) -> dict[str, int]:
    """["pixel_art=3", …] → {"pixel_art": 3}."""
    out = {}
    for item in items:
        look, sep, n = item.partition("=")
        if not sep or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--look-repeats takes LOOK=N with N ≥ 1, got {item!r}")
        out[look] = int(n)
    return out


def video_clips(
    folder: str,
    batch: int,
    frames: int,
    size: int,
    fps: float,
    seed: int,
    device: str,
    look_repeats: dict[str, int] | None = None,
) -> Iterator[torch.Tensor]:
    """Endless shuffled batches (B, 3, T, H, W) of every clip in a video folder, held as uint8 in memory;
    a clip in a look of `look_repeats` is drawn that many times an epoch."""
    from vidfx.train.data import iter_clips

    repeats = look_repeats or {}
    clips: list[torch.Tensor] = []
    order_of: list[int] = []  # an epoch's draws: clip indices, repeated
    looks: set[str] = set()
    for c in iter_clips(folder, frames, fps, (size, size), split="all"):
        clips.append(((c.frames + 1) * 127.5).round().to(torch.uint8))  # (3, T, H, W): a quarter of float's memory
        order_of.extend([len(clips) - 1] * repeats.get(c.look or "", 1))
        looks.add(c.look or "")
    unknown = set(repeats) - looks
    if unknown:
        raise ValueError(f"--look-repeats names looks {folder} does not have: {sorted(unknown)}")
    if not clips:
        raise ValueError(f"{folder}: no clip of {frames} frames in its videos")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = [order_of[k] for k in torch.randperm(len(order_of), generator=gen).tolist()]
        for i in range(0, len(order) - batch + 1, batch):
            x = torch.stack([clips[j] for j in order[i : i + batch]]).to(device)
            yield x.float() / 127.5 - 1.0


def clip_source(args: argparse.Namespace, seed: int) -> Iterator[torch.Tensor]:
    if args.videos:
        repeats = parse_look_repeats(args.look_repeats)
        return video_clips(args.videos, args.batch, args.frames, args.size, args.fps, seed, args.device, repeats)
    return procedural_clips(args.batch, args.frames, args.size, seed=seed, device=args.device)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.init:
        ae = load_autoencoder(args.init, device=args.device)
    else:
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
        decoder_only=args.decoder_only,
        latent_noise=args.latent_noise,
    )
    if args.decoder_only:  # the encoder did not change, nor may the statistics its latents are normalised by
        mean, std = ae.latent_mean, ae.latent_std
    else:  # statistics on clips the training never drew (another seed); the final file holds them too
        mean, std = fit_latent_stats(ae, clip_source(args, args.seed + 1), batches=args.stats_batches)
    final = f"{args.out}/autoencoder.safetensors"
    save_autoencoder(ae, final)
    load_autoencoder(final)  # fail here, not in the pipeline, if the file does not load
    last = f"{losses[-1]:.4f}" if losses else "n/a (already trained)"
    print(f"final loss {last}; latent std {std.min():.3f}…{std.max():.3f}, |mean| ≤ {mean.abs().max():.3f}")
    print(f"wrote {final}")
    return 0
