"""What every text encoder offers, prompt checks, and arithmetic on prompt embeddings (blends, interpolation).

An embedding is the encoder's output for one prompt: (max_tokens, text_dim) fp32, the prompt's tokens
first and zero rows after them — the layout Wan feeds its DiT (umT5 states of the real tokens, zero-padded
to text_len).
Blends and interpolations act on whole embeddings, padding rows included, so their results keep that shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch

DEFAULT_MAX_PROMPT_CHARS = 2000  # far above Wan's 512 umT5 tokens of plain text; stops pasted novels early

# Directions closer than this (|cos| above it) make slerp's sin(theta) ill-conditioned: lerp is then the same
# curve to float precision.
_SLERP_PARALLEL_COS = 0.9995


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompts into conditioning for the DiT.

    `encode` returns (B, max_tokens, text_dim) fp32: row j of prompt i is its j-th token state, rows past the
    prompt's tokens are zero. Encoders are plain compute objects (no I/O, no asyncio); callers run them off
    the event loop.
    """

    text_dim: int
    max_tokens: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


def check_prompt(prompt: object, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> str:
    """The prompt itself if it is a string of at most `max_chars` characters; ValueError otherwise."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > max_chars:
        raise ValueError(f"prompt is {len(prompt)} characters long; the limit is {max_chars}")
    return prompt


def blend(items: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """Weighted mean of embeddings: sum(w_i e_i) / sum(w_i).

    Single weights may be negative (pushing away from a prompt) as long as their sum is positive; the sum is
    what is normalised to one, so `blend([(a, 2), (b, 2)])` equals `blend([(a, 1), (b, 1)])`.
    """
    if not items:
        raise ValueError("blend needs at least one (embedding, weight) pair")
    shape = items[0][0].shape
    total = 0.0
    for emb, w in items:
        if emb.shape != shape:
            raise ValueError(f"blend: embeddings differ in shape ({tuple(shape)} vs {tuple(emb.shape)})")
        if not math.isfinite(w):
            raise ValueError(f"blend: weight {w} is not finite")
        total += float(w)
    if total <= 0.0:
        raise ValueError(f"blend: weights sum to {total}; they must sum to a positive number")
    out = torch.zeros(shape, dtype=torch.float32, device=items[0][0].device)
    for emb, w in items:
        out.add_(emb.float(), alpha=float(w) / total)
    return out


def interpolate(
    a: torch.Tensor, b: torch.Tensor, alpha: float, mode: Literal["linear", "slerp"] = "linear"
) -> torch.Tensor:
    """The embedding `alpha` of the way from `a` (alpha=0) to `b` (alpha=1); endpoints are returned exactly.

    `linear`: (1-alpha) a + alpha b. `slerp`: over the flattened embeddings, the direction turns at constant
    angular speed along the great circle from a to b while the norm goes linearly from |a| to |b| — linear
    interpolation shrinks the norm midway between distant prompts (e.g. to cos(theta/2) of it between equal
    norms), which the DiT reads as a weaker prompt. Nearly parallel (or zero) embeddings fall back to linear.
    """
    if a.shape != b.shape:
        raise ValueError(f"interpolate: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolate: alpha must lie in [0, 1], got {alpha}")
    if mode not in ("linear", "slerp"):
        raise ValueError(f"interpolate: mode must be 'linear' or 'slerp', got {mode!r}")
    af, bf = a.float(), b.float()
    # Endpoints exactly: a prompt schedule sitting at a keyframe must reproduce that prompt bit for bit.
    if alpha == 0.0:
        return af.clone()
    if alpha == 1.0:
        return bf.clone()
    linear = torch.lerp(af, bf, alpha)
    if mode == "linear":
        return linear
    # float64 for the angle: acos near +-1 loses most digits in fp32.
    va, vb = af.flatten().double(), bf.flatten().double()
    na, nb = va.norm(), vb.norm()
    if na == 0 or nb == 0:
        return linear
    cos = float(torch.dot(va, vb) / (na * nb))
    if abs(cos) > _SLERP_PARALLEL_COS:
        return linear
    theta = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(theta)
    direction = (math.sin((1 - alpha) * theta) / s) * (va / na) + (math.sin(alpha * theta) / s) * (vb / nb)
    norm = (1 - alpha) * na + alpha * nb
    return (direction * norm).reshape(a.shape).float()
