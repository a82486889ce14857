"""`vidfx eval RUN --videos DIR --autoencoder AE --features clip:NET`: offline metrics of one trained model;
`vidfx eval --model default`: the look evaluation of a shipped model (vidfx.data.look_eval).

Look evaluation: every look's prompt on held-out scenes through the live pipeline, judged by the look
classifier (default: the one shipped beside the default model): accuracy, flicker ratio, structure kept.
`vidfx eval --model default --real-footage`: the same looks on held-out real video clips shipped in packages
(vidfx.data.real_footage): PSNR and luma SSIM to the look's own rendering, share of the reachable gain, flicker
against the look's own; `--grid PNG` also draws input / look / model frames.

RUN is a run folder of `vidfx train teacher|student-init|dmd` (its config.toml gives the architecture and,
for students, the chunk size; the EMA weights are used when present). Prints and writes (`--out`) JSON with
the Fréchet distance to the held-out clips (feature net trained on this dataset: not FVD), flicker, and —
for causal students — the drift curve and the video-to-video sweep. See vidfx.train.eval for definitions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run folder (or checkpoint folder beside a config.toml)")
    p.add_argument("--model", default=None, help="look evaluation of a model: a name (default), a weights folder "
                   "or a Wan2.1 release folder")  # fmt: skip
    p.add_argument("--model-dit", default="", help="causal generator for a Wan2.1 release folder (.safetensors)")
    p.add_argument("--model-lora", default="", help="LoRA merged into it (.safetensors)")
    p.add_argument("--model-profile", default="auto", help="release profile (default: detected)")
    p.add_argument("--classifier", default=None, help="look classifier (default: the default model's)")
    p.add_argument("--look-clips", type=int, default=4, help="held-out scenes a look (look evaluation)")
    p.add_argument("--look-frames", type=int, default=33, help="frames a scene (look evaluation)")
    p.add_argument("--look-seed", type=int, default=1001, help="scene seed (the dataset's default is 0)")
    p.add_argument("--strength", type=float, default=None, help="look evaluation strength (default: the node's)")
    p.add_argument("--real-footage", action="store_true", help="evaluate on the held-out packaged real clips")
    p.add_argument("--footage", default="", help="clips: FOOTAGE names or video paths, comma-separated (all)")
    p.add_argument("--footage-frames", type=int, default=33, help="frames a clip (real footage)")
    p.add_argument("--footage-size", type=int, default=240, help="short side the clips are read at (pixels)")
    p.add_argument("--looks", default="", help="looks, comma-separated (default: those the model card claims)")
    p.add_argument("--fit", default=None, help="model fit (aspect, cover, …; default: the node's)")
    p.add_argument("--grid", default="", help="real footage: write an input / look / model picture grid here")
    p.add_argument("--videos", help="video folder with captions.jsonl; its held-out split is used")
    p.add_argument("--autoencoder")
    p.add_argument("--text", default="hash")
    p.add_argument("--features", default="", help="clip:PATH; empty: train a ClipFeatureNet on the train split")
    p.add_argument("--feature-steps", type=int, default=400)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    p.add_argument("--heldout", type=float, default=0.1)
    p.add_argument("--eval-clips", type=int, default=64)
    p.add_argument("--steps", default="1000,750,500,250", help="student step list (comma-separated)")
    p.add_argument("--teacher-steps", type=int, default=50, help="Euler steps for a teacher")
    p.add_argument("--guidance", type=float, default=6.0, help="teacher CFG, v_u + s·(v_c − v_u)")
    p.add_argument("--drift", type=int, default=10, help="rollout length in training lengths (students)")
    p.add_argument("--v2v", type=_floats, default=[0.5, 0.75], help="SDEdit strengths (students)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="", help="write the results here as JSON")
    p.set_defaults(func=run)


def run_looks(args: argparse.Namespace) -> int:
    from vidfx.config import ModelSettings
    from vidfx.data.look_classifier import load_look_classifier
    from vidfx.data.look_eval import evaluate_looks, scores_dict, scores_table
    from vidfx.loading import DEFAULT_CLASSIFIER, load_pipeline

    model = ModelSettings(name=args.model, dit=args.model_dit, lora=args.model_lora, profile=args.model_profile)
    pipe = load_pipeline(model)
    classifier = load_look_classifier(args.classifier or DEFAULT_CLASSIFIER)
    settings = {"clips": args.look_clips, "frames": args.look_frames, "seed": args.look_seed, "strength": args.strength}
    scores = evaluate_looks(pipe, classifier, **settings)
    print(scores_table(scores))
    if args.out:
        results = {"model": args.model, "settings": settings, "looks": scores_dict(scores)}
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def run_footage(args: argparse.Namespace) -> int:
    from vidfx.config import ModelSettings
    from vidfx.data.packaged import FOOTAGE
    from vidfx.data.real_footage import evaluate_footage, footage_dict, footage_grid, footage_table
    from vidfx.loading import MODEL_ALIASES, load_pipeline

    settings = ModelSettings(name=args.model) if args.fit is None else ModelSettings(name=args.model, fit=args.fit)
    pipe = load_pipeline(settings)
    clips = [c for c in args.footage.split(",") if c] or [n for n, c in FOOTAGE.items() if c.installed]
    if not clips:
        raise SystemExit("vidfx eval --real-footage: no packaged clips installed (bash scripts/setup.sh --dev)")
    meta = Path(MODEL_ALIASES.get(args.model, args.model)) / "model.json"
    claimed = json.loads(meta.read_text()).get("looks", []) if meta.is_file() else []
    looks = [x for x in args.looks.split(",") if x] or claimed
    if not looks:
        raise SystemExit("vidfx eval --real-footage: give --looks (the model claims none)")
    scores, grid = evaluate_footage(
        pipe,
        clips,
        looks,
        args.footage_frames,
        args.footage_size,
        args.strength,
        keep_frames=bool(args.grid),
        on_score=lambda s: print(
            f"{s.clip} {s.look}: gain {s.gain_share:.0%}, SSIM {s.ssim_luma:.3f}", file=sys.stderr
        ),
    )
    print(footage_table(scores))
    if args.grid:
        footage_grid(grid, args.grid)
    if args.out:
        results = {
            "model": args.model,
            "fit": settings.fit,
            "settings": {"frames": args.footage_frames, "short_side": args.footage_size, "strength": args.strength},
            "sources": {
                c: {"package": FOOTAGE[c].package, "licence": FOOTAGE[c].licence} for c in clips if c in FOOTAGE
            },
            **footage_dict(scores),
        }
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model is not None and args.real_footage:
        return run_footage(args)
    if args.model is not None:
        return run_looks(args)
    if not (args.run and args.videos and args.autoencoder):
        raise SystemExit("vidfx eval: give RUN --videos DIR --autoencoder AE, or --model NAME for the look evaluation")

    from vidfx.model.wan_dit import CausalDiT
    from vidfx.train.checkpoint import checkpoint_meta, read_weights
    from vidfx.train.components import (
        autoencoder_from_spec,
        load_feature_net,
        text_encoder_from_spec,
        train_feature_net_on,
    )
    from vidfx.train.config import ModelSpec, from_dict
    from vidfx.train.data import iter_clips
    from vidfx.train.distributed import pick_device
    from vidfx.train.eval import (
        Standardize,
        batched_decoder,
        clip_features,
        evaluate_drift,
        evaluate_t2v,
        evaluate_v2v,
        load_eval_set,
        student_sampler,
        student_v2v,
        teacher_sampler,
    )

    run_dir = Path(args.run)
    config_path = next((d / "config.toml" for d in (run_dir, *run_dir.parents) if (d / "config.toml").exists()), None)
    if config_path is None:
        raise SystemExit(f"{run_dir}: no config.toml here or above (is it a vidfx train run folder?)")
    run_cfg = tomllib.loads(config_path.read_text())
    spec = from_dict(ModelSpec, run_cfg.get("model", {}))
    causal = checkpoint_meta(run_dir)["stage"] in ("student_init", "dmd")  # a causal few-step student
    chunk = run_cfg.get("chunk_frames")
    device = pick_device(args.device)
    model = CausalDiT(spec.build())
    model.load_state_dict(read_weights(run_dir))
    model = model.to(device).eval().requires_grad_(False)

    height, _, width = args.size.partition("x")
    size = (int(height), int(width or height))
    ae = autoencoder_from_spec(args.autoencoder, device)
    data = load_eval_set(
        args.videos,
        args.frames,
        args.fps,
        size,
        args.heldout,
        ae,
        text_encoder_from_spec(args.text),
        args.eval_clips,
    )
    if args.features:
        net = load_feature_net(args.features)
    else:
        clips = list(iter_clips(args.videos, args.frames, args.fps, size, "train", args.heldout))
        net = train_feature_net_on(clips, args.feature_steps, args.seed)
    net = Standardize(net, data.clips)
    ref = clip_features(net, data.clips)
    shape = tuple(data.latents.shape[1:])

    common = {
        "decode": batched_decoder(ae, device),
        "net": net,
        "seed": args.seed,
        "batch": args.batch,
        "device": device,
    }
    steps = [int(s) for s in args.steps.split(",")]
    if causal:
        results = {
            "model": str(run_dir),
            "kind": "causal student",
            "steps": steps,
            **evaluate_t2v(student_sampler(model, shape, steps, chunk), data, reference_feats=ref, **common),
            "drift": evaluate_drift(
                student_sampler(model, shape, steps, chunk, length=args.drift),
                data,
                frames=shape[1],
                reference_feats=ref,
                **common,
            ),
            "v2v": evaluate_v2v(
                lambda s: student_v2v(model, steps, s, chunk), args.v2v, data, data.text[:1], ref, **common
            ),
        }
    else:
        sampler = teacher_sampler(model, shape, args.teacher_steps, args.guidance, chunk_frames=chunk)
        results = {
            "model": str(run_dir),
            "kind": "teacher",
            "steps": args.teacher_steps,
            **evaluate_t2v(sampler, data, reference_feats=ref, **common),
        }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0
