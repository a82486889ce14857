"""A small CNN that tells which look (or "none") a short window of frames is in.

Two uses: a check that the looks of `vidfx.data.looks` are really distinct (its held-out accuracy), and a
feature network for a Fréchet-distance proxy between generated and reference clips (`features`: the
penultimate embedding).

Input: (B, T, 3, H, W) float in [0, 1], T = `config.frames`; frames are resized to `config.size` square and
stacked along channels, so the first convolution sees colour and short-range motion (grain flicker) at once.

Lifecycle of the weights: `train_look_classifier` -> `save_look_classifier` (safetensors; the config rides in
the file's metadata) -> `load_look_classifier`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidfx.data.looks import LOOKS, Clip, read_manifest, read_video


def _default_classes() -> tuple[str, ...]:
    return ("none", *LOOKS)


@dataclass(frozen=True)
class LookClassifierConfig:
    classes: tuple[str, ...] = field(default_factory=_default_classes)  # index 0: the plain source
    frames: int = 4  # window length
    size: int = 64  # frames are resized to size x size
    widths: tuple[int, ...] = (32, 64, 128)  # stem width, then one stride-2 stage per further entry
    stem_stride: int = 2  # the stem is a (2 stride)^2 patch convolution: every pixel is seen once or more
    embed_dim: int = 128  # width of `features`

    @property
    def looks(self) -> tuple[str, ...]:
        """The looks it tells apart, those of the dataset it was trained on: every class but the source."""
        return tuple(c for c in self.classes if c != "none")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LookClassifierConfig:
        d = json.loads(text)
        return cls(classes=tuple(d["classes"]), frames=d["frames"], size=d["size"], widths=tuple(d["widths"]),
                   stem_stride=d["stem_stride"], embed_dim=d["embed_dim"])  # fmt: skip


def _conv(cin: int, cout: int, stride: int, kernel: int = 3) -> nn.Sequential:
    # GroupNorm, not BatchNorm: features of one clip must not depend on the rest of its batch.
    conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - stride + 1) // 2)
    return nn.Sequential(conv, nn.GroupNorm(min(8, cout), cout), nn.GELU())


class LookClassifier(nn.Module):
    def __init__(self, config: LookClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        # An overlapping patch stem: fine textures (grain, hatching, halftone dots) reach the first features,
        # yet the stages run at 1 / stem_stride^2 of the pixels.
        self.stem = _conv(3 * config.frames, w[0], config.stem_stride, kernel=2 * config.stem_stride)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 2), _conv(cout, cout, 1)) for cin, cout in zip(w[:-1], w[1:], strict=True)
        )
        self.embed = nn.Linear(2 * w[-1], config.embed_dim)
        self.head = nn.Linear(config.embed_dim, len(config.classes))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T*3, size, size), centred."""
        b, t, c, h, w = x.shape
        if t != self.config.frames or c != 3:
            raise ValueError(f"expected (B, {self.config.frames}, 3, H, W) frames, got {tuple(x.shape)}")
        s = self.config.size
        x = x.reshape(b * t, c, h, w)  # (B*T, 3, H, W): resize frame by frame
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return x.reshape(b, t * c, s, s) - 0.5

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (B, embed_dim) of frames (B, T, 3, H, W) in [0, 1]."""
        h = self.stem(self.prepare(x))
        for stage in self.stages:
            h = stage(h)
        # Mean and max: the mean carries palette and tone, the max the sparse bright marks (edges, dots).
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return F.gelu(self.embed(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, len(classes))."""
        return self.head(self.features(x))


# -------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Windows:
    frames: torch.Tensor  # uint8 (N, T, 3, size, size)
    labels: torch.Tensor  # int64 (N,) index into the config's classes
    clips: torch.Tensor  # int64 (N,) the clip each window came from (to hold out whole clips)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frames[idx].float() / 255.0, self.labels[idx]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def video_windows(video: np.ndarray, frames: int, size: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` random windows of `frames` frames of uint8 (T, H, W, 3): uint8 (count, frames, 3, s, s)."""
    starts = rng.integers(0, video.shape[0] - frames + 1, size=count)
    picked = np.stack([video[s : s + frames] for s in starts])  # (count, frames, H, W, 3)
    x = torch.from_numpy(picked).flatten(0, 1).permute(0, 3, 1, 2).float()  # (count*frames, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x + 0.5).clamp(0, 255).to(torch.uint8).unflatten(0, (count, frames))


def _label(config: LookClassifierConfig, look: str | None) -> int:
    return config.classes.index("none" if look is None else look)


def windows_from_clips(
    clips: Iterable[Clip], config: LookClassifierConfig, per_video: int = 1, seed: int = 0
) -> Windows:
    """Windows of in-memory clips: the source ("none") and every look each clip carries."""
    frames, labels, ids = [], [], []
    for clip in clips:
        videos = [(None, clip.source), *((k, v) for k, v in clip.styled.items() if k in config.classes)]
        for look, video in videos:
            rng = np.random.default_rng([seed, clip.index, _label(config, look)])
            frames.append(video_windows(video, config.frames, config.size, per_video, rng))
            labels += [_label(config, look)] * per_video
            ids += [clip.index] * per_video
    return Windows(torch.cat(frames), torch.tensor(labels), torch.tensor(ids))


