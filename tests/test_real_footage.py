"""The real-footage evaluation (vidfx.data.real_footage): its scale is pinned by the two ends (doing nothing
scores 0, the perfect model at the model's resolution scores 1), and `vidfx eval --real-footage` runs on a short
packaged clip with the shipped default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidfx.data.looks import stylize
from vidfx.data.packaged import FOOTAGE, refuse_for_training
from vidfx.data.real_footage import perfect_rendering, read_footage, score_footage
from vidfx.frames import FrameGeometry

TREE = FOOTAGE["tree"]
needs_footage = pytest.mark.skipif(
    not TREE.installed, reason="Debian's opencv-doc is not installed (bash scripts/setup.sh --dev installs it)"
)


def _moving_picture(frames: int = 6, h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth picture panning right 2 px a frame: uint8 (T, H, W, 3)."""
    yy, xx = np.mgrid[:h, : w + 2 * frames]
    base = np.stack(
        [128 + 100 * np.sin(xx / 9.0), 128 + 90 * np.cos(yy / 7.0), 128 + 60 * np.sin((xx + yy) / 13.0)], -1
    )
    return np.stack([base[:, 2 * t : 2 * t + w] for t in range(frames)]).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("look", ["thermal", "pencil_sketch", "watercolor"])
def test_gain_share_is_zero_for_the_input_and_one_for_the_perfect_model(look: str) -> None:
    source = _moving_picture()
    geometry = FrameGeometry.for_camera(source.shape[1:3], (32, 32), "aspect", multiple=16)
    assert geometry.model == (32, 48)
    nothing = score_footage("pan", look, source, source, geometry)
    perfect = score_footage("pan", look, source, perfect_rendering(source, look, geometry), geometry)
    exact = score_footage("pan", look, source, stylize(source, look), geometry)
    assert nothing.gain_share == pytest.approx(0.0, abs=1e-9)
    assert perfect.gain_share == pytest.approx(1.0, abs=1e-9)
    assert exact.gain_share > 1.0 and exact.ssim_luma == pytest.approx(1.0, abs=1e-4)  # beyond the model's reach
    assert exact.flicker_ratio == pytest.approx(1.0)  # the look's own flicker
    assert nothing.psnr == nothing.psnr_input < perfect.psnr == perfect.psnr_perfect
    assert nothing.ssim_luma == nothing.ssim_luma_input and perfect.ssim_luma == perfect.ssim_luma_perfect


def test_training_refuses_real_video() -> None:
    for clip in FOOTAGE.values():
        with pytest.raises(ValueError, match="evaluation"):
            refuse_for_training(clip.path)
    with pytest.raises(ValueError, match="video"):
        refuse_for_training("/somewhere/else/holiday.MP4")
    refuse_for_training("/usr/share/doc/opencv-doc/examples/data/fruits.jpg")  # a still picture is fine


@needs_footage
def test_read_footage_keeps_the_aspect_at_the_short_side() -> None:
    frames = read_footage(TREE.path, 5, TREE.start_s, short_side=120)
    assert frames.shape == (5, 120, 160, 3) and frames.dtype == np.uint8
    assert frames.std() > 10 and np.abs(np.diff(frames.astype(int), axis=0)).mean() > 0.1  # real, moving


@needs_footage
def test_eval_real_footage_runs_on_a_short_clip(tmp_path: Path) -> None:
    out = tmp_path / "footage.json"
    grid = tmp_path / "grid.png"
    cmd = [sys.executable, "-m", "vidfx.cli", "eval", "--model", "default", "--real-footage", "--footage", "tree",
           "--footage-frames", "5", "--footage-size", "120", "--looks", "thermal,vintage_sepia",
           "--out", str(out), "--grid", str(grid)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "share of reachable gain" in done.stdout
    results = json.loads(out.read_text())
    assert results["fit"] == "aspect" and results["sources"]["tree"]["package"] == "opencv-doc"
    assert [r["look"] for r in results["looks"]] == ["thermal", "vintage_sepia"]
    for clip in results["clips"]:
        assert clip["camera"] == [120, 160] and clip["model"] == [256, 352]  # 4:3 at the model's short side
        # The shipped model moves the input towards the look, short of the perfect model, without runaway flicker.
        assert clip["psnr_input"] < clip["psnr"] < clip["psnr_perfect"]
        assert 0.0 < clip["gain_share"] < 1.0 and 0.0 < clip["ssim_luma"] <= 1.0
        assert 0.0 < clip["flicker_ratio"] < 10.0
    assert grid.stat().st_size > 10_000
