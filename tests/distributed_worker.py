"""Run by tests/test_train.py under `torchrun --standalone --nproc_per_node 2` (CPU, gloo): a few teacher and
DMD (rollout) steps with run.distributed = MODE, then a resume; each rank writes what it saw as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vidfx.train.config import DMDConfig, EMAConfig, ModelSpec, OptimConfig, RunConfig, TeacherConfig
from vidfx.train.dmd import DMDStage
from vidfx.train.teacher import TeacherStage


def flat(module: torch.nn.Module) -> torch.Tensor:
    state = module.state_dict()
    return torch.cat([(v.full_tensor() if hasattr(v, "full_tensor") else v).flatten() for v in state.values()])


def main() -> None:
    torch.set_num_threads(1)
    mode, work, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    spec = ModelSpec("tiny", json.loads(sys.argv[4]))

    def run(name: str) -> RunConfig:
        return RunConfig(out=str(out / name), steps=4, batch_size=1, save_every=2, progress=False, distributed=mode)

    teacher = TeacherStage(
        TeacherConfig(latents=str(work / "latents"), run=run("teacher"), model=spec, optim=OptimConfig(lr=1e-3))
    )
    t_hist = teacher.fit()
    weights = flat(teacher.model)
    replicas = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, weights)
    cfg = DMDConfig(
        generator_init=str(work / "teacher.safetensors"),
        real_score=str(work / "teacher.safetensors"),
        fake_score_init=str(work / "other.safetensors"),
        data=str(work / "pairs"),
        chunk_frames=2,
        student_steps=[1000, 750, 500],
        generator_input="rollout",
        ratio=2,
        run=run("dmd"),
        model=spec,
        optim=OptimConfig(lr=1e-3),
        critic_optim=OptimConfig(lr=1e-3),
        ema=EMAConfig(0.9, 1),
    )
    d_hist = DMDStage(cfg).fit()
    cfg.run.steps = 5
    resumed = DMDStage(cfg)
    r_hist = resumed.fit()  # resumes at step 4, runs step 4
    result = {
        "teacher": t_hist,
        "dmd": d_hist,
        "resumed_from": r_hist[-1]["step"],
        "resumed": r_hist[-1],
        "replicas_equal": all(torch.equal(r, replicas[0]) for r in replicas),
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
