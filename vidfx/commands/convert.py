"""`vidfx convert SRC.pt DST.safetensors`: the only place a pickled checkpoint is ever opened."""

from __future__ import annotations

import argparse

from vidfx.weights import convert_checkpoint


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="official .pt/.pth checkpoint (read with torch.load(weights_only=True))")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--keep", nargs="*", default=None, help="top-level entries to keep, e.g. generator_ema")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    n = convert_checkpoint(args.src, args.dst, keep=args.keep)
    print(f"wrote {n} tensors to {args.dst}")
    return 0
