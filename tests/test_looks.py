"""The looks training set: determinism, distinct and stable looks, captions, mp4 writing, the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidfx.data import scenes
from vidfx.data.look_classifier import (
    LookClassifier,
    LookClassifierConfig,
    classify,
    fit,
    load_look_classifier,
    save_look_classifier,
    split_by_clip,
    windows_from_clips,
)
from vidfx.data.looks import (
    LOOKS,
    contact_sheet,
    dataset_pairs,
    iter_clips,
    iter_pairs,
    make_clip,
    read_manifest,
    read_video,
    stylize,
    write_dataset,
)

SIZE = (64, 64)
FRAMES = 9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Every op here is tiny: a second intra-op thread only spins against the other processes on the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips() -> list:
    return list(iter_clips(seed=11, num_frames=FRAMES, size=SIZE, num_clips=14))


def test_clip_is_a_function_of_seed_and_index():
    a = make_clip(3, 2, FRAMES, SIZE)
    b = make_clip(3, 2, FRAMES, SIZE)
    assert np.array_equal(a.source, b.source)
    assert a.styled.keys() == b.styled.keys() == LOOKS.keys()
    for look in LOOKS:
        assert np.array_equal(a.styled[look], b.styled[look]), look
    assert (a.look, a.caption, a.subject, a.motion) == (b.look, b.caption, b.subject, b.motion)
    # The stream position, not the iteration, fixes a clip; a subset of looks leaves the rest unchanged.
    c = next(iter_clips(3, FRAMES, SIZE, start=2, looks=["thermal", "comic"]))
    assert np.array_equal(c.source, a.source)
    assert c.styled.keys() == {"thermal", "comic"}
    assert np.array_equal(c.styled["comic"], a.styled["comic"])
    other = make_clip(4, 2, FRAMES, SIZE)
    assert not np.array_equal(other.source, a.source)


def test_clip_shapes_and_motion(clips):
    for clip in clips:
        assert clip.source.shape == (FRAMES, *SIZE, 3) and clip.source.dtype == np.uint8
        for video in clip.styled.values():
            assert video.shape == clip.source.shape and video.dtype == np.uint8
        assert clip.look in LOOKS and clip.caption in clip.captions(clip.look)
        assert np.array_equal(clip.target, clip.styled[clip.look])
    # Camera paths and sprites move the picture: most clips change between first and last frame.
    moving = [np.abs(c.source[0].astype(int) - c.source[-1].astype(int)).mean() > 2 for c in clips]
    assert sum(moving) >= len(clips) - 2
    # Sources are drawn from both the wheels' pictures and the procedural scenes.
    kinds = {c.background.split(":")[0] == "procedural" for c in clips}
    assert kinds == {True, False}


def test_pictures_ship_inside_the_wheels():
    for name, pic in scenes.PICTURES.items():
        assert scenes.picture_file(name).is_file(), (name, pic.package, pic.path)
        img = scenes._load_picture(name)
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 90, name


def test_every_look_changes_every_clip(clips):
    for clip in clips:
        src = clip.source.astype(np.float32)
        for look, video in clip.styled.items():
            change = np.abs(video.astype(np.float32) - src).mean()
            assert change > 8, (look, clip.index, change)


def _stats(video: np.ndarray) -> np.ndarray:
    """Hand-made statistics of a uint8 clip: colour and tone, how uniform its hue is, edges, blockiness
    (zero steps inside 2-pixel blocks but not across them), posterization, and frame-to-frame change."""
    x = video.astype(np.float32) / 255
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    hue = np.arctan2(np.sqrt(3) * (x[..., 1] - x[..., 2]), 2 * x[..., 0] - x[..., 1] - x[..., 2])
    hue_focus = np.abs((sat * np.exp(1j * hue)).mean()) / max(sat.mean(), 1e-3)
    step = np.abs(np.diff(video.astype(np.int16), axis=2)).max(-1)  # (T, H, W-1)
    blocky = (step[..., 0::2] == 0).mean() - (step[..., 1::2] == 0).mean()
    rest = video % 85
    poster = (np.minimum(rest, 85 - rest) <= 10).mean()  # near one of 0, 85, 170, 255
    return np.array([
        *x.mean((0, 1, 2)), *x.std((0, 1, 2)), sat.mean(), hue_focus, (mx < 0.1).mean(), (mn > 0.85).mean(),
        step.mean() / 255, blocky, poster, np.abs(np.diff(x, axis=0)).mean(),
    ])  # fmt: skip


def test_looks_are_separable_by_simple_statistics(clips):
    """A Gaussian naive-Bayes on standardized statistics, fitted on 8 clips, tested on 6 others."""
    names = list(LOOKS)
    feats = np.stack([[_stats(c.styled[n]) for n in names] for c in clips])  # (clips, looks, stats)
    train, test = feats[:8], feats[8:]
    mu, sd = train.reshape(-1, feats.shape[-1]).mean(0), train.reshape(-1, feats.shape[-1]).std(0) + 1e-6
    z_train, z_test = (train - mu) / sd, (test - mu) / sd
    mean, spread = z_train.mean(0), np.maximum(z_train.std(0), 0.1)  # (looks, stats)
    dist = (((z_test[:, :, None] - mean[None, None]) / spread) ** 2 + 2 * np.log(spread)).sum(-1)
    pred = dist.argmin(-1)  # (test clips, looks)
    accuracy = (pred == np.arange(len(names))[None]).mean()
    assert accuracy >= 0.9, accuracy


def test_looks_are_temporally_stable():
    """A still picture stays still in every look, except for grain/noise that is part of the look."""
    still = np.repeat(make_clip(5, 0, 1, SIZE).source, 6, axis=0)  # (6, H, W, 3), identical frames
    for look in LOOKS:
        out = stylize(still, look, seed=7)
        assert np.array_equal(out, stylize(still, look, seed=7)), look
        flicker = np.abs(np.diff(out.astype(np.float32), axis=0)).mean()
        if look in ("vintage_sepia", "night_vision"):
            assert 0 < flicker < 25, (look, flicker)
        else:
            assert flicker == 0, (look, flicker)


KEYWORDS = {
    "pencil_sketch": ("pencil", "graphite", "sketch"),
    "pixel_art": ("pixel", "8-bit"),
    "thermal": ("thermal", "heat"),
    "neon_edges": ("neon",),
    "watercolor": ("watercolor", "aquarelle"),
    "vintage_sepia": ("sepia",),
    "comic": ("comic",),
    "night_vision": ("night vision",),
}


def test_captions_name_their_look(clips):
    assert set(KEYWORDS) == set(LOOKS) and len(LOOKS) >= 6
    for name, look in LOOKS.items():
        assert len(set(look.captions)) >= 5, name
        for caption in look.captions:
            assert any(k in caption for k in KEYWORDS[name]), (name, caption)
            others = [o for o in LOOKS if o != name]
            assert not any(k in caption for o in others for k in KEYWORDS[o]), (name, caption)
    clip = clips[0]
    for name in LOOKS:
        assert all(any(k in c for k in KEYWORDS[name]) for c in clip.captions(name))
    source_caps = clip.captions(None)
    assert any(clip.subject in c for c in source_caps)
    assert not any(k in c for c in source_caps for ks in KEYWORDS.values() for k in ks)


def test_pairs_share_the_motion():
    pairs = list(iter_pairs(seed=2, num_frames=5, size=(32, 32), num_clips=2))
    assert len(pairs) == 2 * len(LOOKS)
    for p in pairs:
        clip = make_clip(2, p.index, 5, (32, 32))
        assert np.array_equal(p.source, clip.source) and np.array_equal(p.target, clip.styled[p.look])
        assert p.caption in clip.captions(p.look)


def test_write_dataset_writes_readable_mp4_and_jsonl(tmp_path: Path):
    info = write_dataset(
        tmp_path,
        num_clips=2,
        seed=1,
        num_frames=FRAMES,
        size=(32, 48),
        fps=8,
        looks_per_clip=3,
        progress=False,
    )
    records = read_manifest(tmp_path)
    assert len(records) == 2 * (1 + 3)
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    for r in records:
        assert {"file", "captions", "look"} <= r.keys()
        assert r["look"] is None or r["look"] in LOOKS
        assert isinstance(r["captions"], list) and r["captions"] and all(isinstance(c, str) for c in r["captions"])
        video = read_video(tmp_path / r["file"])
        assert video.shape == (FRAMES, 32, 48, 3)
        clip = make_clip(1, r["clip"], FRAMES, (32, 48), looks=[r["look"]] if r["look"] else [])
        want = clip.source if r["look"] is None else clip.styled[r["look"]]
        err = np.abs(video.astype(np.float32) - want).mean()
        assert err < 10, (r["file"], err)  # H.264 at crf 18 on a tiny frame
    assert sum(r["look"] is None for r in records) == 2
    pairs = dataset_pairs(tmp_path)
    assert len(pairs) == 6 and all(p.source.is_file() and p.target.is_file() for p in pairs)
    assert json.loads((tmp_path / "dataset.json").read_text())["num_clips"] == 2
    assert info.manifest == tmp_path / "captions.jsonl"


def test_classifier_loss_falls_on_a_fixed_batch(tmp_path: Path):
    torch.manual_seed(0)
    config = LookClassifierConfig(size=32, widths=(8, 16), embed_dim=16)
    clips = list(iter_clips(seed=4, num_frames=6, size=(32, 32), num_clips=2))
    windows = windows_from_clips(clips, config)
    assert len(windows) == 2 * len(config.classes)
    model = LookClassifier(config)
    x, y = windows.batch(torch.arange(len(windows)))
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(x), y))
    losses = fit(model, windows, torch.arange(len(windows)), steps=40, batch_size=len(windows), lr=1e-2)
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(model(x), y))
    assert after < 0.5 * before, (before, after, losses[:3], losses[-3:])
    assert model.features(x).shape == (len(windows), 16)
    # Round trip through safetensors, config in the metadata.
    path = tmp_path / "look.safetensors"
    save_look_classifier(model, path)
    loaded = load_look_classifier(path)
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    probs = classify(loaded, clips[0].styled["thermal"])
    assert set(probs) == set(config.classes) and abs(sum(probs.values()) - 1) < 1e-5


def test_split_holds_out_whole_clips(clips):
    config = LookClassifierConfig(size=32, widths=(8, 16), embed_dim=16)
    windows = windows_from_clips(clips[:5], config)
    train, test = split_by_clip(windows, 0.4, seed=0)
    assert len(train) + len(test) == len(windows)
    assert not set(windows.clips[train].tolist()) & set(windows.clips[test].tolist())
    assert len(set(windows.clips[test].tolist())) == 2


def test_dataset_command_and_contact_sheet(tmp_path: Path):
    import argparse

    import matplotlib.image

    from vidfx.cli import SUBCOMMANDS
    from vidfx.commands import dataset

    assert SUBCOMMANDS["dataset"][1] == "vidfx.commands.dataset"
    parser = argparse.ArgumentParser()
    dataset.register(parser)
    sheet = tmp_path / "sheet.png"
    args = parser.parse_args([str(tmp_path / "ds"), "--num-clips", "1", "--frames", "5", "--size", "32", "32",
                              "--looks-per-clip", "1", "--contact-sheet", str(sheet)])  # fmt: skip
    assert args.func(args) == 0
    assert len(read_manifest(tmp_path / "ds")) == 2
    img = matplotlib.image.imread(sheet)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300


def test_dataset_of_chosen_looks_gives_a_classifier_of_those_looks(tmp_path: Path):
    """`vidfx dataset --looks …`: its files, contact sheet and classifier know only those looks (and the
    classifier's `looks` are what `vidfx eval` judges by default)."""
    import argparse

    import matplotlib.image

    from vidfx.commands import dataset
    from vidfx.data.look_classifier import load_look_classifier

    parser = argparse.ArgumentParser()
    dataset.register(parser)
    sheet, classifier = tmp_path / "two.png", tmp_path / "cls.safetensors"
    args = parser.parse_args([str(tmp_path / "ds"), "--num-clips", "3", "--frames", "5", "--size", "32", "32",
                              "--looks", "thermal", "comic", "--contact-sheet", str(sheet), "--classifier",
                              str(classifier), "--classifier-steps", "2", "--classifier-clips", "3"])  # fmt: skip
    assert args.func(args) == 0
    assert {r["look"] for r in read_manifest(tmp_path / "ds")} == {None, "thermal", "comic"}
    assert load_look_classifier(classifier).config.looks == ("thermal", "comic")
    everything = contact_sheet(tmp_path / "all.png", num_clips=6, size=(32, 32), num_frames=5)  # as the command
    two, every = matplotlib.image.imread(sheet), matplotlib.image.imread(everything)
    assert two.shape[1] < every.shape[1] / 2  # source + 2 looks against source + all of them
