"""CausVid's ablation, end to end on one video folder (`vidfx train ablation --config ablation.toml`).

Runs every stage into `out/`, each resumable (re-running continues where a killed run stopped), then
evaluates:

    teacher (bidirectional, 50 Euler steps with CFG)     — and at 4/2/1 Euler steps for reference
    teacher (causal, diffusion forcing, 50 steps)        — the teacher of the last row
    student after ODE init                               — 4, 2, 1 steps
    ODE init + asymmetric DMD (the recipe)               — 4, 2, 1 steps
    DMD without ODE init (generator starts as the teacher)
    ODE init + DMD with a causal teacher (real and fake scores block-causal)

with the Fréchet distance (feature net trained on the dataset's training split: not FVD), flicker, the
drift curve (distance per training-length window of rollouts up to `drift_length`× the training length,
4 steps) and a video-to-video sweep (structure kept vs style reached). Writes `out/ablation.json`,
`out/ablation.md` (tables) and `out/ablation.png` (distance vs steps; drift curves).

Students are distilled with the 4-step list and sampled with its sub-lists [1000, 500] and [1000]. The
learning rates default to values that move tiny models in a few thousand steps; CausVid's 2e-6 is for the
1.3B (set them in the config for a large run).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidfx.model.wan_dit import CausalDiT
from vidfx.train.checkpoint import read_weights
from vidfx.train.components import (
    autoencoder_from_spec,
    load_feature_net,
    save_feature_net,
    text_encoder_from_spec,
    train_feature_net_on,
)
from vidfx.train.config import (
    DMDConfig,
    EMAConfig,
    ModelSpec,
    OdePairsConfig,
    OptimConfig,
    PairedV2VConfig,
    RunConfig,
    StudentInitConfig,
    TeacherConfig,
    save_resolved,
)
from vidfx.train.data import encode_dataset, iter_clips
from vidfx.train.distributed import pick_device
from vidfx.train.dmd import DMDStage
from vidfx.train.eval import (
    EvalSet,
    FeatureNet,
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
    teacher_v2v,
)
from vidfx.train.ode_pairs import generate_ode_pairs
from vidfx.train.paired_v2v import PairedV2VStage, source_conditioned
from vidfx.train.student_init import StudentInitStage
from vidfx.train.teacher import TeacherStage


@dataclass
class AblationConfig:
    videos: str = ""  # a folder in vidfx.train.data's format (videos + captions.jsonl)
    out: str = "runs/ablation"
    autoencoder: str = ""  # e.g. a trained tiny AE safetensors (components.autoencoder_from_spec)
    text: str = "hash"  # components.text_encoder_from_spec
    frames: int = 21  # pixel frames a clip: 1 + 4·n (21 → 6 latent frames)
    fps: float = 8.0
    size: list[int] = field(default_factory=lambda: [64, 64])  # (height, width)
    heldout: float = 0.2  # fraction of videos held out for evaluation
    max_clips_per_video: int | None = None
    eval_clips: int | None = 64
    features: str = ""  # eval feature net: "look:PATH" (vidfx.data's look classifier), "clip:PATH"; "" trains one
    chunk_frames: int = 2  # latent frames a chunk
    student_steps: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    eval_step_lists: list[list[int]] = field(default_factory=lambda: [[1000, 750, 500, 250], [1000, 500], [1000]])
    teacher_sample_steps: int = 50
    guidance: float = 6.0  # teacher CFG for ODE pairs and teacher samples (v_u + s·(v_c − v_u))
    dmd_guidance: float = 3.5  # CausVid's form c + (c − u)·s
    teacher_steps: int = 3000
    # The causal teacher starts from the bidirectional teacher's weights and is fine-tuned block-causally for
    # this many steps (0: trained from scratch for teacher_steps, as the bidirectional one).
    causal_teacher_steps: int = 0
    student_init_steps: int = 1000
    dmd_steps: int = 1000  # critic steps (the generator steps every `ratio`-th)
    dmd_ratio: int = 5
    dmd_input: str = "noised_data"
    # Clean latents DMD noises for the generator: "latents" (the training clips; a video-to-video model sees
    # real footage there) or "pairs" (the teacher's ODE endpoints).
    dmd_data: str = "latents"
    num_pairs: int = 256
    # Optional stage after the recipe: the dmd_ode student fine-tuned from noised source clips to the same
    # clips in a look (vidfx.train.paired_v2v; needs a dataset of plain scenes + their looks). 0: skipped.
    paired_v2v_steps: int = 0
    paired_v2v_strengths: list[float] = field(default_factory=lambda: [0.3, 0.85])
    paired_v2v_first_step: float = 0.5
    paired_v2v_lr: float = 1e-4
    # Optional stage after it: the paired student made source-conditioned (it also takes the clean source
    # latent; vidfx.train.paired_v2v) and fine-tuned on the same pairs. 0: skipped.
    paired_source_steps: int = 0
    paired_source_lr: float = 1e-4
    feature_steps: int = 400
    drift_length: int = 10
    v2v_strengths: list[float] = field(default_factory=lambda: [0.5, 0.75])
    batch_size: int = 8
    teacher_lr: float = 3e-4
    student_lr: float = 1e-4
    dmd_lr: float = 2e-5
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default)
    # Stages this process runs (empty: all, then evaluation). Stages wait for nothing: run a stage's
    # inputs first. Two single-thread processes on disjoint stages use 2 cores better than one with 2
    # threads for a tiny model.
    stages: list[str] = field(default_factory=list)
    progress: bool = True
    model: ModelSpec = field(default_factory=ModelSpec)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")


# DMD variants: generator init, real (and fake) score, whether the scores are block-causal.
DMD_VARIANTS: dict[str, tuple[str, str, bool]] = {
    "dmd_ode": ("student_ode", "teacher", False),  # the recipe
    "dmd_no_ode": ("teacher", "teacher", False),
    "dmd_causal_teacher": ("student_ode", "teacher_causal", True),
}
STAGES = (
    "encode", "teacher", "teacher_causal", "pairs", "student_ode", *DMD_VARIANTS, "paired_v2v", "paired_source",
    "evaluate",
)  # fmt: skip


def _run(cfg: AblationConfig, name: str, steps: int) -> RunConfig:
    every = max(1, steps // 4)
    return RunConfig(
        out=str(Path(cfg.out) / name),
        seed=cfg.seed,
        steps=steps,
        batch_size=cfg.batch_size,
        save_every=every,
        plot_every=every,
        device=cfg.device,
        progress=cfg.progress,
    )


def wants(cfg: AblationConfig, stage: str) -> bool:
    return not cfg.stages or stage in cfg.stages


def train_all(cfg: AblationConfig) -> None:
    """The training stages of the ablation that `cfg.stages` selects (each resumes if its folder holds
    checkpoints, and a finished one is a no-op)."""
    out = Path(cfg.out)
    k = cfg.chunk_frames
    lat = str(out / "latents")
    # Every EMA copies the weights for the first half of its run, then averages (decay 0.99: ~100 steps).
    for name, chunk in (("teacher", None), ("teacher_causal", k)):
        if not wants(cfg, name):
            continue
        from_teacher = name == "teacher_causal" and cfg.causal_teacher_steps > 0
        steps = cfg.causal_teacher_steps if from_teacher else cfg.teacher_steps
        TeacherStage(
            TeacherConfig(
                latents=lat,
                init=str(out / "teacher") if from_teacher else "",
                chunk_frames=chunk,
                run=_run(cfg, name, steps),
                model=cfg.model,
                optim=OptimConfig(lr=cfg.teacher_lr),
                ema=EMAConfig(decay=0.99, start_step=steps // 2),
            )
        ).fit()
    if wants(cfg, "pairs"):
        generate_ode_pairs(
            OdePairsConfig(
                teacher=str(out / "teacher"),
                latents=lat,
                out=str(out / "pairs"),
                num_pairs=cfg.num_pairs,
                sample_steps=cfg.teacher_sample_steps,
                guidance=cfg.guidance,
                student_steps=cfg.student_steps,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                device=str(pick_device(cfg.device)),
                progress=cfg.progress,
                model=cfg.model,
            )
        )
    if wants(cfg, "student_ode"):
        StudentInitStage(
            StudentInitConfig(
                pairs=str(out / "pairs"),
                init=str(out / "teacher"),
                chunk_frames=k,
                run=_run(cfg, "student_ode", cfg.student_init_steps),
                model=cfg.model,
                optim=OptimConfig(lr=cfg.student_lr),
                ema=EMAConfig(decay=0.99, start_step=cfg.student_init_steps // 2),
            )
        ).fit()
    for name, (init, teacher, causal_score) in DMD_VARIANTS.items():
        if not wants(cfg, name):
            continue
        DMDStage(
            DMDConfig(
                generator_init=str(out / init),
                real_score=str(out / teacher),
                data=lat if cfg.dmd_data == "latents" else str(out / "pairs"),
                chunk_frames=k,
                score_chunk_frames=k if causal_score else None,
                student_steps=cfg.student_steps,
                guidance=cfg.dmd_guidance,
                ratio=cfg.dmd_ratio,
                generator_input=cfg.dmd_input,
                run=_run(cfg, name, cfg.dmd_steps),
                model=cfg.model,
                optim=OptimConfig(lr=cfg.dmd_lr),
                critic_optim=OptimConfig(lr=cfg.dmd_lr),
                ema=EMAConfig(decay=0.99, start_step=cfg.dmd_steps // 2),
            )
        ).fit()

    lo, hi = cfg.paired_v2v_strengths
    for name, init, steps, lr in (
        ("paired_v2v", "dmd_ode", cfg.paired_v2v_steps, cfg.paired_v2v_lr),
        ("paired_source", "paired_v2v", cfg.paired_source_steps, cfg.paired_source_lr),
    ):
        if wants(cfg, name) and steps > 0:
            PairedV2VStage(
                PairedV2VConfig(
                    latents=lat,
                    videos=cfg.videos,
                    init=str(out / init),
                    chunk_frames=k,
                    student_steps=cfg.student_steps,
                    strengths=(lo, hi),
                    first_step=cfg.paired_v2v_first_step,
                    run=_run(cfg, name, steps),
                    model=variant_model(cfg, name),
                    optim=OptimConfig(lr=lr),
                    ema=EMAConfig(decay=0.99, start_step=steps // 2),
                )
            ).fit()


def variant_model(cfg: AblationConfig, variant: str) -> ModelSpec:
    """The architecture a run of the ablation trained: the config's, source-conditioned for paired_source."""
    return source_conditioned(cfg.model) if variant == "paired_source" else cfg.model


