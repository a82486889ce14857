"""TAEHV, the tiny autoencoder for Wan 2.1 latents (madebyollin/taehv, MIT), exactly streamable.

A fast stand-in for the Wan VAE (`taew2_1.pth`: ~11 M parameters against the VAE's 127 M, 2D convs only):
same 16 latent channels, 8× in space, 4× in time, trained to read and write the latents the Wan DiT uses.
Written from the architecture of the official `taehv.py`; parameter names are the checkpoint's, so the file
converted once with `vidfx convert taew2_1.pth taew2_1.safetensors` loads by plain copy.

Both stacks are sequences indexed like the official `nn.Sequential` (that index is the parameter name):

    encoder   0 conv 3·p² → 64, 1 ReLU, then three levels of
              [TPool (2 → 1 frames, or 1 → 1), stride-2 conv, 3 MemBlocks] at indices 2–6, 7–11, 12–16,
              17 conv 64 → latent channels
    decoder   0 soft clamp (3·tanh(z/3)), 1 conv latent → 256, 2 ReLU, then three levels of
              [3 MemBlocks, 2× nearest upsample, TGrow (1 → 1 or 1 → 2 frames), conv] at indices 3–8,
              9–14, 15–20 (widths 256 → 128 → 64 → 64), 21 ReLU, 22 conv 64 → 3·p²

    MemBlock  `conv.{0,2,4}`: conv(2C → C), ReLU, conv, ReLU, conv on [frame t, its input at frame t-1]
              (zeros before a stream's first frame), plus `skip` (1×1, only when widths differ), then ReLU
    TPool     `conv`: 1×1 conv over s consecutive frames stacked on channels (earlier frame first) → one
    TGrow     `conv`: 1×1 conv to s·C channels, unstacked into s consecutive frames

Wan 2.1 (`taew2_1`): p = 1, time halves at encoder levels 1 and 2 and doubles at decoder levels 2 and 3, so
k = 4. Every temporal kernel looks one step back at its own rate and pools/grows whole groups, so a chunk
holding whole groups needs only each MemBlock's last input frame from the chunk before. The stream's
`CausalCache` (base.py) is all the state there is, keyed by MemBlock:
    created  — empty, `at_start`: MemBlocks see zeros as their past; the encoder repeats the first frame in
               front of it and the decoder drops its first k - 1 outputs (see *time* below);
    appended — in every chunk each MemBlock replaces its entry with its last input frame (B, 1, C, H, W):
               9 entries per stack, a constant size however long the stream runs;
    reset    — `StreamEncoder.reset()` / `StreamDecoder.reset()` clear it: the next chunk starts a stream.
Any chunking therefore gives the whole clip's result exactly (tests/test_tae.py).

Conventions, official → vidfx:
  * pixels: TAEHV works in [0, 1]; vidfx in [-1, 1] (x ↦ (x + 1)/2 in, y ↦ 2y - 1 out);
  * latents: TAEHV reads and writes the latents the diffusion model uses, i.e. the Wan VAE's latents already
    normalised with Wan's per-channel mean/std (its README: no scale or shift; Self-Forcing feeds its
    generator's output to it as is). So `latent_mean` = 0 and `latent_std` = 1 here, and vidfx's normalised
    latents — from the Wan VAE or this encoder — are interchangeable with no conversion;
  * time, decoder: each latent frame decodes to k frames; the official decoder drops the stream's first
    k - 1 (`frames_to_trim`), which is vidfx's contract: the first latent frame gives one frame, later ones k;
  * time, encoder: TAEHV encodes groups of k frames with no special first frame, and the official
    `encode_video` pads a clip of 1 + k·n frames at its END with copies of the last frame (commit 0b0a47e,
    "Fix T%4 != 1 padding"), so its latent j is read from frames k·j … k·j + k - 1: the encoder looks k - 1
    frames ahead of the frame the latent stands for. A stream cannot look ahead and still meet vidfx's
    contract (a first chunk of 1 + k·n frames gives 1 + n latent frames), so here a stream's first frame is
    repeated k - 1 times in FRONT of it: our latent j is the official latent j of the clip with its first
    frame shown k times, and a TAE encode → decode round trip shows the input k - 1 frames late (0.19 s at
    Wan's 16 fps). That is the same wall-clock latency as the official look-ahead; only the frame labels
    move. Latents from the Wan VAE's encoder have no such shift. (Alignment inferred from the official
    code; with the real weights, confirm it on a moving clip.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidfx.autoencoder.base import CausalCache, VideoAutoencoder
from vidfx.weights import CheckpointError, load_into, load_state_dict, strip_wrappers

LEVELS = 3  # resolution levels of each stack (each halves / doubles space)
BLOCKS_PER_LEVEL = 3  # MemBlocks per level


@dataclass(frozen=True)
class TAEConfig:
    latent_channels: int = 16  # z channels (Wan 2.1: 16)
    patch_size: int = 1  # pixel (un)shuffle around the stacks; spatial factor = 8·patch_size
    encoder_channels: int = 64  # width of every encoder level
    decoder_channels: tuple[int, ...] = (256, 128, 64, 64)  # decoder levels, then the final conv's input
    encoder_time_downscale: tuple[bool, ...] = (True, True, False)  # TPool halves time, per encoder level
    decoder_time_upscale: tuple[bool, ...] = (False, True, True)  # TGrow doubles time, per decoder level

    @classmethod
    def preset(cls, name: str) -> TAEConfig:
        """`taew2.1` (the released Wan 2.1 TAE) or `test` (same names and depth, narrow, for CPU tests)."""
        presets = {"taew2.1": cls(), "test": cls(encoder_channels=8, decoder_channels=(16, 12, 8, 8))}
        if name not in presets:
            raise ValueError(f"unknown TAE preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def with_(self, **changes: object) -> TAEConfig:
        return replace(self, **changes)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], source: str | Path) -> TAEConfig:
        """The configuration whose names and shapes `state` holds (raises CheckpointError naming `source`)."""
        try:
            first = state["encoder.0.weight"]  # (64, 3·p², 3, 3)
            dec_in = state["decoder.1.weight"]  # (256, latent, 3, 3)
            widths = [dec_in.shape[0]] + [state[f"decoder.{_dec_proj(i)}.weight"].shape[0] for i in range(LEVELS)]
            pools = [state[f"encoder.{_enc_pool(i)}.conv.weight"] for i in range(LEVELS)]  # (C, s·C, 1, 1)
            grows = [state[f"decoder.{_dec_grow(i)}.conv.weight"] for i in range(LEVELS)]  # (s·C, C, 1, 1)
        except KeyError as exc:
            raise CheckpointError(f"{source}: incomplete TAEHV checkpoint, no tensor {exc}") from exc
        patch_area = first.shape[1] // 3
        patch = int(round(patch_area**0.5))
        pool_strides = [p.shape[1] // p.shape[0] for p in pools]
        grow_strides = [g.shape[0] // g.shape[1] for g in grows]
        if patch * patch * 3 != first.shape[1] or any(s not in (1, 2) for s in pool_strides + grow_strides):
            raise CheckpointError(f"{source}: TAEHV tensors with shapes no TAEHV configuration has")
        if dec_in.shape[1] == 32:  # upstream's taehv1_5 family: same names, LeakyReLU(0.2) where we have ReLU
            raise CheckpointError(f"{source}: a 32-channel TAEHV (Hunyuan Video 1.5) is not supported, only ReLU ones")
        if sum(pool_strides) != sum(grow_strides):
            raise CheckpointError(
                f"{source}: the encoder pools time by {2 ** (sum(pool_strides) - len(pools))}× but the decoder "
                f"grows it by {2 ** (sum(grow_strides) - len(grows))}×: not one autoencoder"
            )
        return cls(
            latent_channels=dec_in.shape[1],
            patch_size=patch,
            encoder_channels=first.shape[0],
            decoder_channels=tuple(int(w) for w in widths),
            encoder_time_downscale=tuple(s == 2 for s in pool_strides),
            decoder_time_upscale=tuple(s == 2 for s in grow_strides),
        )


# Indices of the official Sequential (they are the parameter names): fixed by the layout in the docstring.
def _enc_pool(level: int) -> int:
    return 2 + 5 * level


def _dec_grow(level: int) -> int:
    return 7 + 6 * level


def _dec_proj(level: int) -> int:
    return 8 + 6 * level


# -- layers: every one maps (B, T, C, H, W) → (B, T', C', H', W') given the stream's cache ------------------


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of (B, T, C, H, W)."""
    b, t = x.shape[:2]
    return fn(x.flatten(0, 1)).unflatten(0, (b, t))


