"""Model sources → a ready `StylePipeline`: the one place that knows model names, folder layouts and releases.

    load_pipeline(ModelSettings(name=…, dit=…, lora=…, profile=…))

Sources (`ModelSettings.name`):

* `tiny-random`: the tiny DiT preset, the tiny autoencoder and the hashing text encoder, seeded random weights;
* `wan-1.3b-random`: the Wan2.1-1.3B DiT, the Wan VAE (and TAEHV where `encoder`/`decoder` ask for it) with
  random weights and the hashing text encoder at umT5's width: the whole serving path at full size with nothing
  downloaded, for benchmarks (`vidfx bench serve --model wan-1.3b-random` on a GPU);
* `default` or one of our weights folders: `model.json` + `dit.safetensors` + `autoencoder.safetensors`
  (`vidfx train export` writes them; the card's looks travel in model.json as `look_prompts`);
* an official **Wan2.1-T2V-1.3B release folder** as downloaded (`config.json`, `diffusion_pytorch_model*.safetensors`,
  `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/tokenizer.json`), each `.pth`
  converted once with `vidfx convert` next to itself. `dit` swaps in a causal generator (CausVid,
  Self-Forcing, StreamDiffusionV2, LongLive: `generator`/`generator_ema`/`state_dict` entries, wrapper prefixes
  stripped) and `lora` merges a LoRA into it (LongLive's `generator_lora`). The architecture is read from the
  folder's `config.json`, the VAE's and umT5's from their tensors: nothing is assumed from a preset.

The release profile (`vidfx.profiles`) is resolved here and applied to the settings the pipeline runs with.
Nothing pickled is ever opened: a `.pth` where safetensors are expected is refused with the command to run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidfx.autoencoder.base import VideoAutoencoder
from vidfx.autoencoder.refiner import DetailRefiner, load_refiner
from vidfx.config import ModelSettings
from vidfx.model.wan_dit import CausalDiT, DiTConfig, rope_frequencies
from vidfx.pipeline import StylePipeline
from vidfx.profiles import PROFILE_NAMES, PROFILES, apply_profile, detect_profile
from vidfx.text.base import TextEncoder
from vidfx.weights import (
    PICKLE_SUFFIXES,
    CheckpointError,
    convert_command,
    load_into,
    load_state_dict,
    pickle_refused,
    select_generator,
    strip_wrappers,
)

log = logging.getLogger("vidfx.loading")

# The model `vidfx serve` uses unless told otherwise: the one trained by our recipe and shipped in the package
# (vidfx/weights/default/MODEL_CARD.md), and the look classifier trained on its dataset (for `vidfx eval`).
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default"
MODEL_ALIASES: dict[str, str] = {"default": str(DEFAULT_WEIGHTS)}
DEFAULT_CLASSIFIER = DEFAULT_WEIGHTS / "look_classifier.safetensors"

# File names of a Wan2.1-T2V release (Wan-AI/Wan2.1-T2V-1.3B on Hugging Face).
WAN_CONFIG = "config.json"
WAN_DIT_GLOB = "diffusion_pytorch_model*.safetensors"
WAN_VAE = "Wan2.1_VAE"
WAN_UMT5 = "models_t5_umt5-xxl-enc-bf16"
WAN_TOKENIZER = Path("google") / "umt5-xxl" / "tokenizer.json"
# config.json keys that are DiTConfig fields (the rest, e.g. `_class_name`, `model_type`, is provenance).
_CONFIG_FIELDS = ("dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "in_dim", "out_dim", "num_heads",
                  "num_layers", "patch_size", "eps")  # fmt: skip
TEXT_ON_GPU_MIN_BYTES = 40 * 1024**3  # umT5-XXL is 11 GB in bf16: beside the DiT only on a large GPU
TAE_DECODER = "taew2_1"  # madebyollin/taehv's tiny autoencoder for Wan 2.1 latents (MIT), beside the release
# Random-weight models by name: the settings each runs at unless the user sets them (as a weights folder's
# model.json "settings"). The 1.3B one runs as `vidfx bench gpu` measures: 480×832, 3-latent chunks, 8 window.
RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "tiny-random": {},
    "wan-1.3b-random": {"height": 480, "width": 832, "latent_frames_per_chunk": 3, "window_frames": 8},
}


# -- our own models ------------------------------------------------------------------------------------------


def _tiny_random() -> tuple[CausalDiT, VideoAutoencoder, TextEncoder]:
    """The tiny DiT preset, the tiny autoencoder and the hashing text encoder with seeded random weights."""
    from vidfx.autoencoder.tiny import TinyAEConfig, TinyAutoencoder
    from vidfx.text.small import HashTextEncoder

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        cfg = DiTConfig.preset("tiny")
        dit = CausalDiT(cfg)
        # Wan zero-initialises the output head and gives the text MLP tiny weights (training moves both); an
        # untrained stand-in needs them live, or the velocity ignores the prompt and the output the steering.
        for layer in (dit.head.head, dit.text_embedding[0], dit.text_embedding[2]):
            torch.nn.init.xavier_uniform_(layer.weight)
        ae = TinyAutoencoder(TinyAEConfig(latent_channels=cfg.out_dim))
        # PyTorch's default init shrinks the signal layer by layer: the decoded frames would be a flat grey
        # whatever the latents. Variance-preserving weights keep the output sensitive to what the DiT does.
        for m in ae.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        text = HashTextEncoder(text_dim=cfg.text_dim, max_tokens=cfg.text_len)
    finally:
        torch.random.set_rng_state(gen_state)
    return dit, ae, text


def _wan_random(settings: ModelSettings) -> tuple[CausalDiT, VideoAutoencoder, TextEncoder]:
    """The Wan2.1-1.3B DiT with Wan's initialisation (the output head made live), the Wan VAE and TAEHV (each
    where `settings` encode or decode with it) with random weights, and the hashing text encoder at umT5's width.
    Built on the model's device: seconds on a GPU, where the 1.4 B parameters' CPU initialisation takes a minute."""
    from vidfx.autoencoder.loading import build_autoencoder
    from vidfx.text.small import HashTextEncoder

    cfg = DiTConfig.preset("wan-1.3b")
    device = torch.device(settings.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(0)
        dit = CausalDiT(cfg)
        torch.nn.init.normal_(dit.head.head.weight, std=0.02)
        sides = (settings.encoder, settings.decoder)
        wan = build_autoencoder("wan2.1") if "wan" in sides else None
        tae = build_autoencoder("taew2.1") if "tae" in sides else None
    return dit, autoencoder_sides(wan, tae, settings), HashTextEncoder(text_dim=cfg.text_dim, max_tokens=cfg.text_len)


def autoencoder_sides(
    wan: VideoAutoencoder | None, tae: VideoAutoencoder | None, settings: ModelSettings
) -> VideoAutoencoder:
    """The autoencoder a pipeline runs: `settings.encoder` encodes and `settings.decoder` decodes ("wan" or
    "tae"). Both speak the DiT's normalised latents, so a pair needs no conversion between them."""
    from vidfx.autoencoder import AutoencoderPair

    encoding = tae if settings.encoder == "tae" else wan
    decoding = tae if settings.decoder == "tae" else wan
    assert encoding is not None and decoding is not None, f"{settings.encoder}/{settings.decoder}: a side is missing"
    return encoding if encoding is decoding else AutoencoderPair(encoding, decoding)


