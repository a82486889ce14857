"""Wire messages of the node, independent of the transport that carries them.

Frames (ZeroMQ data plane) are two-part messages: a msgpack header map and the raw pixels,
    {"v": 1, "stream": str, "seq": int, "pts_us": int, "w": int, "h": int, "fmt": "rgb24"} + h·w·3 bytes;
the output uses the same envelope with the same `stream` and `seq`. A frame may carry audio, as a third part:
    header + {"audio": {"rate": int, "channels": 1 | 2, "fmt": "s16"}}, pixels, PCM (interleaved s16le)
— the audio captured since the previous frame; it comes back, unchanged, as the third part of that frame's
output (so it stays in sync with it; it is dropped with the frame).

Control messages are msgpack maps, the same on a ZeroMQ ROUTER and (later) a WebRTC data channel:
    {"op": "set", "stream": s, "prompt"?: str, "prompts"?: [{"text": str, "weight": float}, …],
     "transition_s"?: float, "strength"?: float, "seed"?: int, "fixed_noise"?: bool, "steps"?: [int, …],
     "motion_aware"?: bool}
    {"op": "status", "stream"?: s}    {"op": "reset" | "pause" | "resume", "stream": s}
    {"op": "claim", "stream": s}      (reserve a stream before its first frame; the reply carries its key)
Every control message may carry "id" (echoed in the reply) and "token" (the node's, required once it has one);
messages naming a stream may carry "key" (that stream's key, see docs/serving.md "Stream ownership"), and a
frame header may carry "key" too (to claim, or take back, its stream).
Replies are {"ok": true, "op": …, …} or {"ok": false, "error": "…"}.

Strict: no field is coerced (a bool is not an int, 1.0 is not 1), a null is never a value (leave the field out),
and a stream id follows the same rule on every transport (`STREAM_ID`: no spaces, control characters or escapes,
so ids are safe in logs, URLs and metrics).

Everything here validates untrusted bytes: msgpack is unpacked with explicit size limits, maps are checked
by pydantic models that forbid unknown keys and coercion, and every failure is a `ProtocolError` whose
message is safe to send back to the client.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from vidfx.config import LimitSettings

PROTOCOL_VERSION = 1
FRAME_FORMATS = {"rgb24": 3}  # fmt → bytes per pixel
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # the one stream-id rule of every transport


def check_stream_id(stream: str, limits: LimitSettings) -> str:
    """`stream` if it is a valid stream id (1-`max_stream_id` characters of [A-Za-z0-9_.-], not starting with
    a punctuation mark); else a ProtocolError whose message never echoes the id (it may hold escapes)."""
    if len(stream) > limits.max_stream_id or not STREAM_ID.fullmatch(stream):
        raise ProtocolError(f"stream id must be 1-{limits.max_stream_id} characters of [A-Za-z0-9_.-]")
    return stream


class ProtocolError(ValueError):
    """An input that breaks the protocol; the message is meant for the client that sent it."""


def _utf8(text: str) -> bytes:
    # Header values may carry bytes that are not UTF-8 (kept as surrogates or Latin-1 characters): compare the
    # raw bytes rather than fail on them.
    return text.encode("utf-8", "surrogatepass")


def check_token(presented: object, expected: str | None) -> bool:
    """A secret presented in a message (the node token, a stream key) against the expected one: True when
    `expected` is None (nothing demanded) or `presented` is exactly it (constant-time)."""
    if expected is None:
        return True
    return isinstance(presented, str) and hmac.compare_digest(_utf8(presented), _utf8(expected))


# -- msgpack with limits ---------------------------------------------------------------------------------------


def unpack_map(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode one msgpack map of at most `max_bytes`; nested sizes are bounded by the same budget."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types (ExtraData, ValueError, StackError, …)
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a msgpack map, got {type(obj).__name__}")
    return obj


def pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def describe(exc: ValidationError) -> str:
    """A short, client-facing summary of a pydantic error."""
    parts = []
    for err in exc.errors(include_url=False)[:4]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# -- frames ------------------------------------------------------------------------------------------------------


class AudioHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rate: int = Field(ge=8000, le=192_000)
    channels: Literal[1, 2]
    fmt: Literal["s16"]


def _no_nulls(cls: type, data: Any) -> Any:
    """A `before` validator: a null is not a value of any field (pydantic would take it for 'not given')."""
    if isinstance(data, dict):
        nulls = sorted(str(k) for k, v in data.items() if v is None)
        if nulls:
            raise ValueError(f"null is not a value ({', '.join(nulls)[:80]}): leave the field out instead")
    return data


class FrameHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: int  # strict int, then checked: Literal[1] would take True and 1.0 (equal to 1 in Python)
    stream: str = Field(min_length=1)
    seq: int = Field(ge=0, lt=2**63)
    pts_us: int = Field(ge=-(2**62), lt=2**62)
    w: int = Field(gt=0)
    h: int = Field(gt=0)
    fmt: Literal["rgb24"]
    token: str | None = None
    audio: AudioHeader | None = None  # a third message part carries PCM
    key: str | None = None  # the stream's key: claims the stream, or takes it back from another connection

    no_nulls = model_validator(mode="before")(_no_nulls)

    @field_validator("v")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {v} is not supported (expected {PROTOCOL_VERSION})")
        return v

    @property
    def payload_bytes(self) -> int:
        return self.w * self.h * FRAME_FORMATS[self.fmt]


def parse_frame(header: bytes, payload: bytes | memoryview, limits: LimitSettings) -> FrameHeader:
    """Validate a frame's header against the limits and its payload length against the header."""
    try:
        h = FrameHeader.model_validate(unpack_map(header, limits.max_header_bytes))
    except ValidationError as exc:
        raise ProtocolError(f"bad frame header: {describe(exc)}") from None
    check_stream_id(h.stream, limits)
    if h.w > limits.max_width or h.h > limits.max_height:
        raise ProtocolError(f"frame {h.w}x{h.h} exceeds the limit {limits.max_width}x{limits.max_height}")
    if len(payload) != h.payload_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes, header says {h.w}x{h.h} {h.fmt} = {h.payload_bytes}")
    return h


