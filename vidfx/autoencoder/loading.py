"""Building, saving and loading autoencoders — safetensors only, through `vidfx.weights`.

The architecture is read off the tensors themselves (names say which network, shapes give its widths), so
the official Wan VAE converted with `vidfx convert Wan2.1_VAE.pth wan_vae.safetensors`, the Wan 2.1 TAEHV
converted with `vidfx convert taew2_1.pth taew2_1.safetensors`, a reduced-width Wan VAE and tiny-autoencoder
files written by `save_autoencoder` or by training all load the same way.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidfx.autoencoder.base import VideoAutoencoder
from vidfx.autoencoder.tae import TAEHV, TAEConfig
from vidfx.autoencoder.tiny import TinyAEConfig, TinyAutoencoder
from vidfx.autoencoder.wan_vae import WanVAE, WanVAEConfig
from vidfx.weights import CheckpointError, load_into, load_state_dict, strip_wrappers

PRESETS = ("wan2.1", "wan2.1-test", "tiny", "taew2.1", "taew2.1-test")
RANDOM_PREFIX = "random:"  # `random:tiny` etc.: an untrained network (benchmarks, plumbing without weights)
TRAINING_MODEL_PREFIX = "model."  # training checkpoints (train.py) hold `model.*` next to `optim.*`


def build_autoencoder(name: str) -> VideoAutoencoder:
    """A randomly initialised autoencoder: `wan2.1` (official size), `wan2.1-test` (dim 8), `tiny`, or the
    Wan 2.1 TAEHV `taew2.1` (official size) / `taew2.1-test` (narrow)."""
    if name == "wan2.1":
        return WanVAE(WanVAEConfig.preset("wan2.1"))
    if name == "wan2.1-test":
        return WanVAE(WanVAEConfig.preset("test"))
    if name == "tiny":
        return TinyAutoencoder(TinyAEConfig())
    if name in ("taew2.1", "taew2.1-test"):
        return TAEHV(TAEConfig.preset("test" if name.endswith("-test") else "taew2.1"))
    raise ValueError(f"unknown autoencoder {name!r}; choose from {list(PRESETS)}")


def save_autoencoder(ae: VideoAutoencoder, path: str | Path) -> None:
    """Write the weights (and, for the tiny AE, its latent statistics) to one safetensors file."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in ae.state_dict().items()}
    # For people and other tools: loading reads the architecture off the tensor shapes.
    meta = {"vidfx.kind": ae.kind, "vidfx.config": json.dumps(ae.config_dict())}
    tmp = Path(str(path) + ".tmp")  # written whole, then renamed: a reader never sees half a file
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def autoencoder_for_state(state: dict[str, torch.Tensor], source: str | Path) -> VideoAutoencoder:
    """An untrained network whose names and shapes fit `state` (raises CheckpointError naming `source`)."""
    try:
        if "encoder.downsamples.0.residual.0.gamma" in state:
            dim = state["encoder.conv1.weight"].shape[0]
            z_dim = state["conv2.weight"].shape[0]
            cfg = WanVAEConfig()
            if z_dim != cfg.z_dim:
                raise CheckpointError(f"{source}: no latent statistics for a Wan VAE with {z_dim} channels")
            return WanVAE(cfg.with_(dim=dim))
        if "encoder.stem.weight" in state:
            stem = state["encoder.stem.weight"]
            frame = state["encoder.down.weight"].shape[0]
            group = state["encoder.group.weight"]
            cfg = TinyAEConfig(
                latent_channels=state["encoder.out.weight"].shape[0],
                temporal_factor=group.shape[1] // frame,
                spatial_factor=2 * math.isqrt(stem.shape[1] // 3),
                stem_channels=stem.shape[0],
                frame_channels=frame,
                group_channels=group.shape[0],
            )
            return TinyAutoencoder(cfg)
        if "decoder.3.conv.0.weight" in state:  # TAEHV (`taew2_1`): numbered Sequential stacks
            return TAEHV(TAEConfig.from_state(state, source))
    except KeyError as exc:
        raise CheckpointError(f"{source}: incomplete autoencoder checkpoint, no tensor {exc}") from exc
    raise CheckpointError(
        f"{source}: neither a Wan VAE (encoder.downsamples.*), a tiny autoencoder (encoder.stem.*) nor a TAEHV "
        f"(decoder.3.conv.*); "
        f"first names: {sorted(state)[:3]}"
    )


def load_autoencoder(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> VideoAutoencoder:
    """An eval-mode autoencoder from a safetensors file/folder, a training checkpoint or `random:<preset>`.

    `.pth` files are refused with the `vidfx convert` command to run; corrupt files raise CheckpointError.
    """
    if isinstance(source, str) and source.startswith(RANDOM_PREFIX):
        ae = build_autoencoder(source[len(RANDOM_PREFIX) :])
    else:
        state = load_state_dict(source)
        if any(k.startswith("optim.") for k in state):
            n = len(TRAINING_MODEL_PREFIX)
            state = {k[n:]: v for k, v in state.items() if k.startswith(TRAINING_MODEL_PREFIX)}
        state = strip_wrappers(state)
        ae = autoencoder_for_state(state, source)
        load_into(ae, state, source)
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)
