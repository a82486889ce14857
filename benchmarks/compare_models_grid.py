"""One held-out frame in every look: the dataset's own rendering above, then each model's `vidfx run` output.

    python benchmarks/compare_models_grid.py --models NAME=FOLDER [NAME=FOLDER …] [--out PNG] [--seed 1001]

Each model runs the node's default settings through the streaming path (`vidfx.offline.stylize_frames`) on a
33-frame scene the training set never used; the grid shows frame `--frame` of each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vidfx.config import ModelSettings, StreamSettings
from vidfx.data.look_classifier import load_look_classifier
from vidfx.data.look_eval import prompt_for
from vidfx.data.looks import make_clip
from vidfx.loading import DEFAULT_CLASSIFIER, load_pipeline
from vidfx.offline import stylize_frames
from vidfx.pipeline import StreamParams
from vidfx.plots import GridRow, save_image_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="NAME=FOLDER (or NAME=default)")
    ap.add_argument("--out", default="benchmarks/default_model_source_condition.png")
    ap.add_argument("--seed", type=int, default=1001)
    ap.add_argument("--clip", type=int, default=1)
    ap.add_argument("--frame", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    looks = list(load_look_classifier(DEFAULT_CLASSIFIER).config.looks)  # the dataset's
    scene = make_clip(args.seed, args.clip, num_frames=33, size=(128, 128), looks=looks)
    k = args.frame
    source = ("input", scene.source[k])
    rows: list[GridRow] = [("dataset's look", [source] + [(look, scene.styled[look][k]) for look in looks])]
    for entry in args.models:
        name, _, folder = entry.partition("=")
        pipe = load_pipeline(ModelSettings(name=folder or name))
        cells = [source]
        base = StreamParams.from_settings(pipe.settings, StreamSettings())
        for look in looks:
            params = base.with_(prompts=((prompt_for(look), 1.0),))
            out = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in scene.source), params)))
            cells.append((look, out[k]))
        rows.append((name, cells))
        print(f"{name}: done", flush=True)
    print(f"wrote {save_image_grid(Path(args.out), rows)}")


if __name__ == "__main__":
    main()
