"""A trained run → a weights folder `load_pipeline` reads (`vidfx train export`): what ships as `default`.

    model.json              {"dit": DiTConfig fields, "text": {"kind": "hash", "config": {…}},
                             "training": free-form provenance (run folders, steps, config)}
    dit.safetensors         the causal student's generator weights (EMA if the run kept one)
    autoencoder.safetensors the autoencoder (`vidfx.autoencoder.loading.save_autoencoder`'s format)
    look_classifier.safetensors  optional: the dataset's look classifier, for `vidfx eval --model`

Weights are stored in `dtype` (fp16 halves the package; the loader casts to the serving dtype).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vidfx.autoencoder.loading import load_autoencoder, save_autoencoder
from vidfx.model.wan_dit import CausalDiT, DiTConfig
from vidfx.text.small import HashTextEncoder
from vidfx.train.checkpoint import read_weights
from vidfx.train.components import text_encoder_from_spec
from vidfx.weights import load_into


def look_prompts(looks: list[str]) -> dict[str, str]:
    """{look: its prompt} for the dataset's looks (other names read as words), for model.json."""
    from vidfx.data.looks import LOOKS, prompt_for

    return {look: prompt_for(look) if look in LOOKS else look.replace("_", " ") for look in looks}


def text_spec_meta(spec: str) -> dict[str, Any]:
    """model.json's "text" entry for a training text spec (`components.text_encoder_from_spec`)."""
    encoder = text_encoder_from_spec(spec)
    if not isinstance(encoder, HashTextEncoder):
        raise ValueError(f"only the hashing text encoder ships in a weights folder, not {spec!r}")
    return {"kind": "hash", "config": {"text_dim": encoder.text_dim, "max_tokens": encoder.max_tokens}}


def export_model(
    generator: str | Path,
    dit_config: DiTConfig,
    autoencoder: str | Path,
    out: str | Path,
    text: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    classifier: str | Path | None = None,
    looks: list[str] | None = None,
    latent_stats: dict[str, list[float]] | None = None,
) -> Path:
    """Write `out/` from a generator run (or weights) and an autoencoder file; returns `out`.

    latent_stats: the latent cache's `latent_mean` / `latent_std` (its manifest meta): the autoencoder must
    normalise latents as the cache the DiT learnt from did, or the served model sees latents at another scale.
    """
    ae = load_autoencoder(autoencoder)
    for name, values in (latent_stats or {}).items():
        if not torch.allclose(getattr(ae, name).float(), torch.tensor(values), rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"{autoencoder}: its {name} is not the one the training latents were normalised with "
                f"({getattr(ae, name)[:3].tolist()}… vs {values[:3]}…): export with the autoencoder that encoded them"
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dit = CausalDiT(dit_config)
    load_into(dit, read_weights(generator, role="generator"), str(generator))  # checks names and shapes
    state = {k: v.detach().to(dtype).contiguous() for k, v in dit.state_dict().items()}
    save_file(state, str(out / "dit.safetensors"), metadata={"vidfx.kind": "causal-dit"})
    save_autoencoder(ae, out / "autoencoder.safetensors")
    meta = {
        "dit": dataclasses.asdict(dit_config),
        "text": text or {"kind": "hash", "config": {}},
        "looks": looks or [],  # what the model card claims it renders
        "look_prompts": look_prompts(looks or []),  # their prompts: serving reads these, not vidfx.data.looks
        "training": training or {},
    }
    if classifier:
        shutil.copyfile(classifier, out / "look_classifier.safetensors")
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out
