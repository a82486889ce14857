"""The Wan2.1 diffusion transformer, in two modes with one set of weights: bidirectional (the teacher) and
block-causal with a rolling KV cache (the CausVid student).

Parameter names are those of the official `WanModel` (Wan-Video/Wan2.1, `wan/modules/model.py`), so the
official Wan2.1-T2V-1.3B weights and the CausVid / Self-Forcing causal checkpoints load by plain copy:

    patch_embedding                 Conv3d, patch (1, 2, 2)
    text_embedding.{0,2}            Linear → GELU(tanh) → Linear
    time_embedding.{0,2}            Linear → SiLU → Linear    (on the sinusoidal embedding of t)
    time_projection.1               SiLU → Linear to 6·dim     (shift/scale/gate for attention and FFN)
    blocks.i.modulation             (1, 6, dim) learned offsets added to the projected time embedding
    blocks.i.self_attn.{q,k,v,o}    + norm_q / norm_k (RMSNorm over the full dim, before the head split)
    blocks.i.norm3                  affine LayerNorm before cross-attention (norm1/norm2 have no weights)
    blocks.i.cross_attn.{q,k,v,o}   + norm_q / norm_k
    blocks.i.ffn.{0,2}              Linear → GELU(tanh) → Linear
    head.modulation, head.head      output head with its own (1, 2, dim) modulation

The only deviation from the official forward is where positions come from: frames are rotated by their rank
in the visible sequence (see `kv_cache.py`), which equals the official absolute index until a stream
outgrows its cache.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vidfx.model.kv_cache import CrossAttnCache, KVCache


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 1536  # transformer width
    ffn_dim: int = 8960  # FFN hidden width
    freq_dim: int = 256  # sinusoidal time-embedding width
    text_dim: int = 4096  # width of the text encoder's output (umT5-XXL: 4096)
    text_len: int = 512  # prompts are zero-padded to this many tokens, as in Wan
    # Latent channels in. Above out_dim, the rest carry a condition: a source-conditioned video-to-video
    # model (the default model) takes the clean source latent there; Wan's image-to-video (in_dim 36)
    # its mask and image latent. A forward given no condition pads it with zeros.
    in_dim: int = 16
    out_dim: int = 16  # latent channels out
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, height, width)
    eps: float = 1e-6  # LayerNorm / RMSNorm epsilon
    rope_max_positions: int = 1024  # size of the RoPE table per axis (Wan: 1024)
    rope_theta: float = 10000.0
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes (e.g. where a preset came from)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def condition_dim(self) -> int:
        """Input channels beside the latent (in_dim − out_dim): out_dim for a source-conditioned model."""
        return self.in_dim - self.out_dim

    @classmethod
    def preset(cls, name: str) -> DiTConfig:
        """Named architectures: `wan-1.3b` (Wan2.1-T2V-1.3B, CausVid, Self-Forcing) and `tiny` (2 CPU cores)."""
        presets = {
            # wan/configs/wan_t2v_1_3B.py: dim 1536, ffn 8960, freq 256, 12 heads, 30 layers, text_len 512.
            "wan-1.3b": cls(),
            # Fits 2 CPU cores at 128×128 pixels (16×16 latents → 64 tokens a frame).
            "tiny": cls(dim=128, ffn_dim=384, freq_dim=64, text_dim=64, text_len=16, num_heads=4, num_layers=4),
        }
        if name not in presets:
            raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def with_(self, **changes: object) -> DiTConfig:
        return replace(self, **changes)


# -- building blocks ---------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32: the mean of squares overflows/underflows in bf16 at this width.
        # The weight multiplies in fp32 too (as under Wan's autocast), so fp32 weights kept in a bf16 model
        # (`CausalDiT.keep_fp32_islands`) return x's dtype.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).type_as(x)


def layer_norm(x: torch.Tensor, eps: float, affine: nn.LayerNorm | None = None) -> torch.Tensor:
    """Wan's LayerNorms, computed in fp32: norm1/norm2/head without weights, norm3 with `affine`'s."""
    weight = bias = None
    if affine is not None:
        weight, bias = affine.weight.float(), affine.bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps=eps).type_as(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's time embedding: [cos, sin] of t·10000^(-i/half), in float64 for exactness at t≈1000."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.double()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_frequencies(cfg: DiTConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Complex RoPE tables for the (frame, height, width) axes, each (positions, head_dim_part/2).

    Wan splits head_dim d into d - 4·(d//6) for frames and 2·(d//6) each for height and width.
    """
    d = cfg.head_dim
    parts = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    tables = []
    for part in parts:
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, part, 2, dtype=torch.float64) / part)
        angles = torch.outer(torch.arange(cfg.rope_max_positions, dtype=torch.float64), inv)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    return tables[0], tables[1], tables[2]