def card_looks(meta: dict[str, Any]) -> tuple[str, ...]:
    """The prompts of the looks a model card claims: model.json `look_prompts` ({look: prompt}), else its
    `looks` names read as words ("night_vision" → "night vision"). The card carries them, so serving never
    imports the training data generator."""
    prompts = meta.get("look_prompts")
    if isinstance(prompts, dict):
        return tuple(str(p) for p in prompts.values())
    return tuple(str(look).replace("_", " ") for look in meta.get("looks", []))


def _from_folder(
    folder: Path,
) -> tuple[CausalDiT, VideoAutoencoder, TextEncoder, tuple[str, ...], DetailRefiner | None]:
    """Our weights folder: `model.json` ({"dit": DiTConfig fields, "text": {"kind": "hash", "config": {…}},
    optionally "looks"/"look_prompts": what its card claims, "refiner": its file, "settings": see `resolve`}),
    `dit.safetensors`, `autoencoder.safetensors` and, where named, the detail refiner."""
    from vidfx.autoencoder.loading import load_autoencoder
    from vidfx.text.small import HashTextEncoder

    meta = json.loads((folder / "model.json").read_text())
    dit_cfg = dict(meta.get("dit", {}))
    if "patch_size" in dit_cfg:
        dit_cfg["patch_size"] = tuple(dit_cfg["patch_size"])
    dit = CausalDiT(DiTConfig(**dit_cfg))
    load_into(dit, load_state_dict(folder / "dit.safetensors"), str(folder / "dit.safetensors"))
    ae = load_autoencoder(folder / "autoencoder.safetensors")
    text_meta = meta.get("text", {"kind": "hash", "config": {}})
    if text_meta.get("kind") != "hash":
        raise CheckpointError(f"{folder}: text encoder kind {text_meta.get('kind')!r} is not supported here yet")
    text_cfg = {"text_dim": dit.cfg.text_dim, "max_tokens": dit.cfg.text_len, **text_meta.get("config", {})}
    refiner = load_refiner(folder / str(meta["refiner"])) if meta.get("refiner") else None
    return dit, ae, HashTextEncoder(**text_cfg), card_looks(meta), refiner