def _load(cfg: AblationConfig, name: str, device: torch.device) -> CausalDiT:
    model = CausalDiT(cfg.model.build())
    model.load_state_dict(read_weights(Path(cfg.out) / name))
    return model.to(device).eval().requires_grad_(False)


def _feature_net(cfg: AblationConfig, size: tuple[int, int]) -> FeatureNet:
    if cfg.features:
        return load_feature_net(cfg.features)
    path = Path(cfg.out) / "features.safetensors"
    if not path.exists():
        clips = list(iter_clips(cfg.videos, cfg.frames, cfg.fps, size, "train", cfg.heldout, cfg.max_clips_per_video))
        save_feature_net(train_feature_net_on(clips, cfg.feature_steps, cfg.seed, cfg.progress), path)
    return load_feature_net(f"clip:{path}")


def evaluate_all(cfg: AblationConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)
    size = (cfg.size[0], cfg.size[1])
    ae = autoencoder_from_spec(cfg.autoencoder, device)
    text_encoder = text_encoder_from_spec(cfg.text)
    data: EvalSet = load_eval_set(
        cfg.videos,
        cfg.frames,
        cfg.fps,
        size,
        cfg.heldout,
        ae,
        text_encoder,
        cfg.eval_clips,
        cfg.max_clips_per_video,
    )
    net = Standardize(_feature_net(cfg, size), data.clips)
    ref = clip_features(net, data.clips)
    latent_shape = tuple(data.latents.shape[1:])
    frames = latent_shape[1]

    common = {
        "decode": batched_decoder(ae, device),
        "net": net,
        "seed": cfg.seed,
        "batch": cfg.batch_size,
        "device": device,
    }
    rows: list[dict[str, Any]] = []
    drift: dict[str, list[float]] = {}
    teacher = _load(cfg, "teacher", device)
    for n in [cfg.teacher_sample_steps, 4, 2, 1]:
        m = evaluate_t2v(teacher_sampler(teacher, latent_shape, n, cfg.guidance), data, reference_feats=ref, **common)
        rows.append({"model": "teacher (bidirectional)", "steps": n, **m})
    causal_teacher = _load(cfg, "teacher_causal", device)
    m = evaluate_t2v(
        teacher_sampler(
            causal_teacher,
            latent_shape,
            cfg.teacher_sample_steps,
            cfg.guidance,
            chunk_frames=cfg.chunk_frames,
        ),
        data,
        reference_feats=ref,
        **common,
    )
    rows.append({"model": "teacher (causal)", "steps": cfg.teacher_sample_steps, **m})
    students = {
        "student_ode": "causal student, ODE init",
        "dmd_ode": "ODE init + asymmetric DMD",
        "dmd_no_ode": "DMD without ODE init",
        "dmd_causal_teacher": "ODE init + DMD, causal teacher",
    }
    for name, label in students.items():
        model = _load(cfg, name, device)
        for steps in cfg.eval_step_lists:
            sampler = student_sampler(model, latent_shape, steps, cfg.chunk_frames)
            rows.append(
                {
                    "model": label,
                    "steps": len(steps),
                    **evaluate_t2v(sampler, data, reference_feats=ref, **common),
                }
            )
        long = student_sampler(model, latent_shape, cfg.eval_step_lists[0], cfg.chunk_frames, length=cfg.drift_length)
        drift[label] = evaluate_drift(long, data, frames=frames, reference_feats=ref, **common)

    # Video-to-video: the held-out clips without a look (all held-out clips if none is plain) re-rendered
    # with a caption of the most common look; style reached = distance to that look's held-out clips.
    looks = [lk for lk in data.looks if lk is not None]
    target = max(sorted(set(looks)), key=looks.count) if looks else None
    members = [i for i, lk in enumerate(data.looks) if lk == target] if target is not None else []
    if len(members) < 2:
        members = list(range(len(data.looks)))
    target_text = data.text[members[0] : members[0] + 1]
    target_feats = ref[members]
    plain = [i for i, lk in enumerate(data.looks) if lk is None]
    inputs = data.subset(plain) if len(plain) >= 2 else data
    recipe = _load(cfg, "dmd_ode", device)
    v2v = {
        f"teacher (bidirectional, {cfg.teacher_sample_steps} steps)": evaluate_v2v(
            lambda s: teacher_v2v(teacher, cfg.teacher_sample_steps, s, cfg.guidance),
            cfg.v2v_strengths,
            inputs,
            target_text,
            target_feats,
            **common,
        ),
        f"ODE init + asymmetric DMD ({len(cfg.eval_step_lists[0])} steps)": evaluate_v2v(
            lambda s: student_v2v(recipe, cfg.eval_step_lists[0], s, cfg.chunk_frames),
            cfg.v2v_strengths,
            inputs,
            target_text,
            target_feats,
            **common,
        ),
    }
    return {
        "rows": rows,
        "drift": drift,
        "v2v": v2v,
        "v2v_target_look": target,
        "eval_clips": len(data.clips),
        "drift_steps": len(cfg.eval_step_lists[0]),
    }


