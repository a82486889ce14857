"""Stage 4 — asymmetric distribution matching distillation (CausVid §4.2; DMD, Yin et al. 2024; DMD2).

Three networks:

* generator — the causal few-step student (block-causal, chunk_frames = k), trained;
* real score — the frozen teacher, bidirectional by default ("asymmetric": a bidirectional teacher
  distils a causal student), with classifier-free guidance in CausVid's form x̂_real = c + (c − u)·s on x₀
  predictions (c/u: with/without the caption; s = 3.5 equals the textbook u + 4.5·(c − u));
* fake score — a bidirectional copy of the teacher trained with the flow-matching loss on the generator's
  samples, so it tracks the score of the generator's own distribution.

Generator step (every `ratio`-th step): a generator sample x (with gradient), a noise level σ (uniform, then
shifted, then clamped to [t_min, t_max]/1000), x_σ = (1 − σ)·x + σ·ε, and the DMD direction

    g = (x̂_fake(x_σ) − x̂_real(x_σ)) / mean|x − x̂_real(x_σ)|      (DMD eq. 7 and 8; per-sample mean)

which is the gradient of KL(p_fake ‖ p_real) w.r.t. x up to a positive factor. It reaches the generator
through the usual trick: loss = ½·mean((x − stopgrad(x − g))²), whose gradient w.r.t. x is g / numel.
Critic step (every step): a generator sample without gradient, the same kind of σ, and the fake score's
flow-matching loss on it. The real score never trains; the fake score gets no gradient from the generator
step, the generator none from the critic step.

Generator input (`generator_input`):
* "noised_data" — CausVid's official setting (backward_simulation: false): clean latents (the ODE
  endpoints, or the latent cache) are noised to a student σ drawn per chunk and the generator maps them to
  x₀ in one block-causal forward;
* "rollout" — Self-Forcing's: the generator produces the clip chunk by chunk from noise through its own
  KV cache, exactly as at inference (few-step denoising per chunk, then a cache-write pass of the result at
  `context_sigma`). Each chunk stops at a random exit step (shared by all ranks, so FSDP's collectives line
  up); only that step carries gradient, the steps before it and the cache writes run without, so gradients
  do not flow through the cache into earlier chunks (Self-Forcing's truncation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import noise_to, shift_sigma, step_sigmas
from vidfx.train.config import DMDConfig
from vidfx.train.data import DataOrder, LatentDataset
from vidfx.train.distributed import Dist, autocast
from vidfx.train.flow import flow_loss, noisy, null_text, per_chunk, predict_x0
from vidfx.train.ode_pairs import OdePairs
from vidfx.train.shards import MANIFEST
from vidfx.train.teacher import check_text
from vidfx.train.trainer import Stage, build_network

# -- the DMD pieces, as functions --------------------------------------------------------------------------


def dmd_sigma(
    shape: tuple[int, ...],
    gen: torch.Generator,
    device: torch.device,
    shift: float,
    t_min: float,
    t_max: float,
) -> torch.Tensor:
    """CausVid's DMD/critic noise level: u ~ U(0, 1), shifted, then t = 1000·σ clamped to [t_min, t_max]."""
    u = torch.rand(shape, generator=gen, device=device)
    return (1000.0 * shift_sigma(u, shift)).clamp(t_min, t_max) / 1000.0  # type: ignore[operator]


def guided_x0(
    real: CausalDiT,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    guidance: float,
    chunk_frames: int | None,
) -> torch.Tensor:
    """The real score's x₀ with CFG in CausVid's form: cond + (cond − uncond)·guidance."""
    cond = predict_x0(real, x_t, sigma, text, chunk_frames)
    if guidance == 0:
        return cond
    uncond = predict_x0(real, x_t, sigma, null_text(text), chunk_frames)
    return cond + (cond - uncond) * guidance


