"""Training the tiny autoencoder: reconstruction loss, resumable safetensors checkpoints, latent statistics.

The dataset is any iterator of clips (B, 3, T, H, W) in [-1, 1]; `procedural_clips` makes random smooth
moving scenes for tests and smoke runs. Training runs whole clips through `encode_raw` / `decode_raw` with a
fresh `CausalCache` each, i.e. the exact function the stream objects compute chunk by chunk.

Checkpoints (`checkpoint_dir/autoencoder-step0000100.safetensors`) hold `model.*` (the weights, loadable by
`load_autoencoder`), `optim.<param>.{exp_avg,exp_avg_sq}` (AdamW moments) and `optim.step`; a later call
with the same `checkpoint_dir` resumes from the newest one. The data iterator is the caller's, so a resumed
run sees whatever clips the iterator yields next. The plain weights file is the caller's to write, once its
latent statistics are fitted (`vidfx train-autoencoder` does both): a file with unfitted statistics under the
final name was once encoded from by a process running beside the fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vidfx.autoencoder.base import CausalCache, VideoAutoencoder
from vidfx.weights import CheckpointError, load_state_dict

CHECKPOINT_GLOB = "autoencoder-step*.safetensors"
KEEP_CHECKPOINTS = 2  # older step checkpoints are deleted; resuming needs only the newest


# -- data ----------------------------------------------------------------------------------------------------


def procedural_clips(
    batch: int,
    frames: int,
    size: int | tuple[int, int],
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Endless random clips (B, 3, T, H, W) in [-1, 1]: a drifting colour gradient, soft blobs and one hard-
    edged square, each moving at its own constant velocity (smooth in time, with some sharp edges)."""
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    t = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    while True:
        # Background: a linear colour gradient whose phase drifts.
        direction = rand(batch, 2) * 2 - 1
        phase = (direction[:, 0].view(-1, 1, 1, 1) * xs + direction[:, 1].view(-1, 1, 1, 1) * ys) + 0.05 * t
        colours = rand(batch, 3, 2) * 2 - 1  # (B, RGB, ends)
        mix = (torch.sin(math.pi * phase) * 0.5 + 0.5).unsqueeze(1)  # (B, 1, T, H, W)
        near, far = colours[..., 0].view(batch, 3, 1, 1, 1), colours[..., 1].view(batch, 3, 1, 1, 1)
        video = near * mix + far * (1 - mix)
        # Three soft blobs and one square, positions p0 + v·t.
        for hard in (False, False, False, True):
            p0, v = rand(batch, 2) * 1.6 - 0.8, (rand(batch, 2) * 2 - 1) * 0.08
            cx = (p0[:, 0].view(-1, 1, 1, 1) + v[:, 0].view(-1, 1, 1, 1) * t).unsqueeze(1)  # (B, 1, T, 1, 1)
            cy = (p0[:, 1].view(-1, 1, 1, 1) + v[:, 1].view(-1, 1, 1, 1) * t).unsqueeze(1)
            radius = (0.15 + 0.35 * rand(batch)).view(-1, 1, 1, 1, 1)
            dx, dy = xs.unsqueeze(1) - cx, ys.unsqueeze(1) - cy
            if hard:
                alpha = ((dx.abs() < radius) & (dy.abs() < radius)).float()
            else:
                alpha = torch.exp(-(dx**2 + dy**2) / (2 * radius**2))
            colour = (rand(batch, 3) * 2 - 1).view(batch, 3, 1, 1, 1)
            video = video * (1 - alpha) + colour * alpha
        yield video.clamp(-1, 1).to(device)


