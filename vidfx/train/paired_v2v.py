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

With `dmd.real_score` set, the generator's x₀ predictions also get DMD's distribution-matching term (DMD
trains a one-step generator with regression + distribution matching; CausVid keeps only the latter): a
frozen bidirectional teacher's score of the asked look against a fake score that tracks the student's own
outputs (`vidfx.train.dmd`). Regression alone predicts the mean of the looks a noised input could become
(smooth blobs where pixel art has blocks and neon edges thin lines); the DMD direction pushes each sample
toward clips the teacher finds likely under the caption, while the regression keeps it the input's scene.

A *source-conditioned* student (model in_dim = 2 · out_dim, `source_conditioned`) also takes the clean
source latent in its extra input channels, at every step and in the cache write, as the live node gives it
(vidfx.pipeline). Noised, the source keeps little of the scene at the strengths the looks need; beside the
noised input it keeps all of it, and the student only has to restyle. It starts from an unconditioned
student with those channels' weights at zero (`grow_state`: the same function at the first step); a
share of clips (`condition_dropout`) sees zeros there, as text-to-video does.

Scenes without a look (the plain source) pair with themselves under their own captions ("the original
video"), so a neutral prompt keeps the input. Pairs are found through the dataset folder's captions.jsonl:
entries with the same `source` file and clip index are one scene.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch

from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import chunk_sigmas
from vidfx.train.checkpoint import read_weights
from vidfx.train.config import ModelSpec, PairedV2VConfig
from vidfx.train.data import DataOrder, LatentDataset, read_captions
from vidfx.train.distributed import Dist, autocast
from vidfx.train.dmd import dmd_direction, dmd_loss, dmd_sigma, guided_x0
from vidfx.train.flow import bcast, flow_loss, noisy, per_chunk, predict_x0
from vidfx.train.student_init import RegressionStage, chunk_mse
from vidfx.train.teacher import check_text
from vidfx.train.trainer import build_network
from vidfx.weights import load_into


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


def source_conditioned(spec: ModelSpec) -> ModelSpec:
    """The spec of a student that also takes the clean source latent: in_dim = 2 · out_dim."""
    return ModelSpec(spec.preset, {**spec.overrides, "in_dim": 2 * spec.build().out_dim})


# Parameters whose *input* side grows with the network (new input channels / FFN units): the added slice is
# zero, so whatever those inputs hold adds nothing. A new block's output projections are zero for the same
# reason: its residual branches add nothing, and the block is the identity until training gives it a use.
_ZERO_NEW_INPUTS = ("patch_embedding.weight", ".ffn.2.weight")
_NEW_BLOCK_OUTPUTS = (".self_attn.o.", ".cross_attn.o.", ".ffn.2.")


def grow_state(state: Mapping[str, torch.Tensor], fresh: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trained DiT state grown into a bigger network's shapes (`fresh`: that network's initial state): more
    input channels (a source condition), a wider FFN, more blocks. The grown network computes what the
    trained one did, whatever the new channels hold: new input weights and new blocks' output projections
    are zero, new FFN units' input weights keep their fresh initialisation (so they get gradients)."""
    unknown = set(state) - set(fresh)
    if unknown:
        raise ValueError(f"the weights have parameters the network lacks: {sorted(unknown)[:4]}")
    out: dict[str, torch.Tensor] = {}
    for name, init in fresh.items():
        old = state.get(name)
        if old is None:  # a block the trained network did not have
            if not name.startswith("blocks."):
                raise ValueError(f"the weights lack {name}")
            out[name] = torch.zeros_like(init) if any(k in name for k in _NEW_BLOCK_OUTPUTS) else init.clone()
            continue
        if any(a > b for a, b in zip(old.shape, init.shape, strict=True)):
            raise ValueError(f"{name}: the weights' shape {tuple(old.shape)} is bigger than {tuple(init.shape)}")
        grown = torch.zeros_like(init) if name.endswith(_ZERO_NEW_INPUTS) else init.clone()
        grown[tuple(slice(0, n) for n in old.shape)] = old.to(init.dtype)
        out[name] = grown
    return out


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
        model = build_network(cfg.model, self.device, cfg.run.seed)
        if cfg.init:  # a smaller student's weights also start a bigger or source-conditioned one
            load_into(model, grow_state(read_weights(cfg.init), model.state_dict()), cfg.init)
        check_text(self.data.text_shape, model.cfg.text_dim, model.cfg.text_len)
        self.model = model
        self.add_trainable("generator", model, cfg.optim, cfg.ema)
        self.real: CausalDiT | None = None
        self.fake: CausalDiT | None = None
        if cfg.dmd.real_score:
            seed = cfg.run.seed
            self.real = self.add_frozen(build_network(cfg.model, self.device, seed, cfg.dmd.real_score, False))
            self.fake = build_network(cfg.model, self.device, seed, cfg.dmd.fake_score_init or cfg.dmd.real_score)
            self.add_trainable("fake_score", self.fake, cfg.dmd.critic_optim, None)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Source latents, target latents (B, C, F, H, W) and one caption embedding of each target (B, L, D)."""
        idx = self.order.indices(step, self.dist.rank, self.dist.world, self.run.batch_size)
        sources = [self.pairs[i][0] for i in idx]
        targets = [self.pairs[i][1] for i in idx]
        src = self.data.reader.rows("latents", sources).float()
        tgt = self.data.batch(targets, self.data_generator_for(step))
        return src.to(self.device), tgt.latents.to(self.device), tgt.text.to(self.device)

    def inputs(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The network input, its σ and its condition (the clean source, for a source-conditioned student;
        else None) for a batch, drawn as the node draws them (module docstring)."""
        cfg: PairedV2VConfig = self.cfg
        source = batch[0]
        lo, hi = cfg.strengths
        strengths = lo + (hi - lo) * torch.rand(source.shape[0], generator=gen, device=gen.device)
        x, sigma = paired_inputs(
            source, batch[1], strengths, cfg.student_steps, cfg.shift, cfg.chunk_frames, cfg.first_step, gen
        )
        if self.model.cfg.condition_dim == 0:
            return x, sigma, None
        keep = torch.rand(source.shape[0], generator=gen, device=gen.device) >= cfg.condition_dropout
        return x, sigma, source * keep.to(source.device, source.dtype).view(-1, 1, 1, 1, 1)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        x, sigma, condition = self.inputs(batch, gen)
        return self.regression_loss(x, sigma, batch[2], batch[1], self.cfg.chunk_frames, condition)

    def train_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        if self.real is None:
            return super().train_step(step, gen)
        # DMD's schedule (vidfx.train.dmd): the generator every `ratio`-th step, the fake score every step.
        batch = self.batch(step)
        logs: dict[str, float] = {}
        if step % self.cfg.dmd.ratio == 0:
            logs.update(self.generator_step(batch, gen))
        logs.update(self.critic_step(batch, gen))
        return logs

    def generator_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator
    ) -> dict[str, float]:
        loss, logs = self.generator_loss(batch, gen)
        logs["grad_norm"] = self.optimize("generator", loss, self.cfg.optim)
        self.update_emas()
        return logs

    def generator_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Regression + weight · DMD on the x₀ predictions of one draw of inputs."""
        _, target, text = batch
        x, sigma, condition = self.inputs(batch, gen)
        x0 = self.predict(x, sigma, text, self.cfg.chunk_frames, condition)
        regression = chunk_mse(x0, target, sigma)
        distribution = dmd_loss(x0, self.dmd_direction(x0.detach(), text, gen))
        loss = regression + self.cfg.dmd.weight * distribution
        return loss, {"loss": regression.item(), "dmd_loss": distribution.item()}

    @torch.no_grad()
    def dmd_direction(self, x0: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """DMD's direction at x₀ (vidfx.train.dmd): fake − real score x₀ at one noise level per clip."""
        cfg = self.cfg.dmd
        assert self.real is not None and self.fake is not None
        with autocast(self.run, self.device):
            sigma = dmd_sigma((x0.shape[0],), gen, x0.device, self.cfg.shift, cfg.t_min, cfg.t_max)
            x_t = noisy(x0, torch.randn(x0.shape, generator=gen, device=x0.device), sigma)
            fake_x0 = predict_x0(self.fake, x_t, sigma, text, None)
            real_x0 = guided_x0(self.real, x_t, sigma, text, cfg.guidance, None)
            return dmd_direction(x0, fake_x0, real_x0)

    def critic_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gen: torch.Generator
    ) -> dict[str, float]:
        """The fake score's flow-matching loss on the generator's x₀ of fresh inputs (no generator gradient)."""
        cfg = self.cfg.dmd
        with torch.no_grad():
            x, sigma, condition = self.inputs(batch, gen)
            x0 = self.predict(x, sigma, batch[2], self.cfg.chunk_frames, condition)
        score_sigma = dmd_sigma((x0.shape[0],), gen, x0.device, self.cfg.shift, cfg.t_min, cfg.t_max)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        with autocast(self.run, self.device):
            loss = flow_loss(self.fake, x0, batch[2], score_sigma, noise)
        return {"critic_loss": loss.item(), "critic_grad_norm": self.optimize("fake_score", loss, cfg.critic_optim)}
