"""One autoencoder's encoder with another's decoder, for autoencoders that share a latent space.

The use: the Wan VAE's encoder (exact input latents for video-to-video) with the TAEHV decoder (fast output),
both speaking vidfx's normalised Wan 2.1 latents. The pair is a `VideoAutoencoder` like any other, so a
pipeline takes it unchanged; each stream object still owns one `CausalCache`, which only the side it runs
(the encoder's or the decoder's layers) fills.

Both autoencoders are held whole: where memory matters, the caller may drop the unused half of each
(e.g. the Wan VAE's `decoder`) before building the pair — only `encode_raw` of the one and `decode_raw` of
the other are ever called.
"""

from __future__ import annotations

import torch

from vidfx.autoencoder.base import CausalCache, VideoAutoencoder


class AutoencoderPair(VideoAutoencoder):
    """Encodes with `encoding`, decodes with `decoding`; each side normalises with its own latent statistics."""

    kind = "pair"

    def __init__(self, encoding: VideoAutoencoder, decoding: VideoAutoencoder) -> None:
        super().__init__()
        geometry = ("latent_channels", "temporal_factor", "spatial_factor")
        enc_geometry = [getattr(encoding, g) for g in geometry]
        dec_geometry = [getattr(decoding, g) for g in geometry]
        if enc_geometry != dec_geometry:
            raise ValueError(
                f"{encoding.kind} and {decoding.kind} do not share a latent space: "
                f"{dict(zip(geometry, enc_geometry, strict=True))} vs {dict(zip(geometry, dec_geometry, strict=True))}"
            )
        self.encoding = encoding
        self.decoding = decoding
        self.latent_channels, self.temporal_factor, self.spatial_factor = enc_geometry

    @property  # type: ignore[override]
    def latent_mean(self) -> torch.Tensor:
        return self.encoding.latent_mean

    @property  # type: ignore[override]
    def latent_std(self) -> torch.Tensor:
        return self.encoding.latent_std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.encoding.normalize(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoding.denormalize(z)

    def encode_raw(self, frames: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.encoding.encode_raw(frames, cache)

    def decode_raw(self, latents: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.decoding.decode_raw(latents, cache)

    def config_dict(self) -> dict[str, object]:
        return {
            "encoding": {"kind": self.encoding.kind, **self.encoding.config_dict()},
            "decoding": {"kind": self.decoding.kind, **self.decoding.config_dict()},
        }
