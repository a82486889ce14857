"""Where a refined model's error on held-out real footage comes from: its DiT's base or its refiner.

    python benchmarks/bench_refiner_parts.py [--model default] [--footage pedestrians,tree,animation]
                                             [--frames 17] [--size 240] [--out JSON]

The same clips and scores as `vidfx eval --real-footage` (vidfx.data.real_footage), with the refiner's input or
the refiner itself swapped out, one variant at a time:

* `model`: as served;
* `base, bilinear`: the DiT's decoded frame upsampled 2× bilinearly (no refiner);
* `perfect base, refiner`: the look rendered at the base's resolution from the camera frame (what a perfect
  DiT and autoencoder would decode) through the model's refiner;
* `perfect base, bilinear`: that perfect base upsampled bilinearly.

Mean over the looks of the share of the reachable gain and luma SSIM, and each look's share.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidfx.config import ModelSettings
from vidfx.data.looks import LOOKS
from vidfx.data.real_footage import evaluate_footage, footage_summary
from vidfx.loading import MODEL_ALIASES, load_pipeline

Refine = Callable[..., torch.Tensor]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--footage", default="pedestrians,tree,animation")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=240, help="short side the clips are read at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(ModelSettings(name=args.model))
    refiner = pipe.refiner
    if refiner is None:
        raise SystemExit(f"{args.model} has no refiner")
    served = refiner.forward
    looks = json.loads((Path(MODEL_ALIASES.get(args.model, args.model)) / "model.json").read_text())["looks"]
    clips = [c for c in args.footage.split(",") if c]
    asked = {"look": looks[0]}

    def perfect_base(guide: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool2d(guide, refiner.scale)  # the camera frame at the base's resolution, as encoded
        return LOOKS[asked["look"]].filter((small + 1) / 2, 0) * 2 - 1

    def bilinear(base: torch.Tensor) -> torch.Tensor:
        return F.interpolate(base, scale_factor=refiner.scale, mode="bilinear", align_corners=False)

    variants: dict[str, Refine] = {
        "model": served,
        "base, bilinear": lambda base, guide, text=None: bilinear(base),
        "perfect base, refiner": lambda base, guide, text=None: served(perfect_base(guide), guide, text),
        "perfect base, bilinear": lambda base, guide, text=None: bilinear(perfect_base(guide)),
    }
    rows = []
    for name, forward in variants.items():
        refiner.forward = forward  # type: ignore[method-assign]
        scores = []
        for look in looks:
            asked["look"] = look
            scores += evaluate_footage(pipe, clips, [look], args.frames, args.size)[0]
        summary = footage_summary(scores)
        rows.append(
            {
                "variant": name,
                "gain_share": float(np.mean([r["gain_share"] for r in summary])),
                "ssim_luma": float(np.mean([r["ssim_luma"] for r in summary])),
                "looks": {r["look"]: r["gain_share"] for r in summary},
            }
        )
        print(f"{name:24s} share {rows[-1]['gain_share']:.1%}  luma SSIM {rows[-1]['ssim_luma']:.3f}", flush=True)
    refiner.forward = served  # type: ignore[method-assign]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "clips": clips, "size": args.size, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