def write_report(results: dict[str, Any], out: str | Path) -> None:
    """ablation.json, ablation.md (tables) and ablation.png (distance vs steps, drift curves)."""
    out = Path(out)
    (out / "ablation.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Held-out clips: {results['eval_clips']}. FD: Fréchet distance in the feature space of a small "
        "network trained on this dataset (not FVD); flicker: mean |Δframe| relative to the held-out clips'.",
        "",
        "| model | steps | FD ↓ | flicker | drift: FD of the last window / the first |",
        "|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        curve = results["drift"].get(r["model"])
        at_drift_steps = r["steps"] == results["drift_steps"]
        ratio = f"{curve[-1] / curve[0]:.2f}" if curve and at_drift_steps and curve[0] > 0 else ""
        lines.append(f"| {r['model']} | {r['steps']} | {r['fd']:.3f} | {r['flicker']:.3f} | {ratio} |")
    lines += ["", f"Video-to-video (target look: {results['v2v_target_look']}):", ""]
    lines += [
        "| model | strength | structure kept (edge SSIM) ↑ | style FD ↓ | flicker |",
        "|---|---|---|---|---|",
    ]
    for label, sweep in results["v2v"].items():
        for r in sweep:
            values = " | ".join(f"{r[k]:.3f}" for k in ("structure_kept", "style_fd", "flicker"))
            lines.append(f"| {label} | {r['strength']} | {values} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    teacher50 = next(r for r in results["rows"] if r["model"] == "teacher (bidirectional)")
    for label in dict.fromkeys(r["model"] for r in results["rows"]):
        pts = sorted((r["steps"], r["fd"]) for r in results["rows"] if r["model"] == label and r["steps"] <= 4)
        if label.startswith("teacher"):
            continue
        a.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    a.axhline(teacher50["fd"], ls="--", c="k", label=f"teacher, {teacher50['steps']} steps")
    a.set_xlabel("sampling steps")
    a.set_ylabel("FD (dataset features; not FVD)")
    a.set_xticks([1, 2, 4])
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    for label, curve in results["drift"].items():
        b.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=label)
    b.axhline(teacher50["fd"], ls="--", c="k", label="teacher (1× only)")
    b.set_xlabel("window (× training length)")
    b.set_ylabel("FD of the window")
    b.set_title(f"drift over long rollouts ({results['drift_steps']} steps)")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)


