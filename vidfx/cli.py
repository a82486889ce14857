"""`vidfx` command line: one subcommand a module, registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Each entry: name -> (help, module path of a `register(parser)` that sets `func` via set_defaults).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert an official .pt/.pth checkpoint to safetensors", "vidfx.commands.convert"),
    "models": ("check a model folder before loading it (parts, architecture, profile)", "vidfx.commands.models"),
    "serve": (
        "run the streaming node (ZeroMQ, WebRTC page/WHIP/WHEP, /healthz /readyz /metrics)",
        "vidfx.commands.serve",
    ),
    "run": ("stylise a video file (file to file, the live node's streaming path)", "vidfx.commands.run"),
    "generate": ("text- or image-to-video with the streaming generator", "vidfx.commands.generate"),
    "bench": ("benchmarks (cache, autoencoder, serve)", "vidfx.commands.bench"),
    "train-autoencoder": ("train the tiny video autoencoder", "vidfx.commands.train_autoencoder"),
    "train-refiner": ("train the detail refiner behind one of our models", "vidfx.commands.train_refiner"),
    "dataset": ("write the looks training set (mp4 + captions.jsonl)", "vidfx.commands.dataset"),
    "obs-bridge": ("a stream's stylised output as a virtual camera (OBS, video calls)", "vidfx.commands.obs_bridge"),
    "train": ("CausVid recipe: encode, teacher, ode-pairs, student-init, dmd", "vidfx.commands.train"),
    "eval": ("offline metrics: Fréchet proxy, flicker, drift, video-to-video", "vidfx.commands.eval"),
}


# Long batch jobs on the CPU: glibc keeps their freed memory for reuse (vidfx.accel.keep_freed_memory; 60 steps of
# the recipe's refiner training took 47–63 s without, 40 s with). The serving commands follow
# `accel.keep_freed_memory` instead.
BATCH_JOBS = frozenset({"train", "train-autoencoder", "train-refiner", "dataset", "eval"})


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="vidfx", description="live video-to-video effects node (CausVid)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, module) in SUBCOMMANDS.items():
        register: Callable[[argparse.ArgumentParser], None] = importlib.import_module(module).register
        register(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in BATCH_JOBS:
        from vidfx.accel import keep_freed_memory

        keep_freed_memory()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
