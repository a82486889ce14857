"""The default model's text-to-video and image-to-video (`vidfx generate`): does each look come out with no
source video to restyle?

    python benchmarks/bench_default_generate.py [--model default] [--seeds 4] [--frames 29] [--threads 2]

Each look's first caption is the prompt; every seed generates `frames` frames at the model resolution through
`StylePipeline.generate_chunk` (what `vidfx generate` runs), from text alone and from a held-out scene's first
frame (seed 1001, never in the training set). Cells: share of the clips' non-overlapping 4-frame windows the
look classifier names the asked look. Writes the "Default model: text-to-video and image-to-video" section of
RESULTS.md and benchmarks/default_generate.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vidfx.benchmarking.results import update_section
from vidfx.config import ModelSettings, StreamSettings
from vidfx.data.look_classifier import load_look_classifier, predict
from vidfx.data.look_eval import look_windows, prompt_for
from vidfx.data.looks import make_clip
from vidfx.loading import DEFAULT_CLASSIFIER, load_pipeline
from vidfx.offline import generate_frames
from vidfx.pipeline import StreamParams

HERE = Path(__file__).resolve().parent
HEADING = "## Default model: text-to-video and image-to-video"
FPS = 16.0  # the training clips'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--frames", type=int, default=29)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(ModelSettings(name=args.model))
    classifier = load_look_classifier(DEFAULT_CLASSIFIER)
    size = (pipe.settings.height, pipe.settings.width)
    base = StreamParams.from_settings(pipe.settings, StreamSettings())
    rows = []
    for look in classifier.config.looks:
        row: dict[str, object] = {"look": look}
        for mode in ("text", "image"):
            hits = windows = 0
            for seed in range(args.seeds):
                image = make_clip(1001, seed, num_frames=1, size=size, looks=[]).source[0] if mode == "image" else None
                params = base.with_(prompts=((prompt_for(look), 1.0),), seed=seed)
                chunks = generate_frames(pipe, params, args.frames / FPS, FPS, image=image)
                out = np.concatenate(list(chunks))[: args.frames]
                pred = predict(classifier, look_windows(out, classifier.config.frames, classifier.config.size))
                hits += int((pred == classifier.config.classes.index(look)).sum())
                windows += len(pred)
            row[mode] = hits / windows
            row["windows"] = windows
        rows.append(row)
        print(f"{look:>14}  text {row['text']:.0%}  image {row['image']:.0%}  ({windows} windows)", flush=True)
    results = {"model": args.model, "seeds": args.seeds, "frames": args.frames, "rows": rows}
    (HERE / "default_generate.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        HEADING,
        "",
        f"`python benchmarks/bench_default_generate.py` — model `{args.model}`, {args.seeds} seeds × {args.frames} "
        f"frames a look at {size[0]}×{size[1]}, each look's first caption as the prompt; image-to-video starts "
        "from the first frame of a held-out scene (seed 1001). Cells: share of "
        f"{classifier.config.frames}-frame windows the look classifier names the asked look.",
        "",
        "| look | text-to-video | image-to-video |",
        "|---|---|---|",
        *(f"| {r['look']} | {r['text']:.0%} | {r['image']:.0%} |" for r in rows),
    ]
    update_section(HEADING, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
