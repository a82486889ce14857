"""`vidfx train-refiner OUT_DIR --model MODEL`: train the detail refiner of one of our models on its own outputs,
and write MODEL with the refiner as a new weights folder (`--to`).

Steps (each resumes when re-run): the samples (`OUT_DIR/data`, vidfx.train.refiner.build_refiner_data), the
training (`OUT_DIR/checkpoints`), then `--to DEST`: the model's folder copied with `refiner.safetensors` and
its model.json's `settings` at the refiner's resolution (2× the model's).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from vidfx.autoencoder.refiner import REFINER_FILE, RefinerConfig, load_refiner, pooled_text, save_refiner
from vidfx.config import ModelSettings


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="run folder: data/, checkpoints/, losses.csv (resumed when re-run)")
    p.add_argument("--model", default="default", help="the weights folder the refiner is trained behind")
    p.add_argument("--clips", type=int, default=420, help="source clips (each in every look)")
    p.add_argument("--data", default=None, help="the samples' folder (default: OUT_DIR/data; built if missing)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=4, help="pairs of successive frames a step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, default=RefinerConfig.channels)
    p.add_argument("--blocks", type=int, default=RefinerConfig.blocks)
    p.add_argument(
        "--text", action="store_true", help="condition the refiner on the prompt (its pooled text embedding)"
    )
    p.add_argument("--tone-bins", type=int, default=0, help="a per-pixel tone curve of the guide's luma (knots)")
    p.add_argument("--position", action="store_true", help="the frame position steers the refiner (vignettes)")
    p.add_argument("--colour-matrix", action="store_true", help="a per-pixel 3×3 matrix on the guide's colour")
    p.add_argument("--channel-bins", type=int, default=0, help="a per-pixel curve of each guide colour (knots)")
    p.add_argument("--temporal-weight", type=float, default=2.0, help="weight of the coarse-change term")
    p.add_argument("--ssim-weight", type=float, default=0.0, help="weight of the luma SSIM term (1 − SSIM)")
    p.add_argument("--init", default=None, help="start from these refiner weights (a fine-tune)")
    p.add_argument("--to", default=None, help="write the model + refiner as a weights folder here")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="the training's batches")
    p.add_argument("--data-seed", type=int, default=7, help="the samples' clips, captions and strengths")
    p.set_defaults(func=run)


def export_with_refiner(model_folder: Path, refiner_file: Path, dest: Path) -> None:
    """`model_folder` (model.json, dit, autoencoder, …) copied to `dest` with the refiner; model.json gains
    "refiner" and the resolution it renders at ("settings": height/width, the short side 2× the model's)."""
    refiner = load_refiner(refiner_file)
    dest.mkdir(parents=True, exist_ok=True)
    for f in model_folder.iterdir():
        if f.is_file() and f.name not in (REFINER_FILE, "model.json"):
            shutil.copy2(f, dest / f.name)
    meta = json.loads((model_folder / "model.json").read_text())
    base = meta.get("settings", {})
    side = min(base.get("height", ModelSettings().height), base.get("width", ModelSettings().width))
    meta["settings"] = {**base, "height": side * refiner.scale, "width": side * refiner.scale}
    meta["refiner"] = REFINER_FILE
    save_refiner(refiner, dest / REFINER_FILE)
    (dest / "model.json").write_text(json.dumps(meta, indent=1))


def run(args: argparse.Namespace) -> int:
    from vidfx.loading import load_pipeline, resolve
    from vidfx.train.refiner import build_refiner_data, train_refiner

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    pipe = load_pipeline(ModelSettings(name=args.model, device="cpu"))  # refused if it has a refiner already
    data = Path(args.data) if args.data else out / "data"
    build_refiner_data(pipe, data, args.clips, seed=args.data_seed)  # resumes; refuses other settings' samples
    refiner = train_refiner(
        data, out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        temporal_weight=args.temporal_weight, ssim_weight=args.ssim_weight, init=args.init,
        cfg=RefinerConfig(
            channels=args.channels, blocks=args.blocks, tone_bins=args.tone_bins, position=args.position,
            colour_matrix=args.colour_matrix, channel_bins=args.channel_bins,
            text_dim=pipe.dit.cfg.text_dim if args.text else 0,
        ),
        embed=lambda caption: pooled_text(pipe.embed(((caption, 1.0),))),
    )  # fmt: skip
    save_refiner(refiner, out / REFINER_FILE)
    print(f"wrote {out / REFINER_FILE}")
    if args.to:
        folder = resolve(ModelSettings(name=args.model)).path
        assert folder is not None
        export_with_refiner(folder, out / REFINER_FILE, Path(args.to))
        print(f"wrote {args.to}")
    return 0
