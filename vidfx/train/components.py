"""The non-DiT parts a training or eval run names on its command line: autoencoder, text encoder, feature net.

Specs (strings, so they fit a config file or a flag):

* autoencoder — anything `vidfx.autoencoder.load_autoencoder` takes: a safetensors file (tiny AE or Wan VAE)
  or `random:tiny` (an untrained network: plumbing checks only);
* text encoder — `hash` (the default model's word-hash encoder, 64-dim × 16 tokens), `hash:DIM:TOKENS`, or
  `umt5:FOLDER` (the official umT5-XXL from a local Wan folder);
* feature net — `look:PATH`: vidfx.data's look classifier (`vidfx dataset … --classifier PATH`), read through
  `LookFeatures`; or `clip:PATH`: the `ClipFeatureNet` below, trained on the dataset by `train_feature_net`.
  Any object with `features(x) -> (B, D)` on clips (B, 3, T, H, W) in [-1, 1] works with `vidfx.train.eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from vidfx.autoencoder import VideoAutoencoder, load_autoencoder
from vidfx.text import HashTextEncoder, TextEncoder

if TYPE_CHECKING:
    from vidfx.train.data import Clip


def text_encoder_from_spec(spec: str, device: str | torch.device = "cpu") -> TextEncoder:
    kind, _, rest = spec.partition(":")
    if kind == "hash":
        if not rest:
            return HashTextEncoder()
        dim, _, tokens = rest.partition(":")
        return HashTextEncoder(text_dim=int(dim), max_tokens=int(tokens or 16))
    if kind == "umt5":
        from vidfx.text import UMT5TextEncoder

        return UMT5TextEncoder.from_folder(rest, device=device)
    raise ValueError(f"unknown text encoder {spec!r}: use hash, hash:DIM:TOKENS or umt5:FOLDER")


def autoencoder_from_spec(spec: str, device: str | torch.device = "cpu") -> VideoAutoencoder:
    return load_autoencoder(spec, device=device)


# -- a small feature network trained on the dataset itself -------------------------------------------------


class ClipFeatureNet(nn.Module):
    """A small 3D-conv clip classifier whose penultimate activations are the eval feature space.

    Clips (B, 3, T, H, W) in [-1, 1] are resized to 32×32, passed through three strided 3D convolutions,
    and pooled over space and time into `dim` features (the mean, plus the mean absolute change between
    consecutive time steps, so that temporal behaviour — flicker, frozen motion — moves the features too).
    """

    def __init__(self, num_classes: int, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.num_classes, self.width, self.dim = num_classes, width, dim
        self.convs = nn.Sequential(
            nn.Conv3d(3, width, 3, stride=(1, 2, 2), padding=1),
            nn.SiLU(),
            nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1),
            nn.SiLU(),
            nn.Conv3d(2 * width, dim // 2, 3, stride=(1, 2, 2), padding=1),
        )
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, dim)."""
        b, c, t, h, w = x.shape
        x = x.to(self.classifier.weight.dtype)
        small = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), size=(32, 32), mode="area")
        small = small.view(b, t, c, 32, 32).transpose(1, 2)  # (B, 3, T, 32, 32)
        h3 = self.convs(small)  # (B, dim/2, T, 4, 4)
        mean = h3.mean(dim=(2, 3, 4))
        change = (h3[:, :, 1:] - h3[:, :, :-1]).abs().mean(dim=(2, 3, 4)) if t > 1 else torch.zeros_like(mean)
        return torch.cat([mean, change], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.silu(self.features(x)))


def train_feature_net(
    clips: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 300,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> ClipFeatureNet:
    """Fit a `ClipFeatureNet` to tell the clips' labels apart (their look, or the video they come from)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ClipFeatureNet(int(labels.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in tqdm(range(steps), desc="feature net", disable=not progress):
        idx = torch.randint(len(clips), (min(16, len(clips)),), generator=g)
        x = clips[idx]
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)  # mirror: looks and scenes do not depend on left/right
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


def train_feature_net_on(clips: Sequence[Clip], steps: int, seed: int = 0, progress: bool = True) -> ClipFeatureNet:
    """`train_feature_net` on decoded dataset clips, each labelled by its look (its video where it has none)."""
    names = sorted({c.look or c.file for c in clips})
    labels = torch.tensor([names.index(c.look or c.file) for c in clips])
    return train_feature_net(torch.stack([c.frames for c in clips]), labels, steps, seed=seed, progress=progress)


def save_feature_net(net: ClipFeatureNet, path: str | Path) -> None:
    meta = {"num_classes": str(net.num_classes), "width": str(net.width), "dim": str(net.dim)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)


class LookFeatures:
    """vidfx.data's look classifier as an eval feature net: a clip (B, 3, T, H, W) in [-1, 1] is cut into
    consecutive windows of the classifier's `frames`, each embedded (its penultimate layer), and the window
    embeddings are averaged — one feature vector a clip."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier.eval().requires_grad_(False)
        self.window = int(classifier.config.frames)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        n = t // self.window
        if n == 0:
            raise ValueError(f"clips of {t} frames are shorter than the classifier's {self.window}-frame window")
        frames = ((x[:, :, : n * self.window].float() + 1) / 2).clamp(0, 1).transpose(1, 2)  # (B, T', 3, H, W)
        windows = frames.reshape(b * n, self.window, 3, h, w)
        return self.classifier.features(windows).view(b, n, -1).mean(1)


def load_feature_net(spec: str) -> nn.Module | LookFeatures:
    """A feature net from its spec (see the module docstring); it has `features(x) -> (B, D)`."""
    kind, _, path = spec.partition(":")
    if kind == "clip":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        net = ClipFeatureNet(int(meta["num_classes"]), int(meta["width"]), int(meta["dim"]))
        net.load_state_dict(load_file(path))
        return net.eval().requires_grad_(False)
    if kind == "look":
        from vidfx.data.look_classifier import load_look_classifier

        return LookFeatures(load_look_classifier(path))
    raise ValueError(f"unknown feature net {spec!r}: use look:PATH or clip:PATH")