# -- Wan2.1 release folders ----------------------------------------------------------------------------------


def is_wan_release(folder: Path) -> bool:
    return (folder / WAN_CONFIG).is_file() and not (folder / "model.json").is_file()


@dataclass
class Part:
    """One file a release folder needs: where it is, and whether it is usable as it stands."""

    name: str
    path: Path | None
    status: str  # "found", "missing" or "needs convert"
    hint: str = ""  # the command that fixes it, or where to get it

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.name, "path": str(self.path) if self.path else None, "status": self.status,
                "hint": self.hint}  # fmt: skip


def _converted(folder: Path, stem: str, what: str, origin: str = "Wan-AI/Wan2.1-T2V-1.3B") -> Part:
    """`stem.safetensors`, or the `stem.pth` it is converted from (with the command), or missing."""
    st, pth = folder / f"{stem}.safetensors", folder / f"{stem}.pth"
    if st.is_file():
        return Part(what, st, "found")
    if pth.is_file():
        return Part(what, pth, "needs convert", convert_command(pth))
    return Part(what, None, "missing", f"{stem}.pth from {origin}, then vidfx convert it")


def _checkpoint(path: str, what: str) -> Part:
    p = Path(path)
    if p.suffix in PICKLE_SUFFIXES:
        return Part(what, p, "needs convert", convert_command(p))
    return Part(what, p, "found" if p.exists() else "missing")


def release_parts(
    folder: Path, dit: str = "", lora: str = "", decoder: str = "wan", encoder: str = "wan"
) -> dict[str, Part]:
    """Every file a release folder (plus a generator checkpoint, a LoRA and the tiny autoencoder) needs, found
    or not."""
    parts = {"config": Part("config", folder / WAN_CONFIG, "found")}
    if not (folder / WAN_CONFIG).is_file():
        parts["config"] = Part("config", None, "missing", "config.json from Wan-AI/Wan2.1-T2V-1.3B")
    if dit:
        parts["dit"] = _checkpoint(dit, "dit")
    else:
        shards = sorted(folder.glob(WAN_DIT_GLOB))
        parts["dit"] = (
            Part("dit", shards[0] if len(shards) == 1 else folder, "found")
            if shards
            else Part("dit", None, "missing", "diffusion_pytorch_model.safetensors, or --model-dit CKPT")
        )
    if lora:
        parts["lora"] = _checkpoint(lora, "lora")
    parts["vae"] = _converted(folder, WAN_VAE, "vae")
    parts["umt5"] = _converted(folder, WAN_UMT5, "umt5")
    if "tae" in (decoder, encoder):
        parts["tae"] = _converted(folder, TAE_DECODER, "tae", origin="github.com/madebyollin/taehv (MIT)")
    tok = folder / WAN_TOKENIZER
    parts["tokenizer"] = (
        Part("tokenizer", tok, "found")
        if tok.is_file()
        else Part("tokenizer", None, "missing", f"{WAN_TOKENIZER} from Wan-AI/Wan2.1-T2V-1.3B")
    )
    return parts


