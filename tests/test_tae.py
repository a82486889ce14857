"""TAEHV for Wan 2.1 (`taew2_1`): official names, `vidfx convert` → load, exact streaming, and agreement with an
independent whole-clip implementation of the official algorithm (madebyollin/taehv `taehv.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidfx.autoencoder import (
    TAEHV,
    AutoencoderPair,
    TAEConfig,
    TinyAEConfig,
    TinyAutoencoder,
    WanVAE,
    WanVAEConfig,
    load_autoencoder,
    load_tae,
    save_autoencoder,
)
from vidfx.autoencoder.base import CausalCache
from vidfx.cli import main as vidfx_main
from vidfx.weights import CheckpointError

STREAM_TOL = 1e-5  # fp32, chunk by chunk vs whole clip
REFERENCE_TOL = 1e-4  # fp32, ours vs the independent reference
TEST_ENCODER = 8  # the miniature's widths (the official: 64 and 256, 128, 64, 64)
TEST_DECODER = (16, 12, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- the official checkpoint's layout, written down from taehv.py's two nn.Sequential --------------------------
# Each entry is one index of the Sequential: ("conv", c_in, c_out, bias, stride), ("mem", c), ("pool", c, s),
# ("grow", c, s), or a parameterless ("relu",), ("clamp",), ("up",).


def official_encoder_layout(c: int = 64, latent: int = 16) -> list[tuple]:
    layout: list[tuple] = [("conv", 3, c, True, 1), ("relu",)]
    for stride in (2, 2, 1):  # taew2_1: encoder_time_downscale = (True, True, False)
        layout += [("pool", c, stride), ("conv", c, c, False, 2), ("mem", c), ("mem", c), ("mem", c)]
    return [*layout, ("conv", c, latent, True, 1)]


def official_decoder_layout(n: tuple[int, ...] = (256, 128, 64, 64), latent: int = 16) -> list[tuple]:
    layout: list[tuple] = [("clamp",), ("conv", latent, n[0], True, 1), ("relu",)]
    for level, stride in enumerate((1, 2, 2)):  # decoder_time_upscale = (False, True, True)
        layout += [("mem", n[level])] * 3
        layout += [("up",), ("grow", n[level], stride), ("conv", n[level], n[level + 1], False, 1)]
    return [*layout, ("relu",), ("conv", n[3], 3, True, 1)]


def official_shapes(prefix: str, layout: list[tuple]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(layout):
        kind, key = layer[0], f"{prefix}.{i}"
        if kind == "conv":
            _, c_in, c_out, bias, _ = layer
            shapes[f"{key}.weight"] = (c_out, c_in, 3, 3)
            if bias:
                shapes[f"{key}.bias"] = (c_out,)
        elif kind == "mem":
            c = layer[1]
            for j, c_in in ((0, 2 * c), (2, c), (4, c)):
                shapes[f"{key}.conv.{j}.weight"] = (c, c_in, 3, 3)
                shapes[f"{key}.conv.{j}.bias"] = (c,)
        elif kind == "pool":
            shapes[f"{key}.conv.weight"] = (layer[1], layer[1] * layer[2], 1, 1)
        elif kind == "grow":
            shapes[f"{key}.conv.weight"] = (layer[1] * layer[2], layer[1], 1, 1)
    return shapes


def official_checkpoint_shapes(enc: int = 64, dec: tuple[int, ...] = (256, 128, 64, 64)) -> dict[str, tuple]:
    return {
        **official_shapes("encoder", official_encoder_layout(enc)),
        **official_shapes("decoder", official_decoder_layout(dec)),
    }


# -- an independent whole-clip reference: the official `apply_model_with_memblocks_parallel`, functionally ------


def reference_stack(layout: list[tuple], state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """x (N, T, C, H, W) through one Sequential, all frames at once, memory = the input one frame earlier."""
    n, t = x.shape[:2]
    x = x.reshape(n * t, *x.shape[2:])
    for i, layer in enumerate(layout):
        kind, key = layer[0], f"{prefix}.{i}"
        if kind == "conv":
            x = F.conv2d(x, state[f"{key}.weight"], state.get(f"{key}.bias"), stride=layer[4], padding=1)
        elif kind == "relu":
            x = torch.relu(x)
        elif kind == "clamp":
            x = torch.tanh(x / 3) * 3
        elif kind == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif kind == "pool":
            x = F.conv2d(x.reshape(-1, layer[2] * x.shape[1], *x.shape[2:]), state[f"{key}.conv.weight"])
        elif kind == "grow":
            c = x.shape[1]
            x = F.conv2d(x, state[f"{key}.conv.weight"]).reshape(-1, c, *x.shape[2:])
        elif kind == "mem":
            t = x.shape[0] // n
            seq = x.reshape(n, t, *x.shape[1:])
            past = F.pad(seq, (0, 0, 0, 0, 0, 0, 1, 0))[:, :t].reshape(x.shape)  # zeros before frame 0
            h = torch.cat([x, past], dim=1)
            for j in (0, 2, 4):
                h = F.conv2d(h, state[f"{key}.conv.{j}.weight"], state[f"{key}.conv.{j}.bias"], padding=1)
                h = torch.relu(h) if j < 4 else h
            x = torch.relu(h + x)  # equal widths: the skip is the identity
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def reference_decode_video(state: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
    """Official `decode_video`: NTCHW latents → [0, 1] frames, the first 3 (frames_to_trim) dropped."""
    layout = official_decoder_layout(TEST_DECODER)
    return reference_stack(layout, state, "decoder", latents).clamp(0, 1)[:, 3:]


def reference_encode_video(state: dict[str, torch.Tensor], frames01: torch.Tensor) -> torch.Tensor:
    """Official `encode_video`: NTCHW [0, 1] frames (end padded with the last frame to a multiple of 4)."""
    if frames01.shape[1] % 4:
        pad = 4 - frames01.shape[1] % 4
        frames01 = torch.cat([frames01, frames01[:, -1:].repeat_interleave(pad, dim=1)], dim=1)
    return reference_stack(official_encoder_layout(TEST_ENCODER), state, "encoder", frames01)


# -- fixtures -------------------------------------------------------------------------------------------------


def random_state(seed: int = 0, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights with the official names at the miniature's widths, scaled to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_checkpoint_shapes(TEST_ENCODER, TEST_DECODER).items():
        fan_in = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
        scale = gain / fan_in**0.5 if len(shape) > 1 else 0.1
        state[name] = torch.randn(shape, generator=g) * scale
    state["decoder.22.bias"] += 0.5  # centre the output in [0, 1] so that little of it is clamped
    return state


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A miniature `taew2_1.pth` made with torch.save, converted with `vidfx convert`."""
    folder = tmp_path_factory.mktemp("taew2_1")
    state = random_state()
    torch.save(state, folder / "taew2_1.pth")
    assert vidfx_main(["convert", str(folder / "taew2_1.pth"), str(folder / "taew2_1.safetensors")]) == 0
    return folder / "taew2_1.safetensors", state