def rope_for_grid(
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], frame_pos: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Complex rotations (frames·height·width, head_dim/2) for frames at `frame_pos` on a (height, width) grid."""
    tf, th, tw = tables
    if int(frame_pos.max()) >= tf.shape[0] or height > th.shape[0] or width > tw.shape[0]:
        raise ValueError(f"positions exceed the RoPE table of {tf.shape[0]} entries")
    nf = frame_pos.numel()
    rot = torch.cat(
        [
            tf[frame_pos][:, None, None, :].expand(nf, height, width, -1),
            th[:height][None, :, None, :].expand(nf, height, width, -1),
            tw[:width][None, None, :, :].expand(nf, height, width, -1),
        ],
        dim=-1,
    )
    return rot.reshape(nf * height * width, -1).to(torch.complex64)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, L, heads, head_dim) by rot (L, head_dim/2, 2) = (cos, sin), fp32.

    Wan rotates in fp64; the tables are built in fp64 and only the product is fp32 here (relative error
    ~1e-7), because the cache path re-rotates every visible key each call and fp64 made that the hot spot.
    The complex product is written out in reals (the same arithmetic, bit for bit): torch.compile's
    code generator fuses real arithmetic but not complex.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = rot[None, :, None, :, 0], rot[None, :, None, :, 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over (B, L, heads, head_dim) tensors; `mask` (Lq, Lk) bool, True = may attend."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )  # (B, heads, Lq, head_dim); dispatches to flash / memory-efficient kernels on CUDA when mask is None
    return out.transpose(1, 2)


# -- attention, FFN, block ---------------------------------------------------------------------------------


@dataclass
class AttnContext:
    """What self-attention needs beyond x: the grid, positions, and either a mask or a cache."""

    grid: tuple[int, int, int]  # (frames, height, width) in patches of the current input
    rot: torch.Tensor  # (visible_tokens + current_tokens, head_dim/2, 2) rotations as (cos, sin)
    mask: torch.Tensor | None = None  # full forward: (L, L) bool block-causal mask, None = bidirectional
    cache: KVCache | None = None  # chunk forward: the stream's cache
    cache_order: torch.Tensor | None = None  # token slots of the visible cache, in stream order (on its device)
    write_cache: bool = False  # store this chunk's keys/values (the t = context-noise pass)


# The blocks are pure functions of tensors (no cache object, no Python state): `torch.compile` traces each
# once per shape and CUDA graphs can replay them. The cache is read before and written after each block by
# `CausalDiT._run_blocks`. Block inputs beside x: rot, mask (None in a chunk forward), the layer's visible
# past keys/values (None in a whole-clip forward) and the layer's cross-attention keys/values.


class Projections(nn.Module):
    """Wan's attention parameters, shared by self- and cross-attention: q, k, v, o and RMSNorm on q and k."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)


