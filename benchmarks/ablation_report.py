"""CausVid's ablation at tiny scale → the "CausVid ablation" section of RESULTS.md (+ benchmarks/ablation.png).

    vidfx train ablation --config configs/train/ablation_looks.toml     # trains, evaluates, writes out/ablation.*
    python benchmarks/ablation_report.py runs/ablation_looks [--note "…"]

Reads `ablation.json` of the run folder and checks the issue's goals against it (each line says met or not):
the 4-step causal student within 10% of the 50-step teacher's distance; ODE init + asymmetric DMD better than
ODE init alone and than DMD without ODE init; no drift growth out to 10× the training length.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path

from vidfx.benchmarking.results import update_section

HERE = Path(__file__).resolve().parent
HEADING = "## CausVid ablation, tiny scale (issue 5)"
RECIPE, ODE, NO_ODE = "ODE init + asymmetric DMD", "causal student, ODE init", "DMD without ODE init"


def fd(results: dict, model: str, steps: int) -> float:
    return next(r["fd"] for r in results["rows"] if r["model"] == model and r["steps"] == steps)


def goals(results: dict) -> list[str]:
    teacher = next(r for r in results["rows"] if r["model"] == "teacher (bidirectional)")
    t = teacher["fd"]
    recipe4 = fd(results, RECIPE, 4)
    lines = [
        f"- 4-step student within 10% of the {teacher['steps']}-step teacher's FD: {recipe4:.3f} vs {t:.3f} "
        f"({recipe4 / t - 1:+.0%}) — **{'met' if recipe4 <= 1.1 * t else 'not met'}**",
    ]
    for steps in (4, 2, 1):
        r, o, n = fd(results, RECIPE, steps), fd(results, ODE, steps), fd(results, NO_ODE, steps)
        better = r < o and r < n
        lines.append(
            f"- {steps} step(s): ODE init + DMD {r:.3f} vs ODE init alone {o:.3f} and DMD alone {n:.3f} — "
            f"**{'better than each' if better else 'not better than each'}**"
        )
    for label, curve in results["drift"].items():
        growth = curve[-1] / curve[0] if curve[0] > 0 else float("inf")
        worst = max(curve) / curve[0] if curve[0] > 0 else float("inf")
        lines.append(
            f"- drift, {label}: last window / first = {growth:.2f} (worst window {worst:.2f}) — "
            f"**{'no growth' if growth <= 1.1 else 'grows'}**"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the ablation's out folder")
    p.add_argument("--note", default="", help="a paragraph appended to the section")
    args = p.parse_args()
    results = json.loads((args.run / "ablation.json").read_text())
    config = next((args.run / "configs").glob("*/config.toml"), None)
    cfg = tomllib.loads(config.read_text()) if config else {}
    shutil.copyfile(args.run / "ablation.png", HERE / "ablation.png")
    summary = ", ".join(
        f"{k} {cfg[k]}"
        for k in ("teacher_steps", "causal_teacher_steps", "num_pairs", "student_init_steps", "dmd_steps", "batch_size")
        if k in cfg
    )
    lines = [
        HEADING,
        "",
        f"`vidfx train ablation --config configs/train/ablation_looks.toml`, then "
        f"`python benchmarks/ablation_report.py {args.run}`. Tiny DiT (`tiny` preset), the tiny AE trained on "
        f"the looks dataset, 17-frame clips at 128×128 (5 latent frames, chunks of 1), {summary}. "
        "The feature net of the distance is the look classifier trained on the same dataset: this is a "
        "Fréchet-distance *proxy*, not FVD.",
        "",
        (args.run / "ablation.md").read_text().strip(),
        "",
        "Goals (issue 5):",
        "",
        *goals(results),
        "",
        "![FD vs sampling steps, and drift over long rollouts](ablation.png)",
    ]
    if args.note:
        lines += ["", args.note]
    update_section(HEADING, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