def windows_from_dataset(
    folder: str | Path,
    config: LookClassifierConfig,
    per_video: int = 1,
    max_clips: int | None = None,
    seed: int = 0,
    workers: int = 2,
) -> Windows:
    """Windows decoded from a dataset written by `write_dataset` (so with its codec artefacts). Files are
    decoded on `workers` threads (the decoder releases the GIL); each file's windows come from its own seed,
    so the result does not depend on the thread count."""
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(folder)
    records = [r for r in read_manifest(folder) if (r["look"] or "none") in config.classes]
    if max_clips is not None:
        keep = set(sorted({r["clip"] for r in records})[:max_clips])
        records = [r for r in records if r["clip"] in keep]

    def load(r: dict) -> torch.Tensor:
        rng = np.random.default_rng([seed, r["clip"], _label(config, r["look"])])
        return video_windows(read_video(folder / r["file"]), config.frames, config.size, per_video, rng)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        frames = list(pool.map(load, records))
    labels = torch.tensor([_label(config, r["look"]) for r in records]).repeat_interleave(per_video)
    clips = torch.tensor([r["clip"] for r in records]).repeat_interleave(per_video)
    return Windows(torch.cat(frames), labels, clips)


# ------------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainReport:
    model: LookClassifier
    accuracy: float  # on held-out clips
    per_class: dict[str, float]  # held-out accuracy per class
    confusion: np.ndarray  # (classes, classes): rows true, columns predicted, held-out counts
    losses: list[float]  # training loss per step
    num_train: int
    num_test: int
    seconds: float


@torch.no_grad()
def predict(model: LookClassifier, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted class indices for uint8 windows (N, T, 3, s, s)."""
    model.eval()
    out = [model(frames[i : i + batch_size].float() / 255.0).argmax(-1) for i in range(0, len(frames), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def split_by_clip(windows: Windows, holdout: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test window indices, holding out whole clips (all their looks), so test motion is unseen."""
    ids = np.unique(windows.clips.numpy())
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(len(ids) * holdout))) if holdout > 0 else 0
    test_ids = torch.from_numpy(rng.permutation(ids)[:n_test])
    is_test = torch.isin(windows.clips, test_ids)
    return torch.nonzero(~is_test)[:, 0], torch.nonzero(is_test)[:, 0]


def fit(
    model: LookClassifier,
    windows: Windows,
    train_idx: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """AdamW with a cosine schedule and horizontal-flip augmentation; returns the loss of every step."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="look classifier", unit="step", disable=not progress):
        idx = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        x, y = windows.batch(idx)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def evaluate(model: LookClassifier, windows: Windows, idx: torch.Tensor) -> tuple[float, dict[str, float], np.ndarray]:
    """Accuracy, per-class accuracy and confusion matrix on the windows `idx`."""
    classes = model.config.classes
    pred = predict(model, windows.frames[idx])
    true = windows.labels[idx]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (true.numpy(), pred.numpy()), 1)
    per_class = {c: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, c in enumerate(classes)}
    accuracy = float((pred == true).float().mean()) if len(idx) else float("nan")
    return accuracy, per_class, confusion


def train_look_classifier(
    dataset: str | Path | Windows,
    out: str | Path | None = None,
    config: LookClassifierConfig | None = None,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.2,
    per_video: int = 2,
    max_clips: int | None = 1000,
    seed: int = 0,
    progress: bool = True,
) -> TrainReport:
    """Trains on a written dataset folder (or ready `Windows`), reports accuracy on held-out clips, and saves
    the weights to `out` (safetensors) when given."""
    config = config or LookClassifierConfig()
    t0 = time.perf_counter()
    if isinstance(dataset, Windows):
        windows = dataset
    else:
        windows = windows_from_dataset(dataset, config, per_video=per_video, max_clips=max_clips, seed=seed)
    train_idx, test_idx = split_by_clip(windows, holdout, seed)
    torch.manual_seed(seed)
    model = LookClassifier(config)
    losses = fit(model, windows, train_idx, steps, batch_size, lr, seed, progress)
    accuracy, per_class, confusion = evaluate(model, windows, test_idx)
    if out is not None:
        save_look_classifier(model, out)
    return TrainReport(model, accuracy, per_class, confusion, losses, len(train_idx), len(test_idx),
                       time.perf_counter() - t0)  # fmt: skip


def save_look_classifier(model: LookClassifier, path: str | Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"config": model.config.to_json(), "format": "vidfx.look_classifier"})


def load_look_classifier(path: str | Path, device: str | torch.device = "cpu") -> LookClassifier:
    from safetensors import safe_open

    from vidfx.weights import CheckpointError, load_into, load_state_dict

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise CheckpointError(f"{path}: no look-classifier config in the safetensors metadata")
    model = LookClassifier(LookClassifierConfig.from_json(meta["config"]))
    load_into(model, load_state_dict(path, device), path)
    return model.to(device).eval()


def classify(model: LookClassifier, video: np.ndarray, stride: int | None = None) -> dict[str, float]:
    """Mean class probabilities over the windows of one uint8 video (T, H, W, 3)."""
    t = model.config.frames
    stride = stride or t
    if video.shape[0] < t:
        raise ValueError(f"the classifier looks at {t} frames at a time; the video has {video.shape[0]}")
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    wins = torch.stack([x[s : s + t] for s in range(0, x.shape[0] - t + 1, stride)])
    with torch.no_grad():
        probs = model.eval()(wins).softmax(-1).mean(0)
    return dict(zip(model.config.classes, probs.tolist(), strict=True))


__all__: Sequence[str] = (
    "LookClassifier", "LookClassifierConfig", "TrainReport", "Windows", "classify", "evaluate", "fit",
    "load_look_classifier", "predict", "save_look_classifier", "split_by_clip", "train_look_classifier",
    "video_windows", "windows_from_clips", "windows_from_dataset",
)  # fmt: skip
