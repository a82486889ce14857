"""The Wan2.1 video VAE (Wan-Video/Wan2.1 `wan/modules/vae.py`: `WanVAE_` as built by `_video_vae(z_dim=16)`).

Parameter names are those of the official checkpoint (`Wan2.1_VAE.pth`, converted once with `vidfx convert`):

    encoder.conv1                     causal 3×3×3 conv, 3 → dim
    encoder.downsamples.i             per level: `num_res_blocks` ResidualBlocks, then a Resample (not after
                                      the last level): `resample.1` a stride-2 2D conv, plus `time_conv`
                                      (stride 2 in time) where the level also halves time
    encoder.middle.{0,1,2}            ResidualBlock, AttentionBlock, ResidualBlock
    encoder.head.{0,2}                RMS norm → SiLU → causal conv to 2·z_dim (mean and log-variance)
    conv1, conv2                      1×1×1 convs on the encoder's output / the decoder's input
    decoder.conv1, decoder.middle     as the encoder, mirrored
    decoder.upsamples.i               per level: `num_res_blocks + 1` ResidualBlocks, then a Resample that
                                      doubles space (`resample.1` halves channels) and, where marked, time
                                      (`time_conv` makes 2·C channels = two output frames)
    decoder.head.{0,2}                RMS norm → SiLU → causal conv to 3 channels
    *.residual.{0,2,3,6}              RMS norm → SiLU → conv → RMS norm → SiLU → (dropout) → conv
    *.gamma                           RMS-norm scale (the norm itself is x/‖x‖ over channels · √C)

Time, with k = 4 (two temporal resamplers): a stream's first frame passes every temporal resampler alone (it
becomes the first latent frame, and the first latent frame decodes to one frame); after it, each group of 4
frames gives one latent frame and each latent frame decodes to 4 frames. Every 3-frame temporal kernel is
causal with zeros before the stream's start — Wan encodes 1 frame, then 4 at a time, and decodes one latent
frame at a time with a cache of the last 2 frames per conv; `CausalCache` gives the same result for any
chunking. The posterior's mean is the latent (no sampling); it is normalised with the released per-channel
mean/std (constants of the model, not checkpoint tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vidfx.autoencoder.base import CausalCache, CausalConv3d, VideoAutoencoder

# Per-channel statistics of the official VAE's latents (Wan-Video/Wan2.1 `WanVAE.mean` / `.std`).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    dim: int = 96  # channels of the first level; level i has dim·dim_mult[i]
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level (the decoder has one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per encoder resampler; decoder mirrors it
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD

    @classmethod
    def preset(cls, name: str) -> WanVAEConfig:
        """`wan2.1` (the released VAE) or `test` (same names and depth at dim 8, for fast CPU tests)."""
        presets = {"wan2.1": cls(), "test": cls(dim=8)}
        if name not in presets:
            raise ValueError(f"unknown Wan VAE preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def with_(self, **changes: object) -> WanVAEConfig:
        return replace(self, **changes)


# -- building blocks ---------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / ‖x‖₂ over channels · √C · gamma. `gamma` is (C, 1, 1, 1) for videos, (C, 1, 1) for images."""

    def __init__(self, dim: int, video: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1, 1) if video else (1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, C', H', W')
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)  # (B, C', T, H', W')


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices 1, 4 (SiLU) and 5 (dropout, 0 in the release) hold no weights; kept so names line up.
        self.residual = nn.ModuleList(
            [
                RMSNorm(in_dim),
                nn.SiLU(),
                CausalConv3d(in_dim, out_dim, 3),
                RMSNorm(out_dim),
                nn.SiLU(),
                nn.Identity(),
                CausalConv3d(out_dim, out_dim, 3),
            ]
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x)), cache)
        h = conv2(F.silu(norm2(h)), cache)
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 3, 1, c, h * w).transpose(-1, -2)  # (N, 3, 1, HW, C)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (N, 1, HW, C)
        return self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return x + per_frame(self.attend, x)