def fit_clip(clip: torch.Tensor, ae: VideoAutoencoder) -> torch.Tensor:
    """Crop a clip to 1 + k·n frames and to sizes divisible by the spatial factor."""
    k, s = ae.temporal_factor, ae.spatial_factor
    t = 1 + k * ((clip.shape[2] - 1) // k)
    h, w = clip.shape[-2] // s * s, clip.shape[-1] // s * s
    if clip.shape[2] < 1 or h == 0 or w == 0:
        raise ValueError(f"clip {tuple(clip.shape)} is too small for this autoencoder")
    return clip[:, :, :t, :h, :w]


# -- loss ----------------------------------------------------------------------------------------------------


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 on pixels + `edge_weight` · L1 on horizontal and vertical pixel differences.

    L1 alone lets a small decoder trade edges for flat averages (blur costs little per pixel because edges
    are few); matching the image gradients puts the loss on the edges themselves, which is what a viewer
    notices, for the price of two subtractions. Measured on held-out procedural clips (tiny AE, 64×64,
    300 steps, lr 1e-3): edge_weight 0.5 vs 0 gave a 35 % lower gradient error (0.055 vs 0.084 L1 on the
    pixel differences) for 0.2 dB less PSNR (24.5 vs 24.6 dB), so it is on by default.
    """
    loss = (recon - target).abs().mean()
    if edge_weight:
        for dim in (-1, -2):
            loss = loss + edge_weight * (recon.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return loss


def lr_at(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio`·lr at `steps` (pure: a resumed run matches)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -- checkpoints ------------------------------------------------------------------------------------------


def _save_checkpoint(ae: VideoAutoencoder, opt: torch.optim.Optimizer, step: int, directory: Path) -> Path:
    state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    for name, p in ae.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            if key in ("exp_avg", "exp_avg_sq"):
                state[f"optim.{name}.{key}"] = value.detach().cpu().contiguous()
    state["optim.step"] = torch.tensor(step, dtype=torch.int64)
    path = directory / f"autoencoder-step{step:07d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"vidfx.kind": ae.kind, "step": str(step)})
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint under the final name
    for old in sorted(directory.glob(CHECKPOINT_GLOB))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def _resume(ae: VideoAutoencoder, opt: torch.optim.Optimizer, directory: Path) -> int:
    found = sorted(directory.glob(CHECKPOINT_GLOB))
    if not found:
        return 0
    path = found[-1]
    state = load_state_dict(path)
    model = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    missing = ae.state_dict().keys() - model.keys()
    if missing or "optim.step" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this autoencoder (lacks e.g. {sorted(missing)[:3]})")
    ae.load_state_dict(model, strict=True)
    step = int(state["optim.step"])
    device = ae.param_device
    for name, p in ae.named_parameters():
        moments = {key: state.get(f"optim.{name}.{key}") for key in ("exp_avg", "exp_avg_sq")}
        if all(m is not None for m in moments.values()):
            opt.state[p] = {
                "step": torch.tensor(float(step)),
                **{key: m.to(device) for key, m in moments.items() if m is not None},
            }
    return step


# -- training ---------------------------------------------------------------------------------------------


def train_autoencoder(
    ae: VideoAutoencoder,
    clips: Iterator[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    *,
    edge_weight: float = 0.5,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    decoder_only: bool = False,
    latent_noise: float = 0.0,
) -> list[float]:
    """Train `ae` to reconstruct `clips` until it has taken `steps` optimiser steps in total.

    `decoder_only` trains the decoder alone: the encoder (and so every latent a DiT was trained on) stays
    bit for bit. `latent_noise` s decodes latents with Gaussian noise of u·s latent standard deviations added
    (u ~ U(0, 1) per clip) toward the clean clip: the decoder learns to smooth over latent errors a
    generator makes instead of turning them into frame-to-frame shimmer (a decoder frame group is one latent
    frame, so noise there shows as flicker within the group).

    With `checkpoint_dir`, resumes from the newest checkpoint there, saves every `checkpoint_every` steps
    and at the end. Returns this call's per-step losses.
    `warmup_steps` defaults to min(100, steps // 10).
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    params = list(ae.decoder.parameters()) if decoder_only else list(ae.parameters())
    ae.requires_grad_(False)  # a loaded autoencoder comes frozen; train exactly `params`
    for param in params:
        param.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        start = _resume(ae, opt, directory)
    device, dtype = ae.param_device, ae.param_dtype
    ae.train()
    losses: list[float] = []
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="train autoencoder", unit="step")
    for step in range(start, steps):
        clip = fit_clip(next(clips), ae).to(device, dtype)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
        with torch.set_grad_enabled(not decoder_only):
            z = ae.encode_raw(clip, CausalCache())
        if latent_noise > 0:
            u = torch.rand(z.shape[0], 1, 1, 1, 1, device=device, dtype=dtype)
            z = z + latent_noise * u * ae.latent_std.view(1, -1, 1, 1, 1) * torch.randn_like(z)
        recon = ae.decode_raw(z, CausalCache())
        loss = reconstruction_loss(recon, clip, edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if directory is not None and (done % checkpoint_every == 0 or done == steps):
            _save_checkpoint(ae, opt, done, directory)
    bar.close()
    ae.eval()
    return losses


@torch.no_grad()
def fit_latent_stats(
    ae: VideoAutoencoder, clips: Iterator[torch.Tensor], batches: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set `ae.latent_mean` / `ae.latent_std` to the per-channel statistics of its raw latents on `batches`
    clips, so normalised latents are zero-mean and unit-variance per channel. Returns (mean, std)."""
    total = torch.zeros(ae.latent_channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for _ in range(batches):
        clip = fit_clip(next(clips), ae).to(ae.param_device, ae.param_dtype)
        z = ae.encode_raw(clip, CausalCache()).double().cpu()  # (B, C, T', h, w)
        total += z.sum(dim=(0, 2, 3, 4))
        squares += (z * z).sum(dim=(0, 2, 3, 4))
        count += z.numel() // z.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    ae.latent_mean.copy_(mean.to(ae.latent_mean))
    ae.latent_std.copy_(std.to(ae.latent_std))
    return mean.float(), std.float()


__all__ = [
    "fit_clip",
    "fit_latent_stats",
    "lr_at",
    "procedural_clips",
    "reconstruction_loss",
    "train_autoencoder",
]
