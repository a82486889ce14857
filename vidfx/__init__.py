"""vidfx: a live video-to-video effects node built on a block-causal few-step video diffusion generator."""

__version__ = "0.1.0"
