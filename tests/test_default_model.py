"""The shipped default model (vidfx/weights/default): it loads by name and by path within the package budget,
`vidfx run` gives every look it is asked for without adding flicker, and its model card's numbers come back."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from vidfx.config import ModelSettings, StreamSettings
from vidfx.data.look_classifier import load_look_classifier, predict
from vidfx.data.look_eval import coarse_change, evaluate_looks, look_windows, prompt_for
from vidfx.data.looks import LOOKS, make_clip
from vidfx.loading import DEFAULT_CLASSIFIER, MODEL_ALIASES, load_pipeline
from vidfx.offline import VideoWriter, generate_video, read_video, stylize_frames
from vidfx.pipeline import StreamParams

WEIGHTS = Path(MODEL_ALIASES["default"])
MiB = 1 << 20
# The looks the model card claims (model.json "looks"); the card lists what the model cannot do.
CLAIMED = json.loads((WEIGHTS / "model.json").read_text())["looks"] if (WEIGHTS / "model.json").exists() else []


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    return load_pipeline(ModelSettings(name="default"))


def test_default_is_the_shipped_model_within_budget(pipe) -> None:  # type: ignore[no-untyped-def]
    assert ModelSettings().name == "default" and WEIGHTS.is_dir()
    names = {p.name for p in WEIGHTS.iterdir()}
    assert {"model.json", "dit.safetensors", "autoencoder.safetensors", "refiner.safetensors", "MODEL_CARD.md"} <= names
    # 256 px on the short side: the DiT and autoencoder at 128, the detail refiner renders the rest
    assert (pipe.settings.height, pipe.settings.width) == (256, 256) and pipe.refiner is not None
    assert pipe.geometry((480, 640)).model == (256, 352)
    assert sum(p.stat().st_size for p in WEIGHTS.iterdir()) <= 40 * MiB
    by_path = load_pipeline(ModelSettings(name=str(WEIGHTS)))  # the loader that takes Wan/CausVid folders
    for name, value in pipe.dit.state_dict().items():
        torch.testing.assert_close(value, by_path.dit.state_dict()[name], rtol=0, atol=0)
    meta = json.loads((WEIGHTS / "model.json").read_text())
    # The recipe's student (ODE init + asymmetric DMD), fine-tuned on the dataset's source → look pairs, then
    # source-conditioned: it also takes the clean input latent.
    assert meta["training"]["variant"] == "paired_source"
    recipe = meta["training"]["ablation"]
    assert recipe["paired_v2v_steps"] > 0 and recipe["paired_source_steps"] > 0
    assert pipe.dit.cfg.in_dim == 2 * pipe.dit.cfg.out_dim
    assert set(CLAIMED) <= set(LOOKS) and len(CLAIMED) >= 6
    # trained on the looks it claims: its dataset's classifier knows those and no others
    assert list(load_look_classifier(DEFAULT_CLASSIFIER).config.looks) == CLAIMED
    assert pipe.looks == tuple(prompt_for(look) for look in CLAIMED)  # what the page offers as chips


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A clip the test makes: a scene from a seed the training set never used, at a camera-like size."""
    frames = make_clip(4242, 0, num_frames=49, size=(120, 160), looks=[]).source
    path = tmp_path_factory.mktemp("scene") / "scene.mp4"
    with VideoWriter(path, frames.shape[1:3], Fraction(16), pix_fmt="yuv444p", crf=12) as writer:
        writer.write(frames)
    return path, read_video(path)


@pytest.mark.parametrize("look", CLAIMED)
def test_vidfx_run_gives_the_asked_look_without_flicker(scene: tuple[Path, np.ndarray], look: str) -> None:
    src, frames = scene
    dst = src.parent / f"{look}.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "vidfx.cli", "run", str(src), "-o", str(dst), "--prompt", prompt_for(look), "--quiet"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = read_video(dst)
    assert out.shape == frames.shape
    assert np.abs(out.astype(int) - frames.astype(int)).mean() > 8  # not the input
    classifier = load_look_classifier(DEFAULT_CLASSIFIER)
    pred = predict(classifier, look_windows(out, classifier.config.frames, classifier.config.size))
    named = float((pred == classifier.config.classes.index(look)).float().mean())
    assert named >= 0.8, f"{look}: the classifier names it in {named:.0%} of {len(pred)} windows"
    flicker = coarse_change(clip_tensor(out)) / coarse_change(clip_tensor(frames))  # the card's measure
    assert flicker <= 2.0, f"{look}: output flicker is {flicker:.2f}× the input's"


def test_model_card_numbers_are_reproduced(pipe) -> None:  # type: ignore[no-untyped-def]
    """`vidfx eval --model default` (the README's command) gives the card's numbers again."""
    card = json.loads((WEIGHTS / "eval.json").read_text())
    settings = card["settings"]
    scores = evaluate_looks(pipe, load_look_classifier(DEFAULT_CLASSIFIER), **settings)
    for got, want in zip(scores, card["looks"], strict=True):
        assert got.look == want["look"] and got.windows == want["windows"]
        assert abs(got.accuracy - want["accuracy"]) <= 1 / want["windows"] + 1e-9
        for key in ("flicker_ratio", "pixel_change_ratio", "structure_kept"):
            assert getattr(got, key) == pytest.approx(want[key], abs=0.02), (got.look, key)
        assert got.target_psnr == pytest.approx(want["target_psnr"], abs=0.1), got.look


def test_target_psnr_is_to_the_dataset_rendering_of_the_same_scene(pipe) -> None:  # type: ignore[no-untyped-def]
    (score,) = evaluate_looks(pipe, load_look_classifier(DEFAULT_CLASSIFIER), looks=["thermal"], clips=1, frames=9)
    scene = make_clip(1001, 0, num_frames=9, size=(128, 128), looks=["thermal"])
    params = StreamParams.from_settings(pipe.settings, StreamSettings()).with_(prompts=((prompt_for("thermal"), 1.0),))
    out = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in scene.source), params)))
    mse = np.mean((out.astype(float) - scene.styled["thermal"].astype(float)) ** 2)
    assert score.target_psnr == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-6)


def test_image_to_video_starts_from_the_image(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = make_clip(4243, 1, num_frames=1, size=(128, 128), looks=[]).source[0]
    stats = generate_video(pipe, tmp_path / "i2v.mov", StreamParams(prompts=(("thermal", 1.0),)), 1.0,
                           image=image, codec="png")  # fmt: skip
    out = read_video(tmp_path / "i2v.mov")
    assert len(out) == stats.frames == 17
    mse = np.mean((out[0].astype(float) - image.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 18  # the first frame is the image, through the autoencoder
