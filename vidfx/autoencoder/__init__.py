"""Video autoencoders with one latent contract and exact streaming encode/decode.

Contract (the Wan VAE, the tiny autoencoder and the Wan 2.1 TAEHV):
  * pixels (B, 3, T, H, W) in [-1, 1]; latents (B, latent_channels, T', H/spatial_factor, W/spatial_factor),
    normalised (zero-mean, unit-variance per channel) so the DiT sees the same statistics for any autoencoder;
  * temporally causal with factor k = temporal_factor: a stream's first chunk holds 1 + k·n frames and gives
    1 + n latent frames; every later chunk holds k·n frames and gives n latent frames;
  * streaming: `StreamEncoder`/`StreamDecoder` objects own the causal-conv caches of one stream, so feeding a
    clip chunk by chunk gives the same result as the whole clip at once.
"""

from vidfx.autoencoder.base import CausalCache, StreamDecoder, StreamEncoder, VideoAutoencoder
from vidfx.autoencoder.loading import build_autoencoder, load_autoencoder, save_autoencoder
from vidfx.autoencoder.pair import AutoencoderPair
from vidfx.autoencoder.tae import TAEHV, TAEConfig, load_tae
from vidfx.autoencoder.tiny import TinyAEConfig, TinyAutoencoder
from vidfx.autoencoder.wan_vae import WanVAE, WanVAEConfig

__all__ = [
    "AutoencoderPair",
    "CausalCache",
    "StreamDecoder",
    "StreamEncoder",
    "TAEConfig",
    "TAEHV",
    "TinyAEConfig",
    "TinyAutoencoder",
    "VideoAutoencoder",
    "WanVAE",
    "WanVAEConfig",
    "build_autoencoder",
    "load_autoencoder",
    "load_tae",
    "save_autoencoder",
]
