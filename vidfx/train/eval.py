"""Offline evaluation of teachers and students (`vidfx eval`): metrics are pure functions, samplers closures.

Metrics (pixels are (B, 3, T, H, W) in [-1, 1]):

(a) `frechet_distance` between Gaussians fitted to the features of generated and held-out clips, in the
    feature space of a small network trained on this dataset (any object with `features(x) -> (B, D)`: the
    look classifier of vidfx.data, or `components.ClipFeatureNet`), standardised by the held-out clips'
    spread (`Standardize`) so distances read in units of the data's own variation.
    This is *not* FVD: FVD uses an I3D network trained on Kinetics-400; a network trained on our own few
    clips measures distance to this dataset only, and its numbers compare runs on the same data and the
    same feature network, nothing else. With few samples the covariance estimate is noisy and the distance
    biased upwards (the bias shrinks as 1/N): compare at equal N.
(b) `flicker`: mean |x_{t+1} − x_t| over the generated clips divided by the same over the reference clips
    (held-out clips for text-to-video; the input itself for video-to-video). 1 = as much frame-to-frame
    change as the reference; above 1, the output changes more than the reference does — flicker (or faster
    motion); below 1, it is steadier (or frozen).
(c) `drift`: a causal student rolls out up to 10× its training length through its rolling KV cache; the
    rollout is cut into windows of the training length, each decoded on its own, and each window's Fréchet
    distance to the held-out clips is reported. Drift = growth of that distance with the window index.
(d) video-to-video: `structure_kept` = SSIM between the Sobel edge maps of input and output (1 = every edge
    kept), against `style reached` = Fréchet distance of the outputs to the held-out clips of the target look
    (lower = closer to the look), swept over SDEdit strengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from vidfx.autoencoder import VideoAutoencoder
from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import sample_euler, sdedit_steps, shift_sigma, step_sigmas, teacher_sigmas, with_cfg
from vidfx.train.data import FrameEncoder, PromptEncoder
from vidfx.train.dmd import rollout
from vidfx.train.flow import null_text

# A sampler: (text (B, L, D), generator) → latents (B, C, F, H, W). A v2v sampler also takes input latents.
Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
V2VSampler = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


class FeatureNet(Protocol):
    def features(self, x: torch.Tensor) -> torch.Tensor: ...


# -- (a) Fréchet distance ----------------------------------------------------------------------------------


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = feats.double()
    if f.shape[0] < 2:
        raise ValueError("need at least two feature vectors for a covariance")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_from_stats(mu1: torch.Tensor, c1: torch.Tensor, mu2: torch.Tensor, c2: torch.Tensor) -> float:
    """‖μ1 − μ2‖² + tr(C1) + tr(C2) − 2·tr((C1^½ C2 C1^½)^½) — symmetric PSD square roots via eigh, which
    is exact for covariances (unlike a general sqrtm of C1·C2, whose tiny imaginary parts need discarding)."""
    s1 = _sqrtm_psd(c1)
    inner = _sqrtm_psd(s1 @ c2 @ s1)
    value = (mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace() - 2 * inner.trace()
    return float(value.clamp_min(0))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


@torch.no_grad()
def clip_features(net: FeatureNet, clips: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([net.features(clips[i : i + batch]).float().cpu() for i in range(0, len(clips), batch)])


class Standardize:
    """Features in units of the reference set's spread: f ↦ (f − μ_ref) / s_ref, with s_ref² the reference's
    variance averaged over dimensions (one scalar: per-dimension scales from a few dozen clips would blow up
    the near-constant dimensions).

    The same map is applied to every set compared against one reference, so distances stay comparable
    across models, and read in units of the held-out clips' own variation rather than in whatever scale a
    feature network's activations happen to have.
    """

    def __init__(self, net: FeatureNet, reference_clips: torch.Tensor) -> None:
        self.net = net
        raw = clip_features(net, reference_clips)
        self.mean = raw.mean(0)
        self.scale = float(raw.var(0).mean().sqrt().clamp_min(1e-12))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net.features(x).float().cpu() - self.mean) / self.scale


# -- (b) flicker -------------------------------------------------------------------------------------------


def mean_frame_difference(x: torch.Tensor) -> float:
    """mean |x_{t+1} − x_t| over clips (B, 3, T, H, W)."""
    if x.shape[2] < 2:
        raise ValueError("flicker needs clips of at least two frames")
    return float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())


def flicker(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Temporal change of the output relative to the reference's (see the module docstring)."""
    return mean_frame_difference(output) / max(mean_frame_difference(reference), 1e-12)


