"""`vidfx run INPUT -o OUTPUT --prompt … --strength …`: stylise a video file (see vidfx.offline).

The model flags are the node's (`--model-*`, `VIDFX_MODEL__*`), so a file run and a live stream with the
same settings give the same frames; `--prompt`, `--strength`, `--steps`, `--seed` and `--model` are short
forms of the ones used most.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vidfx.config import add_settings_flags, settings_from_args

if TYPE_CHECKING:
    from vidfx.pipeline import StreamParams, StylePipeline


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model settings' flags, their short forms, --prompt, the output encoding and --quiet."""
    add_settings_flags(p, sections=("model", "accel"))
    p.add_argument("--model", dest="model__name", default=None, help="same as --model-name")
    p.add_argument("--strength", dest="model__strength", type=float, default=None, help="same as --model-strength")
    p.add_argument("--steps", dest="model__steps", type=int, nargs="+", default=None, help="same as --model-steps")
    p.add_argument("--seed", dest="model__seed", type=int, default=None, help="same as --model-seed")
    p.add_argument("--prompt", default=None, help="what the video should look like, e.g. 'pencil sketch' "
                   "(default: the VIDFX_STREAM__PROMPT setting, empty unless set)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output file (H.264 MP4 unless --codec says otherwise)")
    p.add_argument("--codec", default="libx264", help="PyAV/FFmpeg encoder (default: libx264)")
    p.add_argument("--crf", type=int, default=18, help="x264/x265 quality: lower is better")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load(args: argparse.Namespace, command: str) -> tuple[StylePipeline, StreamParams]:
    """(pipeline, stream params) from the flags; raises SystemExit(2) with a message on bad settings."""
    import torch
    from pydantic import ValidationError

    from vidfx.accel import apply_acceleration
    from vidfx.loading import load_pipeline
    from vidfx.pipeline import StreamParams
    from vidfx.weights import CheckpointError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"vidfx {command}: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.model.threads:  # 0: torch's default, every core (a file run has no I/O loop to leave one to)
        torch.set_num_threads(settings.model.threads)
    try:
        pipe = apply_acceleration(load_pipeline(settings.model), settings.accel)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"vidfx {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    params = StreamParams.from_settings(pipe.settings, settings.stream)  # the release profile's steps, if any
    if args.prompt is not None:
        params = params.with_(prompts=((args.prompt, 1.0),))
    return pipe, params


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="any video file PyAV reads")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import av
    from tqdm import tqdm

    from vidfx.offline import count_frames, stylize_video

    if not Path(args.input).is_file():
        print(f"vidfx run: {args.input}: no such file", file=sys.stderr)
        return 2
    pipe, params = load(args, "run")
    try:
        total = count_frames(args.input)
        if args.max_frames is not None:
            total = min(total or args.max_frames, args.max_frames)
        with tqdm(total=total, unit="frame", disable=args.quiet, desc="vidfx run") as bar:
            stats = stylize_video(
                pipe, args.input, args.output, params, args.codec, args.crf, args.max_frames, bar.update
            )
    except (ValueError, OSError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
        print(f"vidfx run: {exc}", file=sys.stderr)  # undecodable input, unwritable output, unknown codec
        return 2
    h, w = stats.size
    print(f"wrote {args.output}: {stats.frames} frames, {w}x{h} at {stats.fps:g} fps", file=sys.stderr)
    return 0
