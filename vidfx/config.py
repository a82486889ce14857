"""Every setting of the streaming node, with its one default, in one place.

Sources, later ones winning: these defaults → a `.env` file → `VIDFX_*` environment variables (sections
nested with `__`, e.g. `VIDFX_ZMQ__INPUT=tcp://0.0.0.0:5555`) → command-line flags (`--zmq-input …`).
`vidfx serve --help` lists every flag with its default and environment variable, generated from the
models below, so a default written here is the only place it lives.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vidfx.sampling import CAUSVID_STEPS, DEFAULT_SHIFT

ENV_PREFIX = "VIDFX_"
ENV_NESTED = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    name: str = Field(
        "default", description="model: a name (default, tiny-random), a weights folder or a Wan2.1 release folder"
    )
    dit: str = Field("", description="causal generator (.safetensors, converted) replacing a Wan release folder's DiT")
    lora: str = Field("", description="LoRA (.safetensors, converted; LongLive's generator_lora) merged into the DiT")
    profile: Literal["auto", "none", "causvid", "self-forcing", "streamdiffusionv2", "longlive"] = Field(
        "auto", description="release sampler settings (docs/releases.md); auto: detected from the checkpoint"
    )
    decoder: Literal["wan", "tae"] = Field("wan", description="latent decoder of a Wan release: the Wan VAE or TAE")
    encoder: Literal["wan", "tae"] = Field(
        "wan", description="latent encoder of a Wan release: the Wan VAE (exact) or TAE (~13× cheaper, 3 frames late)"
    )
    text_device: str = Field("auto", description="umT5 device (auto: the model device if it has ≥ 40 GB, else cpu)")
    width: int = Field(128, ge=16, le=4096, description="model resolution, pixels")
    height: int = Field(128, ge=16, le=4096, description="model resolution, pixels")
    fit: Literal["aspect", "cover", "contain", "stretch"] = Field(
        "aspect",
        description="input size → model size: keep the camera's aspect (model size sets the short side), "
        "crop to the model's aspect, letterbox, or stretch (vidfx.frames)",
    )
    latent_frames_per_chunk: int = Field(1, ge=1, le=8, description="latent frames a chunk denoises at once")
    first_chunk_latents: int | None = Field(
        None,
        ge=1,
        le=8,
        description="latent frames of a stream's first chunk (default: latent_frames_per_chunk; 1: the first camera "
        "frame alone, so the first stylised frame comes without waiting for a chunk's worth of frames)",
    )
    window_frames: int = Field(6, ge=1, le=64, description="latent frames of rolling KV cache")
    sink_frames: int = Field(1, ge=0, le=16, description="first latent frames kept in the cache forever")
    steps: list[int] = Field(list(CAUSVID_STEPS), description="few-step list on the 0..1000 grid (CausVid's)")
    warp_steps: bool = Field(True, description="map steps and strength through the shifted schedule")
    shift: float = Field(DEFAULT_SHIFT, gt=0.0, le=100.0, description="timestep shift of the schedule")
    timestep_pairing: Literal["exact", "scheduler"] = Field(
        "exact", description="σ of an unwarped step t: t/1000, or the official scheduler's nearest σ"
    )
    strength: float = Field(0.7, gt=0.0, le=1.0, description="default denoising strength (1 = ignore input)")
    seed: int = Field(0, ge=0, description="default noise seed of a new stream")
    fixed_noise: bool = Field(
        True, description="draw every chunk's noise from the seed afresh (same noise each chunk: steadier output)"
    )
    context_sigma: float = Field(0.0, ge=0.0, lt=1.0, description="noise level of the cache-write pass")
    refiner_smoothing: float = Field(
        0.85, ge=0.0, lt=1.0,
        description="a detail refiner's base: each decoded frame blended with the last one's blend by this weight "
        "(steadies the DiT's chunk-to-chunk changes; detail and motion come from the camera frame)",
    )  # fmt: skip
    device: str = Field("cpu", description="torch device (cpu, cuda, cuda:1, mps)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="model dtype")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = all cores but one, for the I/O loop)")
    max_batch: int = Field(4, ge=1, le=64, description="sessions' chunks batched into one DiT forward")
    warmup_chunks: int = Field(2, ge=0, le=1000, description="chunks run on a dummy stream before ready")


class StreamSettings(_Section):
    idle_timeout_s: float = Field(10.0, gt=0, description="close a session after this long without frames")
    max_sessions: int = Field(8, ge=1, description="concurrent sessions; frames of further streams are dropped")
    max_pending_chunks: float = Field(
        1.0, ge=1.0, description="pending input bound in chunks (+ a stream's first chunk); oldest dropped beyond"
    )
    flush_after_s: float = Field(
        0.3, ge=0, description="process a partial chunk after this long without new frames (0 = never)"
    )
    output_queue: int = Field(64, ge=1, description="frames buffered per session for a slow consumer")
    transition_s: float = Field(0.0, ge=0, le=600, description="default prompt transition time")
    interpolation: Literal["linear", "slerp"] = Field("slerp", description="prompt transition curve")
    prompt: str = Field("", description="default prompt of a new stream")
    motion_aware: bool = Field(False, description="more noise where the scene moves less (per chunk)")
    motion_range: float = Field(0.15, ge=0, le=1, description="motion-aware strength swing around strength")
    motion_ref: float = Field(0.06, gt=0, le=1, description="mean |Δpixel| (0..1) counted as full motion")
    unclaimed_grace_s: float = Field(
        5.0, gt=0, description="close a session no publisher feeds (opened by `claim`/`set`) after this long"
    )
    keys: list[str] = Field(
        [],
        description="configured stream keys, STREAM=KEY pairs (others are issued at claim); set them in the "
        "environment or .env, not as flags: flags are readable in /proc/<pid>/cmdline",
    )

    @field_validator("keys")
    @classmethod
    def _key_pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            stream, sep, key = pair.partition("=")
            if not sep or not stream or len(key) < 16:
                raise ValueError("each stream key is STREAM=KEY with a key of at least 16 characters")
        return pairs

    def configured_keys(self) -> dict[str, str]:
        return dict(pair.partition("=")[::2] for pair in self.keys)


class ZmqSettings(_Section):
    input: str = Field("tcp://127.0.0.1:5555", description="input SUB address (port * = ephemeral when bound)")
    input_bind: bool = Field(True, description="bind the input address (else connect)")
    output: str = Field("tcp://127.0.0.1:5556", description="output PUB address")
    output_bind: bool = Field(True, description="bind the output address (else connect)")
    control: str = Field("tcp://127.0.0.1:5557", description="control ROUTER address (always bound)")
    curve_secret_key: SecretStr | None = Field(
        None, description="Z85 CURVE secret key: encrypt every ZeroMQ socket (clients need its public key)"
    )
    rcvhwm: int = Field(16, ge=1, description="input receive high-water mark, messages")
    sndhwm: int = Field(64, ge=1, description="output send high-water mark, messages")


class HttpSettings(_Section):
    host: str = Field("127.0.0.1", description="HTTP host for /healthz /readyz /metrics")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 = ephemeral)")


class WebRTCSettings(_Section):
    enabled: bool = Field(True, description="serve the page (/), /offer, WHIP and WHEP on the HTTP port")
    ice_servers: list[str] = Field(
        [], description="STUN/TURN URLs for ICE (stun:host:port, turn:host:port?transport=udp, turns:…)"
    )
    turn_username: str | None = Field(None, description="username for the TURN servers")
    turn_credential: SecretStr | None = Field(None, description="password for the TURN servers")
    max_peers: int = Field(4, ge=1, description="WebRTC publishers (page, WHIP) at once (sessions also count)")
    max_viewers: int = Field(16, ge=0, description="WHEP viewers at once, all streams together")
    connect_timeout_s: float = Field(5.0, gt=0, description="drop a peer whose ICE/DTLS is not connected by then")
    media_timeout_s: float = Field(
        3.0, gt=0, description="drop a publisher that sends no video, or a viewer that sends no RTCP, for this long"
    )
    ice_gather_timeout_s: float = Field(
        0.5, gt=0, le=10, description="longest wait for STUN/TURN servers while gathering (host candidates: none)"
    )
    loopback_candidates: bool = Field(
        False, description="also offer 127.0.0.1 host candidates (single-machine setups and tests)"
    )
    marker_frames: bool = Field(
        True, description="release a received video frame on its RTP marker bit (aiortc waits for the next frame)"
    )
    stats_interval_s: float = Field(0.5, gt=0, le=60, description="stats period on the control data channel")
    convert_threads: int = Field(2, ge=1, le=32, description="threads converting frames between codec and pixels")


class LimitSettings(_Section):
    max_width: int = Field(1920, ge=16, description="largest accepted frame width")
    max_height: int = Field(1080, ge=16, description="largest accepted frame height")
    max_header_bytes: int = Field(1024, ge=64, description="largest frame header")
    max_audio_bytes: int = Field(
        192_000, ge=0, description="largest audio part of a ZeroMQ frame (1 s of 48 kHz stereo s16; 0: no audio)"
    )
    max_control_bytes: int = Field(16384, ge=256, description="largest control message")
    max_prompt_chars: int = Field(500, ge=1, description="longest prompt")
    max_prompts: int = Field(8, ge=1, description="most prompts in a weighted blend")
    max_steps: int = Field(8, ge=1, description="longest step list")
    max_stream_id: int = Field(128, ge=1, description="longest stream id")
    control_rate: float = Field(50.0, gt=0, description="control messages per second per client")
    control_burst: int = Field(100, ge=1, description="control messages a client may send at once")
    control_address_factor: float = Field(
        4.0, ge=1, description="one peer address, all its connections together: this × a client's rate and burst"
    )
    control_transport_bytes: int = Field(
        1 << 20, ge=1024, description="largest control message ZeroMQ receives (larger ones cost the connection)"
    )
    unclaimed_per_client: int = Field(
        2, ge=0, description="streams one client (peer address) may hold claimed without frames"
    )
    sessions_per_connection: int = Field(4, ge=1, description="streams one ZeroMQ publisher connection may feed")
    frames_per_connection: float = Field(
        240.0, gt=0, description="frames per second one ZeroMQ publisher connection may send (bursts of 2 s)"
    )


class AccelSettings(_Section):
    """The fast inference path (vidfx.accel.apply_acceleration), one switch per optimisation. None changes what
    the model computes beyond kernel rounding (tests/test_accel.py holds each to the eager path). bf16 weights
    are `model.dtype`. Defaults: switches that cost nothing and are exact anywhere are on; those that cost
    start-up time or need CUDA are off; `vidfx bench gpu` measured each on an H200 (benchmarks/RESULTS.md, *GPU*):
    `auto` attention as fast as cuDNN's (flash 0.91×), pinned transfers free, compile 1.25×, CUDA graphs on top
    of compile 0.99× at 480×832."""

    fp32_islands: bool = Field(
        True, description="in a bf16/fp16 model keep Wan's fp32 parts fp32: time embedding, modulation, norm weights"
    )
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field(
        "auto", description="restrict attention to one SDPA backend (an error, not a fallback, if it cannot run)"
    )
    compile: bool = Field(
        False, description="torch.compile the transformer blocks (H200, 480×832: DiT forward 110 → 64 ms; 30–45 s of "
        "compiling when a stream first meets a resolution)"
    )  # fmt: skip
    cuda_graphs: bool = Field(
        False, description="replay the blocks as CUDA graphs, one per shape (torch.compile reduce-overhead; CUDA)"
    )
    pinned_transfer: bool = Field(True, description="move frames through pinned host memory (CUDA; no-op on CPU)")
    overlap_decode: bool = Field(
        False, description="decode each batch on its own CUDA stream beside the next batch's encode and denoise "
        "(CUDA; `vidfx bench gpu`, H200, 480×832: 1.17× with the Wan VAE, 1.18× with TAEHV); off until the "
        "node's path is measured on a GPU"
    )  # fmt: skip
    fp8: bool = Field(
        False, description="the blocks' linears in float8 e4m3 with per-row scales (FP8 tensor cores: CUDA sm89+, "
        "bf16 model); changes the output a little (benchmarks/bench_fp8.py); its speed is not measured on a GPU yet"
    )  # fmt: skip
    keep_freed_memory: bool = Field(
        True, description="glibc: keep freed host memory for reuse instead of faulting it in again every chunk "
        "(default model, 2-core CPU: a chunk 150 → 125 ms); resident memory stays at its high-water mark"
    )  # fmt: skip


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        env_file=".env",
        extra="ignore",
        validate_assignment=True,
    )

    model: ModelSettings = ModelSettings()
    stream: StreamSettings = StreamSettings()
    zmq: ZmqSettings = ZmqSettings()
    http: HttpSettings = HttpSettings()
    limits: LimitSettings = LimitSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    accel: AccelSettings = AccelSettings()
    token: SecretStr | None = Field(
        None,
        description="shared secret demanded by every transport once set (required beyond loopback); prefer "
        "VIDFX_TOKEN or --token-file: a --token flag is readable by local users in /proc/<pid>/cmdline",
    )
    token_file: Path | None = Field(None, description="read the token from this file (its first line)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        """`token_file` → `token` (one or the other), so the secret never has to be on a command line."""
        if not isinstance(data, dict) or data.get("token_file") in (None, ""):
            return data
        path = Path(data["token_file"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"token_file {path}: {exc}") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"token_file {path} is empty")
        token = lines[0].strip()
        given = data.get("token")
        if isinstance(given, SecretStr):
            given = given.get_secret_value()
        # validate_assignment re-runs this validator on every assignment with the token already read: only a
        # different token is a conflict.
        if given not in (None, "", token):
            raise ValueError("give token or token_file, not both")
        return {**data, "token": token}


# -- command-line flags generated from the models ------------------------------------------------------------

_SECTION_NAMES = ("model", "stream", "zmq", "http", "limits", "webrtc", "accel")
_SECTIONS: dict[str, type[BaseModel]] = {name: typing.get_type_hints(Settings)[name] for name in _SECTION_NAMES}


def _flag(section: str | None, field: str) -> str:
    return "--" + (f"{section}-{field}" if section else field).replace("_", "-")


def _env(section: str | None, field: str) -> str:
    return ENV_PREFIX + (f"{section}{ENV_NESTED}{field}" if section else field).upper()


def _add_field(parser: argparse.ArgumentParser, section: str | None, name: str, info: Any, hint: Any) -> None:
    dest = f"{section}{ENV_NESTED}{name}" if section else name
    default = info.default
    if isinstance(default, SecretStr) or name == "token":
        default = "unset"
    help_text = f"{info.description} (default: {default}; env {_env(section, name)})"
    kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
    origin = typing.get_origin(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is list:
        (item,) = typing.get_args(hint)
        kwargs.update(nargs="+", type=item, metavar=item.__name__.upper())
    elif origin is Literal:
        kwargs.update(choices=list(typing.get_args(hint)))
    elif hint in (int, float, str):
        kwargs.update(type=hint, metavar=hint.__name__.upper())
    else:  # Optional secrets and other unions come in as strings and are validated by the model
        if origin not in (typing.Union, types.UnionType):
            raise TypeError(f"no flag type for setting {dest}: {hint}")
        kwargs.update(type=str, metavar="STR")
    parser.add_argument(_flag(section, name), **kwargs)


def add_settings_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """One flag per setting (`--section-field`), defaulting to 'not given' so lower sources still apply.
    `sections`: only those sections' flags (the file commands need the model's, not the network's)."""
    parser.add_argument("--env-file", default=".env", help="dotenv file read before the environment (default: .env)")
    top_hints = typing.get_type_hints(Settings)
    for name, info in Settings.model_fields.items():
        if sections is not None and name not in sections:
            continue
        if name in _SECTIONS:
            group = parser.add_argument_group(f"{name} settings")
            section_model = _SECTIONS[name]
            hints = typing.get_type_hints(section_model)
            for field, finfo in section_model.model_fields.items():
                _add_field(group, name, field, finfo, hints[field])  # type: ignore[arg-type]
        else:
            _add_field(parser, None, name, info, top_hints[name])


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from defaults, .env, environment and the flags given (flags win; nested sections merge)."""
    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest in ("env_file", "func", "command"):
            continue
        if ENV_NESTED in dest:
            section, field = dest.split(ENV_NESTED, 1)
            if section in _SECTIONS:
                overrides.setdefault(section, {})[field] = value
        elif dest in Settings.model_fields:
            overrides[dest] = value
    return Settings(_env_file=getattr(args, "env_file", ".env"), **overrides)  # type: ignore[call-arg]


def resolve_threads(threads: int) -> int:
    """Torch intra-op threads for `threads` (0 = auto). Auto leaves one core to the event loop: on a small CPU
    a worker spinning on every core starves the loop that feeds it, and throughput collapses under load."""
    if threads > 0:
        return threads
    return max(1, (os.cpu_count() or 1) - 1)


# -- address checks --------------------------------------------------------------------------------------------


def is_loopback_address(address: str) -> bool:
    """True for ZeroMQ endpoints (or bare hosts) only reachable from this machine: ipc/inproc, 127/8, ::1."""
    if "://" in address:
        scheme = address.split("://", 1)[0]
        if scheme in ("ipc", "inproc"):
            return True
        host = urlsplit(address).hostname or ""
    else:
        host = address
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names and DNS names may reach the network