class Resample(nn.Module):
    """2× down- or upsampling in space, optionally in time, with Wan's treatment of a stream's first frame.

    Downsampling in time (`time_conv`, kernel 3, stride 2): output 0 is input frame 0 unchanged; output j ≥ 1
    is the conv over input frames 2j-2, 2j-1, 2j. Upsampling in time (`time_conv`, causal kernel 3 → 2·C
    channels): input frame 0 stays one frame; every later input frame becomes two, from a causal conv over
    the input frames after the first (zeros before them).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("down2d", "down3d", "up2d", "up3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("down"):
            # Pad right/bottom by one so a 3×3 stride-2 conv maps H to H/2, as in the release.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
            )
        if mode == "down3d":
            self.time_conv: nn.Module = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        elif mode == "up3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "up3d":
            x = self._up_time(x, cache)
        x = per_frame(self.resample, x)
        if self.mode == "down3d":
            x = self._down_time(x, cache)
        return x

    def _down_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        first = x[:, :, :1] if cache.at_start else x[:, :, :0]
        rest = x[:, :, first.shape[2] :]
        prev = first if cache.at_start else cache.past(self.time_conv)
        if prev is None:
            raise RuntimeError("a later chunk reached a temporal downsampler whose cache holds no frame")
        if rest.shape[2] % 2:
            raise ValueError(f"temporal downsampler needs an even frame count after the first, got {rest.shape[2]}")
        cache.keep(self.time_conv, x[:, :, -1:])
        if rest.shape[2] == 0:
            return first
        return torch.cat([first, self.time_conv(torch.cat([prev, rest], dim=2))], dim=2)

    def _up_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        first = x[:, :, :1] if cache.at_start else x[:, :, :0]
        rest = x[:, :, first.shape[2] :]
        if rest.shape[2] == 0:
            return first
        b, c, t, h, w = rest.shape
        y = self.time_conv(rest, cache)  # (B, 2C, T, H, W): channel half j is output frame 2t+j
        y = y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return torch.cat([first, y], dim=2)


def _run(layers: nn.ModuleList, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "down3d" if cfg.temporal_downsample[level] else "down2d"))
        self.downsamples = nn.ModuleList(blocks)
        top = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top)])
        self.head = nn.ModuleList([RMSNorm(top), nn.SiLU(), CausalConv3d(top, cfg.z_dim * 2, 3)])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run(self.downsamples, x, cache)
        x = _run(self.middle, x, cache)
        norm, _, conv = self.head
        return conv(F.silu(norm(x)), cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        mults = cfg.dim_mult[::-1]
        dims = [cfg.dim * m for m in (mults[0], *mults)]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0])]
        )
        blocks: list[nn.Module] = []
        in_dim = dims[0]
        for level, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(mults) - 1:
                blocks.append(Resample(out_dim, "up3d" if temporal_upsample[level] else "up2d"))
                in_dim = out_dim // 2  # the upsampler's 2D conv halves the channels
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3)])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = _run(self.middle, x, cache)
        x = _run(self.upsamples, x, cache)
        norm, _, conv = self.head
        return conv(F.silu(norm(x)), cache)


class WanVAE(VideoAutoencoder):
    """The Wan2.1 VAE: 8× spatial, 4× temporal compression to `z_dim` channels, exactly streamable."""

    kind = "wan2.1-vae"

    def __init__(self, cfg: WanVAEConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or WanVAEConfig()
        if len(cfg.latent_mean) != cfg.z_dim or len(cfg.latent_std) != cfg.z_dim:
            raise ValueError(f"latent_mean/latent_std need {cfg.z_dim} values")
        if len(cfg.temporal_downsample) != len(cfg.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one entry per resampler (len(dim_mult) - 1)")
        self.cfg = cfg
        self.latent_channels = cfg.z_dim
        self.temporal_factor = 2 ** sum(cfg.temporal_downsample)
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1)
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        # Not in the checkpoint: constants of the release, rebuilt from the config.
        self.register_buffer("latent_mean", torch.tensor(cfg.latent_mean), persistent=False)
        self.register_buffer("latent_std", torch.tensor(cfg.latent_std), persistent=False)

    def encode_raw(self, frames: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        stats = self.conv1(self.encoder(frames, cache))  # (B, 2·z_dim, T', h, w): mean, log-variance
        return stats[:, : self.cfg.z_dim]

    def decode_raw(self, latents: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.decoder(self.conv2(latents), cache)

    def config_dict(self) -> dict[str, object]:
        return asdict(self.cfg)