def dmd_direction(x: torch.Tensor, fake_x0: torch.Tensor, real_x0: torch.Tensor) -> torch.Tensor:
    """(fake − real) normalised per sample by mean|x − real| (DMD eq. 8).

    A zero normaliser (x equal to the real score's x₀) makes the direction 0/0 or ±inf; those entries become 0
    — no information — where CausVid's `nan_to_num` turns ±inf into ±3.4e38 that only gradient clipping tames.
    """
    normaliser = (x - real_x0).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return torch.nan_to_num((fake_x0 - real_x0) / normaliser, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """½·mean((x − sg(x − g))²): its gradient w.r.t. x is g / x.numel()."""
    return 0.5 * F.mse_loss(x.double(), (x - direction).double().detach())


# -- generator sampling ------------------------------------------------------------------------------------


def generate_from_data(
    generator: CausalDiT,
    x0: torch.Tensor,
    text: torch.Tensor,
    sigmas: Sequence[float],
    chunk_frames: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Each chunk of x0 noised to a random σ of `sigmas`, then one block-causal x₀ prediction.

    CausVid's list also holds t = 0 (its chunks are fed clean and come back unchanged: context without
    gradient); here every chunk is drawn from the student's own σ, so every chunk is generated.
    """
    b, frames = x0.shape[0], x0.shape[2]
    idx = torch.randint(len(sigmas), (b, frames // chunk_frames), generator=gen, device=gen.device)
    sigma = per_chunk(torch.tensor(list(sigmas), device=x0.device)[idx.to(x0.device)], chunk_frames, frames)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    return predict_x0(generator, noisy(x0, noise, sigma), sigma, text, chunk_frames)


def rollout(
    generator: CausalDiT,
    start: torch.Tensor,
    text: torch.Tensor,
    sigmas: Sequence[float],
    chunk_frames: int,
    gen: torch.Generator,
    exits: Sequence[int] | None = None,
    context_sigma: float = 0.0,
    window_frames: int | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Chunk-by-chunk generation through the generator's KV cache; returns x₀ (B, C, F, H, W).

    start: the clip at sigmas[0] (B, C, F, H, W) — pure noise from σ = 1, or noised input latents for
    video-to-video — F a multiple of chunk_frames. `exits[c]`: the step index at which chunk c stops
    (default: the last — plain few-step inference); with `grad`, that step carries gradient. `window_frames`:
    the cache's window (default: the whole clip; smaller rolls it, for long-video evaluation).
    """
    b, _, frames, h, w = start.shape
    n_chunks = frames // chunk_frames
    if n_chunks * chunk_frames != frames:
        raise ValueError(f"{frames} latent frames are not whole chunks of {chunk_frames}")
    exits = list(exits) if exits is not None else [len(sigmas) - 1] * n_chunks
    cache = generator.new_kv_cache(b, h, w, window_frames=window_frames or frames)
    with torch.set_grad_enabled(grad):
        cross = generator.cross_attention_cache(text)
    outputs = []
    for c in range(n_chunks):
        x = start[:, :, c * chunk_frames : (c + 1) * chunk_frames]
        x0 = x
        for i in range(exits[c] + 1):
            with torch.set_grad_enabled(grad and i == exits[c]):
                t = torch.full((b,), 1000.0 * sigmas[i], device=x.device)
                x0 = x.float() - sigmas[i] * generator.forward_chunk(x, t, cross, cache, write_cache=False)
            if i < exits[c]:
                fresh = torch.randn(x0.shape, generator=gen, device=x0.device)
                x = noise_to(x0, fresh, sigmas[i + 1])
        outputs.append(x0)
        with torch.no_grad():
            ctx = x0.detach()
            if context_sigma > 0:
                ctx = noise_to(ctx, torch.randn(ctx.shape, generator=gen, device=ctx.device), context_sigma)
            t = torch.full((b,), 1000.0 * context_sigma, device=x.device)
            generator.forward_chunk(ctx, t, cross, cache, write_cache=True)
    return torch.cat(outputs, dim=2)


# -- the stage ---------------------------------------------------------------------------------------------


class DMDStage(Stage):
    name = "dmd"

    def __init__(self, cfg: DMDConfig, dist: Dist | None = None) -> None:
        super().__init__(cfg, cfg.run, dist)
        if cfg.generator_input not in ("noised_data", "rollout"):
            raise ValueError(f"generator_input must be noised_data or rollout, got {cfg.generator_input!r}")
        manifest = Path(cfg.data) / MANIFEST
        is_latents = manifest.exists() and json.loads(manifest.read_text())["kind"] == "latents"
        self.pairs: OdePairs | None = None
        self.latents: LatentDataset | None = None
        if is_latents:
            self.latents = LatentDataset(cfg.data)
        else:
            self.pairs = OdePairs(cfg.data)
        source = self.latents or self.pairs
        assert source is not None
        self.order = DataOrder(len(source), cfg.run.seed)
        seed = cfg.run.seed
        self.generator = build_network(cfg.model, self.device, seed, cfg.generator_init)
        self.real = self.add_frozen(build_network(cfg.model, self.device, seed, cfg.real_score, trainable=False))
        self.fake = build_network(cfg.model, self.device, seed, cfg.fake_score_init or cfg.real_score)
        check_text(source.text_shape, self.generator.cfg.text_dim, self.generator.cfg.text_len)
        self.add_trainable("generator", self.generator, cfg.optim, cfg.ema)
        self.add_trainable("fake_score", self.fake, cfg.critic_optim, None)
        self.sigmas = step_sigmas(cfg.student_steps, cfg.shift)

    # -- data -----------------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean latents (B, C, F, H, W) and caption embeddings (B, L, D) for this step and rank."""
        idx = self.order.indices(step, self.dist.rank, self.dist.world, self.run.batch_size)
        if self.pairs is not None:
            states, text = self.pairs.batch(idx)
            x0 = states[:, -1]
        else:
            assert self.latents is not None
            b = self.latents.batch(idx, self.data_generator_for(step))
            x0, text = b.latents, b.text
        return x0.to(self.device), text.to(self.device)

    # -- pieces ---------------------------------------------------------------------------------------
    def sample(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        gen: torch.Generator,
        shared: torch.Generator,
        grad: bool,
    ) -> torch.Tensor:
        """A generator sample for this batch (with gradient when `grad`)."""
        cfg: DMDConfig = self.cfg
        x0, text = batch
        with autocast(self.run, self.device), torch.set_grad_enabled(grad):
            if cfg.generator_input == "noised_data":
                return generate_from_data(self.generator, x0, text, self.sigmas, cfg.chunk_frames, gen)
            n_chunks = x0.shape[2] // cfg.chunk_frames
            exits = torch.randint(len(self.sigmas), (n_chunks,), generator=shared).tolist()
            noise = torch.randn(x0.shape, generator=gen, device=x0.device)
            return rollout(
                self.generator,
                noise,
                text,
                self.sigmas,
                cfg.chunk_frames,
                gen,
                exits,
                cfg.context_sigma,
                grad=grad,
            )

    def score_sigma(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """σ for the scores: one per clip (bidirectional scores) or one per chunk (causal scores)."""
        cfg: DMDConfig = self.cfg
        if cfg.score_chunk_frames is None:
            return dmd_sigma((x.shape[0],), gen, x.device, cfg.shift, cfg.t_min, cfg.t_max)
        n = x.shape[2] // cfg.score_chunk_frames
        sigma = dmd_sigma((x.shape[0], n), gen, x.device, cfg.shift, cfg.t_min, cfg.t_max)
        return per_chunk(sigma, cfg.score_chunk_frames, x.shape[2])

    def generator_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, shared: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: DMDConfig = self.cfg
        x = self.sample(batch, gen, shared, grad=True)
        text = batch[1]
        with torch.no_grad(), autocast(self.run, self.device):
            sigma = self.score_sigma(x, gen)
            x_t = noisy(x.detach(), torch.randn(x.shape, generator=gen, device=x.device), sigma)
            fake_x0 = predict_x0(self.fake, x_t, sigma, text, cfg.score_chunk_frames)
            real_x0 = guided_x0(self.real, x_t, sigma, text, cfg.guidance, cfg.score_chunk_frames)
            direction = dmd_direction(x.detach(), fake_x0, real_x0)
        loss = dmd_loss(x, direction)
        return loss, {"generator_loss": loss.item(), "dmd_direction": float(direction.abs().mean())}

    def critic_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, shared: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: DMDConfig = self.cfg
        with torch.no_grad():
            x = self.sample(batch, gen, shared, grad=False)
        sigma = self.score_sigma(x, gen)
        noise = torch.randn(x.shape, generator=gen, device=x.device)
        with autocast(self.run, self.device):
            loss = flow_loss(self.fake, x, batch[1], sigma, noise, cfg.score_chunk_frames)
        return loss, {"critic_loss": loss.item()}

    def generator_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, shared: torch.Generator
    ) -> dict[str, float]:
        loss, logs = self.generator_loss(batch, gen, shared)
        logs["generator_grad_norm"] = self.optimize("generator", loss, self.cfg.optim)
        self.update_emas()
        return logs

    def critic_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, shared: torch.Generator
    ) -> dict[str, float]:
        loss, logs = self.critic_loss(batch, gen, shared)
        logs["critic_grad_norm"] = self.optimize("fake_score", loss, self.cfg.critic_optim)
        return logs

    def train_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        """CausVid's schedule (train_distillation.py): the generator on steps divisible by `ratio`, then the
        critic on every step, each on the step's batch with its own draws."""
        batch = self.batch(step)
        shared = self.shared_generator_for(step)
        logs: dict[str, float] = {}
        if step % self.cfg.ratio == 0:
            logs.update(self.generator_step(batch, gen, shared))
        logs.update(self.critic_step(batch, gen, shared))
        return logs
