"""FP8 linears for the DiT's blocks (`accel.fp8`): weights stored in float8 e4m3, inputs quantised on the fly.

    quantize_blocks(dit)   # in place: every nn.Linear inside dit.blocks becomes an Fp8Linear

Scaling is per row on both sides ("rowwise", what FP8 tensor cores take with bf16 output): each output channel of
the weight has its own scale, fixed at conversion; each input row (one token) gets its own on every call, from
its largest magnitude. The product runs in `torch._scaled_mm`, which accumulates in fp32 and applies both scales
(FP8 tensor cores on CUDA sm89+; a reference kernel on the CPU, slower than fp32 there, kept for tests and for
measuring what FP8 does to the output). The bias is added afterwards, in the output's dtype.

Only the blocks: the patch and text embeddings, the time MLPs and the head stay as they are (they are a tiny
share of the FLOPs, and Wan keeps the time path in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
_ROWS = 16  # CUDA's FP8 matmul wants the row count of its first operand in multiples of 16


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) → its e4m3 values (M, K) and fp32 scales (M, 1), x ≈ values · scales, each row's largest
    magnitude at e4m3's largest value."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


class Fp8Linear(nn.Module):
    """An `nn.Linear`, y = x Wᵀ + b, computed in FP8 (module docstring). Buffers: `weight` (out, in) e4m3,
    `weight_scale` (1, out) fp32; `bias` (out,) keeps the linear's dtype (None if it had none)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out) in x's dtype."""
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        if n % _ROWS:  # zero rows: scale 1e-12 / 448, values 0; cut off again below
            rows = F.pad(rows, (0, 0, 0, _ROWS - n % _ROWS))
        values, scale = _rowwise(rows)
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=x.dtype)
        out = out[:n]
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_blocks(dit: nn.Module) -> int:
    """Replace every `nn.Linear` inside `dit.blocks` by an `Fp8Linear` of it, in place; returns how many."""
    swapped = 0
    for block in dit.blocks:  # type: ignore[attr-defined]
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Fp8Linear(child))
                    swapped += 1
    return swapped
