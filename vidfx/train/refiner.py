"""Training the detail refiner (vidfx.autoencoder.refiner) on the served model's own outputs.

Two steps, each resumable:

    build_refiner_data(pipe, "runs/refiner_data", num_clips=420)   # shards of (camera frame, look, base)
    train_refiner("runs/refiner_data", "runs/refiner", steps=4000)   # checkpoints/, losses.csv

*Data.* Clips come from the looks dataset's generator (`vidfx.data.looks.make_clip`) at 256 px on the short
side, at 4:3, 16:9 and 1:1 (`SIZE_CYCLE`), with the real photographs of `vidfx dataset --real-imagery`
(`real_pictures()`, 75% of backgrounds) — rendered in memory, so the targets are the looks themselves, not
H.264 copies. Each clip, 2×-downsampled, runs through the model being refined (its DiT and autoencoder, no
refiner: `pipe.refiner` is None) in every look, with one of the look's captions and a strength from
`strengths`, chunk by chunk as the live node runs it; the decoded frames at `keep` are the refiner's `base`
input, the clip's frame at 256 px its `guide`, the look rendered at 256 px its `target`. So the refiner learns
to fix what this DiT actually gets wrong. A shard holds `shard_clips` clips of one size and each sample's
caption (its metadata: a refiner told the look trains on their embeddings); `manifest.json` lists the settings
and every picture's source and licence, and a folder is only ever resumed with the same settings.

*Training.* L1 + edge L1 (`reconstruction_loss`: image gradients are where pencil strokes and faces live) +
a temporal term on pairs of successive kept frames (`temporal_loss`: the output's coarse change from one to
the next must be the look's, not the DiT's chunk-to-chunk jumps), AdamW with warm-up and cosine decay, batches
drawn from one shard at a time (one size) by (seed, step), no guide for a tenth of the batches
(text-to-video). Checkpoints as every vidfx run (vidfx.train.checkpoint).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vidfx.autoencoder.refiner import DetailRefiner, RefinerConfig, load_refiner
from vidfx.autoencoder.train import lr_at, reconstruction_loss
from vidfx.config import StreamSettings
from vidfx.data.looks import LOOKS, luma, make_clip
from vidfx.data.scenes import PICTURES, picture_sources, real_pictures
from vidfx.offline import stylize_frames
from vidfx.pipeline import StreamParams, StylePipeline
from vidfx.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vidfx.train.distributed import Dist
from vidfx.train.eval import ssim_map

SIZE_CYCLE = ((256, 352), (256, 352), (256, 448), (256, 352), (256, 256))  # shard i's (H, W): mostly 4:3
MANIFEST = "manifest.json"


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard_{index:04d}.safetensors"


def half_size(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) → (T, H/2, W/2, 3), 2×2 means (what the model sees of a 2× frame)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(x, 2).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def build_refiner_data(
    pipe: StylePipeline,
    out: str | Path,
    num_clips: int,
    seed: int = 7,
    looks: Sequence[str] = ("pencil_sketch", "thermal", "watercolor", "vintage_sepia", "comic", "night_vision"),
    frames: int = 17,
    keep: Sequence[int] = (1, 4, 7, 10, 13, 16),
    strengths: Sequence[float] = (0.5, 0.7, 0.7, 0.9),
    shard_clips: int = 12,
    sizes: Sequence[tuple[int, int]] = SIZE_CYCLE,
    real_imagery: bool = True,
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Write shards of (guide, target, base) samples (module docstring); shards already written are kept.
    Shard i's clips are `sizes[i % len(sizes)]` (H, W); `real_imagery=False` keeps to the wheels' pictures."""
    if pipe.refiner is not None:
        raise ValueError("build the refiner's data with the model it refines, without a refiner")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = real_pictures() if real_imagery else None
    manifest = {
        "num_clips": num_clips, "seed": seed, "looks": list(looks), "frames": frames, "keep": list(keep),
        "strengths": list(strengths), "shard_clips": shard_clips, "sizes": [list(s) for s in sizes],
        "model": pipe.name, "pictures": picture_sources(pictures or tuple(PICTURES)),
    }  # fmt: skip
    written = folder / MANIFEST
    if written.exists():  # resuming: the shards there must be these settings' (a manifest is never rewritten)
        old = json.loads(written.read_text())
        changed = sorted(k for k in manifest if k != "pictures" and old.get(k) != manifest[k])
        if changed:
            raise ValueError(f"{folder} holds samples built with other settings ({', '.join(changed)}): another folder")
    else:
        written.write_text(json.dumps(manifest, indent=1))
    defaults = StreamParams.from_settings(pipe.settings, StreamSettings())
    shards = (num_clips + shard_clips - 1) // shard_clips
    start = time.perf_counter()
    for shard in range(shards):
        path = _shard_path(folder, shard)
        if path.exists():
            continue
        size = sizes[shard % len(sizes)]
        guides, targets, bases, guide_of, captions_of = [], [], [], [], []
        for index in range(shard * shard_clips, min(num_clips, (shard + 1) * shard_clips)):
            clip = make_clip(seed, index, frames, size, looks=looks, pictures=pictures, picture_share=0.75)
            small = half_size(clip.source)
            rng = np.random.default_rng([seed, index, 3])
            first_guide = len(guides)
            guides.extend(clip.source[t] for t in keep)
            for look in looks:
                captions = LOOKS[look].captions
                caption = captions[int(rng.integers(len(captions)))]
                params = defaults.with_(
                    prompts=((caption, 1.0),), strength=float(strengths[int(rng.integers(len(strengths)))])
                )
                output = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in small), params)))
                for j, t in enumerate(keep):
                    targets.append(clip.styled[look][t])
                    bases.append(output[t])
                    guide_of.append(first_guide + j)
                    captions_of.append(caption)
        tensors = {
            "guide": torch.from_numpy(np.stack(guides)),
            "target": torch.from_numpy(np.stack(targets)),
            "base": torch.from_numpy(np.stack(bases)),
            "guide_of": torch.tensor(guide_of, dtype=torch.int64),
        }
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"size": json.dumps(size), "captions": json.dumps(captions_of)})
        tmp.replace(path)
        if progress is not None:
            done = min(num_clips, (shard + 1) * shard_clips)
            progress(f"refiner data: {done}/{num_clips} clips, {time.perf_counter() - start:.0f} s")
    return folder


