"""Flow-matching schedule and samplers."""

from __future__ import annotations

import math

import pytest
import torch

from vidfx.sampling import (
    noise_to,
    sample_euler,
    sample_few_step,
    sdedit_steps,
    shift_sigma,
    step_sigmas,
    teacher_sigmas,
    velocity_to_x0,
    with_cfg,
)


def test_step_warping_follows_the_shifted_schedule() -> None:
    # CausVid's warp: scheduler timesteps are 1000·σ(s), s on the unshifted grid, σ(s) = 8s / (1 + 7s).
    sigmas = step_sigmas([1000, 757, 522], shift=8.0)
    assert sigmas[0] == 1.0
    assert math.isclose(sigmas[1], 8 * 0.757 / (1 + 7 * 0.757))
    assert math.isclose(sigmas[2] * 1000, 897.3, abs_tol=0.1)
    assert step_sigmas([500], shift=1.0) == [0.5]
    assert step_sigmas([1000, 757, 522], warp=False) == [1.0, 0.757, 0.522]
    with pytest.raises(ValueError, match="decreasing"):
        step_sigmas([500, 700])
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(0.5, 0.0)


def test_sdedit_keeps_the_steps_at_or_below_the_strength() -> None:
    assert sdedit_steps([1000, 750, 500, 250], 0.7) == [500, 250]
    assert sdedit_steps([1000, 750, 500, 250], 0.75) == [750, 500, 250]
    assert sdedit_steps([1000, 750], 1.0) == [1000, 750]
    with pytest.raises(ValueError, match="below every step"):
        sdedit_steps([1000, 750], 0.5)
    with pytest.raises(ValueError, match="strength"):
        sdedit_steps([1000], 0.0)


def test_euler_integrates_an_exact_flow_to_its_endpoint() -> None:
    x0 = torch.randn(3, 4)
    eps = torch.randn(3, 4)
    sigmas = teacher_sigmas(50)
    kept_at = step_sigmas([1000, 757, 522])

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return eps - x0  # the straight-line flow from x0 to eps

    out, kept = sample_euler(velocity, noise_to(x0, eps, 1.0), sigmas, keep_at=kept_at)
    assert torch.allclose(out, x0, atol=1e-5)
    assert set(kept) == set(kept_at)
    for sigma, state in kept.items():
        grid = max(s for s in sigmas if s <= sigma + 1e-9)
        assert torch.allclose(state, noise_to(x0, eps, grid), atol=1e-5)


def test_few_step_sampling_with_a_perfect_denoiser_returns_the_target() -> None:
    x0 = torch.randn(2, 5)
    calls = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return x0

    out = sample_few_step(denoise, torch.randn(2, 5), step_sigmas([1000, 750, 500, 250]))
    assert torch.equal(out, x0)
    assert calls == step_sigmas([1000, 750, 500, 250])


def test_velocity_to_x0_inverts_the_forward_process() -> None:
    x0, eps = torch.randn(4), torch.randn(4)
    x_t = noise_to(x0, eps, 0.3)
    assert torch.allclose(velocity_to_x0(x_t, eps - x0, 0.3), x0, atol=1e-6)


def test_cfg_combines_as_uncond_plus_scaled_difference() -> None:
    def cond(x: torch.Tensor, s: float) -> torch.Tensor:
        return torch.full_like(x, 2.0)

    def uncond(x: torch.Tensor, s: float) -> torch.Tensor:
        return torch.full_like(x, 1.0)

    assert with_cfg(cond, uncond, 3.5)(torch.zeros(1), 0.5).item() == 1.0 + 3.5 * 1.0
    assert with_cfg(cond, uncond, 1.0)(torch.zeros(1), 0.5).item() == 2.0
