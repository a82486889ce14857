"""Stage 1 — the teacher: flow-matching training of the DiT on the latent cache, with caption dropout for CFG.

Loss: σ from `sample_sigma` (the shifted schedule by default — see there why), x_σ = (1 − σ)·x₀ + σ·ε, and
the network regresses the velocity ε − x₀. Captions are replaced by the null prompt (zero embeddings) with
probability `text_dropout`, so the same network gives the unconditional velocity for classifier-free
guidance. With `chunk_frames` the teacher is block-causal and each chunk draws its own σ (diffusion forcing),
the "causal teacher" of CausVid's ablation; otherwise it is bidirectional with one σ per clip.
"""

from __future__ import annotations

import torch

from vidfx.train.config import TeacherConfig
from vidfx.train.data import Batch, DataOrder, LatentDataset
from vidfx.train.distributed import Dist, autocast
from vidfx.train.flow import drop_text, flow_loss, per_chunk, sample_sigma
from vidfx.train.trainer import Stage, build_network


class TeacherStage(Stage):
    name = "teacher"

    def __init__(self, cfg: TeacherConfig, dist: Dist | None = None) -> None:
        super().__init__(cfg, cfg.run, dist)
        self.data = LatentDataset(cfg.latents)
        self.order = DataOrder(len(self.data), cfg.run.seed)
        model = build_network(cfg.model, self.device, cfg.run.seed, cfg.init)
        check_text(self.data.text_shape, model.cfg.text_dim, model.cfg.text_len)
        self.model = model
        self.add_trainable("teacher", model, cfg.optim, cfg.ema)

    def batch(self, step: int) -> Batch:
        idx = self.order.indices(step, self.dist.rank, self.dist.world, self.run.batch_size)
        return self.data.batch(idx, self.data_generator_for(step)).to(self.device)

    def loss(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        cfg: TeacherConfig = self.cfg
        x0 = batch.latents
        b, frames = x0.shape[0], x0.shape[2]
        if cfg.chunk_frames is None:
            shape: tuple[int, ...] = (b,)
        else:
            shape = (b, frames // cfg.chunk_frames)
        sigma = sample_sigma(shape, gen, x0.device, cfg.sigma_sampling, cfg.shift, cfg.logit_mean, cfg.logit_std)
        if cfg.chunk_frames is not None:
            sigma = per_chunk(sigma, cfg.chunk_frames, frames)  # (B, F)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        text = drop_text(batch.text, cfg.text_dropout, gen)
        with autocast(self.run, self.device):
            return flow_loss(self.model, x0, text, sigma, noise, cfg.chunk_frames)

    def train_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        loss = self.loss(self.batch(step), gen)
        norm = self.optimize("teacher", loss, self.cfg.optim)
        self.update_emas()
        return {"loss": loss.item(), "grad_norm": norm}


def check_text(text_shape: tuple[int, ...], text_dim: int, text_len: int) -> None:
    """The cached embeddings must fit the DiT's text input."""
    if text_shape[-1] != text_dim or text_shape[0] > text_len:
        raise ValueError(
            f"cached text embeddings are {tuple(text_shape)} (tokens, dim); the DiT takes up to {text_len} "
            f"tokens of dim {text_dim} — encode with the matching text encoder"
        )
