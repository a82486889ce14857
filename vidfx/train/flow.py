"""Flow-matching pieces shared by the stages: noise levels, per-chunk timesteps, the denoising loss.

Conventions are vidfx.sampling's: x_σ = (1 − σ)·x₀ + σ·ε, t = 1000·σ, the network predicts v = ε − x₀.
σ is either (B,) — one level per clip — or (B, F) — one level per latent frame, constant within a chunk
(diffusion forcing: CausVid trains its causal models with independent per-chunk noise levels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import shift_sigma


def sample_sigma(
    shape: tuple[int, ...],
    gen: torch.Generator,
    device: torch.device,
    mode: str = "shifted",
    shift: float = 8.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Training noise levels.

    "shifted" (default): u ~ U(0, 1), σ = shift·u / (1 + (shift − 1)·u). The Euler sampler walks σ = shift(1 −
    i/N), i.e. uniformly in u, so this spends training exactly where sampling spends its steps — at shift 8
    most of it at high noise, where a video's layout and motion are decided — and it is how CausVid draws
    its DMD/critic timesteps (uniform integer, then the shift). "logit_normal": σ = sigmoid(N(m, s)) (SD3),
    concentrated at mid noise; offered for comparison.
    """
    if mode == "shifted":
        u = torch.rand(shape, generator=gen, device=device)
        return shift_sigma(u, shift)  # type: ignore[return-value]
    if mode == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * torch.randn(shape, generator=gen, device=device))
    raise ValueError(f"sigma sampling must be 'shifted' or 'logit_normal', got {mode!r}")


def per_chunk(values: torch.Tensor, chunk_frames: int, frames: int) -> torch.Tensor:
    """(B, chunks) → (B, frames): each chunk's value repeated over its frames."""
    if frames % chunk_frames:
        raise ValueError(f"{frames} latent frames are not whole chunks of {chunk_frames}")
    if values.shape[1] != frames // chunk_frames:
        raise ValueError(f"got {values.shape[1]} chunk values for {frames // chunk_frames} chunks")
    return values.repeat_interleave(chunk_frames, dim=1)


def bcast(sigma: torch.Tensor) -> torch.Tensor:
    """σ (B,) or (B, F) → broadcastable over latents (B, C, F, H, W)."""
    if sigma.dim() == 1:
        return sigma.view(-1, 1, 1, 1, 1)
    return sigma.view(sigma.shape[0], 1, sigma.shape[1], 1, 1)


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = bcast(sigma)
    return (1 - s) * x0 + s * noise


def predict_x0(
    model: CausalDiT,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    text: torch.Tensor,
    chunk_frames: int | None,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """x₀ = x_σ − σ·v from a whole-clip forward (bidirectional, or block-causal with chunk_frames)."""
    v = model(x_t, 1000.0 * sigma, text, chunk_frames=chunk_frames, condition=condition)
    return x_t.float() - bcast(sigma) * v


def flow_loss(
    model: CausalDiT,
    x0: torch.Tensor,
    text: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    chunk_frames: int | None = None,
) -> torch.Tensor:
    """Flow-matching loss: mean ‖v_θ(x_σ, σ) − (ε − x₀)‖² (CausVid's `flow` denoising loss)."""
    v = model(noisy(x0, noise, sigma), 1000.0 * sigma, text, chunk_frames=chunk_frames)
    return F.mse_loss(v, noise - x0)


def null_text(text: torch.Tensor) -> torch.Tensor:
    """The unconditional prompt: zero embeddings (what a dropped caption trains)."""
    return torch.zeros_like(text)


def drop_text(text: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace each sample's embedding by the null prompt with probability p (CFG training)."""
    if p <= 0:
        return text
    keep = (torch.rand(text.shape[0], generator=gen, device=text.device) >= p).to(text.dtype)
    return text * keep.view(-1, 1, 1)
