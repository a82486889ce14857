"""`vidfx train <stage>`: the CausVid recipe, one stage per subcommand (see vidfx.train).

    vidfx train encode VIDEOS OUT --autoencoder AE.safetensors [--text hash]   latent + caption cache
    vidfx train teacher --config teacher.toml [--set optim.lr=1e-4 ...]       bidirectional teacher
    vidfx train ode-pairs --config pairs.toml                                 teacher ODE trajectories
    vidfx train student-init --config student.toml                            causal student, ODE regression
    vidfx train dmd --config dmd.toml                                         asymmetric DMD
    vidfx train paired-v2v --config v2v.toml                                  source → look fine-tune (optional)
    vidfx train ablation --config ablation.toml                               every stage + eval + report
    vidfx train export --config ablation.toml --to DIR                        a variant → a weights folder

Many GPUs: `torchrun --nproc_per_node 8 -m vidfx.cli train dmd --config dmd.toml --set run.distributed=fsdp`.
Every training stage resumes from its run folder's newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from vidfx.train.config import (
    DMDConfig,
    OdePairsConfig,
    PairedV2VConfig,
    StudentInitConfig,
    TeacherConfig,
    load_config,
)

STAGES = {
    "teacher": ("flow-matching training of the (bidirectional) teacher", TeacherConfig),
    "ode-pairs": ("the teacher's ODE trajectories at the student's steps", OdePairsConfig),
    "student-init": ("the causal student regresses the ODE endpoints (CausVid's init)", StudentInitConfig),
    "dmd": ("asymmetric distribution matching distillation", DMDConfig),
    "paired-v2v": ("fine-tune the student from noised source clips to the same clips in a look", PairedV2VConfig),
}


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", required=True)
    enc = sub.add_parser("encode", help="decode a video folder into clips and cache their latents + captions")
    enc.add_argument("videos", help="folder of videos with captions.jsonl (format: vidfx.train.data)")
    enc.add_argument("out", help="latent cache folder (resumed if it exists)")
    enc.add_argument("--autoencoder", required=True, help="autoencoder safetensors (or random:tiny for plumbing)")
    enc.add_argument("--text", default="hash", help="text encoder: hash, hash:DIM:TOKENS or umt5:FOLDER")
    enc.add_argument("--frames", type=int, default=21, help="pixel frames a clip (1 + 4·n)")
    enc.add_argument("--fps", type=float, default=8.0)
    enc.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    enc.add_argument("--heldout", type=float, default=0.1, help="fraction of videos held out (by name hash)")
    enc.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    enc.add_argument("--max-clips-per-video", type=int, default=None)
    enc.add_argument("--shard-size", type=int, default=64)
    enc.add_argument("--batch", type=int, default=4)
    enc.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    enc.add_argument("--device", default="auto")
    enc.add_argument("--no-progress", action="store_true")
    enc.set_defaults(func=run_encode)
    for name, (help_text, _) in STAGES.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--config", help="TOML config (fields: vidfx.train.config)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-4")
        s.set_defaults(func=run_stage)
    ab = sub.add_parser("ablation", help="CausVid's ablation end to end: train every variant, evaluate, report")
    ab.add_argument("--config", help="TOML config (fields: vidfx.train.ablation.AblationConfig)")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ab.set_defaults(func=run_ablation)
    ex = sub.add_parser("export", help="an ablation run's student → a weights folder (vidfx serve --model DIR)")
    ex.add_argument("--config", help="the ablation's TOML config")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ex.add_argument("--variant", default="dmd_ode", help="run folder of the student (default: the recipe's)")
    ex.add_argument("--to", required=True, help="weights folder to write (model.json + *.safetensors)")
    ex.add_argument("--autoencoder", default=None, help="ship this autoencoder instead (same encoder, e.g. a "
                    "decoder fine-tuned with train-autoencoder --decoder-only)")  # fmt: skip
    ex.add_argument("--looks", nargs="*", default=None, help="the looks the model card claims (model.json)")
    ex.set_defaults(func=run_export)


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from vidfx.train.components import autoencoder_from_spec, text_encoder_from_spec
    from vidfx.train.data import encode_dataset
    from vidfx.train.distributed import pick_device

    device = pick_device(args.device)
    height, _, width = args.size.partition("x")
    n = encode_dataset(
        args.videos,
        args.out,
        autoencoder_from_spec(args.autoencoder, device),
        text_encoder_from_spec(args.text),
        args.frames,
        args.fps,
        (int(height), int(width or height)),
        heldout=args.heldout,
        split=args.split,
        shard_size=args.shard_size,
        batch_size=args.batch,
        max_clips_per_video=args.max_clips_per_video,
        dtype=getattr(torch, args.dtype),
        device=device,
        names={"autoencoder": args.autoencoder, "text_encoder": args.text},
        progress=not args.no_progress,
    )
    print(f"{n} clips in {args.out}")
    return 0


def run_stage(args: argparse.Namespace) -> int:
    cfg = load_config(STAGES[args.stage][1], args.config, args.set)
    if args.stage == "ode-pairs":
        from vidfx.train.ode_pairs import generate_ode_pairs

        print(f"{generate_ode_pairs(cfg)} pairs in {cfg.out}")
        return 0
    from vidfx.train.distributed import teardown

    if args.stage == "teacher":
        from vidfx.train.teacher import TeacherStage as Stage
    elif args.stage == "student-init":
        from vidfx.train.student_init import StudentInitStage as Stage  # type: ignore[assignment]
    elif args.stage == "paired-v2v":
        from vidfx.train.paired_v2v import PairedV2VStage as Stage  # type: ignore[assignment]
    else:
        from vidfx.train.dmd import DMDStage as Stage  # type: ignore[assignment]
    stage = Stage(cfg)
    history = stage.fit()
    if stage.dist.is_main and history:
        last = {k: round(v, 5) for k, v in history[-1].items()}
        print(f"{args.stage}: step {stage.step} in {cfg.run.out}: {last}")
    teardown(stage.dist)
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    from vidfx.train.ablation import AblationConfig, run_ablation

    cfg = load_config(AblationConfig, args.config, args.set)
    if run_ablation(cfg) is None:
        print(f"stages {', '.join(cfg.stages)} done in {cfg.out}")
    else:
        print(f"report: {cfg.out}/ablation.md, {cfg.out}/ablation.png")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidfx.train.ablation import AblationConfig, variant_model
    from vidfx.train.config import to_dict
    from vidfx.train.export import export_model, text_spec_meta

    cfg = load_config(AblationConfig, args.config, args.set)
    if not cfg.autoencoder:
        print("vidfx train export: the config names no autoencoder", file=sys.stderr)
        return 2
    run = Path(cfg.out) / args.variant
    training = {"variant": args.variant, "ablation": to_dict(cfg), "autoencoder": args.autoencoder or cfg.autoencoder}
    classifier = cfg.features.removeprefix("look:") if cfg.features.startswith("look:") else None
    text = text_spec_meta(cfg.text)
    manifest = Path(cfg.out) / "latents" / "manifest.json"
    meta = json.loads(manifest.read_text())["meta"] if manifest.exists() else {}
    stats = {k: meta[k] for k in ("latent_mean", "latent_std") if k in meta}
    try:
        out = export_model(
            run, variant_model(cfg, args.variant).build(), args.autoencoder or cfg.autoencoder, args.to, text, training,
            classifier=classifier, looks=args.looks, latent_stats=stats,
        )  # fmt: skip
    except ValueError as exc:
        print(f"vidfx train export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