def _require(parts: dict[str, Part]) -> None:
    """Raise on the first part that is not usable, naming the file and the fix."""
    for part in parts.values():
        if part.status == "needs convert":
            assert part.path is not None
            raise pickle_refused(part.path)
        if part.status == "missing":
            where = part.path or f"no {part.name} file"
            raise CheckpointError(f"{where}: {part.name} not found ({part.hint})" if part.hint else f"{where}: missing")


def dit_config_from_release(folder: Path) -> DiTConfig:
    """DiTConfig from a release's config.json (Wan's `WanModel` config: dim, ffn_dim, num_layers, …)."""
    path = folder / WAN_CONFIG
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc
    if raw.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r}; only text-to-video (t2v) is served")
    fields = {k: raw[k] for k in _CONFIG_FIELDS if k in raw}
    if "patch_size" in fields:
        fields["patch_size"] = tuple(fields["patch_size"])
    return DiTConfig(**fields, extra={"source": str(path)})


def merge_lora(
    state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], source: str | Path, alpha: float | None = None
) -> dict[str, torch.Tensor]:
    """`state` with a LoRA folded in: W + (alpha/rank)·B·A for every `<module>.lora_A/lora_B` pair (peft names,
    optionally with an adapter name, `lora_A.default.weight`). alpha None: alpha = rank (LongLive: 256/256)."""
    lora = strip_wrappers({k[len("generator_lora.") :] if k.startswith("generator_lora.") else k: v
                           for k, v in lora.items()})  # fmt: skip
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        for side in ("lora_A", "lora_B"):
            marker = f".{side}."
            if marker in key:
                pairs.setdefault(key.split(marker)[0], {})[side] = value
    if not pairs:
        raise CheckpointError(f"{source}: no lora_A/lora_B tensors (first names: {sorted(lora)[:3]})")
    out = dict(state)
    for module, ab in sorted(pairs.items()):
        name = module + ".weight"
        if set(ab) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{source}: {module} has only {sorted(ab)}")
        if name not in out:
            raise CheckpointError(f"{source}: LoRA for {name}, which the DiT checkpoint does not have")
        a, b = ab["lora_A"].float(), ab["lora_B"].float()  # (rank, in), (out, rank)
        weight = out[name]
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise CheckpointError(
                f"{source}: {module} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit "
                f"{name} {tuple(weight.shape)}"
            )
        scale = (alpha if alpha is not None else a.shape[0]) / a.shape[0]
        out[name] = (weight.float() + scale * (b @ a)).to(weight.dtype)
    return out


def load_generator(path: str | Path, profile: str | None = None) -> dict[str, torch.Tensor]:
    """A converted causal-generator checkpoint → the DiT's plain names (EMA weights preferred where present,
    except for LongLive, whose inference config reads `generator`)."""
    state = load_state_dict(path)
    for entry in ("state_dict.", "model_state_dict."):  # a whole-dict wrapper around the generator entries
        if state and all(k.startswith(entry) for k in state):
            state = {k[len(entry) :]: v for k, v in state.items()}
    has = {e for e in ("generator", "generator_ema") if any(k.startswith(e + ".") for k in state)}
    return select_generator(state, "generator" if profile == "longlive" and "generator" in has else None)


