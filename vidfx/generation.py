"""Chunk-level generation with the causal DiT: the one place where model, cache and sampler meet.

`denoise_chunk` is the unit the streaming engine, `vidfx run`, `vidfx generate` and the benchmarks share:
few-step sampling of one chunk against the stream's KV cache, then one more forward of the clean result at
the context-noise level to write the cache (CausVid's inference loop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidfx.model.kv_cache import CrossAttnCache, KVCache
from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import Denoiser, noise_to, sample_few_step, velocity_to_x0


def chunk_denoiser(
    model: CausalDiT,
    cross: CrossAttnCache,
    cache: KVCache,
    condition: torch.Tensor | None = None,
    timesteps: dict[float, float] | None = None,
) -> Denoiser:
    """A `denoise(x_t, sigma) -> x0` over one chunk that reads (never writes) the cache. condition: the
    chunk's condition channels (a source-conditioned DiT's clean input latent; None: zeros). timesteps: the t
    fed for a σ where it is not 1000·σ (CausVid feeds t = 757 at σ 0.756757, `sampling.chunk_schedule`)."""

    def denoise(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        t_value = (timesteps or {}).get(sigma, 1000.0 * sigma)
        t = torch.full((x_t.shape[0],), t_value, device=x_t.device)
        v = model.forward_chunk(x_t, t, cross, cache, write_cache=False, condition=condition)
        return velocity_to_x0(x_t.float(), v, sigma)

    return denoise


@torch.no_grad()
def denoise_chunk(
    model: CausalDiT,
    x: torch.Tensor,
    sigmas: Sequence[float],
    cross: CrossAttnCache,
    cache: KVCache,
    generator: torch.Generator | None = None,
    context_sigma: float = 0.0,
    condition: torch.Tensor | None = None,
    timesteps: Sequence[float] | None = None,
) -> torch.Tensor:
    """Few-step denoise one chunk x (B, C, F, H, W), already noised to sigmas[0]; write it into the cache.

    context_sigma: noise level of the cache-write pass (CausVid writes clean latents, σ = 0; a small
    positive value makes the model robust to its own errors, as in Self-Forcing's "context noise").
    condition: see `chunk_denoiser`; the cache write gets it too. timesteps: the t fed at each σ (default 1000·σ).
    Returns the clean latents x₀ (B, C, F, H, W) in fp32.
    """
    pairs = dict(zip(sigmas, timesteps, strict=True)) if timesteps is not None else None
    x0 = sample_few_step(chunk_denoiser(model, cross, cache, condition, pairs), x, sigmas, generator)
    write_context(model, x0, cross, cache, generator, context_sigma, condition)
    return x0


@torch.no_grad()
def write_context(
    model: CausalDiT,
    x0: torch.Tensor,
    cross: CrossAttnCache,
    cache: KVCache,
    generator: torch.Generator | None = None,
    context_sigma: float = 0.0,
    condition: torch.Tensor | None = None,
) -> None:
    """Append clean latents x0 (B, C, F, H, W) to the stream's KV cache as context for the chunks after them:
    a denoised chunk, or a given image's latent (CausVid's zero-shot image-to-video)."""
    ctx = x0
    if context_sigma > 0:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        ctx = noise_to(x0, noise, context_sigma)
    t = torch.full((x0.shape[0],), 1000.0 * context_sigma, device=x0.device)
    model.forward_chunk(ctx, t, cross, cache, write_cache=True, condition=condition)
