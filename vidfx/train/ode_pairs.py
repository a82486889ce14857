"""Stage 2 — ODE pairs: the teacher's deterministic trajectories, kept at the student's noise levels.

For pair i: a caption (a random one of clip i mod N of the latent cache) and noise ε_i, both drawn from a
generator seeded with (seed, i) — so a pair does not depend on batching, on how many processes share the
work or on where a killed run resumed. The teacher integrates the flow ODE with Euler steps and CFG
(`sample_euler` + `with_cfg`, v_u + s·(v_c − v_u), null prompt = zero embeddings) from σ = 1 to 0 over
Wan's shifted grid, with the student's σ list merged into the grid so the kept states sit exactly at the
student's levels. CausVid (generate_ode_pairs.py) integrates 50 steps with guidance 6 and keeps the states at
its steps [1000, 757, 522] plus the endpoint.

Output (`shards.py` format, kind "ode_pairs"): `states` (N, S + 1, C, F, H, W) — the states at the S student
σ (meta["sigmas"]) followed by the ODE endpoint x₀ — and `text` (N, L, D), the caption embedding used.
Resumable: shards already written are kept and generation continues at the next pair.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import sample_euler, step_sigmas, teacher_sigmas, with_cfg
from vidfx.train.checkpoint import load_weights
from vidfx.train.config import OdePairsConfig, to_dict
from vidfx.train.data import LatentDataset
from vidfx.train.distributed import pick_device
from vidfx.train.flow import null_text
from vidfx.train.shards import ShardReader, ShardWriter
from vidfx.train.trainer import step_generator


def merged_grid(num_steps: int, shift: float, keep: list[float]) -> list[float]:
    """Wan's shifted `num_steps` grid with the σ in `keep` inserted (decreasing, 1 → 0)."""
    grid = set(teacher_sigmas(num_steps, shift))
    for s in keep:
        if not any(abs(s - g) < 1e-9 for g in grid):
            grid.add(s)
    return sorted(grid, reverse=True)


@torch.no_grad()
def teacher_trajectory(
    teacher: CausalDiT,
    noise: torch.Tensor,
    text: torch.Tensor,
    grid: list[float],
    keep: list[float],
    guidance: float,
    chunk_frames: int | None = None,
) -> torch.Tensor:
    """(B, len(keep) + 1, C, F, H, W): the Euler states at each σ of `keep`, then the endpoint."""
    null = null_text(text)

    def velocity(ctx: torch.Tensor):
        def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
            t = torch.full((x.shape[0],), 1000.0 * sigma, device=x.device)
            return teacher(x, t, ctx, chunk_frames=chunk_frames)

        return v

    final, kept = sample_euler(with_cfg(velocity(text), velocity(null), guidance), noise, grid, keep_at=keep)
    return torch.stack([kept[s] for s in keep] + [final], dim=1)


def generate_ode_pairs(cfg: OdePairsConfig, teacher: CausalDiT | None = None) -> int:
    """Write (or continue writing) cfg.num_pairs ODE pairs to cfg.out; returns the number on disk."""
    device = pick_device(cfg.device)
    data = LatentDataset(cfg.latents)
    if teacher is None:
        teacher = CausalDiT(cfg.model.build())
        load_weights(teacher, cfg.teacher, role="teacher")
    teacher = teacher.to(device).eval().requires_grad_(False)
    sigmas = step_sigmas(cfg.student_steps, cfg.shift)
    grid = merged_grid(cfg.sample_steps, cfg.shift, sigmas)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "num_pairs", "device", "progress")}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    meta = {
        "fingerprint": fingerprint,
        "settings": settings,
        "sigmas": sigmas,
        "latent_shape": list(data.latent_shape),
        "text_shape": list(data.text_shape),
    }
    writer = ShardWriter(cfg.out, "ode_pairs", meta)
    shape = data.latent_shape
    bar = tqdm(
        total=cfg.num_pairs, initial=writer.done, desc="ode pairs", unit="pair", disable=not cfg.progress
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    while writer.done < cfg.num_pairs:
        first = writer.done
        ids = list(range(first, min(first + cfg.shard_size, cfg.num_pairs)))
        states, texts = [], []
        for b in range(0, len(ids), cfg.batch_size):
            chunk = ids[b : b + cfg.batch_size]
            noise, text = [], []
            for i in chunk:
                g_cpu = step_generator(cfg.seed, 0, i, torch.device("cpu"), stream=3)
                text.append(data.text([i % len(data)], g_cpu)[0])
                g = step_generator(cfg.seed, 0, i, device, stream=4)
                noise.append(torch.randn(shape, generator=g, device=device))
            ctx = torch.stack(text).to(device)
            with autocast:
                traj = teacher_trajectory(
                    teacher, torch.stack(noise), ctx, grid, sigmas, cfg.guidance, cfg.chunk_frames
                )
            states.append(traj.float().cpu())
            texts.append(ctx.cpu())
            bar.update(len(chunk))
        writer.write(
            {"states": torch.cat(states), "text": torch.cat(texts)},
            {"source_clip": [i % len(data) for i in ids]},
        )
    bar.close()
    return writer.done


class OdePairs:
    """Reader of an ODE-pair folder."""

    def __init__(self, folder: str | Path) -> None:
        self.reader = ShardReader(folder, "ode_pairs")
        self.sigmas = torch.tensor(self.reader.meta["sigmas"], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.reader.meta["latent_shape"])

    @property
    def text_shape(self) -> tuple[int, ...]:
        return tuple(self.reader.meta["text_shape"])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, S + 1, C, F, H, W), text (B, L, D)."""
        return self.reader.rows("states", indices).float(), self.reader.rows("text", indices).float()