def check_audio_part(header: FrameHeader, pcm_bytes: int | None, limits: LimitSettings) -> None:
    """The optional third part (`pcm_bytes`: its length, None when absent) against the header and the limits."""
    if header.audio is None:
        if pcm_bytes is not None:
            raise ProtocolError("a third message part needs an 'audio' map in the header")
        return
    if pcm_bytes is None:
        raise ProtocolError("the header announces audio but the message has no third part")
    if pcm_bytes > limits.max_audio_bytes:
        raise ProtocolError(f"audio part of {pcm_bytes} bytes exceeds the limit of {limits.max_audio_bytes}")
    if pcm_bytes % (2 * header.audio.channels):
        raise ProtocolError(f"audio part of {pcm_bytes} bytes is not whole s16 samples of {header.audio.channels} ch")


def frame_header(
    stream: str, seq: int, pts_us: int, w: int, h: int, audio: tuple[int, int] | None = None, key: str | None = None
) -> bytes:
    """`audio`: (rate, channels) when a PCM part follows the pixels; `key`: the stream's key (claims it, or feeds
    a stream a control client claimed with it)."""
    head: dict[str, Any] = {"v": PROTOCOL_VERSION, "stream": stream, "seq": seq, "pts_us": pts_us, "w": w, "h": h,
                            "fmt": "rgb24"}  # fmt: skip
    if audio is not None:
        head["audio"] = {"rate": audio[0], "channels": audio[1], "fmt": "s16"}
    if key is not None:
        head["key"] = key
    return pack(head)


