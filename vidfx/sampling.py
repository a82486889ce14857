"""Flow-matching noise schedule and samplers, as pure functions over tensors (k-diffusion style).

Conventions (Wan / CausVid): x_t = (1 − σ)·x₀ + σ·ε, the network takes t = 1000·σ and predicts the velocity
v = ε − x₀, so x₀ = x_t − σ·v. A "denoiser" below is any callable `denoise(x_t, sigma) -> x0_hat`.

Step lists are given as CausVid writes them — integers on the *unshifted* 0…1000 grid, e.g. `[1000, 757, 522]`
— and warped through the shifted schedule σ(s) = shift·s / (1 + (shift − 1)·s), s = step/1000, exactly as
CausVid's `warp_denoising_step` indexes its scheduler's shifted timesteps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, sigma) -> x0 estimate
Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t, sigma) -> v estimate

CAUSVID_STEPS = (1000, 757, 522)  # CausVid's 3-step default (configs/wan_causal_dmd.yaml)
FOUR_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 8.0  # CausVid's timestep_shift


def shift_sigma(s: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    """Wan/SD3 shifted schedule: σ = shift·s / (1 + (shift − 1)·s) for s ∈ [0, 1]."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def step_sigmas(steps: Sequence[int], shift: float = DEFAULT_SHIFT, warp: bool = True) -> list[float]:
    """σ for each entry of a step list on the 0…1000 grid (strictly decreasing, in (0, 1]).

    warp=True maps each step through the shifted schedule (CausVid's `warp_denoising_step: true`);
    warp=False reads the steps as 1000·σ directly — what CausVid's released Wan config does with its
    `[1000, 757, 522]` (`warp_denoising_step: false`), so pass warp=False to reproduce its levels.
    """
    if not steps:
        raise ValueError("step list is empty")
    if any(not 0 < s <= 1000 for s in steps) or any(a <= b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"steps must be strictly decreasing integers in (0, 1000], got {list(steps)}")
    if not warp:
        return [s / 1000.0 for s in steps]
    return [float(shift_sigma(s / 1000.0, shift)) for s in steps]


def sdedit_steps(steps: Sequence[int], strength: float) -> list[int]:
    """The steps a video-to-video pass runs at `strength` ∈ (0, 1]: those at or below strength·1000.

    strength 1 is text-to-video from pure noise; lower keeps more of the input.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    kept = [s for s in steps if s <= strength * 1000 + 1e-9]
    if not kept:
        raise ValueError(f"strength {strength} is below every step of {list(steps)}: nothing to denoise")
    return kept


def chunk_sigmas(steps: Sequence[int], strength: float, shift: float = DEFAULT_SHIFT) -> list[float]:
    """σ of each denoising step of a chunk at `strength` ∈ (0, 1].

    The input latent is noised to σ(strength); the grid steps below strength·1000 follow. At a strength on the
    grid this is exactly the grid's tail (SDEdit on the distilled steps); in between it starts continuously,
    which lets strength (and the motion-aware controller) move smoothly instead of in step-sized jumps.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    start = strength * 1000.0
    below = [s for s in steps if s < start - 1e-6]
    return [float(shift_sigma(strength, shift))] + [float(shift_sigma(s / 1000.0, shift)) for s in below]


def teacher_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> list[float]:
    """Wan's many-step sampling grid: num_steps+1 shifted σ from 1 down to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    return [float(shift_sigma(1 - i / num_steps, shift)) for i in range(num_steps + 1)]


def noise_to(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The forward process: x_σ = (1 − σ)·x₀ + σ·ε (σ broadcasts)."""
    return (1 - sigma) * x0 + sigma * noise


def velocity_to_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return x_t - sigma * v


