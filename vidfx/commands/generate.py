"""`vidfx generate --prompt … -o out.mp4 [--image start.png] [--seconds N]`: text- or image-to-video with the
streaming generator (see vidfx.offline)."""

from __future__ import annotations

import argparse
import sys

from vidfx.commands.run import add_model_flags, load


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None, help="start image (PNG/JPEG…): the first frame, and the context after it")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the clip")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate (the default model was trained at 16)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="output size (default: the image's, else the model resolution)")  # fmt: skip
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import av
    import numpy as np
    from tqdm import tqdm

    from vidfx.offline import generate_video, generated_chunks

    image = None
    if args.image is not None:
        try:
            with av.open(args.image) as container:
                image = next(container.decode(video=0)).to_ndarray(format="rgb24")
        except (OSError, StopIteration, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
            print(f"vidfx generate: cannot read image {args.image}: {exc}", file=sys.stderr)
            return 2
        image = np.ascontiguousarray(image)
    pipe, params = load(args, "generate")
    size = tuple(args.size) if args.size else None
    chunks = generated_chunks(pipe, args.seconds, args.fps)
    total = pipe.frames_per_chunk(True) + (chunks - 1) * pipe.frames_per_chunk(False)
    try:
        with tqdm(total=total, unit="frame", disable=args.quiet, desc="vidfx generate") as bar:
            stats = generate_video(
                pipe, args.output, params, args.seconds, args.fps, size, image, args.codec, args.crf, bar.update
            )
    except (ValueError, OSError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
        print(f"vidfx generate: {exc}", file=sys.stderr)
        return 2
    h, w = stats.size
    print(f"wrote {args.output}: {stats.frames} frames, {w}x{h} at {stats.fps:g} fps", file=sys.stderr)
    return 0