def umt5_from_release(weights: Path, tokenizer: Path, text_len: int, device: str, dtype: torch.dtype) -> TextEncoder:
    """umT5 encoder whose widths are read off its tensors (so a reduced copy loads like the XXL one)."""
    from vidfx.text.umt5 import UMT5Config, UMT5Encoder, UMT5TextEncoder, UMT5Tokenizer

    state = strip_wrappers(load_state_dict(weights, device=device))
    try:
        vocab, dim = state["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        cfg = UMT5Config(
            vocab_size=vocab,
            dim=dim,
            dim_attn=state["blocks.0.attn.q.weight"].shape[0],
            dim_ffn=state["blocks.0.ffn.fc1.weight"].shape[0],
            num_heads=state["blocks.0.pos_embedding.embedding.weight"].shape[1],
            num_buckets=state["blocks.0.pos_embedding.embedding.weight"].shape[0],
            num_layers=layers,
            text_len=text_len,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not Wan's umT5 encoder (no tensor {exc})") from exc
    try:
        tok = UMT5Tokenizer(tokenizer, text_len)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{tokenizer}: {exc}") from exc
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    load_into(model, state, weights, assign=True)
    try:
        return UMT5TextEncoder(model.to(dtype=dtype), tok)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


def text_device(settings: ModelSettings) -> str:
    """Where umT5 runs: `text_device`, or for auto the model device when it is a GPU of ≥ 40 GB, else the CPU."""
    if settings.text_device != "auto":
        return settings.text_device
    dev = torch.device(settings.device)
    big = dev.type == "cuda" and torch.cuda.is_available()
    if big and torch.cuda.get_device_properties(dev).total_memory >= TEXT_ON_GPU_MIN_BYTES:
        return settings.device
    return "cpu" if dev.type != "cpu" else settings.device


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _from_release(
    folder: Path, settings: ModelSettings, profile: str | None
) -> tuple[CausalDiT, VideoAutoencoder, TextEncoder]:
    from vidfx.autoencoder import load_tae
    from vidfx.autoencoder.loading import load_autoencoder

    parts = release_parts(folder, settings.dit, settings.lora, settings.decoder, settings.encoder)
    _require(parts)
    cfg = dit_config_from_release(folder)
    dit_part = parts["dit"]
    assert dit_part.path is not None
    state = load_generator(dit_part.path, profile) if settings.dit else load_state_dict(folder)
    if settings.lora:
        state = merge_lora(state, load_state_dict(settings.lora), settings.lora)
    with torch.device("meta"):  # no random init of 1.3 B weights only to overwrite them
        dit = CausalDiT(cfg)
    source = f"{dit_part.path} (architecture from {folder / WAN_CONFIG})"
    load_into(dit, state, source, assign=True)
    dit._rope = rope_frequencies(cfg)  # derived tables, built on meta above
    vae_path = parts["vae"].path
    assert vae_path is not None
    ae = load_autoencoder(vae_path)
    # The tiny autoencoder on either side (docs/decoders.md): the Wan VAE's encoder is exact with no time shift,
    # the TAE's ~13× cheaper with the input 3 frames late; the TAE's decoder is ~15× cheaper than the VAE's.
    tae_path = parts["tae"].path if "tae" in parts else None
    ae = autoencoder_sides(ae, load_tae(tae_path) if tae_path else None, settings)
    tdev = text_device(settings)
    tdtype = torch.float32 if settings.dtype == "float32" else torch.bfloat16
    umt5, tok = parts["umt5"].path, parts["tokenizer"].path
    assert umt5 is not None and tok is not None
    text = umt5_from_release(umt5, tok, cfg.text_len, tdev, tdtype)
    return dit, ae, text


# -- the one loader ------------------------------------------------------------------------------------------


@dataclass
class ResolvedModel:
    """A model source with its profile resolved: what `load_pipeline` builds and `vidfx models check` reports."""

    name: str
    path: Path | None  # the folder, None for a random model
    kind: str  # "random" (RANDOM_MODELS), "weights" (ours) or "wan-release"
    profile: str | None
    settings: ModelSettings  # with the profile applied
    notes: list[str] = field(default_factory=list)


def resolve(settings: ModelSettings) -> ResolvedModel:
    """Which source `settings.name` is, and the profile and settings it runs with (no weights read)."""
    name = MODEL_ALIASES.get(settings.name, settings.name)
    if settings.name in RANDOM_MODELS:
        kind, path = "random", None
    elif Path(name).is_dir():
        path = Path(name)
        if (path / "model.json").is_file():
            kind = "weights"
        elif (path / WAN_CONFIG).is_file():
            kind = "wan-release"
        else:
            raise CheckpointError(
                f"{path}: neither our weights folder (model.json) nor a Wan2.1 release folder (config.json)"
            )
    elif Path(name).suffix in PICKLE_SUFFIXES:
        raise pickle_refused(Path(name), " and pass it as --model-dit with --model WAN_RELEASE_FOLDER")
    else:
        raise ValueError(
            f"unknown model {settings.name!r}: use default, {', '.join(RANDOM_MODELS)}, a weights folder or a Wan2.1 "
            "release folder"
        )
    if settings.dit and Path(settings.dit).suffix in PICKLE_SUFFIXES:
        raise pickle_refused(Path(settings.dit), " and pass the .safetensors as --model-dit")
    if (settings.dit or settings.lora) and kind != "wan-release":
        raise CheckpointError(f"{settings.name}: --model-dit / --model-lora need a Wan2.1 release folder as --model")
    profile: str | None = None
    notes: list[str] = []
    if settings.profile in PROFILE_NAMES:
        profile = settings.profile
    elif settings.profile == "auto" and kind == "wan-release":
        profile = detect_profile(settings.dit, settings.lora)
        if profile is None and not settings.dit:
            raise CheckpointError(
                f"{name}: without --model-dit a release folder serves its bidirectional base DiT, which no profile "
                f"fits; pass --model-dit CKPT (a causal generator), or --model-profile ({', '.join(PROFILE_NAMES)}) "
                "or none to run it anyway"
            )
        if profile is None:
            raise CheckpointError(
                f"{settings.dit or name}: cannot tell which release this generator is; pass --model-profile "
                f"({', '.join(PROFILE_NAMES)}) or none"
            )
        notes.append(f"profile {profile} detected from the checkpoint's name")
    effective = apply_profile(settings, PROFILES[profile]) if profile else settings
    if kind == "weights":
        assert path is not None
        given = json.loads((path / "model.json").read_text()).get("settings", {})
        effective = model_defaults(effective, given, f"{path}/model.json", notes)
    elif kind == "random":
        effective = model_defaults(effective, RANDOM_MODELS[settings.name], settings.name, notes)
    return ResolvedModel(settings.name, path, kind, profile, effective, notes)


def model_defaults(settings: ModelSettings, given: dict[str, Any], source: str, notes: list[str]) -> ModelSettings:
    """`settings` with a model's own settings `given` (our weights folder's model.json "settings", e.g. the
    resolution its refiner renders at; a random model's) for every field the user did not set, as a release
    profile's."""
    unknown = set(given) - set(ModelSettings.model_fields)
    if unknown:
        raise CheckpointError(f"{source}: unknown settings {sorted(unknown)}")
    changes = {k: v for k, v in given.items() if k not in settings.model_fields_set}
    if changes:
        notes.append(f"{source} sets {', '.join(f'{k}={v}' for k, v in changes.items())}")
    return settings.model_copy(update=changes)


def load_pipeline(settings: ModelSettings) -> StylePipeline:
    """The one loader: a model name ("default", a random model), our weights folder or a Wan2.1 release
    folder (+ `dit`, `lora`) → a ready pipeline running at its release profile's settings."""
    resolved = resolve(settings)
    looks: tuple[str, ...] = ()
    refiner: DetailRefiner | None = None
    if resolved.kind == "random":
        dit, ae, text = _tiny_random() if settings.name == "tiny-random" else _wan_random(resolved.settings)
    elif resolved.kind == "weights":
        assert resolved.path is not None
        dit, ae, text, looks, refiner = _from_folder(resolved.path)
    else:
        assert resolved.path is not None
        dit, ae, text = _from_release(resolved.path, resolved.settings, resolved.profile)
    run = resolved.settings
    dit = dit.to(run.device, _dtype(run.dtype))
    ae = ae.to(run.device)
    if refiner is not None:
        refiner = refiner.to(run.device)
    return StylePipeline(
        dit, ae, text, run, name=settings.name, looks=looks, profile=resolved.profile or "", refiner=refiner
    )
