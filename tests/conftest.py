from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from vidfx.model import CausalDiT, DiTConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): many tiny
    convolutions, where a second thread only adds synchronisation (and the CI box has two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
