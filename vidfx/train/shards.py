"""Sharded safetensors datasets with a JSON manifest: the on-disk form of encoded latents and ODE pairs.

A dataset folder holds `manifest.json` and shards `shard-00000.safetensors`, … . Every shard stores tensors
whose first axis is the sample (`count` rows); the manifest lists the shards in order, the total count and
free-form `meta` (shapes, the encoders used, per-sample captions). Writing is resumable: a shard file is
written under a temporary name and renamed, then the manifest is rewritten (also by rename), so a killed
writer leaves at most one orphaned temporary file and `ShardWriter.done` says how many samples are safely on
disk. Reading is lazy (`safe_open` memory-maps; `rows(name, idx)` reads only the rows asked for).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

MANIFEST = "manifest.json"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class ShardWriter:
    """Appends shards to a dataset folder; reopening a folder continues after its last complete shard."""

    def __init__(self, folder: str | Path, kind: str, meta: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / MANIFEST
        if path.exists():
            self.manifest = json.loads(path.read_text())
            if self.manifest["kind"] != kind:
                raise ValueError(f"{path}: holds {self.manifest['kind']!r}, not {kind!r}")
            if self.manifest["meta"].get("fingerprint") != meta.get("fingerprint"):
                raise ValueError(
                    f"{path}: was written with other settings ({self.manifest['meta'].get('fingerprint')} vs "
                    f"{meta.get('fingerprint')}); use a new folder"
                )
        else:
            self.manifest = {"kind": kind, "meta": dict(meta), "count": 0, "shards": []}
            _write_json_atomic(path, self.manifest)

    @property
    def done(self) -> int:
        """Samples already on disk."""
        return int(self.manifest["count"])

    def set_meta(self, **items: Any) -> None:
        self.manifest["meta"].update(items)
        _write_json_atomic(self.folder / MANIFEST, self.manifest)

    def write(self, tensors: Mapping[str, torch.Tensor], meta_rows: Mapping[str, list] | None = None) -> None:
        """One shard (samples on the first axis); `meta_rows` extend per-sample lists in the manifest meta.
        Tensors whose name starts with `_` are per-shard (e.g. ragged caption embeddings) and not counted."""
        counts = {v.shape[0] for k, v in tensors.items() if not k.startswith("_")}
        if len(counts) != 1:
            raise ValueError(
                f"shard tensors disagree on the sample count: { {k: v.shape for k, v in tensors.items()} }"
            )
        count = counts.pop()
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        tmp = self.folder / (name + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self.folder / name)
        for key, rows in (meta_rows or {}).items():
            self.manifest["meta"].setdefault(key, []).extend(rows)
        self.manifest["shards"].append({"file": name, "count": count})
        self.manifest["count"] += count
        _write_json_atomic(self.folder / MANIFEST, self.manifest)


class ShardReader:
    """Random access to the rows of a sharded dataset."""

    def __init__(self, folder: str | Path, kind: str | None = None) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.folder}: no {MANIFEST} (not a vidfx dataset folder)")
        self.manifest = json.loads(path.read_text())
        if kind is not None and self.manifest["kind"] != kind:
            raise ValueError(f"{self.folder}: holds {self.manifest['kind']!r}, expected {kind!r}")
        self.meta: dict[str, Any] = self.manifest["meta"]
        self._handles = [safe_open(str(self.folder / s["file"]), framework="pt") for s in self.manifest["shards"]]
        self._starts = []
        start = 0
        for s in self.manifest["shards"]:
            self._starts.append(start)
            start += s["count"]
        self.count = start
        if self.count == 0:
            raise ValueError(f"{self.folder}: the dataset is empty")

    def __len__(self) -> int:
        return self.count

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row in shard) of a global sample index."""
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:  # last shard whose start ≤ index
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo, index - self._starts[lo]

    def shard_tensor(self, shard: int, name: str) -> torch.Tensor:
        return self._handles[shard].get_tensor(name)

    def row(self, name: str, index: int) -> torch.Tensor:
        shard, i = self.locate(index)
        return self._handles[shard].get_slice(name)[i : i + 1][0]

    def rows(self, name: str, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.row(name, i) for i in indices])