# -- control -----------------------------------------------------------------------------------------------------


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: int | str | None = None
    token: str | None = None

    no_nulls = model_validator(mode="before")(_no_nulls)


class _StreamOp(_Op):
    stream: str = Field(min_length=1)
    key: str | None = None  # the stream's key (or the node token in `token`) for ops on an owned stream


class WeightedPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: str
    weight: float = Field(ge=0.0, le=1000.0)


class SetOp(_StreamOp):
    op: Literal["set"]
    prompt: str | None = None
    prompts: list[WeightedPrompt] | None = Field(None, min_length=1)
    transition_s: float | None = Field(None, ge=0.0, le=600.0)
    strength: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    fixed_noise: bool | None = None
    steps: list[int] | None = Field(None, min_length=1)
    motion_aware: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SetOp:
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("give either prompt or prompts, not both")
        if self.prompts is not None and sum(p.weight for p in self.prompts) <= 0:
            raise ValueError("prompt weights must not all be zero")
        if self.steps is not None and (
            any(not 0 < s <= 1000 for s in self.steps)
            or any(a <= b for a, b in zip(self.steps, self.steps[1:], strict=False))
        ):
            raise ValueError("steps must be strictly decreasing integers in (0, 1000]")
        changes = self.model_fields_set - {"op", "stream", "id", "token", "key"}
        if not changes:
            raise ValueError("set changes nothing: give prompt, prompts, strength, seed, steps, … ")
        return self

    def weighted_prompts(self) -> tuple[tuple[str, float], ...] | None:
        if self.prompt is not None:
            return ((self.prompt, 1.0),)
        if self.prompts is not None:
            return tuple((p.text, p.weight) for p in self.prompts)
        return None


class StatusOp(_Op):
    op: Literal["status"]
    stream: str | None = None


class ResetOp(_StreamOp):
    op: Literal["reset"]


class PauseOp(_StreamOp):
    op: Literal["pause"]


class ResumeOp(_StreamOp):
    op: Literal["resume"]


class ClaimOp(_StreamOp):
    op: Literal["claim"]


ControlMessage = Annotated[SetOp | StatusOp | ResetOp | PauseOp | ResumeOp | ClaimOp, Field(discriminator="op")]
OPS = ("set", "status", "reset", "pause", "resume", "claim")
_CONTROL = TypeAdapter(ControlMessage)


def parse_control(data: bytes | dict[str, Any], limits: LimitSettings) -> ControlMessage:
    """Bytes (msgpack) or an already-decoded map → a validated control message within the limits."""
    obj = unpack_map(data, limits.max_control_bytes) if isinstance(data, bytes | bytearray) else data
    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        shown = repr(op)[:40]
        raise ProtocolError(f"unknown op {shown}; expected one of {', '.join(OPS)}")
    try:
        msg = _CONTROL.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(f"bad {op} message: {describe(exc)}") from None
    stream = getattr(msg, "stream", None)
    if stream is not None:
        check_stream_id(stream, limits)
    if isinstance(msg, SetOp):
        prompts = msg.weighted_prompts() or ()
        if len(prompts) > limits.max_prompts:
            raise ProtocolError(f"{len(prompts)} prompts, more than the limit of {limits.max_prompts}")
        for text, _ in prompts:
            if len(text) > limits.max_prompt_chars:
                raise ProtocolError(f"prompt of {len(text)} characters exceeds the limit of {limits.max_prompt_chars}")
        if msg.steps is not None and len(msg.steps) > limits.max_steps:
            raise ProtocolError(f"{len(msg.steps)} steps, more than the limit of {limits.max_steps}")
    return msg


def reply_ok(msg: ControlMessage | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    if msg is not None:
        out["op"] = msg.op
        if msg.id is not None:
            out["id"] = msg.id
    out.update(fields)
    return out


def reply_error(error: str, request_id: int | str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": error}
    if request_id is not None:
        out["id"] = request_id
    return out