# -- (d) structure: SSIM of edge maps ----------------------------------------------------------------------


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luma: (B, 3, T, H, W) in [-1, 1] → (B·T, 1, H, W), about [0, 1]."""
    b, _, t, h, w = x.shape
    rgb = (x.float() + 1) / 2
    luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).reshape(b * t, 1, h, w)  # (B·T, 1, H, W)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    gx = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kx.view(1, 1, 3, 3))
    gy = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kx.T.reshape(1, 1, 3, 3))
    return (gx.pow(2) + gy.pow(2)).sqrt()


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03) at each valid window position of
    images (N, 1, H, W) → (N, 1, H − window + 1, W − window + 1); the window shrinks to the image on small
    frames. Differentiable: the refiner trains on 1 − its mean (vidfx.train.refiner)."""
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=torch.float64, device=a.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).float()

    a, b = a.float(), b.float()
    # The five local moments in one grouped pass, the 2-D Gaussian as two 1-D ones (22 multiply-adds, not 121).
    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    kernel = g.view(1, 1, window).expand(moments.shape[1], 1, window)
    blurred = F.conv2d(moments, kernel[..., None], groups=moments.shape[1])
    blurred = F.conv2d(blurred, kernel[:, :, None], groups=moments.shape[1])
    mu_a, mu_b, aa, bb, ab = blurred.split(a.shape[1], dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM of images (N, 1, H, W) (`ssim_map`)."""
    return float(ssim_map(a, b, data_range).mean())


def structure_kept(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """SSIM of the edge maps of input and output clips (B, 3, T, H, W)."""
    return ssim(edge_map(inputs), edge_map(outputs))


# -- samplers ----------------------------------------------------------------------------------------------


def teacher_sampler(
    model: CausalDiT,
    latent_shape: Sequence[int],
    num_steps: int,
    guidance: float,
    shift: float = 8.0,
    chunk_frames: int | None = None,
) -> Sampler:
    """The teacher's Euler sampler with CFG (v_u + s·(v_c − v_u)) over Wan's shifted grid."""

    @torch.no_grad()
    def sample(text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn((text.shape[0], *latent_shape), generator=gen, device=gen.device)
        return euler_from(model, noise, text, teacher_sigmas(num_steps, shift), guidance, chunk_frames)

    return sample


def euler_from(
    model: CausalDiT,
    x: torch.Tensor,
    text: torch.Tensor,
    sigmas: Sequence[float],
    guidance: float,
    chunk_frames: int | None = None,
) -> torch.Tensor:
    def velocity(ctx: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
        def v(xt: torch.Tensor, sigma: float) -> torch.Tensor:
            t = torch.full((xt.shape[0],), 1000.0 * sigma, device=xt.device)
            return model(xt, t, ctx, chunk_frames=chunk_frames)

        return v

    final, _ = sample_euler(with_cfg(velocity(text), velocity(null_text(text)), guidance), x, list(sigmas))
    return final


def student_sampler(
    model: CausalDiT,
    latent_shape: Sequence[int],
    steps: Sequence[int],
    chunk_frames: int,
    shift: float = 8.0,
    length: int = 1,
    window_frames: int | None = None,
) -> Sampler:
    """A causal student's few-step streaming sampler: `length` × the latent length, chunk by chunk, through
    a rolling KV cache of `window_frames` latent frames (default: one training clip)."""
    c, frames, h, w = latent_shape
    sigmas = step_sigmas(list(steps), shift)

    @torch.no_grad()
    def sample(text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn((text.shape[0], c, frames * length, h, w), generator=gen, device=gen.device)
        return rollout(model, noise, text, sigmas, chunk_frames, gen, window_frames=window_frames or frames)

    return sample


def student_v2v(
    model: CausalDiT, steps: Sequence[int], strength: float, chunk_frames: int, shift: float = 8.0
) -> V2VSampler:
    """SDEdit with the causal student: the input latents noised to the first kept step, then streamed."""
    sigmas = step_sigmas(sdedit_steps(list(steps), strength), shift)

    @torch.no_grad()
    def sample(inputs: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(inputs.shape, generator=gen, device=gen.device)
        start = (1 - sigmas[0]) * inputs + sigmas[0] * noise
        return rollout(model, start, text, sigmas, chunk_frames, gen)

    return sample


def teacher_v2v(model: CausalDiT, num_steps: int, strength: float, guidance: float, shift: float = 8.0) -> V2VSampler:
    """SDEdit with the teacher: Euler from σ = shift(strength) on the teacher's grid."""
    top = float(shift_sigma(strength, shift))
    grid = [s for s in teacher_sigmas(num_steps, shift) if s < top - 1e-9]
    sigmas = [top, *grid]

    @torch.no_grad()
    def sample(inputs: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(inputs.shape, generator=gen, device=gen.device)
        return euler_from(model, (1 - top) * inputs + top * noise, text, sigmas, guidance)

    return sample


# -- putting it together -----------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Held-out data: pixel clips, a caption embedding each, their looks, and their latents (v2v inputs)."""

    clips: torch.Tensor  # (N, 3, T, H, W) in [-1, 1]
    text: torch.Tensor  # (N, L, D)
    latents: torch.Tensor  # (N, C, F, H, W)
    looks: list[str | None]

    def subset(self, indices: Sequence[int]) -> EvalSet:
        idx = torch.tensor(list(indices), dtype=torch.long)
        return EvalSet(self.clips[idx], self.text[idx], self.latents[idx], [self.looks[i] for i in indices])


Decode = Callable[[torch.Tensor], torch.Tensor]  # latents (B, C, F, H, W) → pixels (B, 3, T, H, W)


def batched_decoder(ae: VideoAutoencoder, device: torch.device | str, batch: int = 4) -> Decode:
    """A `Decode` through `ae`, `batch` clips at a time, results as fp32 on the CPU."""

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [ae.decode(latents[i : i + batch].to(device)).float().cpu() for i in range(0, len(latents), batch)]
        )

    return decode


def _generate(sampler: Sampler, text: torch.Tensor, seed: int, batch: int, device: torch.device) -> torch.Tensor:
    outs = []
    for i in range(0, len(text), batch):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        outs.append(sampler(text[i : i + batch].to(device), gen).cpu())
    return torch.cat(outs)


def _decode_windows(latents: torch.Tensor, frames: int, decode: Decode) -> list[torch.Tensor]:
    """Cut (N, C, k·frames, H, W) into k windows of `frames` latent frames, each decoded on its own."""
    return [decode(latents[:, :, w * frames : (w + 1) * frames]) for w in range(latents.shape[2] // frames)]


def evaluate_t2v(
    sampler: Sampler,
    data: EvalSet,
    decode: Decode,
    net: FeatureNet,
    seed: int = 0,
    batch: int = 8,
    device: torch.device | str = "cpu",
    reference_feats: torch.Tensor | None = None,
) -> dict[str, float]:
    """Fréchet distance and flicker of `sampler`'s clips for the held-out captions."""
    device = torch.device(device)
    ref = reference_feats if reference_feats is not None else clip_features(net, data.clips)
    pixels = decode(_generate(sampler, data.text, seed, batch, device))
    return {"fd": frechet_distance(clip_features(net, pixels), ref), "flicker": flicker(pixels, data.clips)}


def evaluate_drift(
    sampler_long: Sampler,
    data: EvalSet,
    decode: Decode,
    net: FeatureNet,
    frames: int,
    seed: int = 0,
    batch: int = 8,
    device: torch.device | str = "cpu",
    reference_feats: torch.Tensor | None = None,
) -> list[float]:
    """Fréchet distance per training-length window of long rollouts (window 0 first)."""
    device = torch.device(device)
    ref = reference_feats if reference_feats is not None else clip_features(net, data.clips)
    latents = _generate(sampler_long, data.text, seed, batch, device)
    return [frechet_distance(clip_features(net, w), ref) for w in _decode_windows(latents, frames, decode)]


def evaluate_v2v(
    make_sampler: Callable[[float], V2VSampler],
    strengths: Sequence[float],
    data: EvalSet,
    target_text: torch.Tensor,
    target_feats: torch.Tensor,
    decode: Decode,
    net: FeatureNet,
    seed: int = 0,
    batch: int = 8,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """Structure kept vs style reached per SDEdit strength: every held-out clip re-rendered with the target
    caption `target_text` (1, L, D); `target_feats` are the features of the target look's held-out clips."""
    device = torch.device(device)
    rows = []
    for strength in strengths:
        sampler = make_sampler(strength)
        outs = []
        for i in range(0, len(data.latents), batch):
            gen = torch.Generator(device=device).manual_seed(seed + i)
            inputs = data.latents[i : i + batch].to(device)
            text = target_text.expand(len(inputs), -1, -1).to(device)
            outs.append(sampler(inputs, text, gen).cpu())
        pixels = decode(torch.cat(outs))
        rows.append(
            {
                "strength": float(strength),
                "structure_kept": structure_kept(data.clips, pixels),
                "style_fd": frechet_distance(clip_features(net, pixels), target_feats),
                "flicker": flicker(pixels, data.clips),
            }
        )
    return rows


def load_eval_set(
    videos: str,
    frames: int,
    fps: float,
    size: tuple[int, int],
    heldout: float,
    autoencoder: FrameEncoder,
    text_encoder: PromptEncoder,
    max_clips: int | None = None,
    max_clips_per_video: int | None = None,
    split: str = "heldout",
) -> EvalSet:
    """The held-out clips of a video folder (vidfx.train.data format), their first captions' embeddings and
    their latents."""
    from vidfx.train.data import iter_clips

    clips = []
    for clip in iter_clips(videos, frames, fps, size, split, heldout, max_clips_per_video):
        clips.append(clip)
        if max_clips is not None and len(clips) >= max_clips:
            break
    if len(clips) < 2:
        raise ValueError(f"{videos}: {len(clips)} {split} clip(s); evaluation needs at least two")
    pixels = torch.stack([c.frames for c in clips])
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(pixels[i : i + 4]).float().cpu() for i in range(0, len(pixels), 4)])
        text = text_encoder.encode([c.captions[0] for c in clips]).float().cpu()
    return EvalSet(pixels, text, latents, [c.look for c in clips])
