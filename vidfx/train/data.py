"""Training data: video clips from a folder, their captions, and the pre-encoded latent cache.

Folder layout (what `vidfx train encode` reads)::

    videos/
      captions.jsonl      one JSON object a line, one line per video
      beach.mp4
      city.mov
      ...

`captions.jsonl` lines look like::

    {"file": "beach.mp4", "captions": ["waves on a beach", "a sunny beach, slow waves"], "look": "watercolor"}

* `file` — a video, as a path relative to the folder (any container/codec PyAV/FFmpeg decodes);
* `captions` — one or more captions; each training sample picks one at random, so paraphrases teach the
  model that they mean the same;
* `look` — optional (string or null): the clip's visual style, used by `vidfx eval` to measure "style
  reached" per look;
* `source` — optional: entries with the same `source` (one scene rendered in several looks, as
  `vidfx dataset` writes them) always fall in the same split, so no scene is both trained on and held out.

Other keys are ignored; videos not listed are not used. `vidfx dataset OUT` writes a folder in this format.

Clips: every video is decoded with PyAV, resampled to `fps` by sample-and-hold (output frame k shows the
last source frame whose timestamp is ≤ k/fps), scaled to cover `size` and centre-cropped, then cut into
consecutive non-overlapping clips of `frames` frames (a trailing remainder is dropped). Frames become
(3, T, H, W) float in [-1, 1], the autoencoder contract.

Split: a video belongs to the held-out split when the SHA-1 of its `source` (else its file name), read as a
fraction, is below `heldout`; the split is a pure function of the names, so encode and eval agree without
any list.

Latent cache (`encode_dataset`): shards (see `shards.py`) with per clip `latents` (C, F', H', W') — the
autoencoder's normalised latents — and every caption's text embedding, stored ragged: `text` (M, L, D) with
`text_offsets` (n + 1,) so clip i's captions are rows offsets[i]:offsets[i+1] of its shard. The DiT stages
read only this cache; the autoencoder and text encoder never run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import torch
from tqdm import tqdm

from vidfx.train.shards import ShardReader, ShardWriter

CAPTIONS_FILE = "captions.jsonl"


class FrameEncoder(Protocol):
    """What the cache needs of an autoencoder (vidfx.autoencoder.base.VideoAutoencoder)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...


class PromptEncoder(Protocol):
    """What the cache needs of a text encoder (vidfx.text.base.TextEncoder)."""

    text_dim: int
    max_tokens: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


# -- captions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionEntry:
    file: str  # path relative to the folder
    captions: tuple[str, ...]
    look: str | None = None
    source: str | None = None  # entries sharing a source share a split (one scene rendered in several looks)

    @property
    def split_key(self) -> str:
        return self.source or self.file


def read_captions(folder: str | Path) -> dict[str, CaptionEntry]:
    """The folder's captions.jsonl, by file name; malformed lines raise ValueError naming the line."""
    path = Path(folder) / CAPTIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (see vidfx.train.data for the format)")
    entries: dict[str, CaptionEntry] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
        file, caps, look, source = obj.get("file"), obj.get("captions"), obj.get("look"), obj.get("source")
        if not isinstance(file, str) or not file:
            raise ValueError(f"{path}:{n}: 'file' must be a non-empty string")
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c for c in caps):
            raise ValueError(f"{path}:{n}: 'captions' must be a non-empty list of non-empty strings")
        if look is not None and not isinstance(look, str):
            raise ValueError(f"{path}:{n}: 'look' must be a string or null")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"{path}:{n}: 'source' must be a string or null")
        if file in entries:
            raise ValueError(f"{path}:{n}: {file!r} appears twice")
        entries[file] = CaptionEntry(file, tuple(caps), look, source)
    return entries


def split_of(key: str, heldout: float) -> str:
    """'heldout' or 'train', from the SHA-1 of a split key (the entry's `source`, else its `file`)."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    return "heldout" if h < heldout else "train"


# -- decoding ----------------------------------------------------------------------------------------------


def _cover_crop(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """Scale to cover (width, height) keeping the aspect ratio, centre-crop: (height, width, 3) uint8."""
    scale = max(width / frame.width, height / frame.height)
    sw, sh = max(width, round(frame.width * scale)), max(height, round(frame.height * scale))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24").to_ndarray()
    top, left = (sh - height) // 2, (sw - width) // 2
    return rgb[top : top + height, left : left + width]


def decode_frames(path: str | Path, fps: float, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Frames of a video at a fixed rate, (H, W, 3) uint8, `size` = (height, width); sample-and-hold."""
    height, width = size
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        src_rate = float(stream.average_rate or stream.guessed_rate or Fraction(25))
        k, t0, prev, prev_t = 0, None, None, 0.0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            t0 = frame.time if t0 is None else t0
            t = frame.time - t0
            while prev is not None and k / fps < t - 1e-6:
                yield prev
                k += 1
            prev, prev_t = _cover_crop(frame, width, height), t
        end = prev_t + 1.0 / src_rate
        while prev is not None and k / fps < end - 1e-6:
            yield prev
            k += 1