class SelfAttention(Projections):
    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, dim); past: the visible cache's pre-RoPE keys/values (B, visible, heads, head_dim) each, or
        None for a whole clip (then `mask` applies). Returns the output (B, L, dim) and this input's pre-RoPE
        keys/values (B, L, heads, head_dim) for the cache write."""
        b, n = x.shape[0], x.shape[1]
        heads = (b, n, self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).view(heads)  # (B, L, heads, head_dim)
        k = self.norm_k(self.k(x)).view(heads)
        v = self.v(x).view(heads)
        if past is not None:
            k_all = torch.cat([past[0].to(k.dtype), k], dim=1)
            v_all = torch.cat([past[1].to(v.dtype), v], dim=1)
            out = attention(apply_rope(q, rot[-n:]), apply_rope(k_all, rot), v_all)
        else:
            out = attention(apply_rope(q, rot), apply_rope(k, rot), v, mask)
        return self.o(out.flatten(2)), k, v


class CrossAttention(Projections):
    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the embedded prompt (B, text_len, dim) → (B, text_len, heads, head_dim) each."""
        shape = (context.shape[0], context.shape[1], self.num_heads, self.head_dim)
        return self.norm_k(self.k(context)).view(shape), self.v(context).view(shape)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(self.q(x)).view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)
        return self.o(attention(q, k, v).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        rot: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, dim); e: (B, frames, 6, dim) fp32 per-frame time modulation; rot, mask, past: see
        `SelfAttention`. Returns x (B, L, dim) and the self-attention keys/values to cache."""
        b, n, d = x.shape
        nf = e.shape[1]
        # Modulation in fp32: shift/scale/gate of magnitude ~1 lose the residual's low bits in bf16.
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (self.modulation[:, None] + e).unbind(2)  # (B, F, dim)

        def per_frame(h: torch.Tensor) -> torch.Tensor:
            return h.float().view(b, nf, n // nf, d)  # (B, frames, tokens_per_frame, dim)

        h = per_frame(layer_norm(x, self.eps)) * (1 + scale_a[:, :, None]) + shift_a[:, :, None]
        y, k, v = self.self_attn(h.view(b, n, d).type_as(x), rot, mask, past)
        x = (per_frame(x) + per_frame(y) * gate_a[:, :, None]).view(b, n, d).type_as(x)
        x = x + self.cross_attn(layer_norm(x, self.eps, self.norm3), *cross_kv)
        h = per_frame(layer_norm(x, self.eps)) * (1 + scale_f[:, :, None]) + shift_f[:, :, None]
        y = self.ffn(h.view(b, n, d).type_as(x))
        return (per_frame(x) + per_frame(y) * gate_f[:, :, None]).view(b, n, d).type_as(x), k, v


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim); e: (B, frames, dim) fp32 time embedding → (B, L, out_dim·patch volume)."""
        b, n, d = x.shape
        nf = e.shape[1]
        shift, scale = (self.modulation[:, None] + e[:, :, None]).unbind(2)  # (B, F, dim) each
        h = layer_norm(x, self.eps).float().view(b, nf, n // nf, d) * (1 + scale[:, :, None]) + shift[:, :, None]
        return self.head(h.view(b, n, d).type_as(x))


# -- the model ---------------------------------------------------------------------------------------------


class CausalDiT(nn.Module):
    """Wan2.1 DiT. `forward` runs a whole clip (bidirectional, or block-causal given `chunk_frames`);
    `forward_chunk` runs one chunk of a stream against a `KVCache`.

    The network predicts the flow-matching velocity v = ε − x₀ of x_t = (1 − σ)·x₀ + σ·ε, with t = 1000·σ.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        # RoPE tables are derived, not weights: kept out of the state dict like Wan's `freqs`.
        self._rope = rope_frequencies(cfg)
        self._rot_memo: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}
        self.sdpa_backends: list[SDPBackend] | None = None  # None = PyTorch's choice (see _attention_backends)
        self.cudagraph_steps = False  # blocks replayed as CUDA graphs: mark each forward a new graph step
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's initialisation: xavier linears, small-normal text/time MLPs, zero output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in list(self.text_embedding.modules()) + list(self.time_embedding.modules()):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    # -- shared pieces ---------------------------------------------------------------------------------
    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text encoder output (B, tokens ≤ text_len, text_dim) → zero-padded to text_len → (B, text_len, dim)."""
        pad = self.cfg.text_len - context.shape[1]
        if pad < 0:
            raise ValueError(f"context has {context.shape[1]} tokens, more than text_len={self.cfg.text_len}")
        if pad:
            context = F.pad(context, (0, 0, 0, pad))
        return self.text_embedding(context.to(self.patch_embedding.weight.dtype))

    def cross_attention_cache(self, context: torch.Tensor) -> CrossAttnCache:
        """Per-layer cross-attention K/V for one prompt: compute once, reuse every chunk until it changes."""
        ctx = self.embed_text(context)
        kvs = [blk.cross_attn.context_kv(ctx) for blk in self.blocks]
        return CrossAttnCache([k for k, _ in kvs], [v for _, v in kvs])

    def _time(self, t: torch.Tensor, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t: (B,) or (B, frames) in [0, 1000] → e (B, F, dim), e0 (B, F, 6, dim), both fp32."""
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"t must be (B,) or (B, frames)=({batch}, {frames}); got {tuple(t.shape)}")
        with torch.autocast(device_type=t.device.type, enabled=False):
            e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim).to(self.time_embedding[0].weight.dtype))
            e = e.float()
            e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()
            e0 = e0.unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def _patchify(
        self, x: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, F, H, W) and its condition (B, in_dim − C, F, H, W; None: zeros) → tokens
        (B, F·H/2·W/2, dim) and the patch grid (F, H/2, W/2)."""
        extra = self.cfg.in_dim - x.shape[1]
        if condition is not None and condition.shape[1] != extra:
            raise ValueError(f"condition has {condition.shape[1]} channels, the model takes {extra} beside x")
        if extra > 0:
            b, _, f, h, w = x.shape
            x = torch.cat([x, x.new_zeros(b, extra, f, h, w) if condition is None else condition.to(x.dtype)], dim=1)
        pf, ph, pw = self.cfg.patch_size
        if x.shape[2] % pf or x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(f"latent shape {tuple(x.shape[2:])} is not divisible by the patch {self.cfg.patch_size}")
        h = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, dim, F', H', W')
        grid = (h.shape[2], h.shape[3], h.shape[4])
        return h.flatten(2).transpose(1, 2), grid

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, L, out·pf·ph·pw) → (B, out, F, H, W)."""
        pf, ph, pw = self.cfg.patch_size
        f, h, w = grid
        x = x.view(x.shape[0], f, h, w, pf, ph, pw, self.cfg.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, out, F, pf, H, ph, W, pw)
        return x.reshape(x.shape[0], self.cfg.out_dim, f * pf, h * ph, w * pw)

    def _rotations(self, frames: int, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """RoPE rotations (frames·gh·gw, head_dim/2, 2) as (cos, sin) for frame positions 0…frames-1 on a
        (gh, gw) grid, memoised per device: on a GPU this avoids a host→device copy every chunk (streams see
        only a handful of distinct lengths)."""
        key = (frames, gh, gw, device)
        if key not in self._rot_memo:
            if len(self._rot_memo) > 64:
                self._rot_memo.clear()
            rot = rope_for_grid(self._rope, torch.arange(frames), gh, gw)
            self._rot_memo[key] = torch.view_as_real(rot).contiguous().to(device)
        return self._rot_memo[key]

    def _run_blocks(
        self, x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, ctx: AttnContext, cross: CrossAttnCache
    ) -> torch.Tensor:
        cache = ctx.cache
        if self.cudagraph_steps:
            # A new forward may overwrite the previous forward's graph outputs (all consumed by now).
            torch.compiler.cudagraph_mark_step_begin()
        with self._attention_backends():
            for i, blk in enumerate(self.blocks):
                past = None
                if cache is not None:
                    assert ctx.cache_order is not None
                    past = cache.read(i, ctx.cache_order)  # (B, visible, heads, head_dim) each, pre-RoPE
                x, k, v = blk(x, e0, ctx.rot, ctx.mask, past, (cross.k[i], cross.v[i]))
                if cache is not None and ctx.write_cache:
                    cache.write(i, k, v)  # after the read: a full ring overwrites frames this chunk still sees
        return self.head(x, e)

    # -- acceleration (set by vidfx.accel.apply_acceleration; the eager fp32 model needs none of it) ---------
    def _attention_backends(self) -> contextlib.AbstractContextManager:
        """The SDPA backends attention is restricted to (`sdpa_backends`; None = PyTorch's choice). Restricted
        to one, PyTorch raises rather than fall back: the backend asked for is the one taken."""
        if self.sdpa_backends is None:
            return contextlib.nullcontext()
        return sdpa_kernel(self.sdpa_backends)

    def fp32_islands(self) -> list[nn.Module | nn.Parameter]:
        """What Wan computes in fp32 in a bf16 model: the time embedding and projection, every modulation, and
        the norms' weights (the norms themselves always run in fp32, RoPE tables are fp64/complex64)."""
        islands: list[nn.Module | nn.Parameter] = [self.time_embedding, self.time_projection, self.head.modulation]
        for blk in self.blocks:
            islands += [blk.modulation, blk.norm3]
            islands += [blk.self_attn.norm_q, blk.self_attn.norm_k, blk.cross_attn.norm_q, blk.cross_attn.norm_k]
        return islands

    def keep_fp32_islands(self) -> CausalDiT:
        """Cast `fp32_islands` back to fp32 after the model was cast to bf16/fp16 (a no-op in fp32)."""
        for island in self.fp32_islands():
            if isinstance(island, nn.Parameter):
                island.data = island.data.float()
            else:
                island.float()
        return self

    # -- whole clip ------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | CrossAttnCache,
        chunk_frames: int | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for a whole clip.

        x: (B, out_dim, F, H, W) latents; t: (B,) or (B, F) timesteps in [0, 1000];
        context: text encoder output (B, tokens, text_dim) or a prepared CrossAttnCache;
        chunk_frames: None → bidirectional; k → block-causal (latent frames of chunk j see chunks ≤ j);
        condition: the in_dim − out_dim condition channels (see DiTConfig.in_dim; None: zeros).
        Returns (B, out_dim, F, H, W).
        """
        tokens, grid = self._patchify(x, condition)
        nf, gh, gw = grid
        e, e0 = self._time(t.to(x.device), x.shape[0], nf)
        cross = context if isinstance(context, CrossAttnCache) else self.cross_attention_cache(context)
        rot = self._rotations(nf, gh, gw, x.device)
        mask = None
        if chunk_frames is not None:
            chunk_of_token = (torch.arange(nf, device=x.device) // chunk_frames).repeat_interleave(gh * gw)
            mask = chunk_of_token[:, None] >= chunk_of_token[None, :]  # (L, L): query chunk ≥ key chunk
        out = self._run_blocks(tokens, e, e0, AttnContext(grid=grid, rot=rot, mask=mask), cross)
        return self._unpatchify(out, grid).float()

    # -- streaming ---------------------------------------------------------------------------------------
    def new_kv_cache(
        self, batch: int, latent_height: int, latent_width: int, window_frames: int, sink_frames: int = 0
    ) -> KVCache:
        """An empty rolling cache for latents of (latent_height, latent_width), on the model's device/dtype."""
        _, ph, pw = self.cfg.patch_size
        w = self.patch_embedding.weight
        return KVCache(
            num_layers=self.cfg.num_layers,
            batch=batch,
            num_heads=self.cfg.num_heads,
            head_dim=self.cfg.head_dim,
            tokens_per_frame=(latent_height // ph) * (latent_width // pw),
            window_frames=window_frames,
            sink_frames=sink_frames,
            dtype=w.dtype,
            device=w.device,
        )

    def forward_chunk(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross: CrossAttnCache,
        cache: KVCache,
        write_cache: bool = False,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for one chunk x (B, out_dim, chunk_frames, H, W) attending to everything in `cache`.

        With `write_cache`, this chunk's keys/values are stored (call it once per chunk, on the clean
        latents at the context-noise level) and the cache advances by the chunk's frames. condition: as in
        `forward`.
        """
        tokens, grid = self._patchify(x, condition)
        nf, gh, gw = grid
        if gh * gw != cache.tokens_per_frame:
            raise ValueError(f"chunk has {gh * gw} tokens a frame, the cache was made for {cache.tokens_per_frame}")
        e, e0 = self._time(t.to(x.device), x.shape[0], nf)
        visible = cache.visible_frames
        rot = self._rotations(visible + nf, gh, gw, x.device)
        ctx = AttnContext(grid=grid, rot=rot, cache=cache, cache_order=cache.visible_order(), write_cache=write_cache)
        out = self._run_blocks(tokens, e, e0, ctx, cross)
        if write_cache:
            cache.commit_chunk(nf)
        return self._unpatchify(out, grid).float()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
