"""Training configuration: one dataclass per stage, read from TOML, resolved config written beside the run.

A config file holds the stage's fields at top level and the shared sections as tables:

    steps = 2000                      # a StageConfig field (see the dataclasses below)
    [run]                             # RunConfig: where, how long, which hardware
    out = "runs/teacher"
    [model]                           # ModelSpec: a DiT preset plus field overrides
    preset = "tiny"
    overrides = { num_layers = 2 }
    [optim]                           # OptimConfig (DMD has [optim] for the generator and [critic_optim])

`load_config(Cls, path, overrides)` builds the dataclass, rejecting unknown keys (a typo is an error, not a
silent default); `--set key.sub=value` overrides are parsed as TOML values. `dump_toml` writes the resolved
config (every field, defaults included) as `config.toml` in the run folder, so a run can be reproduced from
its folder alone. TOML rather than YAML: `tomllib` is in the standard library; writing needs only the small
emitter below, since configs are flat tables of numbers, strings, booleans and lists.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vidfx.model.wan_dit import DiTConfig
from vidfx.sampling import CAUSVID_STEPS, DEFAULT_SHIFT

T = TypeVar("T")


@dataclass
class RunConfig:
    """Shared by every stage: the run folder, length, checkpointing, hardware."""

    out: str = "runs/run"  # run folder: config.toml, checkpoints/, losses.png, losses.csv
    seed: int = 0
    steps: int = 1000  # optimiser steps (DMD: critic steps; the generator steps every `ratio`-th)
    batch_size: int = 1  # per process
    save_every: int = 100  # steps between checkpoints (and always at the last step)
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are deleted after a successful save
    plot_every: int = 100  # steps between loss-curve PNG refreshes
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    distributed: str = "none"  # "none", "ddp" (torchrun, replicated) or "fsdp" (torchrun, sharded; the 1.3B)
    bf16: bool = False  # bf16 autocast on CUDA (weights and optimiser stay fp32)
    gradient_checkpointing: bool = False  # recompute each block's activations in backward
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class ModelSpec:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # DiTConfig fields, e.g. {num_layers = 2}

    def build(self) -> DiTConfig:
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.items()}
        return DiTConfig.preset(self.preset).with_(**changes)


@dataclass
class OptimConfig:
    """AdamW. Defaults are CausVid's (configs/wan_causal_dmd.yaml and wan_causal_ode.yaml: lr 2e-6,
    beta1 0.9, beta2 0.999; train_distillation.py builds torch.optim.AdamW, so weight decay is AdamW's 0.01;
    max_grad_norm = 10.0 is hard-coded in the same trainer)."""

    lr: float = 2e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 10.0  # max global grad norm; 0 disables


@dataclass
class EMAConfig:
    """EMA of the trained network's weights, saved as `<role>_ema`. CausVid's trainer keeps none; the
    defaults are Self-Forcing's (configs/self_forcing_dmd.yaml: ema_weight 0.99, ema_start_step 200),
    CausVid's successor by the same group. decay 0 disables."""

    decay: float = 0.99
    start_step: int = 200  # EMA copies the weights until this step, then averages


@dataclass
class TeacherConfig:
    """Stage 1: flow-matching training of the (bidirectional) teacher."""

    latents: str = ""  # folder written by `vidfx train encode`
    init: str = ""  # optional weights to start from (safetensors file/folder or a vidfx checkpoint folder)
    text_dropout: float = 0.1  # probability of the null prompt (zero embeddings), for CFG; Wan/SD3 use 0.1
    sigma_sampling: str = "shifted"  # "shifted": σ = shift(u), u ~ U(0,1); "logit_normal": σ = sigmoid(N(m, s))
    shift: float = DEFAULT_SHIFT  # shifted schedule (Wan/CausVid timestep_shift 8)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    chunk_frames: int | None = None  # None: bidirectional. k: a block-causal teacher (diffusion forcing)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    # The EMA copies the weights for the first 1000 steps: a slow average begun at step 0 would drag the
    # random initialisation along for thousands of steps (and later stages read the EMA weights).
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(decay=0.999, start_step=1000))


@dataclass
class OdePairsConfig:
    """Stage 2: ODE trajectories of the teacher, kept at the student's steps."""

    teacher: str = ""  # teacher checkpoint (vidfx run folder / checkpoint folder, or safetensors)
    latents: str = ""  # encoded dataset: its captions (text embeddings) and latent shape are used
    out: str = "runs/ode_pairs"
    num_pairs: int = 1000
    sample_steps: int = 50  # Euler steps of the teacher (CausVid generate_ode_pairs.py: 50)
    guidance: float = 6.0  # CFG in v_u + s·(v_c − v_u) form; CausVid generate_ode_pairs.py: 6.0
    shift: float = DEFAULT_SHIFT  # CausVid generate_ode_pairs.py: FlowMatchScheduler(shift=8.0)
    student_steps: list[int] = field(default_factory=lambda: list(CAUSVID_STEPS))
    chunk_frames: int | None = None  # run the teacher block-causally (a causal teacher)
    batch_size: int = 4
    shard_size: int = 64  # pairs per safetensors shard
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    progress: bool = True
    model: ModelSpec = field(default_factory=ModelSpec)


@dataclass
class StudentInitConfig:
    """Stage 3: the causal student regresses from noisy ODE states to their endpoints (CausVid §4.3)."""

    pairs: str = ""  # folder written by `vidfx train ode-pairs`
    init: str = ""  # the teacher's weights (the student starts as a copy of them)
    chunk_frames: int = 3  # latent frames a chunk (CausVid num_frame_per_block: 3)
    independent_chunks: bool = True  # per-chunk ODE state index (CausVid's causal_video timestep processing)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)  # CausVid wan_causal_ode.yaml: lr 2e-6
    ema: EMAConfig = field(default_factory=EMAConfig)