def frames_to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.stack(frames)).float()
    return (x / 127.5 - 1.0).permute(3, 0, 1, 2).contiguous()


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] → (T, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


@dataclass(frozen=True)
class Clip:
    file: str
    index: int  # clip number within its video
    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]
    captions: tuple[str, ...]
    look: str | None


def iter_clips(
    folder: str | Path,
    frames: int,
    fps: float,
    size: tuple[int, int],
    split: str = "train",
    heldout: float = 0.0,
    max_clips_per_video: int | None = None,
) -> Iterator[Clip]:
    """Clips of the videos listed in the folder's captions.jsonl, in file-name order; `split` is 'train',
    'heldout' or 'all'."""
    folder = Path(folder)
    entries = read_captions(folder)
    missing = sorted(f for f in entries if not (folder / f).is_file())
    if missing:
        raise FileNotFoundError(f"{folder}: captions.jsonl names missing video(s): {missing[:3]}")
    for name in sorted(entries):
        entry = entries[name]
        if split != "all" and split_of(entry.split_key, heldout) != split:
            continue
        buf: list[np.ndarray] = []
        n = 0
        for frame in decode_frames(folder / name, fps, size):
            buf.append(frame)
            if len(buf) == frames:
                yield Clip(name, n, frames_to_tensor(buf), entry.captions, entry.look)
                buf, n = [], n + 1
                if max_clips_per_video is not None and n >= max_clips_per_video:
                    break


# -- the latent cache --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_dataset(
    folder: str | Path,
    out: str | Path,
    autoencoder: FrameEncoder,
    text_encoder: PromptEncoder,
    frames: int,
    fps: float,
    size: tuple[int, int],
    heldout: float = 0.0,
    split: str = "train",
    shard_size: int = 64,
    batch_size: int = 4,
    max_clips_per_video: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    names: dict[str, str] | None = None,
    progress: bool = True,
) -> int:
    """Encode every clip of `folder` (split `split`) into a latent cache at `out`; returns the clip count.

    Resumable: clips already in `out` are skipped (clip order is deterministic), so a killed run continues.
    `names` (e.g. {"autoencoder": "tiny:...", "text_encoder": "hash"}) are recorded in the manifest.
    """
    # The normalisation the latents were made with: a DiT trained on them only works behind an autoencoder
    # with the same statistics (the export checks). Part of the fingerprint: a resumed cache cannot mix two.
    stats = {
        name: [round(float(v), 6) for v in getattr(autoencoder, name)]
        for name in ("latent_mean", "latent_std")
        if isinstance(getattr(autoencoder, name, None), torch.Tensor)
    }
    settings = {
        **stats,
        "frames": frames,
        "fps": fps,
        "size": list(size),
        "heldout": heldout,
        "split": split,
        "max_clips_per_video": max_clips_per_video,
        "dtype": str(dtype).removeprefix("torch."),
        **(names or {}),
    }
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    meta = {**settings, "fingerprint": fingerprint, "source": str(Path(folder).resolve())}
    writer = ShardWriter(out, "latents", meta)
    clips = iter_clips(folder, frames, fps, size, split, heldout, max_clips_per_video)
    skip = writer.done
    total = skip
    pending: list[Clip] = []
    bar = tqdm(desc="encode", unit="clip", initial=skip, disable=not progress)

    def flush(batch: list[Clip]) -> None:
        nonlocal total
        lat = []
        for i in range(0, len(batch), batch_size):
            px = torch.stack([c.frames for c in batch[i : i + batch_size]]).to(device)
            lat.append(autoencoder.encode(px).to("cpu", dtype))
        caps = [c for clip in batch for c in clip.captions]
        text = text_encoder.encode(caps).to("cpu", dtype)
        offsets = torch.tensor(np.cumsum([0] + [len(c.captions) for c in batch]), dtype=torch.int64)
        writer.write(
            {"latents": torch.cat(lat), "_text": text, "_text_offsets": offsets},
            {
                "files": [c.file for c in batch],
                "clip_index": [c.index for c in batch],
                "captions": [list(c.captions) for c in batch],
                "looks": [c.look for c in batch],
            },
        )
        total += len(batch)
        bar.update(len(batch))

    for n, clip in enumerate(clips):
        if n < skip:
            continue
        pending.append(clip)
        if len(pending) == shard_size:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    bar.close()
    if total == 0:
        raise ValueError(f"{folder}: no clip of {frames} frames in split {split!r}")
    if "latent_shape" not in writer.manifest["meta"]:
        reader = ShardReader(out, "latents")
        writer.set_meta(
            latent_shape=list(reader.row("latents", 0).shape),
            text_shape=list(reader.shard_tensor(0, "_text").shape[1:]),
        )
    return total