def load_shards(
    folder: str | Path, embed: Callable[[str], torch.Tensor] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Every shard's tensors; with `embed` (caption → pooled text embedding (D,)), also "text" (N, D): each
    sample's caption embedded, for a refiner conditioned on the prompt."""
    paths = sorted(Path(folder).glob("shard_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no refiner data shards (build_refiner_data)")
    shards, embedded = [], {}
    for path in paths:
        shard = load_file(str(path))
        if embed is not None:
            with safe_open(str(path), "pt") as f:
                captions = json.loads((f.metadata() or {}).get("captions", "null"))
            if captions is None:
                raise ValueError(f"{path}: no captions (built before shards recorded them): rebuild the data")
            for caption in set(captions) - embedded.keys():
                embedded[caption] = embed(caption).float()
            shard["text"] = torch.stack([embedded[c] for c in captions])
        shards.append(shard)
    return shards


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1]."""
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def sample_batch(
    shards: Sequence[dict[str, torch.Tensor]], batch: int, seed: int, step: int, guide_dropout: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(base, guide or None, target, text or None) of step `step`, a pure function of (seed, step): `batch`
    pairs of successive kept frames of one clip in one look, the earlier frames first, then the later ones
    (2·batch); text where the shards carry it (`load_shards`' `embed`)."""
    rng = np.random.default_rng([seed, step])
    shard = shards[int(rng.integers(len(shards)))]
    guide_of = shard["guide_of"]
    # sample i+1 is the next kept frame of sample i's clip and look exactly where its guide is the next one
    starts = torch.nonzero(guide_of[1:] == guide_of[:-1] + 1)[:, 0]
    first = starts[torch.from_numpy(rng.integers(len(starts), size=batch))]
    idx = torch.cat([first, first + 1])
    guide = None if rng.random() < guide_dropout else _unit(shard["guide"][guide_of[idx]])
    text = shard["text"][idx] if "text" in shard else None
    return _unit(shard["base"][idx]), guide, _unit(shard["target"][idx]), text


def temporal_loss(output: torch.Tensor, target: torch.Tensor, block: int = 8) -> torch.Tensor:
    """L1 between the output's and the target's change from the earlier to the later frame of each pair
    (`sample_batch`'s layout), in `block`×`block` means: the coarse change the flicker measure counts. The
    base frames jump where the DiT's chunks do; this term teaches the refiner to change only as the look does."""
    n = output.shape[0] // 2
    change = (output[n:] - output[:n]) - (target[n:] - target[:n])
    return F.avg_pool2d(change, block).abs().mean()


def structure_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − the luma SSIM of output to target ((N, 3, H, W) in [-1, 1]), as the real-footage evaluation measures
    it (vidfx.data.real_footage). L1 scores every pixel's error alike; SSIM scores local contrast and structure
    — whether a stroke, a dot or an outline is where the look draws it — which is most of what pencil and comic
    lose."""
    return 1 - ssim_map(luma((output + 1) / 2), luma((target + 1) / 2)).mean()


def train_refiner(
    data: str | Path,
    run_dir: str | Path,
    steps: int = 4000,
    batch: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    guide_dropout: float = 0.1,
    edge_weight: float = 0.5,
    temporal_weight: float = 2.0,
    ssim_weight: float = 0.0,
    checkpoint_every: int = 250,
    cfg: RefinerConfig | None = None,
    init: str | Path | None = None,
    embed: Callable[[str], torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = print,
) -> DetailRefiner:
    """Train (or resume) a refiner on `data`'s shards (module docstring); returns it in eval mode. `batch`
    pairs of frames a step; `init`: start from these refiner weights (their configuration wins over `cfg`,
    except that the widenings a `cfg` asks for are added to them, zero-initialised: `initial_refiner`);
    `embed`: caption → pooled text embedding, for a refiner conditioned on the prompt."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    refiner = initial_refiner(cfg or RefinerConfig(), init)
    if refiner.cfg.text_dim and embed is None:
        raise ValueError("a refiner conditioned on the prompt needs `embed` to train")
    shards = load_shards(data, embed if refiner.cfg.text_dim else None)
    opt = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=0.0)
    dist = Dist()
    done, history = 0, []
    latest = latest_checkpoint(run)
    if latest is not None:
        meta = load_checkpoint(latest, {"refiner": refiner}, {}, {"refiner": (refiner, opt)})
        done, history = int(meta["step"]), list(meta.get("history", []))
    refiner.train()
    start, window = time.perf_counter(), []
    while done < steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(done, steps, lr, warmup_steps=100, min_lr_ratio=0.05)
        base, guide, target, text = sample_batch(shards, batch, seed, done, guide_dropout)
        output = refiner(base, guide, text)
        loss = reconstruction_loss(output, target, edge_weight) + temporal_weight * temporal_loss(output, target)
        if ssim_weight:
            loss = loss + ssim_weight * structure_loss(output, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        window.append(loss.item())
        if done % 50 == 0 or done == steps:
            history.append([done, float(np.mean(window))])
            if progress is not None:
                rate = (time.perf_counter() - start) / len(window)
                progress(f"refiner step {done}/{steps} loss {history[-1][1]:.4f} ({rate:.2f} s/step)")
            start, window = time.perf_counter(), []
        if done % checkpoint_every == 0 or done == steps:
            save_checkpoint(run, done, dist, {"refiner": refiner}, {}, {"refiner": (refiner, opt)},
                            {"history": history, "config": json.dumps(asdict(refiner.cfg))})  # fmt: skip
            with open(run / "losses.csv", "w", newline="") as f:
                csv.writer(f).writerows([["step", "loss"], *history])
    return refiner.eval()


def initial_refiner(cfg: RefinerConfig, init: str | Path | None) -> DetailRefiner:
    """A new refiner of `cfg`, or `init`'s weights, widened by `cfg`'s prompt conditioning, tone curve, frame
    position, colour matrix and channel curves where `init` has none: the new parameters start at zero, so the
    widened refiner computes what `init` did."""
    if init is None:
        return DetailRefiner(cfg).train()
    loaded = load_refiner(init)
    widenings = ("text_dim", "tone_bins", "position", "colour_matrix", "channel_bins")
    extra = {k: getattr(cfg, k) or getattr(loaded.cfg, k) for k in widenings}
    if all(getattr(loaded.cfg, k) == v for k, v in extra.items()):
        return loaded.train()
    other = [k for k in widenings if getattr(loaded.cfg, k) and extra[k] != getattr(loaded.cfg, k)]
    if other:  # its weights would be sliced into another shape
        raise ValueError(f"{init}: {', '.join(other)} differ from the refiner's own; a widening only adds")
    # the head's new rows are appended: a function's rows can only be added after every existing function's
    order = ("tone_bins", "colour_matrix", "channel_bins")
    kept = [i for i, k in enumerate(order) if getattr(loaded.cfg, k)]
    early = [k for i, k in enumerate(order) if extra[k] and not getattr(loaded.cfg, k) and i < max(kept, default=-1)]
    if early:
        raise ValueError(
            f"{init}: {', '.join(early)} cannot be added before the refiner's own guide functions; train both at once"
        )
    widened = DetailRefiner(replace(loaded.cfg, **extra))
    state = widened.state_dict()
    for name, value in loaded.state_dict().items():
        state[name][tuple(slice(0, n) for n in value.shape)] = value  # the head's new output rows stay zero
    widened.load_state_dict(state)
    return widened.train()
