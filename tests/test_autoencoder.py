"""Video autoencoders: exact streaming, official Wan VAE names, loading, and training of the tiny AE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidfx.autoencoder import (
    CausalCache,
    TinyAEConfig,
    TinyAutoencoder,
    VideoAutoencoder,
    WanVAE,
    WanVAEConfig,
    load_autoencoder,
    save_autoencoder,
)
from vidfx.autoencoder.train import fit_latent_stats, procedural_clips, reconstruction_loss, train_autoencoder
from vidfx.weights import CheckpointError

MANIFEST = Path(__file__).parent / "data" / "wan_manifest.json"
TOL = 1e-4  # fp32 max abs error, streaming vs whole clip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())["wan2.1-vae"]


def make(kind: str, seed: int = 0) -> VideoAutoencoder:
    torch.manual_seed(seed)
    ae: VideoAutoencoder = WanVAE(WanVAEConfig.preset("test")) if kind == "wan" else TinyAutoencoder()
    return ae.eval()


def random_clip(frames: int, h: int, w: int, seed: int = 1, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, h, w, generator=g) * 2 - 1


def stream_encode(ae: VideoAutoencoder, clip: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == clip.shape[2]
    enc, out, start = ae.stream_encoder(), [], 0
    for n in chunks:
        out.append(enc.encode(clip[:, :, start : start + n]))
        start += n
    return torch.cat(out, dim=2)


def stream_decode(ae: VideoAutoencoder, latents: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == latents.shape[2]
    dec, out, start = ae.stream_decoder(), [], 0
    for n in chunks:
        out.append(dec.decode(latents[:, :, start : start + n]))
        start += n
    return torch.cat(out, dim=2)


# -- streaming == whole clip ---------------------------------------------------------------------------------

ENCODE_CHUNKS = [[1, 4, 4, 4, 4, 4, 4], [5, 8, 12], [9, 4, 12], [13, 12], [1, 24], [17, 8], [1, 12, 4, 8]]
DECODE_CHUNKS = [[1] * 7, [2, 2, 2, 1], [3, 3, 1], [1, 3, 2, 1], [2, 1, 3, 1]]


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_streaming_encode_equals_whole_clip(kind: str) -> None:
    ae = make(kind)
    clip = random_clip(25, 16, 24)
    whole = ae.encode(clip)
    assert whole.shape == (2, 16, 7, 2, 3)
    assert whole.abs().max() > 100 * TOL  # a real signal, not a degenerate zero map
    for chunks in ENCODE_CHUNKS:
        err = (stream_encode(ae, clip, chunks) - whole).abs().max().item()
        assert err <= TOL, f"{kind} chunks {chunks}: max abs error {err}"


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_streaming_decode_equals_whole_clip(kind: str) -> None:
    ae = make(kind)
    latents = torch.randn(2, 16, 7, 2, 3, generator=torch.Generator().manual_seed(2))
    whole = ae.decode(latents)
    assert whole.shape == (2, 3, 25, 16, 24)
    # Mostly unclamped, so the comparison below means something.
    assert ((whole.abs() < 0.999).float().mean() > 0.5).item()
    for chunks in DECODE_CHUNKS:
        err = (stream_decode(ae, latents, chunks) - whole).abs().max().item()
        assert err <= TOL, f"{kind} latent chunks {chunks}: max abs error {err}"


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_stream_reset_starts_a_new_stream(kind: str) -> None:
    ae = make(kind)
    a, b = random_clip(9, 16, 16, seed=3), random_clip(9, 16, 16, seed=4)
    enc, dec = ae.stream_encoder(), ae.stream_decoder()
    enc.encode(a[:, :, :5])
    dec.decode(ae.encode(a)[:, :, :2])
    enc.reset()
    dec.reset()
    assert len(enc.cache) == 0 and enc.cache.at_start
    z = torch.cat([enc.encode(b[:, :, :1]), enc.encode(b[:, :, 1:])], dim=2)
    assert (z - ae.encode(b)).abs().max().item() <= TOL
    f = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:])], dim=2)
    assert (f - ae.decode(z)).abs().max().item() <= TOL


def test_whole_clip_chunk_latents_option_matches_one_pass() -> None:
    ae = make("wan")
    clip = random_clip(13, 16, 16, seed=5)
    z = ae.encode(clip)
    assert (ae.encode(clip, chunk_latents=1) - z).abs().max().item() <= TOL  # Wan's own 1, 4, 4, … chunking
    assert (ae.decode(z, chunk_latents=2) - ae.decode(z)).abs().max().item() <= TOL


def test_causal_future_frames_do_not_change_the_past() -> None:
    ae = make("wan")
    clip = random_clip(13, 16, 16, seed=6)
    changed = clip.clone()
    changed[:, :, 9:] = -changed[:, :, 9:]  # only the last latent group differs
    z, z2 = ae.encode(clip), ae.encode(changed)
    assert torch.equal(z[:, :, :3], z2[:, :, :3]) and not torch.allclose(z[:, :, 3:], z2[:, :, 3:])


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_chunk_lengths_outside_the_contract_are_refused(kind: str) -> None:
    ae = make(kind)
    enc = ae.stream_encoder()
    with pytest.raises(ValueError, match="first chunk"):
        enc.encode(random_clip(4, 16, 16))
    enc.encode(random_clip(5, 16, 16))
    with pytest.raises(ValueError, match="later chunk"):
        enc.encode(random_clip(6, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.stream_encoder().encode(random_clip(1, 12, 16))


def test_frame_and_latent_counts() -> None:
    ae = make("tiny")
    assert (ae.latent_channels, ae.temporal_factor, ae.spatial_factor) == (16, 4, 8)
    for n in range(1, 6):
        assert ae.frames_for_latents(n, first=True) == 1 + 4 * (n - 1)
        assert ae.frames_for_latents(n, first=False) == 4 * n
        assert ae.latents_for_frames(ae.frames_for_latents(n, True), first=True) == n
        assert ae.latents_for_frames(ae.frames_for_latents(n, False), first=False) == n


def test_tiny_other_factors_stream_exactly_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = TinyAEConfig(latent_channels=8, temporal_factor=2, spatial_factor=16, stem_channels=16)
    ae = TinyAutoencoder(cfg).eval()
    clip = random_clip(11, 32, 48, seed=7)
    whole = ae.encode(clip)
    assert whole.shape == (2, 8, 6, 2, 3)
    assert (stream_encode(ae, clip, [3, 2, 6]) - whole).abs().max().item() <= TOL
    assert (stream_decode(ae, whole, [1, 2, 3]) - ae.decode(whole)).abs().max().item() <= TOL
    ae.latent_mean.fill_(0.25)
    ae.latent_std.fill_(2.0)
    save_autoencoder(ae, tmp_path / "tiny.safetensors")
    loaded = load_autoencoder(tmp_path / "tiny.safetensors")
    assert isinstance(loaded, TinyAutoencoder) and loaded.cfg == cfg
    assert torch.equal(loaded.latent_std, ae.latent_std)
    assert torch.equal(loaded.encode(clip), ae.encode(clip))
    assert torch.allclose(ae.encode(clip), (whole - 0.25) / 2.0)  # the saved statistics are applied


# -- official Wan VAE names, loading -------------------------------------------------------------------------


def test_wan_vae_official_names_shapes_and_count(manifest: dict) -> None:
    with torch.device("meta"):
        ae = WanVAE(WanVAEConfig.preset("wan2.1"))
    own = {k: list(v.shape) for k, v in ae.state_dict().items()}
    assert own == manifest["tensors"]
    assert sum(p.numel() for p in ae.parameters()) == manifest["num_params"]
    assert list(ae.cfg.latent_mean) == manifest["latent_mean"]
    assert list(ae.cfg.latent_std) == manifest["latent_std"]
    assert (ae.latent_channels, ae.temporal_factor, ae.spatial_factor) == (16, 4, 8)


def test_official_names_at_reduced_dim_load_exactly(tmp_path: Path, manifest: dict) -> None:
    g = torch.Generator().manual_seed(8)
    shapes = WanVAE(WanVAEConfig.preset("test")).state_dict()
    assert set(shapes) == set(manifest["tensors"])  # the reduced network keeps every official name
    state = {k: torch.randn(v.shape, generator=g) for k, v in shapes.items()}
    path = tmp_path / "wan_vae_small.safetensors"
    save_file(state, str(path))
    ae = load_autoencoder(path)
    assert isinstance(ae, WanVAE) and ae.cfg.dim == 8
    loaded = ae.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    del state["decoder.head.2.bias"]
    state["decoder.head.2.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*1 missing: decoder\.head\.2\.bias"):
        load_autoencoder(tmp_path / "bad.safetensors")


def test_corrupt_or_pickled_files_give_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "ae.safetensors"
    save_autoencoder(make("tiny"), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_autoencoder(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors header" * 10)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_autoencoder(garbage)
    pth = tmp_path / "Wan2.1_VAE.pth"
    pth.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="vidfx convert"):
        load_autoencoder(pth)
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="other.safetensors.*neither"):
        load_autoencoder(other)


def test_random_presets_load_by_name() -> None:
    ae = load_autoencoder("random:wan2.1-test")
    assert isinstance(ae, WanVAE) and not ae.training
    assert isinstance(load_autoencoder("random:tiny"), TinyAutoencoder)
    with pytest.raises(ValueError, match="unknown autoencoder"):
        load_autoencoder("random:nope")


# -- training the tiny autoencoder ---------------------------------------------------------------------------


def repeat(clip: torch.Tensor) -> Iterator[torch.Tensor]:
    while True:
        yield clip


def eval_loss(ae: VideoAutoencoder, clip: torch.Tensor) -> float:
    with torch.no_grad():
        recon = ae.decode_raw(ae.encode_raw(clip, CausalCache()), CausalCache())
        return reconstruction_loss(recon, clip, edge_weight=0.5).item()


def test_tiny_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    ae = TinyAutoencoder()
    clip = next(procedural_clips(2, 9, 32, seed=1))
    before = eval_loss(ae, clip)
    losses = train_autoencoder(ae, repeat(clip), steps=20, lr=1e-3, progress=False)
    assert len(losses) == 20
    after = eval_loss(ae, clip)
    assert after < 0.85 * before, (before, after)
    assert not ae.training


def test_training_resumes_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    clip = next(procedural_clips(1, 5, 32, seed=2))
    opts = dict(lr=1e-3, warmup_steps=0, min_lr_ratio=1.0, progress=False, checkpoint_every=2)

    torch.manual_seed(0)
    straight = TinyAutoencoder()
    train_autoencoder(straight, repeat(clip), steps=6, **opts)

    torch.manual_seed(0)
    first = TinyAutoencoder()
    assert len(train_autoencoder(first, repeat(clip), steps=4, checkpoint_dir=tmp_path, **opts)) == 4
    torch.manual_seed(123)  # a fresh process: different init, everything must come from the checkpoint
    resumed = TinyAutoencoder()
    assert len(train_autoencoder(resumed, repeat(clip), steps=6, checkpoint_dir=tmp_path, **opts)) == 2

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert (a - b).abs().max().item() <= 1e-6, name
    checkpoints = sorted(p.name for p in tmp_path.glob("autoencoder-step*.safetensors"))
    assert checkpoints == ["autoencoder-step0000004.safetensors", "autoencoder-step0000006.safetensors"]
    from_training = load_autoencoder(tmp_path / checkpoints[-1])
    assert torch.equal(from_training.encode(clip), resumed.encode(clip))
    assert not (tmp_path / "autoencoder.safetensors").exists()  # the command writes it, after the statistics


def test_fit_latent_stats_normalises_latents() -> None:
    ae = make("tiny")
    mean, std = fit_latent_stats(ae, procedural_clips(2, 9, 32, seed=3), batches=3)
    assert mean.shape == std.shape == (16,)
    assert torch.equal(ae.latent_mean, mean) and torch.equal(ae.latent_std, std)
    clips = procedural_clips(2, 9, 32, seed=3)
    z = torch.cat([ae.encode(next(clips)) for _ in range(3)], dim=0)  # the same clips, normalised
    per_channel = z.transpose(0, 1).reshape(16, -1)
    assert per_channel.mean(1).abs().max().item() < 1e-4
    assert (per_channel.std(1, correction=0) - 1).abs().max().item() < 1e-3


def test_train_autoencoder_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from vidfx.commands import train_autoencoder as command

    parser = argparse.ArgumentParser()
    command.register(parser)
    out = tmp_path / "run"
    argv = [str(out), "--steps", "3", "--batch", "1", "--frames", "5", "--size", "32", "--device", "cpu"]
    args = parser.parse_args([*argv, "--stats-batches", "2", "--no-progress"])
    assert args.func(args) == 0
    ae = load_autoencoder(out / "autoencoder.safetensors")
    assert isinstance(ae, TinyAutoencoder)
    assert not torch.equal(ae.latent_std, torch.ones(16))  # the fitted statistics were saved
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("autoencoder-step*")) == ["autoencoder-step0000003.safetensors"]


def test_train_autoencoder_command_on_a_video_folder(tmp_path: Path) -> None:
    import argparse

    from vidfx.commands import train_autoencoder as command
    from vidfx.data.looks import write_dataset

    write_dataset(tmp_path / "looks", num_clips=2, num_frames=9, size=(32, 32), looks=["thermal"], progress=False)
    parser = argparse.ArgumentParser()
    command.register(parser)
    out = tmp_path / "run"
    argv = [str(out), "--videos", str(tmp_path / "looks"), "--steps", "2", "--batch", "2", "--frames", "5"]
    args = parser.parse_args([*argv, "--size", "32", "--device", "cpu", "--stats-batches", "1", "--no-progress"])
    batch = next(command.clip_source(args, 0))
    assert batch.shape == (2, 3, 5, 32, 32) and -1 <= batch.min() < batch.max() <= 1
    assert args.func(args) == 0
    assert isinstance(load_autoencoder(out / "autoencoder.safetensors"), TinyAutoencoder)


def test_look_repeats_draw_a_looks_clips_that_many_times_an_epoch(tmp_path: Path) -> None:
    from vidfx.commands import train_autoencoder as command
    from vidfx.data.looks import write_dataset

    folder = tmp_path / "looks"
    write_dataset(folder, num_clips=2, num_frames=5, size=(32, 32), looks=["thermal"], progress=False)
    plain = command.video_clips(str(folder), 1, 5, 32, 16.0, 0, "cpu")
    thermal = command.video_clips(str(folder), 1, 5, 32, 16.0, 0, "cpu", {"thermal": 3})

    from vidfx.train.data import iter_clips

    clips = iter_clips(folder, 5, 16.0, (32, 32), "all")
    looks = [(c.look, ((c.frames + 1) * 127.5).round() / 127.5 - 1) for c in clips]  # as video_clips holds them

    def draws(batches: Iterator[torch.Tensor], n: int) -> list[str | None]:
        return [next(look for look, x in looks if torch.equal(b[0], x)) for b in islice(batches, n)]

    # an epoch: 2 sources + 2 thermal clips, or 2 sources + 3·2 thermal draws
    assert sorted(map(str, draws(plain, 4))) == ["None"] * 2 + ["thermal"] * 2
    assert sorted(map(str, draws(thermal, 8))) == ["None"] * 2 + ["thermal"] * 6
    assert command.parse_look_repeats(["thermal=3", "comic=1"]) == {"thermal": 3, "comic": 1}
    for bad in ("thermal", "thermal=0", "thermal=x"):
        with pytest.raises(ValueError, match="LOOK=N"):
            command.parse_look_repeats([bad])
    with pytest.raises(ValueError, match="does not have"):
        next(command.video_clips(str(folder), 1, 5, 32, 16.0, 0, "cpu", {"comic": 2}))