def sample_few_step(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DMD/consistency few-step sampling (Yin et al., DMD2; CausVid inference): denoise to x₀ at each σ,
    then re-noise x₀ with fresh noise to the next σ. `x` is already at sigmas[0]; returns the last x₀.
    """
    x0 = x
    for i, sigma in enumerate(sigmas):
        x0 = denoise(x, sigma)
        if i + 1 < len(sigmas):
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x = noise_to(x0, noise, sigmas[i + 1])
    return x0


def sample_euler(
    velocity: Velocity, x: torch.Tensor, sigmas: Sequence[float], keep_at: Sequence[float] = ()
) -> tuple[torch.Tensor, dict[float, torch.Tensor]]:
    """Deterministic Euler integration of the flow ODE dx/dσ = v (Lipman et al., flow matching).

    Returns the final sample and the states reached at each σ in `keep_at` (nearest grid point at or
    below it) — the ODE trajectory pairs CausVid's student initialisation regresses on.
    """
    kept: dict[float, torch.Tensor] = {}
    pending = sorted(keep_at, reverse=True)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        while pending and sigma <= pending[0] + 1e-9:
            kept[pending.pop(0)] = x
        x = x + (sigma_next - sigma) * velocity(x, sigma)
    return x, kept


def with_cfg(cond: Velocity, uncond: Velocity, scale: float) -> Velocity:
    """Classifier-free guidance in the form v_u + s·(v_c − v_u) (Ho & Salimans)."""

    def guided(x: torch.Tensor, sigma: float) -> torch.Tensor:
        v_c = cond(x, sigma)
        if scale == 1.0:
            return v_c
        v_u = uncond(x, sigma)
        return v_u + scale * (v_c - v_u)

    return guided


# -- release samplers: which σ a step list runs at, and which t the network is fed ---------------------------

SCHEDULER_STEPS = 1000  # the training grid of CausVid / Self-Forcing's FlowMatchScheduler(set_timesteps(1000))


def scheduler_grid(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas), each (1000,) float64: the grid of CausVid's and Self-Forcing's `FlowMatchScheduler`
    (shift, sigma_min=0, extra_one_step=True): s = 1000 points from 1 down to 1/1000, σ = shifted s, t = 1000·σ."""
    s = torch.linspace(1.0, 0.0, SCHEDULER_STEPS + 1, dtype=torch.float64)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas * 1000.0, sigmas


def nearest_scheduler_sigma(t: float, shift: float) -> float:
    """σ the official scheduler uses for a timestep t: that of its grid timestep nearest to t (`add_noise` and
    `_convert_flow_pred_to_x0` both look σ up this way), e.g. t = 757 at shift 8 → 0.756757…"""
    timesteps, sigmas = scheduler_grid(shift)
    return float(sigmas[int(torch.argmin((timesteps - t).abs()))])


def chunk_schedule(
    steps: Sequence[int], strength: float, shift: float = DEFAULT_SHIFT, warp: bool = True, pairing: str = "exact"
) -> list[tuple[float, float]]:
    """(t, σ) of each denoising step of a chunk at `strength` ∈ (0, 1]: t is what the DiT is fed, σ what the
    latent is noised to and converted with.

    warp=True (Self-Forcing, LongLive, our default model): steps and strength go through the shifted schedule,
    σ = shift_sigma(step/1000), and t = 1000·σ (the warped list indexes the scheduler's own timesteps).
    warp=False (CausVid, StreamDiffusionV2): t is the step itself; σ is t/1000 (pairing "exact") or, as the
    official code does (pairing "scheduler"), the σ of the scheduler's grid timestep nearest to t.
    The first entry starts at strength continuously (t = 1000·strength before warping); the grid steps below
    it follow, so live strength control moves smoothly inside any profile.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if pairing not in ("exact", "scheduler"):
        raise ValueError(f"pairing must be 'exact' or 'scheduler', got {pairing!r}")
    start = strength * 1000.0
    grid = [start] + [float(s) for s in steps if s < start - 1e-6]
    out = []
    for step in grid:
        if warp:
            sigma = float(shift_sigma(step / 1000.0, shift))
            out.append((1000.0 * sigma, sigma))
        else:
            sigma = nearest_scheduler_sigma(step, shift) if pairing == "scheduler" else step / 1000.0
            out.append((step, sigma))
    return out
