"""Stage 3 — student initialisation by ODE regression (CausVid §4.3, causvid/ode_regression.py).

The student is the teacher's network run block-causally (chunk_frames = k), starting from the teacher's
weights. For each ODE pair it sees, chunk by chunk, one of the pair's states — the kept states at the
student's σ list, or the clean endpoint (σ = 0) — and regresses the ODE endpoint with its x₀ prediction
x_σ − σ·v. The state index is drawn independently per chunk (diffusion forcing: t has shape (B, F), constant
within a chunk), as CausVid's `_process_timestep("causal_video")` does; chunks drawn at the endpoint are clean
context for later chunks and carry no loss (CausVid masks timestep == 0 out of its MSE).
"""

from __future__ import annotations

from typing import Any

import torch

from vidfx.model.wan_dit import CausalDiT
from vidfx.train.config import StudentInitConfig
from vidfx.train.data import DataOrder
from vidfx.train.distributed import Dist, autocast
from vidfx.train.flow import per_chunk, predict_x0
from vidfx.train.ode_pairs import OdePairs
from vidfx.train.teacher import check_text
from vidfx.train.trainer import Stage, build_network


def regression_inputs(
    states: torch.Tensor,
    sigmas: torch.Tensor,
    chunk_frames: int,
    gen: torch.Generator,
    independent: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one state per chunk: returns x (B, C, F, H, W) and σ (B, F) (0 where the endpoint was picked).

    states: (B, S + 1, C, F, H, W) — S noisy states at `sigmas` (S,), then the endpoint.
    """
    b, s1, c, frames, h, w = states.shape
    n_chunks = frames // chunk_frames
    shape = (b, n_chunks) if independent else (b, 1)
    idx = torch.randint(s1, shape, generator=gen, device=gen.device).to(states.device)
    if not independent:
        idx = idx.expand(b, n_chunks)
    idx = per_chunk(idx, chunk_frames, frames)  # (B, F)
    gather = idx.view(b, 1, 1, frames, 1, 1).expand(b, 1, c, frames, h, w)
    x = torch.gather(states, 1, gather).squeeze(1)  # (B, C, F, H, W)
    levels = torch.cat([sigmas.to(states.device), torch.zeros(1, device=states.device)])
    return x, levels[idx]


def chunk_mse(x0: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Mean ‖x₀ − target‖² over the frames with σ > 0 (σ (B, F)); σ = 0 frames are clean context: they carry
    no loss, as CausVid masks timestep 0 out of its MSE."""
    per_frame = (x0 - target).pow(2).mean(dim=(1, 3, 4))  # (B, F)
    mask = (sigma > 0).float()
    return (per_frame * mask).sum() / mask.sum().clamp_min(1.0)


class RegressionStage(Stage):
    """A stage whose generator regresses clean latents from per-chunk noised inputs (ODE init, paired V2V):
    subclasses build `self.model`, `batch(step)` and `loss(batch, gen)` on top of `regression_loss`."""

    model: CausalDiT

    def loss(self, batch: Any, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, step: int) -> Any:
        raise NotImplementedError

    def predict(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        chunk_frames: int,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The generator's block-causal x₀ prediction x − σ·v (with gradient)."""
        with autocast(self.run, self.device):
            return predict_x0(self.model, x, sigma, text, chunk_frames, condition)

    def regression_loss(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        target: torch.Tensor,
        chunk_frames: int,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return chunk_mse(self.predict(x, sigma, text, chunk_frames, condition), target, sigma)

    def train_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        loss = self.loss(self.batch(step), gen)
        norm = self.optimize("generator", loss, self.cfg.optim)
        self.update_emas()
        return {"loss": loss.item(), "grad_norm": norm}


class StudentInitStage(RegressionStage):
    name = "student_init"

    def __init__(self, cfg: StudentInitConfig, dist: Dist | None = None) -> None:
        super().__init__(cfg, cfg.run, dist)
        self.pairs = OdePairs(cfg.pairs)
        self.order = DataOrder(len(self.pairs), cfg.run.seed)
        model = build_network(cfg.model, self.device, cfg.run.seed, cfg.init)
        check_text(self.pairs.text_shape, model.cfg.text_dim, model.cfg.text_len)
        self.model = model
        self.add_trainable("generator", model, cfg.optim, cfg.ema)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.indices(step, self.dist.rank, self.dist.world, self.run.batch_size)
        states, text = self.pairs.batch(idx)
        return states.to(self.device), text.to(self.device)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        cfg: StudentInitConfig = self.cfg
        states, text = batch
        target = states[:, -1]
        x, sigma = regression_inputs(states, self.pairs.sigmas, cfg.chunk_frames, gen, cfg.independent_chunks)
        return self.regression_loss(x, sigma, text, target, cfg.chunk_frames)