@dataclass
class Batch:
    """What a DiT stage trains on: clean latents and one text embedding per sample."""

    latents: torch.Tensor  # (B, C, F, H, W)
    text: torch.Tensor  # (B, L, D)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.latents.to(device), self.text.to(device))


class LatentDataset:
    """The latent cache: clip i's latents and, per draw, one of its captions' embeddings at random."""

    def __init__(self, folder: str | Path) -> None:
        self.reader = ShardReader(folder, "latents")
        self.meta = self.reader.meta
        self._text = [self.reader.shard_tensor(s, "_text") for s in range(len(self.reader.manifest["shards"]))]
        self._offsets = [
            self.reader.shard_tensor(s, "_text_offsets") for s in range(len(self.reader.manifest["shards"]))
        ]

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.reader.row("latents", 0).shape)

    @property
    def text_shape(self) -> tuple[int, ...]:
        return tuple(self._text[0].shape[1:])

    def captions_of(self, index: int) -> torch.Tensor:
        """(num_captions, L, D) embeddings of clip `index`."""
        shard, row = self.reader.locate(index)
        off = self._offsets[shard]
        return self._text[shard][int(off[row]) : int(off[row + 1])]

    def text(self, indices: Sequence[int], gen: torch.Generator) -> torch.Tensor:
        out = []
        for i in indices:
            caps = self.captions_of(i)
            pick = int(torch.randint(len(caps), (1,), generator=gen))
            out.append(caps[pick])
        return torch.stack(out).float()

    def batch(self, indices: Sequence[int], gen: torch.Generator) -> Batch:
        return Batch(self.reader.rows("latents", indices).float(), self.text(indices, gen))


class DataOrder:
    """Which samples each process trains on at each step: epochs of seeded permutations, the global batch
    split across ranks. A pure function of (seed, step, rank): resuming needs no loader state."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return self._perm

    def indices(self, step: int, rank: int, world: int, batch: int) -> list[int]:
        first = (step * world + rank) * batch
        out = []
        for pos in range(first, first + batch):
            out.append(int(self._permutation(pos // self.size)[pos % self.size]))
        return out


def write_latent_cache(
    out: str | Path,
    latents: torch.Tensor,
    texts: Sequence[torch.Tensor],
    captions: Sequence[Sequence[str]] | None = None,
    looks: Sequence[str | None] | None = None,
    shard_size: int = 64,
    meta: dict | None = None,
) -> None:
    """A latent cache from tensors already in hand (synthetic data, tests): latents (N, C, F, H, W) and, per
    clip, its caption embeddings (k_i, L, D)."""
    n = latents.shape[0]
    if len(texts) != n:
        raise ValueError(f"{n} clips but {len(texts)} caption sets")
    captions = captions or [[f"caption {j}" for j in range(len(t))] for t in texts]
    looks = looks or [None] * n
    writer = ShardWriter(out, "latents", {"fingerprint": "tensors", **(meta or {})})
    for s in range(writer.done, n, shard_size):
        ids = range(s, min(s + shard_size, n))
        offsets = torch.tensor(np.cumsum([0] + [len(texts[i]) for i in ids]), dtype=torch.int64)
        writer.write(
            {
                "latents": latents[s : s + len(ids)],
                "_text": torch.cat([texts[i] for i in ids]),
                "_text_offsets": offsets,
            },
            {
                "files": [f"clip{i}" for i in ids],
                "clip_index": [0] * len(ids),
                "captions": [list(captions[i]) for i in ids],
                "looks": [looks[i] for i in ids],
            },
        )
    writer.set_meta(latent_shape=list(latents.shape[1:]), text_shape=list(texts[0].shape[1:]))
