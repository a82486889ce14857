"""Real photographs for training (`vidfx dataset --real-imagery`): drawn from Debian's packaged sample photos,
deterministic, every source listed with its package and licence, and never a packaged video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidfx.data.looks import make_clip, write_dataset
from vidfx.data.packaged import FOOTAGE
from vidfx.data.scenes import DEBIAN_PICTURES, PICTURES, Picture, picture_file, real_pictures

pytestmark = pytest.mark.skipif(
    not all(Path(p.path).is_file() for p in DEBIAN_PICTURES.values()),
    reason="Debian's opencv-doc is not installed (bash scripts/setup.sh --data installs it)",
)


def test_real_pool_adds_the_debian_photos_and_clips_use_them() -> None:
    pool = real_pictures()
    assert set(pool) == set(PICTURES) | set(DEBIAN_PICTURES)
    clips = [make_clip(7, i, num_frames=5, size=(32, 48), pictures=pool, picture_share=0.75) for i in range(24)]
    used = {c.background for c in clips} & set(DEBIAN_PICTURES)
    assert len(used) >= 3, used
    again = make_clip(7, 3, num_frames=5, size=(32, 48), pictures=pool, picture_share=0.75)
    assert np.array_equal(again.source, clips[3].source)  # a pure function of (seed, index)
    # The default pool is untouched: no Debian picture unless asked for.
    assert not {make_clip(7, i, num_frames=5, size=(32, 48)).background for i in range(24)} & set(DEBIAN_PICTURES)


def test_dataset_with_real_imagery_is_deterministic_and_lists_its_sources(tmp_path: Path) -> None:
    def build(folder: Path) -> dict:
        write_dataset(folder, 3, seed=5, num_frames=5, size=(32, 32), looks=["thermal"], workers=1,
                      progress=False, real_imagery=True)  # fmt: skip
        return json.loads((folder / "dataset.json").read_text())

    info = build(tmp_path / "a")
    build(tmp_path / "b")
    # The clips themselves are pure functions of (seed, index) (test above). Their mp4 files are not compared:
    # write_dataset's H.264 files of one clip can differ between two writes in one process, with or without
    # real imagery (a known issue of the writer, not of the pictures).
    assert sorted(f.name for f in (tmp_path / "a" / "clips").iterdir()) == sorted(
        f.name for f in (tmp_path / "b" / "clips").iterdir()
    )
    assert (tmp_path / "a" / "captions.jsonl").read_text() == (tmp_path / "b" / "captions.jsonl").read_text()
    sources = {p["name"]: p for p in info["pictures"]}
    assert info["real_imagery"] and set(sources) == set(PICTURES) | set(DEBIAN_PICTURES)
    for p in sources.values():
        assert p["package"] and p["version"] and p["licence"] and p["path"], p
    fruits = sources["fruits"]
    assert fruits["package"] == "opencv-doc (Debian)" and "copyright" in fruits["licence"]
    assert sources["astronaut"]["package"] == "scikit-image (PyPI)"


def test_packaged_video_is_refused_as_training_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    clip = FOOTAGE["pedestrians"]
    monkeypatch.setitem(DEBIAN_PICTURES, "vtest", Picture("deb:opencv-doc", str(clip.path), "people", "photo"))
    with pytest.raises(ValueError, match="evaluation"):
        picture_file("vtest")


def test_dataset_command_takes_real_imagery(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "vidfx.cli", "dataset", str(out), "--num-clips", "2", "--frames", "5", "--size", "32",
           "32", "--looks", "thermal", "--workers", "1", "--no-contact-sheet", "--real-imagery"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "dataset.json").read_text())
    assert info["real_imagery"] and info["picture_share"] == 0.75
    assert any(p["package"] == "opencv-doc (Debian)" for p in info["pictures"])
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all("background" in line for line in lines)
