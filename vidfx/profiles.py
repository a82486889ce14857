"""Release profiles: the sampler settings each published causal Wan2.1-T2V-1.3B generator was distilled for.

A profile fills the model settings a user did not set explicitly (flags and `VIDFX_MODEL__*` win), so live
`steps` / `strength` control keeps working inside a profile: it only fixes how a step list is read (warped
or not, the shift, how t and σ pair), the chunk size, the cache shape and the resolution. All four releases
are distilled without classifier-free guidance (one forward per step) and write the cache with clean latents
(context noise t = 0). Sources: docs/releases.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidfx.config import ModelSettings

PROFILE_NAMES = ("causvid", "self-forcing", "streamdiffusionv2", "longlive")


@dataclass(frozen=True)
class ReleaseProfile:
    name: str
    latent_frames_per_chunk: int  # num_frame_per_block
    steps: tuple[int, ...]  # denoising_step_list without its trailing 0
    warp_steps: bool  # warp_denoising_step
    shift: float  # the generator scheduler's timestep_shift
    timestep_pairing: str  # "scheduler": σ of the grid timestep nearest to t (FlowMatchScheduler.add_noise)
    sink_frames: int
    window_frames: int  # visible latent frames besides the sinks (the current chunk comes on top)
    strength: float | None  # video-to-video default (None: keep the node's; generation starts at 1 anyway)
    height: int = 480
    width: int = 832
    context_sigma: float = 0.0  # context_noise: 0 in every release
    source: str = ""

    def overrides(self) -> dict[str, Any]:
        """The ModelSettings fields this profile sets."""
        return {
            "latent_frames_per_chunk": self.latent_frames_per_chunk,
            "steps": list(self.steps),
            "warp_steps": self.warp_steps,
            "shift": self.shift,
            "timestep_pairing": self.timestep_pairing,
            "sink_frames": self.sink_frames,
            "window_frames": self.window_frames,
            "height": self.height,
            "width": self.width,
            "context_sigma": self.context_sigma,
        } | ({"strength": self.strength} if self.strength is not None else {})


PROFILES: dict[str, ReleaseProfile] = {
    # tianweiy/CausVid configs/wan_causal_dmd.yaml: [1000, 757, 522, 0], warp_denoising_step false, shift 8
    # (wan_wrapper.py FlowMatchScheduler(shift=8.0, sigma_min=0.0, extra_one_step=True)), num_frame_per_block 3;
    # causal_inference.py: a KV cache of 21 latent frames (32760 tokens), no sink, cache written at t = 0.
    "causvid": ReleaseProfile(
        "causvid", 3, (1000, 757, 522), False, 8.0, "scheduler", 0, 18, None,
        source="tianweiy/CausVid configs/wan_causal_dmd.yaml, causvid/models/wan/causal_inference.py",
    ),
    # guandeh17/Self-Forcing configs/self_forcing_dmd.yaml: [1000, 750, 500, 250], warp_denoising_step true,
    # timestep_shift 5, num_frame_per_block 3; default_config.yaml: context_noise 0, local_attn_size -1 (21 frames).
    "self-forcing": ReleaseProfile(
        "self-forcing", 3, (1000, 750, 500, 250), True, 5.0, "scheduler", 0, 18, None,
        source="guandeh17/Self-Forcing configs/self_forcing_dmd.yaml, pipeline/causal_inference.py",
    ),
    # chenfengxu714/StreamDiffusionV2 configs/wan_causal_dmd_v2v.yaml: [700, 500, 400, 200, 0] unwarped, shift 8,
    # num_frame_per_block 1, num_kv_cache 6, num_sink_tokens 3 (its adaptive sink refresh is not reproduced).
    "streamdiffusionv2": ReleaseProfile(
        "streamdiffusionv2", 1, (700, 500, 400, 200), False, 8.0, "scheduler", 3, 6, 0.7,
        source="chenfengxu714/StreamDiffusionV2 configs/wan_causal_dmd_v2v.yaml",
    ),
    # NVlabs/LongLive configs/longlive_inference.yaml (1.3B release, 294de2d): [1000, 750, 500, 250] warped,
    # shift 5, num_frame_per_block 3, local_attn_size 12 with sink_size 3 (12 − 3 sink − 3 current = 6),
    # context_noise 0, LoRA rank 256 / alpha 256 merged into longlive_base.pt.
    "longlive": ReleaseProfile(
        "longlive", 3, (1000, 750, 500, 250), True, 5.0, "scheduler", 3, 6, None,
        source="NVlabs/LongLive configs/longlive_inference.yaml",
    ),
}  # fmt: skip


def detect_profile(dit: str | Path, lora: str | Path = "") -> str | None:
    """The release a generator checkpoint comes from, by its file/folder names as published (None if unknown):
    Self-Forcing's `self_forcing_dmd.pt`, StreamDiffusionV2's `wan_causal_dmd_v2v/`, LongLive's `longlive_base.pt`
    (or any LoRA), CausVid's `autoregressive_checkpoint/` or a name with `causvid`."""
    if lora:
        return "longlive"
    text = str(dit).lower().replace("-", "_")
    for needle, name in (
        ("self_forcing", "self-forcing"),
        ("longlive", "longlive"),
        ("v2v", "streamdiffusionv2"),
        ("streamdiffusion", "streamdiffusionv2"),
        ("causvid", "causvid"),
        ("autoregressive_checkpoint", "causvid"),
    ):
        if needle in text:
            return name
    return None


def apply_profile(settings: ModelSettings, profile: ReleaseProfile) -> ModelSettings:
    """`settings` with the profile's values for every field the user did not set explicitly."""
    given = settings.model_fields_set
    changes = {k: v for k, v in profile.overrides().items() if k not in given}
    return settings.model_copy(update=changes)
