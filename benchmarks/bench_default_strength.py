"""The default model across video-to-video strength: does each look come out, how much of the scene is kept,
and how close the output comes to the dataset's own rendering of the look on that scene.

    python benchmarks/bench_default_strength.py [--model default] [--strengths 0.05 0.1 …] [--clips 4]
                                                [--seed 1001] [--threads 2]

Each strength runs `vidfx.data.look_eval.evaluate_looks` (the `vidfx eval --model` measures, same held-out
scenes, the node's step list) with that strength. Writes the "Default model: strength sweep" section of
RESULTS.md, benchmarks/default_strength.json, a plot (default_strength.png) and a picture of one scene at
each strength (default_strength_grid.png).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from vidfx.benchmarking.results import update_section
from vidfx.config import ModelSettings, StreamSettings
from vidfx.data.look_classifier import load_look_classifier
from vidfx.data.look_eval import evaluate_looks, prompt_for
from vidfx.data.looks import make_clip
from vidfx.loading import DEFAULT_CLASSIFIER, load_pipeline
from vidfx.offline import stylize_frames
from vidfx.pipeline import StreamParams
from vidfx.plots import save_image_grid
from vidfx.sampling import DEFAULT_SHIFT, shift_sigma

HERE = Path(__file__).resolve().parent
GRID_LOOKS = ("pencil_sketch", "thermal", "watercolor", "comic")
MEASURES = ("accuracy", "structure_kept", "target_psnr", "flicker_ratio")


def strength_grid(pipe, strengths: list[float], path: Path, frame: int = 20) -> None:  # type: ignore[no-untyped-def]
    """One held-out scene, one frame: input and each look's dataset rendering, then the model at each strength."""
    scene = make_clip(1001, 0, num_frames=frame + 1, size=(128, 128), looks=list(GRID_LOOKS))
    base = StreamParams.from_settings(pipe.settings, StreamSettings())
    rows = []
    for look in GRID_LOOKS:
        cells = [("input", scene.source[frame]), ("dataset's look", scene.styled[look][frame])]
        for s in strengths:
            params = base.with_(prompts=((prompt_for(look), 1.0),), strength=s)
            out = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in scene.source), params)))
            cells.append((f"strength {s:g}", out[frame]))
        rows.append((look.replace("_", " "), cells))
    save_image_grid(path, rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = [row["strength"] for row in results["rows"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for look in results["looks"]:
        ax1.plot(strengths, [100 * row["looks"][look]["accuracy"] for row in results["rows"]], "o-", label=look)
    ax1.axhline(80, color="k", lw=0.8, ls="--")
    ax1.set(xlabel="strength", ylabel="classifier names the look (% of windows)", title="look")
    ax1.legend(fontsize=7, ncol=2)
    ax2.plot(strengths, [row["structure_kept"] for row in results["rows"]], "o-", color="C0")
    ax2.set_ylabel("structure kept (edge SSIM)", color="C0")
    psnr_axis = ax2.twinx()
    psnr_axis.plot(strengths, [row["target_psnr"] for row in results["rows"]], "o-", color="C3")
    psnr_axis.set_ylabel("PSNR to the look (dB)", color="C3")
    ax2.set(xlabel="strength", title="scene kept (mean over looks)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--clips", type=int, default=4, help="held-out scenes a look")
    p.add_argument("--seed", type=int, default=1001, help="scene seed (vidfx eval's default)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(ModelSettings(name=args.model))
    classifier = load_look_classifier(DEFAULT_CLASSIFIER)
    results: dict = {"model": args.model, "steps": list(pipe.settings.steps), "clips": args.clips,
                     "looks": list(classifier.config.looks), "rows": []}
    for i, strength in enumerate(args.strengths):
        scores = evaluate_looks(pipe, classifier, clips=args.clips, seed=args.seed, strength=strength)
        row = {"strength": strength, "sigma": float(shift_sigma(strength, DEFAULT_SHIFT))}
        row["looks"] = {s.look: {key: getattr(s, key) for key in MEASURES} for s in scores}
        for key in ("structure_kept", "target_psnr"):  # the scene measures, averaged over the looks
            row[key] = float(np.mean([getattr(s, key) for s in scores]))
        results["rows"].append(row)
        named = sum(s.accuracy >= 0.8 for s in scores)
        print(f"[{i + 1}/{len(args.strengths)}] strength {strength:g} (σ {row['sigma']:.3f}): "
              f"{named} of {len(scores)} looks ≥ 80%", flush=True)  # fmt: skip
    (HERE / "default_strength.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, HERE / "default_strength.png")
    strength_grid(pipe, [s for s in args.strengths if s >= 0.1][:5], HERE / "default_strength_grid.png")

    looks = results["looks"]
    lines = [
        "## Default model: strength sweep",
        "",
        f"`python benchmarks/bench_default_strength.py` — model `{args.model}`, steps {results['steps']}, "
        f"{args.clips} held-out scenes (seed {args.seed}) × 33 frames a look, `vidfx eval`'s measures. Cells: "
        "share of windows the look classifier names the asked look; then, averaged over the looks, structure "
        "kept (edge SSIM with the input) and PSNR to the dataset's own rendering of the look on that scene.",
        "",
        "| strength | σ | " + " | ".join(looks) + " | looks ≥ 80% | structure kept | PSNR to the look (dB) |",
        "|---|---|" + "---|" * len(looks) + "---|---|---|",
    ]
    for row in results["rows"]:
        acc = [row["looks"][look]["accuracy"] for look in looks]
        lines.append(
            f"| {row['strength']:g} | {row['sigma']:.3f} | " + " | ".join(f"{a:.0%}" for a in acc)
            + f" | {sum(a >= 0.8 for a in acc)} | {row['structure_kept']:.2f} | {row['target_psnr']:.1f} |"
        )  # fmt: skip
    lines += [
        "",
        "![look accuracy and scene kept against strength](default_strength.png)",
        "",
        "![one held-out scene: input, the dataset's look, the model at each strength](default_strength_grid.png)",
    ]
    update_section("## Default model: strength sweep", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
