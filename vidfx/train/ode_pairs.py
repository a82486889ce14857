"""Stage 2 — ODE pairs: the teacher's deterministic trajectories, kept at the student's noise levels.

For pair i: a caption (a random one of clip i mod N of the latent cache) and noise ε_i, both drawn from a
generator seeded with (seed, i) — so a pair does not depend on how many processes share the work or on
where a killed run resumed (nor on batching, up to the rounding of differently shaped matmuls). The
teacher integrates the flow ODE with Euler steps and CFG (`sample_euler` + `with_cfg`, v_u + s·(v_c − v_u),
null prompt = zero embeddings) from σ = 1 to 0 over Wan's shifted grid, with the student's σ list merged
into the grid so the kept states sit exactly at the student's levels. CausVid (generate_ode_pairs.py)
integrates 50 steps with guidance 6 and keeps the states at its steps [1000, 757, 522] plus the endpoint.

Output (`shards.py` format, kind "ode_pairs"): `states` (N, S + 1, C, F, H, W) — the states at the S student
σ (meta["sigmas"]) followed by the ODE endpoint x₀ — and `text` (N, L, D), the caption embedding used.
Under torchrun, process r writes the pairs i ≡ r (mod world) into `out/part-r` (see `generate_ode_pairs`).
Resumable: shards already written are kept and generation continues at the next pair.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from vidfx.train.shards import MANIFEST, ShardReader, ShardWriter
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
    """Write (or continue writing) cfg.num_pairs ODE pairs to cfg.out; returns the number this process holds.

    Under `torchrun` (WORLD_SIZE > 1) process r generates the pairs i ≡ r (mod world) into `out/part-r`,
    with no communication; `OdePairs` reads the parts as one set. Pair i is the same in any layout.
    """
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    data = LatentDataset(cfg.latents)
    if teacher is None:
        teacher = CausalDiT(cfg.model.build())
        load_weights(teacher, cfg.teacher, role="teacher")
    teacher = teacher.to(device).eval().requires_grad_(False)
    sigmas = step_sigmas(cfg.student_steps, cfg.shift)
    grid = merged_grid(cfg.sample_steps, cfg.shift, sigmas)
    layout_only = ("out", "num_pairs", "device", "progress", "batch_size", "shard_size")
    settings = {k: v for k, v in to_dict(cfg).items() if k not in layout_only}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    meta = {
        "fingerprint": fingerprint,
        "settings": settings,
        "sigmas": sigmas,
        "latent_shape": list(data.latent_shape),
        "text_shape": list(data.text_shape),
    }
    out = Path(cfg.out) / f"part-{rank}" if world > 1 else Path(cfg.out)
    writer = ShardWriter(out, "ode_pairs", meta)
    mine = list(range(rank, cfg.num_pairs, world))
    shape = data.latent_shape
    bar = tqdm(total=len(mine), initial=writer.done, desc="ode pairs", unit="pair", disable=not cfg.progress)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    while writer.done < len(mine):
        ids = mine[writer.done : writer.done + cfg.shard_size]
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
            {"pair_index": ids, "source_clip": [i % len(data) for i in ids]},
        )
    bar.close()
    return writer.done


class OdePairs:
    """Reader of an ODE-pair folder, or of the `part-*` folders a multi-process run wrote."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        parts = [folder] if (folder / MANIFEST).exists() else sorted(folder.glob("part-*"))
        if not parts:
            raise FileNotFoundError(f"{folder}: no {MANIFEST} and no part-* folders (not an ODE-pair folder)")
        self.readers = [ShardReader(p, "ode_pairs") for p in parts]
        prints = {r.meta["fingerprint"] for r in self.readers}
        if len(prints) != 1:
            raise ValueError(f"{folder}: its parts were generated with different settings")
        self.meta = self.readers[0].meta
        self.sigmas = torch.tensor(self.meta["sigmas"], dtype=torch.float32)
        self._where = [(r, i) for r in self.readers for i in range(len(r))]

    def __len__(self) -> int:
        return len(self._where)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["latent_shape"])

    @property
    def text_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["text_shape"])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, S + 1, C, F, H, W), text (B, L, D)."""
        rows = [self._where[i] for i in indices]
        states = torch.stack([r.row("states", i) for r, i in rows]).float()
        return states, torch.stack([r.row("text", i) for r, i in rows]).float()
