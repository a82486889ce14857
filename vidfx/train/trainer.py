"""The loop every training stage shares: steps, per-step randomness, checkpoints, resume, progress, plots.

A stage subclasses `Stage`, builds its networks/optimisers in `__init__` and registers them in
`self.models` (saved, by role), `self.emas` and `self.optimizers`, and implements `train_step(step, gen)`
returning its losses as floats. `fit()` then runs steps `self.step … run.steps − 1`, saving every
`run.save_every` steps and at the end; a new `Stage` on the same run folder resumes from its newest
checkpoint.

Randomness: step s on rank r draws everything (batch order aside, which is `DataOrder`'s) from a generator
seeded with (seed, r, s) — `step_generator`. A resumed run therefore draws exactly the noise, timesteps and
captions the uninterrupted run would have drawn, and its next loss is bitwise the same. The checkpoint also
holds torch's global RNG state for anything outside the stage's own generator.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vidfx.model.wan_dit import CausalDiT
from vidfx.train.checkpoint import EMA, latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from vidfx.train.config import EMAConfig, ModelSpec, OptimConfig, RunConfig, save_resolved
from vidfx.train.distributed import Dist, enable_gradient_checkpointing, prepare, setup, sync_gradients


def make_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)


def clip_and_step(module: nn.Module, opt: torch.optim.Optimizer, cfg: OptimConfig, dist: Dist) -> float:
    """Average gradients over ranks (DDP), clip the global grad norm (cfg.grad_clip, 0 = off), step, zero
    grads; returns the pre-clip norm."""
    sync_gradients(module, dist)
    params = [p for p in module.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


def step_generator(seed: int, rank: int, step: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """The generator of one (seed, rank, step, stream). Streams separate uses that must not share draws
    (e.g. data on the CPU vs noise on the GPU, or draws every rank must agree on: use rank = -1)."""
    g = torch.Generator(device=device)
    g.manual_seed((((seed * 1_000_003 + rank + 1) * 1_000_033 + step) * 97 + stream) % (2**63 - 1))
    return g


class Stage:
    """Base of a training stage (see the module docstring)."""

    name = "stage"

    def __init__(self, cfg: Any, run: RunConfig, dist: Dist | None = None) -> None:
        self.cfg, self.run = cfg, run
        self.dist = dist or setup(run)
        self.device = self.dist.device
        self.out = Path(run.out)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.models: dict[str, nn.Module] = {}  # role → raw module (saved as "<role>.<param>")
        self.emas: dict[str, EMA] = {}  # role → EMA of models[role]
        self.optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}

    # -- to implement ---------------------------------------------------------------------------------
    def train_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------------
    def generator_for(self, step: int) -> torch.Generator:
        return step_generator(self.run.seed, self.dist.rank, step, self.device)

    def data_generator_for(self, step: int) -> torch.Generator:
        """CPU generator for the data side of a step (caption choice)."""
        return step_generator(self.run.seed, self.dist.rank, step, torch.device("cpu"), stream=1)

    def shared_generator_for(self, step: int) -> torch.Generator:
        """CPU generator every rank seeds alike: for choices that must agree across ranks (how many forward
        calls a rollout makes: FSDP's collectives must line up)."""
        return step_generator(self.run.seed, -1, step, torch.device("cpu"), stream=2)

    def resume(self) -> bool:
        """Load the run folder's newest checkpoint, if any. Returns whether one was loaded."""
        path = latest_checkpoint(self.out)
        if path is None:
            return False
        meta = load_checkpoint(path, self.models, self.emas, self.optimizers)
        if meta.get("stage") != self.name:
            raise ValueError(f"{path}: a {meta.get('stage')!r} checkpoint, not {self.name!r}")
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        return True

    def save(self) -> Path:
        extra = {"stage": self.name, "seed": self.run.seed, "history": self.history}
        return save_checkpoint(
            self.out,
            self.step,
            self.dist,
            self.models,
            self.emas,
            self.optimizers,
            extra,
            self.run.keep_checkpoints,
        )

    def add_trainable(self, role: str, model: CausalDiT, optim: OptimConfig, ema: EMAConfig | None) -> None:
        """Register a trained network: gradient checkpointing, sharding/replication, optimiser, EMA."""
        if self.run.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        prepare(model, self.dist)
        self.models[role] = model
        self.optimizers[role] = (model, make_optimizer(model, optim))
        if ema is not None and ema.decay > 0:
            self.emas[role] = EMA(model, ema.decay, ema.start_step)

    def add_frozen(self, model: CausalDiT) -> CausalDiT:
        """A network that is only evaluated (sharded under FSDP, replicated otherwise)."""
        return prepare(model, self.dist)

    def optimize(self, role: str, loss: torch.Tensor, cfg: OptimConfig) -> float:
        """Backward `loss` into network `role`, clip, step, zero; returns the gradient norm."""
        module, opt = self.optimizers[role]
        loss.backward()
        return clip_and_step(module, opt, cfg, self.dist)

    def update_emas(self) -> None:
        for role, ema in self.emas.items():
            ema.update(self.models[role], self.step + 1)

    def fit(self, steps: int | None = None) -> list[dict[str, float]]:
        """Train until `steps` (default run.steps) steps are done. A stage that has not stepped yet first
        resumes from the run folder's newest checkpoint, if any."""
        end = self.run.steps if steps is None else steps
        if self.dist.is_main:
            save_resolved(self.cfg, self.out)
        if self.step == 0 and not self.history:
            self.resume()
        bar = tqdm(
            total=end,
            initial=self.step,
            desc=self.name,
            disable=not (self.run.progress and self.dist.is_main),
        )
        while self.step < end:
            logs = self.train_step(self.step, self.generator_for(self.step))
            logs = {k: self.dist.mean(v) for k, v in logs.items()}
            self.history.append({"step": float(self.step), **logs})
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            last = self.step == end
            if self.step % self.run.save_every == 0 or last:
                self.save()
            if self.dist.is_main and (self.step % self.run.plot_every == 0 or last):
                write_losses(self.history, self.out)
        bar.close()
        return self.history


def write_losses(history: list[Mapping[str, float]], out: str | Path) -> None:
    """losses.csv and losses.png (one panel per loss, raw and smoothed) in `out`."""
    if not history:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for h in history for k in h if k != "step"})
    with open(out / "losses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *keys])
        for h in history:
            w.writerow([int(h["step"]), *[h.get(k, "") for k in keys]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        pts = [(h["step"], h[key]) for h in history if key in h and math.isfinite(h[key])]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, lw=0.6, alpha=0.4, label="raw")
        k = max(1, len(ys) // 20)
        smooth = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, lw=1.4, label=f"mean of {k}")
        ax.set_ylabel(key)
        if min(ys) > 0 and max(ys) / min(ys) > 50:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)
    plt.close(fig)


def build_network(
    spec: ModelSpec,
    device: torch.device,
    seed: int,
    init: str = "",
    role: str | None = None,
    trainable: bool = True,
) -> CausalDiT:
    """A DiT from its spec: seeded initialisation (identical on every rank), or `init`'s weights
    (`read_weights`: a run/checkpoint folder or a safetensors file), on `device`, frozen unless trainable."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalDiT(spec.build())
    if init:
        load_weights(model, init, role=role)
    model.to(device)
    model.requires_grad_(trainable)
    if not trainable:
        model.eval()
    return model
