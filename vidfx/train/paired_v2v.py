"""Stage 5 (optional) — paired video-to-video fine-tune of the distilled student.

CausVid's video-to-video is zero-shot SDEdit: the input chunk is noised to σ(strength) and the few-step
student denoises it toward the prompt. With a large pretrained model the input's layout survives that noise;
a tiny model trained on a few hundred scenes keeps little of it at σ ≈ 0.95 (strength 0.7 through shift 8),
and it never learned a look whose texture is finer than a latent pixel (pixel art's dithered 4-px blocks).

When the dataset holds the *same* scene with and without each look (vidfx.data.looks renders every scene in
every look), the student can be taught the job the live node gives it: from the *source* chunk noised to the
first σ of a strength, predict the *styled* chunk. This stage does that with the student-init regression
(x₀ = x_σ − σ·v, block-causal, one level per chunk, clean styled chunks as context) on inputs drawn as the
node draws them:

    strength s ~ U(strength_min, strength_max) per clip; its σ list is `chunk_sigmas(student_steps, s)`
    per chunk, one of: the source noised to σ₀ (the step that sees the camera) — probability `first_step`,
                       the styled target noised to a later σ of the list (the steps after the first),
                       the clean styled target (context for the chunks after it; no loss)

Scenes without a look (the plain source) pair with themselves under their own captions ("the original
video"), so a neutral prompt keeps the input. Pairs are found through the dataset folder's captions.jsonl:
entries with the same `source` file and clip index are one scene.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch

from vidfx.sampling import chunk_sigmas
from vidfx.train.config import PairedV2VConfig
from vidfx.train.data import DataOrder, LatentDataset, read_captions
from vidfx.train.distributed import Dist
from vidfx.train.flow import bcast, per_chunk
from vidfx.train.student_init import RegressionStage
from vidfx.train.teacher import check_text
from vidfx.train.trainer import build_network


def scene_pairs(
    meta: dict, videos: str | Path | None = None, look_repeats: Mapping[str, int] | None = None
) -> list[tuple[int, int]]:
    """(source sample, target sample) for every sample of a latent cache whose scene has a plain source,
    each pair whose target is in a look of `look_repeats` listed that many times (the rest once).

    meta: the cache's manifest meta (`files`, `clip_index`, `looks`, `source` — the dataset folder, unless
    `videos` names it)."""
    repeats = dict(look_repeats or {})
    unknown = set(repeats) - {look for look in meta["looks"] if look is not None}
    if unknown:
        raise ValueError(f"look_repeats names looks the latent cache does not have: {sorted(unknown)}")
    if any(not isinstance(n, int) or n < 1 for n in repeats.values()):
        raise ValueError(f"look_repeats must be whole numbers ≥ 1, got {repeats}")
    entries = read_captions(videos or meta["source"])
    scenes: dict[tuple[str, int], dict[str | None, int]] = defaultdict(dict)
    for i, (file, clip, look) in enumerate(zip(meta["files"], meta["clip_index"], meta["looks"], strict=True)):
        entry = entries.get(file)
        if entry is None:
            raise ValueError(f"{file}: in the latent cache but not in the dataset's captions")
        scenes[(entry.source or entry.file, int(clip))][look] = i
    pairs = []
    for members in scenes.values():
        source = members.get(None)
        if source is not None:
            for look, target in members.items():
                pairs.extend([(source, target)] * repeats.get(look or "", 1))
    if not pairs:
        raise ValueError("no scene of the latent cache has a plain source clip (look null) to pair with")
    return sorted(pairs, key=lambda p: p[1])


def paired_inputs(
    source: torch.Tensor,
    target: torch.Tensor,
    strengths: torch.Tensor,
    steps: list[int],
    shift: float,
    chunk_frames: int,
    first_step: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network input x (B, C, F, H, W) and σ (B, F) (0: clean context) — see the module docstring."""
    b, _, frames, _, _ = source.shape
    n_chunks = frames // chunk_frames
    dev = source.device
    sigma = torch.zeros(b, n_chunks, device=dev)
    from_source = torch.zeros(b, n_chunks, dtype=torch.bool, device=dev)
    u = torch.rand(b, n_chunks, generator=gen, device=gen.device).to(dev)
    later = torch.rand(b, n_chunks, generator=gen, device=gen.device).to(dev)
    for i in range(b):
        levels = chunk_sigmas(steps, float(strengths[i]), shift)
        for c in range(n_chunks):
            if u[i, c] < first_step:
                sigma[i, c], from_source[i, c] = levels[0], True
            else:  # a later step of the list, or the clean context (index len(levels) - 1 + 1)
                j = 1 + int(later[i, c] * len(levels))
                sigma[i, c] = levels[j] if j < len(levels) else 0.0
    sigma_f = per_chunk(sigma, chunk_frames, frames)
    use_source = per_chunk(from_source, chunk_frames, frames).view(b, 1, frames, 1, 1)
    clean = torch.where(use_source, source, target)
    noise = torch.randn(source.shape, generator=gen, device=gen.device).to(dev)
    s = bcast(sigma_f)
    return (1 - s) * clean + s * noise, sigma_f


class PairedV2VStage(RegressionStage):
    name = "paired_v2v"

    def __init__(self, cfg: PairedV2VConfig, dist: Dist | None = None) -> None:
        super().__init__(cfg, cfg.run, dist)
        self.data = LatentDataset(cfg.latents)
        self.pairs = scene_pairs(self.data.meta, cfg.videos or None, cfg.look_repeats)
        self.order = DataOrder(len(self.pairs), cfg.run.seed)
        model = build_network(cfg.model, self.device, cfg.run.seed, cfg.init)
        check_text(self.data.text_shape, model.cfg.text_dim, model.cfg.text_len)
        self.model = model
        self.add_trainable("generator", model, cfg.optim, cfg.ema)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Source latents, target latents (B, C, F, H, W) and one caption embedding of each target (B, L, D)."""
        idx = self.order.indices(step, self.dist.rank, self.dist.world, self.run.batch_size)
        sources = [self.pairs[i][0] for i in idx]
        targets = [self.pairs[i][1] for i in idx]
        src = self.data.reader.rows("latents", sources).float()
        tgt = self.data.batch(targets, self.data_generator_for(step))
        return src.to(self.device), tgt.latents.to(self.device), tgt.text.to(self.device)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        cfg: PairedV2VConfig = self.cfg
        source, target, text = batch
        lo, hi = cfg.strengths
        strengths = lo + (hi - lo) * torch.rand(source.shape[0], generator=gen, device=gen.device)
        x, sigma = paired_inputs(
            source, target, strengths, cfg.student_steps, cfg.shift, cfg.chunk_frames, cfg.first_step, gen
        )
        return self.regression_loss(x, sigma, text, target, cfg.chunk_frames)
