"""What every vidfx video autoencoder shares: the causal-conv cache, the stream objects and the base class.

A network only implements `encode_raw(frames, cache)` and `decode_raw(latents, cache)` for one chunk; this
module turns that into exact streaming (`StreamEncoder` / `StreamDecoder`), whole-clip calls and latent
normalisation, identically for the Wan VAE and the tiny autoencoder.

Lifecycle of `CausalCache` (one per stream object, never shared between streams):
    created  — empty and `at_start`: causal layers zero-pad the past, and the layers that treat a stream's
               first frame specially (Wan's temporal resamplers, the tiny AE's first frame group) do so;
    appended — while a chunk runs, every causal layer reads its own entry (`past(layer)`, the last frames of
               its input seen so far) and replaces it (`keep(layer, frames)`); entries are keyed by the layer
               module, so no slot indices or call-order counters exist;
    rolled   — `keep` stores only the few frames a layer's temporal kernel still needs, so memory is constant
               however long the stream runs; `end_chunk()` (called by the stream object after each chunk)
               clears `at_start`;
    reset    — `reset()` forgets the stream: the next chunk is a stream's first chunk again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn


class CausalCache:
    """The temporal context of every causal layer of one stream (lifecycle: see the module docstring)."""

    def __init__(self) -> None:
        self._past: dict[nn.Module, torch.Tensor] = {}
        self.at_start = True  # no chunk has finished yet: the next frame is the stream's first

    def past(self, layer: nn.Module) -> torch.Tensor | None:
        """The frames `layer` kept from earlier chunks (in the layer's own layout), or None before any."""
        return self._past.get(layer)

    def keep(self, layer: nn.Module, frames: torch.Tensor) -> None:
        # Cloned so a slice does not keep the whole chunk's activation alive until the next chunk.
        self._past[layer] = frames.detach().clone()

    def end_chunk(self) -> None:
        self.at_start = False

    def reset(self) -> None:
        self._past.clear()
        self.at_start = True

    def __len__(self) -> int:
        return len(self._past)


class CausalConv3d(nn.Conv3d):
    """A 3D convolution that is causal in time: output frame t sees input frames t-(k_t-1) … t.

    Frames before a stream's first are zeros. Spatial padding is symmetric (k//2), temporal stride 1. With a
    `cache`, the last k_t-1 input frames are kept for the next chunk, so any chunking gives the same output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int]) -> None:
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, k, padding=(0, k[1] // 2, k[2] // 2))
        self.context = k[0] - 1

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.context:
            past = cache.past(self) if cache is not None else None
            if past is None:
                b, c, _, h, w = x.shape
                past = x.new_zeros(b, c, self.context, h, w)
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                cache.keep(self, x[:, :, -self.context :])
        return super().forward(x)


def check_frames(frames: torch.Tensor, spatial_factor: int, what: str = "frames") -> None:
    if frames.ndim != 5:
        raise ValueError(f"{what} must be (B, C, T, H, W), got shape {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if h % spatial_factor or w % spatial_factor:
        raise ValueError(f"{what}: height and width must be multiples of {spatial_factor}, got {h}×{w}")


class VideoAutoencoder(nn.Module, ABC):
    """A temporally causal video autoencoder with the latent contract of `vidfx.autoencoder`.

    Subclasses set `latent_channels`, `temporal_factor`, `spatial_factor`, register `latent_mean` and
    `latent_std` buffers (C,), and implement one chunk of `encode_raw` / `decode_raw` with a `CausalCache`.
    """

    kind: ClassVar[str]  # name stored in checkpoint metadata ("wan2.1-vae", "tiny")
    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    # -- what a network implements ---------------------------------------------------------------------
    @abstractmethod
    def encode_raw(self, frames: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """One chunk of pixels (B, 3, T, H, W) → unnormalised latents (B, C, T', H/s, W/s)."""

    @abstractmethod
    def decode_raw(self, latents: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """One chunk of unnormalised latents → pixels (B, 3, T, H, W), not clamped."""

    @abstractmethod
    def config_dict(self) -> dict[str, object]:
        """The constructor's configuration as plain JSON values (saved in checkpoint metadata)."""

    # -- shared ----------------------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    def frames_for_latents(self, n_latent: int, first: bool) -> int:
        """Pixel frames of a chunk of `n_latent` latent frames: 1 + k·(n_latent-1) first, k·n_latent later."""
        if n_latent < 1:
            raise ValueError(f"a chunk holds at least one latent frame, got {n_latent}")
        k = self.temporal_factor
        return 1 + k * (n_latent - 1) if first else k * n_latent

    def latents_for_frames(self, n_frames: int, first: bool) -> int:
        """Latent frames of a chunk of `n_frames` pixel frames; raises if the count breaks the contract."""
        k = self.temporal_factor
        rest = n_frames - 1 if first else n_frames
        if rest < 0 or rest % k or (not first and rest == 0):
            rule = f"1 + {k}·n" if first else f"{k}·n with n ≥ 1"
            where = "a stream's first chunk" if first else "a later chunk"
            raise ValueError(f"{where} must hold {rule} frames, got {n_frames}")
        return rest // k + (1 if first else 0)

    def stream_encoder(self) -> StreamEncoder:
        return StreamEncoder(self)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def encode(self, frames: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Normalised latents of a whole clip of 1 + k·n frames.

        `chunk_latents=None` runs the clip in one pass; an integer m streams it in chunks of m latent frames
        (same result, bounded memory: Wan itself encodes with m = 1).
        """
        stream = self.stream_encoder()
        if chunk_latents is None:
            return stream.encode(frames)
        out, start, first = [], 0, True
        while start < frames.shape[2]:
            n = self.frames_for_latents(chunk_latents, first)
            out.append(stream.encode(frames[:, :, start : start + n]))
            start, first = start + n, False
        return torch.cat(out, dim=2)

    def decode(self, latents: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Frames in [-1, 1] of a whole clip of normalised latents (1 + k·(n-1) frames for n latents)."""
        stream = self.stream_decoder()
        if chunk_latents is None:
            return stream.decode(latents)
        parts = torch.split(latents, chunk_latents, dim=2)
        return torch.cat([stream.decode(p) for p in parts], dim=2)

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def param_device(self) -> torch.device:
        return next(self.parameters()).device


class StreamEncoder:
    """Encodes one video stream chunk by chunk; the concatenated outputs equal the whole clip's latents.

    Created by `ae.stream_encoder()` with an empty `CausalCache`. Feed chunks in order: the first holds
    1 + k·n frames, each later one k·n (n may change from chunk to chunk). `reset()` starts a new stream.
    Runs without autograd; frames are moved to the autoencoder's device and dtype.
    """

    def __init__(self, ae: VideoAutoencoder) -> None:
        self.ae = ae
        self.cache = CausalCache()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, T, H, W) in [-1, 1] → normalised latents (B, C, T', H/s, W/s)."""
        check_frames(frames, self.ae.spatial_factor)
        self.ae.latents_for_frames(frames.shape[2], first=self.cache.at_start)  # validates T
        with torch.no_grad():
            x = frames.to(self.ae.param_device, self.ae.param_dtype)
            z = self.ae.normalize(self.ae.encode_raw(x, self.cache))
        self.cache.end_chunk()
        return z

    def reset(self) -> None:
        self.cache.reset()


class StreamDecoder:
    """Decodes one latent stream chunk by chunk (any number ≥ 1 of latent frames a chunk).

    The stream's first latent frame gives one pixel frame, every other latent frame gives k. Created by
    `ae.stream_decoder()` with an empty `CausalCache`; `reset()` starts a new stream. Runs without autograd.
    """

    def __init__(self, ae: VideoAutoencoder) -> None:
        self.ae = ae
        self.cache = CausalCache()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T', h, w) → frames (B, 3, T, h·s, w·s) clamped to [-1, 1]."""
        check_frames(latents, 1, what="latents")
        if latents.shape[1] != self.ae.latent_channels or latents.shape[2] < 1:
            raise ValueError(
                f"latents must have {self.ae.latent_channels} channels and ≥ 1 frame, got {tuple(latents.shape)}"
            )
        with torch.no_grad():
            z = self.ae.denormalize(latents.to(self.ae.param_device, self.ae.param_dtype))
            frames = self.ae.decode_raw(z, self.cache).clamp_(-1.0, 1.0)
        self.cache.end_chunk()
        return frames

    def reset(self) -> None:
        self.cache.reset()