@pytest.fixture(scope="module")
def tae(converted: tuple[Path, dict[str, torch.Tensor]]) -> TAEHV:
    return load_tae(converted[0])


def random_clip(frames: int, h: int = 32, w: int = 32, seed: int = 1, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, h, w, generator=g) * 2 - 1


def random_latents(frames: int, h: int = 4, w: int = 4, seed: int = 2, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, h, w, generator=g)


def stream(fn_per_chunk: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == x.shape[2]
    out, start = [], 0
    for n in chunks:
        out.append(fn_per_chunk(x[:, :, start : start + n]))
        start += n
    return torch.cat(out, dim=2)


# -- names, shapes, loading -----------------------------------------------------------------------------------


def test_official_names_shapes_and_size() -> None:
    with torch.device("meta"):
        ae = TAEHV(TAEConfig.preset("taew2.1"))
    own = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    assert own == official_checkpoint_shapes()
    assert sum(p.numel() for p in ae.parameters()) == 11_315_539  # ~11 M (the Wan VAE: 127 M)
    assert (ae.latent_channels, ae.temporal_factor, ae.spatial_factor) == (16, 4, 8)
    assert TAEConfig.from_state({k: torch.empty(s, device="meta") for k, s in own.items()}, "x") == TAEConfig()


def test_converted_checkpoint_loads_by_plain_copy(
    tmp_path: Path, converted: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    path, state = converted
    ae = load_tae(path)
    assert ae.cfg == TAEConfig.preset("test") and not ae.training
    loaded = ae.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # the generic loader recognises the file too, and files written by save_autoencoder
    assert isinstance(load_autoencoder(path), TAEHV)
    assert isinstance(load_autoencoder("random:taew2.1-test"), TAEHV)
    save_autoencoder(ae, tmp_path / "saved.safetensors")
    again = load_autoencoder(tmp_path / "saved.safetensors")
    assert isinstance(again, TAEHV) and all(torch.equal(again.state_dict()[k], state[k]) for k in state)


def test_bad_checkpoints_name_the_file(tmp_path: Path, converted: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = converted
    wrong = dict(state)
    wrong["decoder.9.conv.2.weight"] = torch.zeros(12, 12, 1, 1)
    save_file(wrong, str(tmp_path / "wrong_shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong_shape\.safetensors.*wrong shape: decoder\.9\.conv\.2\.weight"):
        load_tae(tmp_path / "wrong_shape.safetensors")

    missing = {k: v for k, v in state.items() if k != "decoder.13.conv.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing\.safetensors.*decoder\.13\.conv\.weight"):
        load_tae(tmp_path / "missing.safetensors")

    grows_more = dict(state)  # a decoder that grows time 8× next to an encoder that pools it 4×
    grows_more["decoder.7.conv.weight"] = torch.zeros(2 * TEST_DECODER[0], TEST_DECODER[0], 1, 1)
    save_file(grows_more, str(tmp_path / "time_mismatch.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"time_mismatch\.safetensors.*pools time by 4× but the decoder grows it by 8×"
    ):
        load_tae(tmp_path / "time_mismatch.safetensors")

    with torch.device("meta"):  # same names, but upstream's 32-channel family uses LeakyReLU: refused
        hv15 = TAEHV(TAEConfig.preset("test").with_(latent_channels=32)).state_dict()
    with pytest.raises(CheckpointError, match=r"taehv1_5\.safetensors: a 32-channel TAEHV"):
        TAEConfig.from_state(hv15, "taehv1_5.safetensors")

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        load_tae(truncated)

    pth = tmp_path / "taew2_1.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"vidfx convert .*taew2_1\.pth .*taew2_1\.safetensors"):
        load_tae(pth)


# -- the official algorithm, computed independently -----------------------------------------------------------


def test_decode_equals_the_official_algorithm(tae: TAEHV, converted: tuple[Path, dict[str, torch.Tensor]]) -> None:
    _, state = converted
    z = random_latents(5)
    ours = tae.decode(z)  # (B, 3, 17, 32, 32) in [-1, 1]
    ref = reference_decode_video(state, z.transpose(1, 2)).transpose(1, 2) * 2 - 1
    assert ours.shape == ref.shape == (2, 3, 17, 32, 32)
    assert ref.std() > 0.05 and (ref.abs() < 1).float().mean() > 0.5  # a signal, mostly unclamped
    torch.testing.assert_close(ours, ref, atol=REFERENCE_TOL, rtol=0)


def test_encode_equals_the_official_algorithm_on_the_first_frame_repeated(
    tae: TAEHV, converted: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    """Our latents of 1 + 4n frames are the official `encode_video`'s of the clip with frame 0 shown 4 times."""
    _, state = converted
    clip = random_clip(13)
    ours = tae.encode(clip)
    frames01 = (clip.transpose(1, 2) + 1) / 2
    padded = torch.cat([frames01[:, :1].repeat_interleave(3, dim=1), frames01], dim=1)
    ref = reference_encode_video(state, padded).transpose(1, 2)
    assert ours.shape == ref.shape == (2, 16, 4, 4, 4)
    assert ref.std() > 0.05
    torch.testing.assert_close(ours, ref, atol=REFERENCE_TOL, rtol=0)


# -- streaming ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [[1] * 6, [3, 3], [1, 3, 2], [2, 1, 3], [6]])
def test_streaming_decode_equals_whole_clip(tae: TAEHV, chunks: list[int]) -> None:
    z = random_latents(6)
    whole = tae.decode(z)
    dec = tae.stream_decoder()
    parts = stream(dec.decode, z, chunks)
    assert parts.shape == whole.shape == (2, 3, 21, 32, 32)
    torch.testing.assert_close(parts, whole, atol=STREAM_TOL, rtol=0)


@pytest.mark.parametrize("chunks", [[1, 4, 4, 4, 4, 4], [5, 8, 8], [9, 12], [1, 20], [13, 4, 4]])
def test_streaming_encode_equals_whole_clip(tae: TAEHV, chunks: list[int]) -> None:
    clip = random_clip(21)
    whole = tae.encode(clip)
    enc = tae.stream_encoder()
    parts = stream(enc.encode, clip, chunks)
    assert parts.shape == whole.shape == (2, 16, 6, 4, 4)
    torch.testing.assert_close(parts, whole, atol=STREAM_TOL, rtol=0)


def test_reset_starts_a_new_stream(tae: TAEHV) -> None:
    z = random_latents(3)
    dec = tae.stream_decoder()
    first = dec.decode(z)
    dec.decode(random_latents(2, seed=9))
    assert len(dec.cache) > 0
    dec.reset()
    assert len(dec.cache) == 0 and dec.cache.at_start
    torch.testing.assert_close(dec.decode(z), first, atol=0, rtol=0)


def test_future_latents_do_not_change_past_frames(tae: TAEHV) -> None:
    z = random_latents(4)
    changed = z.clone()
    changed[:, :, 3] = torch.randn_like(changed[:, :, 3])
    a, b = tae.decode(z), tae.decode(changed)
    torch.testing.assert_close(a[:, :, :9], b[:, :, :9], atol=0, rtol=0)  # frames of latents 0–2
    assert not torch.allclose(a[:, :, 9:], b[:, :, 9:])


# -- the chunk contract ---------------------------------------------------------------------------------------


def test_first_and_later_chunk_shapes(tae: TAEHV) -> None:
    dec = tae.stream_decoder()
    assert dec.decode(random_latents(1)).shape == (2, 3, 1, 32, 32)  # first chunk, 1 latent → 1 frame
    assert dec.decode(random_latents(1)).shape == (2, 3, 4, 32, 32)  # later: 1 latent → 4 frames
    assert dec.decode(random_latents(3)).shape == (2, 3, 12, 32, 32)
    dec.reset()
    assert dec.decode(random_latents(3)).shape == (2, 3, 9, 32, 32)  # first: 1 + 4·2

    enc = tae.stream_encoder()
    assert enc.encode(random_clip(1)).shape == (2, 16, 1, 4, 4)
    assert enc.encode(random_clip(8)).shape == (2, 16, 2, 4, 4)
    with pytest.raises(ValueError, match="later chunk must hold 4·n with n ≥ 1 frames, got 5"):
        enc.encode(random_clip(5))
    enc.reset()
    assert enc.encode(random_clip(9)).shape == (2, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="multiples of 8"):
        enc.encode(random_clip(4, h=36))
    assert [tae.frames_for_latents(n, first) for n, first in ((1, True), (3, True), (3, False))] == [1, 9, 12]


def test_wan_vae_latents_decode_with_the_tae(tae: TAEHV) -> None:
    """Both speak vidfx's normalised Wan latents: the Wan VAE's encoder can feed the TAE's decoder."""
    torch.manual_seed(0)
    wan = WanVAE(WanVAEConfig.preset("test")).eval()
    z = wan.encode(random_clip(9))
    assert tae.decode(z).shape == wan.decode(z).shape == (2, 3, 9, 32, 32)
    assert torch.equal(tae.latent_mean, torch.zeros(16)) and torch.equal(tae.latent_std, torch.ones(16))


def test_random_state_gives_a_signal_for_the_reference_checks(
    converted: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    """Guard for the reference tests: a different weight changes the output (they cannot pass vacuously)."""
    _, state = converted
    z = random_latents(2).transpose(1, 2)
    other = dict(state)
    other["decoder.16.conv.2.weight"] = state["decoder.16.conv.2.weight"] * 1.5
    assert not torch.allclose(reference_decode_video(state, z), reference_decode_video(other, z), atol=1e-3)


def test_cache_holds_one_frame_per_memblock(tae: TAEHV) -> None:
    """Constant memory: after any number of chunks the decoder's cache is 9 one-frame entries."""
    dec = tae.stream_decoder()
    for n in (2, 1, 3):
        dec.decode(random_latents(n))
    assert len(dec.cache) == 9
    assert all(dec.cache.past(m).shape[1] == 1 for m in tae.decoder if isinstance(dec.cache.past(m), torch.Tensor))
    assert isinstance(dec.cache, CausalCache)


def test_wan_encoder_with_tae_decoder_as_one_autoencoder(tae: TAEHV) -> None:
    """The pair encodes exactly as the Wan VAE, decodes exactly as the TAE, and streams like either."""
    torch.manual_seed(0)
    wan = WanVAE(WanVAEConfig.preset("test")).eval()
    pair = AutoencoderPair(wan, tae)
    clip = random_clip(9)
    z = pair.encode(clip)
    torch.testing.assert_close(z, wan.encode(clip), atol=0, rtol=0)  # Wan's normalisation applied
    torch.testing.assert_close(pair.decode(z), tae.decode(z), atol=0, rtol=0)
    dec = pair.stream_decoder()
    torch.testing.assert_close(stream(dec.decode, z, [1, 2]), tae.decode(z), atol=STREAM_TOL, rtol=0)
    assert pair.config_dict()["decoding"]["kind"] == "taehv"
    with pytest.raises(ValueError, match="do not share a latent space"):
        AutoencoderPair(TinyAutoencoder(TinyAEConfig(spatial_factor=4)), tae)  # 4× in space, the TAE 8×