@dataclass
class DMDConfig:
    """Stage 4: asymmetric DMD. Defaults: CausVid configs/wan_causal_dmd.yaml unless a comment says else."""

    generator_init: str = ""  # the student after ODE init (or the teacher, for "DMD without ODE init")
    real_score: str = ""  # the frozen teacher
    fake_score_init: str = ""  # default: the real score's weights (CausVid: fake_score from the same model)
    data: str = ""  # ODE pairs (their endpoints are the clean latents) or an encoded latents folder
    chunk_frames: int = 3  # generator chunk (num_frame_per_block: 3)
    score_chunk_frames: int | None = None  # None: bidirectional real/fake scores (real/fake_task_type
    #                                        bidirectional_video); k: a causal teacher (ablation)
    student_steps: list[int] = field(default_factory=lambda: list(CAUSVID_STEPS))  # denoising_step_list
    shift: float = DEFAULT_SHIFT  # timestep_shift: 8.0
    guidance: float = 3.5  # real_guidance_scale: 3.5, in the form cond + (cond − uncond)·s (dmd.py)
    ratio: int = 5  # dfake_gen_update_ratio: 5 (generator on steps divisible by it, critic every step)
    t_min: float = 20.0  # dmd.py: min_step = int(0.02 · num_train_timestep) = 20
    t_max: float = 980.0  # dmd.py: max_step = int(0.98 · num_train_timestep) = 980
    generator_input: str = "noised_data"  # "noised_data": clean latents noised to a random student step
    #   per chunk, one generator forward (CausVid backward_simulation: false); "rollout": chunk-by-chunk
    #   through the generator's own KV cache from noise (Self-Forcing), gradient via each chunk's last step
    context_sigma: float = 0.0  # rollout: noise level of the cache-write pass (CausVid writes clean: 0)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)  # lr 2e-6, beta1 0.9, beta2 0.999
    critic_optim: OptimConfig = field(default_factory=OptimConfig)  # CausVid uses the same lr/betas
    ema: EMAConfig = field(default_factory=EMAConfig)


@dataclass
class PairedDMDConfig:
    """Distribution matching beside the paired stage's regression (DMD's two terms, Yin et al. 2024): the
    regression keeps the scene, the DMD direction of a frozen bidirectional teacher pulls the x₀ predictions
    toward its clips of the asked look. Empty `real_score`: regression only."""

    real_score: str = ""  # the frozen bidirectional teacher
    fake_score_init: str = ""  # default: the real score's weights
    weight: float = 1.0  # of the DMD loss against the regression's
    guidance: float = 3.5  # the real score's CFG, in CausVid's form cond + (cond − uncond)·s
    ratio: int = 5  # generator step on steps divisible by it, critic (fake score) every step
    t_min: float = 20.0
    t_max: float = 980.0
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5))


@dataclass
class PairedV2VConfig:
    """Stage 5 (optional): paired video-to-video fine-tune of the student (vidfx.train.paired_v2v)."""

    latents: str = ""  # encoded dataset whose scenes come as a plain source plus the same scene in looks
    videos: str = ""  # the dataset folder (its captions.jsonl pairs the clips); default: the cache's source
    init: str = ""  # the distilled student
    chunk_frames: int = 3
    student_steps: list[int] = field(default_factory=lambda: list(CAUSVID_STEPS))
    shift: float = DEFAULT_SHIFT
    strengths: tuple[float, float] = (0.3, 0.85)  # strength range drawn per clip
    first_step: float = 0.5  # probability a chunk is the source at σ(strength) (else a later step / context)
    # How many times each pair of a look is seen per epoch (default 1): more of the looks a student renders
    # least reliably, e.g. {pixel_art = 3}, without a separate run per look.
    look_repeats: dict[str, int] = field(default_factory=dict)
    # A source-conditioned student (model in_dim 2 × out_dim) also sees the clean source latent; this share of
    # clips sees zeros there instead, so it still makes video from text alone (vidfx generate).
    condition_dropout: float = 0.1
    dmd: PairedDMDConfig = field(default_factory=PairedDMDConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    ema: EMAConfig = field(default_factory=EMAConfig)


# -- reading ---------------------------------------------------------------------------------------------


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` (from TOML) as the annotated type `tp`, recursing into dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is tuple:
        return tuple(_coerce(a, v, where) for a, v in zip(typing.get_args(tp), value, strict=True))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [_coerce(inner, v, where) for v in value]
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return {_coerce(key_type, k, where): _coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    base = cls()
    kwargs = {}
    for name in names:
        if name in data:
            current = getattr(base, name)
            value = data[name]
            if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
                merged = {**to_dict(current), **value}  # a partial table keeps the stage's own defaults
                kwargs[name] = from_dict(type(current), merged, f"{where}.{name}")
            else:
                kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=1e-4` → (["a", "b"], 1e-4); the value is read as TOML, or as a bare string if that fails."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"override {text!r} is not key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    data: dict[str, Any] = {}
    if path:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return from_dict(cls, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# -- writing ---------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML for a config dict: scalars first, then one [table] per nested mapping (deeper mappings inline).
    None values are omitted
    (TOML has no null; a missing key reads back as the field's default, which is None for optional fields)."""
    lines = []
    tables = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def save_resolved(cfg: Any, folder: str | Path) -> Path:
    path = Path(folder) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# resolved {type(cfg).__name__}\n" + dump_toml(to_dict(cfg)))
    return path