def run_ablation(cfg: AblationConfig) -> dict[str, Any] | None:
    """The selected stages (default: all) and, if "evaluate" is among them, the report (returned)."""
    out = Path(cfg.out)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    save_resolved(cfg, out / "configs" / "+".join(cfg.stages or ["all"]))
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 1)

    if wants(cfg, "encode"):
        device = pick_device(cfg.device)
        encode_dataset(
            cfg.videos,
            out / "latents",
            autoencoder_from_spec(cfg.autoencoder, device),
            text_encoder_from_spec(cfg.text),
            cfg.frames,
            cfg.fps,
            (cfg.size[0], cfg.size[1]),
            heldout=cfg.heldout,
            split="train",
            max_clips_per_video=cfg.max_clips_per_video,
            device=device,
            names={"autoencoder": cfg.autoencoder, "text_encoder": cfg.text},
            progress=cfg.progress,
        )
        lap("encode")
    frames = int(json.loads((out / "latents" / "manifest.json").read_text())["meta"]["latent_shape"][1])
    if frames % cfg.chunk_frames:
        raise ValueError(
            f"clips of {cfg.frames} frames give {frames} latent frames, not whole chunks of "
            f"{cfg.chunk_frames}: change frames or chunk_frames"
        )
    train_all(cfg)
    lap("train")
    if not wants(cfg, "evaluate"):
        return None
    results = evaluate_all(cfg)
    lap("evaluate")
    results["seconds"] = seconds
    write_report(results, out)
    return results
