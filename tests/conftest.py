from __future__ import annotations

import pytest
import torch

from vidfx.model import CausalDiT, DiTConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomized_dit(cfg: DiTConfig, std: float = 0.05) -> CausalDiT:
    """A DiT with every weight random (the zero-initialised head would make outputs constant)."""
    model = CausalDiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


@pytest.fixture
def tiny_dit() -> CausalDiT:
    return randomized_dit(DiTConfig.preset("tiny"))