class FrameConv(nn.Conv2d):
    """A 2D conv on each frame: 3×3 with padding 1 (optionally stride 2), or 1×1."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:  # type: ignore[override]
        b, t = x.shape[:2]
        return super().forward(x.flatten(0, 1)).unflatten(0, (b, t))


class FrameReLU(nn.Module):
    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return F.relu(x)


class SoftClamp(nn.Module):
    """3·tanh(z/3): keeps out-of-distribution latents from blowing up the decoder (identity near 0)."""

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Upsample2x(nn.Module):
    """Nearest-neighbour 2× in space, per frame."""

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, t = x.shape[:2]
        return F.interpolate(x.flatten(0, 1), scale_factor=2.0, mode="nearest").unflatten(0, (b, t))


class MemBlock(nn.Module):
    """Residual block over [frame t, this block's input at frame t-1]; the past comes from the cache.

    Cache entry: this block's last input frame (B, 1, C, H, W), replaced every chunk.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        # Indices 1 and 3 are ReLUs (no weights), kept so `conv.0/2/4` line up with the checkpoint.
        self.conv = nn.Sequential(
            nn.Conv2d(2 * c_in, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        b, t, c, h, w = x.shape
        past = cache.past(self)
        if past is None:  # a stream's first frame: empty memory
            past = x.new_zeros(b, 1, c, h, w)
        prev = torch.cat([past, x[:, :-1]], dim=1)  # (B, T, C, H, W): the input one frame earlier
        cache.keep(self, x[:, -1:])
        y = self.conv(torch.cat([x, prev], dim=2).flatten(0, 1))  # current first, then past (as trained)
        return F.relu(y + self.skip(x.flatten(0, 1))).unflatten(0, (b, t))


class TPool(nn.Module):
    """`stride` consecutive frames → one (stride 1: a 1×1 conv per frame). Chunks hold whole groups."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, t, c, h, w = x.shape
        if t % self.stride:
            raise ValueError(f"temporal pooling by {self.stride} needs whole groups of frames, got {t}")
        g = t // self.stride
        y = self.conv(x.reshape(b * g, self.stride * c, h, w))  # a group's frames stacked on channels
        return y.unflatten(0, (b, g))  # (B, T/stride, C, H, W)


class TGrow(nn.Module):
    """One frame → `stride` consecutive frames (channel block j of the 1×1 conv's output is frame j)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, t, c, h, w = x.shape
        y = self.conv(x.flatten(0, 1))  # (B·T, stride·C, H, W)
        return y.reshape(b, t * self.stride, c, h, w)


def run_stack(layers: nn.ModuleList, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache)
    return x


def build_encoder(cfg: TAEConfig) -> nn.ModuleList:
    c = cfg.encoder_channels
    layers: list[nn.Module] = [FrameConv(3 * cfg.patch_size**2, c), FrameReLU()]
    for down in cfg.encoder_time_downscale:
        layers += [TPool(c, 2 if down else 1), FrameConv(c, c, stride=2, bias=False)]
        layers += [MemBlock(c, c) for _ in range(BLOCKS_PER_LEVEL)]
    layers.append(FrameConv(c, cfg.latent_channels))
    return nn.ModuleList(layers)


def build_decoder(cfg: TAEConfig) -> nn.ModuleList:
    n = cfg.decoder_channels
    layers: list[nn.Module] = [SoftClamp(), FrameConv(cfg.latent_channels, n[0]), FrameReLU()]
    for level, up in enumerate(cfg.decoder_time_upscale):
        layers += [MemBlock(n[level], n[level]) for _ in range(BLOCKS_PER_LEVEL)]
        layers += [Upsample2x(), TGrow(n[level], 2 if up else 1), FrameConv(n[level], n[level + 1], bias=False)]
    layers += [FrameReLU(), FrameConv(n[LEVELS], 3 * cfg.patch_size**2)]
    return nn.ModuleList(layers)


class TAEHV(VideoAutoencoder):
    """TAEHV for Wan 2.1 latents: `encoder` and `decoder` stacks named as in `taew2_1.pth`."""

    kind = "taehv"

    def __init__(self, cfg: TAEConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TAEConfig()
        if len(cfg.decoder_channels) != LEVELS + 1:
            raise ValueError(f"decoder_channels needs {LEVELS + 1} widths, got {cfg.decoder_channels}")
        if len(cfg.encoder_time_downscale) != LEVELS or len(cfg.decoder_time_upscale) != LEVELS:
            raise ValueError(f"encoder_time_downscale and decoder_time_upscale need {LEVELS} entries each")
        if sum(cfg.encoder_time_downscale) != sum(cfg.decoder_time_upscale):
            raise ValueError("the encoder must pool time as often as the decoder grows it")
        self.cfg = cfg
        self.latent_channels = cfg.latent_channels
        self.temporal_factor = 2 ** sum(cfg.decoder_time_upscale)
        self.spatial_factor = 2**LEVELS * cfg.patch_size
        self.encoder = build_encoder(cfg)
        self.decoder = build_decoder(cfg)
        # TAEHV works in the diffusion model's (already normalised) latent space: identity statistics.
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels), persistent=False)
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels), persistent=False)

    def encode_raw(self, frames: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Frames (B, 3, T, H, W) in [-1, 1] → latents (B, C, T', H/8, W/8); T' = T/k, or (T+k-1)/k first."""
        x = (frames.transpose(1, 2) + 1) / 2  # (B, T, 3, H, W) in TAEHV's [0, 1]
        if cache.at_start:  # the stream's first frame is a group of its own (module docstring)
            x = torch.cat([x[:, :1].expand(-1, self.temporal_factor - 1, -1, -1, -1), x], dim=1)
        if self.cfg.patch_size > 1:
            x = per_frame(partial(F.pixel_unshuffle, downscale_factor=self.cfg.patch_size), x)
        z = run_stack(self.encoder, x, cache)  # (B, T', C, h, w)
        return z.transpose(1, 2)

    def decode_raw(self, latents: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Latents (B, C, T', h, w) → frames (B, 3, T, 8h, 8w) in about [-1, 1]; T = k·T', or k·T' - k + 1 first."""
        y = run_stack(self.decoder, latents.transpose(1, 2), cache)  # (B, k·T', 3·p², h·8/p, w·8/p)
        if self.cfg.patch_size > 1:
            y = per_frame(partial(F.pixel_shuffle, upscale_factor=self.cfg.patch_size), y)
        if cache.at_start:  # the official `frames_to_trim`: the first latent frame stands for one frame
            y = y[:, self.temporal_factor - 1 :]
        return (y * 2 - 1).transpose(1, 2)

    def config_dict(self) -> dict[str, object]:
        return asdict(self.cfg)


def load_tae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TAEHV:
    """An eval-mode TAEHV from a safetensors file (e.g. `vidfx convert taew2_1.pth taew2_1.safetensors`).

    The configuration is read off the tensor shapes; names and shapes must fit exactly. A `.pth` is refused
    with the `vidfx convert` command to run; unreadable files and misfits raise CheckpointError naming `path`.
    """
    state = strip_wrappers(load_state_dict(path))
    ae = TAEHV(TAEConfig.from_state(state, path))
    load_into(ae, state, path)
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)
