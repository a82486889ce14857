"""`vidfx dataset OUT`: the looks training set (mp4 clips + captions.jsonl), a contact sheet, and optionally
the look classifier trained on it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(p: argparse.ArgumentParser) -> None:
    from vidfx.data.looks import LOOKS

    p.add_argument("out", help="dataset folder (clips/*.mp4, captions.jsonl, dataset.json)")
    p.add_argument("--num-clips", type=int, default=2000, help="source clips (each also in every look)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=17, help="frames a clip (Wan's VAE wants 4k+1)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--looks", nargs="*", choices=list(LOOKS), default=None, help="default: all")
    p.add_argument("--looks-per-clip", type=int, default=None, help="looks drawn per clip (default: all)")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better)")
    p.add_argument("--pix-fmt", default="yuv444p", help="yuv444p (exact colours) or yuv420p (plays anywhere)")
    p.add_argument(
        "--real-imagery",
        action="store_true",
        help="backgrounds mostly pictures, with the real photographs of Debian packages (scripts/setup.sh --data)",
    )
    p.add_argument("--workers", type=int, default=2, help="clip-rendering threads")
    p.add_argument("--contact-sheet", default=None, help="PNG path (default OUT/contact_sheet.png)")
    p.add_argument("--no-contact-sheet", action="store_true")
    p.add_argument("--classifier", default=None, help="also train the look classifier and save it here")
    p.add_argument("--classifier-steps", type=int, default=800)
    p.add_argument("--classifier-clips", type=int, default=1000, help="clips (all looks) it trains/tests on")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the classifier")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidfx.data.looks import contact_sheet, write_dataset

    h, w = args.size
    info = write_dataset(
        args.out,
        args.num_clips,
        seed=args.seed,
        num_frames=args.frames,
        size=(h, w),
        fps=args.fps,
        looks=args.looks,
        looks_per_clip=args.looks_per_clip,
        crf=args.crf,
        pix_fmt=args.pix_fmt,
        workers=args.workers,
        real_imagery=args.real_imagery,
    )
    files = info.num_clips * (1 + (args.looks_per_clip or len(info.looks)))
    print(
        f"wrote {info.num_clips} clips ({files} mp4 files) to {args.out} in {info.seconds:.1f} s "
        f"({info.num_clips / max(info.seconds, 1e-9):.1f} clips/s); captions: {info.manifest}"
    )
    if not args.no_contact_sheet:
        sheet = contact_sheet(
            args.contact_sheet or Path(args.out) / "contact_sheet.png",
            seed=args.seed,
            num_clips=6,
            size=(h, w),
            num_frames=args.frames,
            looks=info.looks,
        )
        print(f"contact sheet: {sheet}")
    if args.classifier:
        import torch

        from vidfx.data.look_classifier import LookClassifierConfig, train_look_classifier

        if args.threads:
            torch.set_num_threads(args.threads)
        config = LookClassifierConfig(classes=("none", *info.looks))
        report = train_look_classifier(
            args.out,
            args.classifier,
            config=config,
            steps=args.classifier_steps,
            max_clips=args.classifier_clips,
            seed=args.seed,
        )
        print(
            f"look classifier: held-out accuracy {report.accuracy:.4f} on {report.num_test} windows "
            f"(trained on {report.num_train}, {report.seconds:.0f} s) -> {args.classifier}"
        )
        for name, acc in report.per_class.items():
            print(f"  {name:>14s} {acc:.3f}")
    return 0
