"""Wan2.1's text encoder: the encoder half of umT5-XXL, with the module names of Wan's own checkpoint
(`models_t5_umt5-xxl-enc-bf16.pth`, Wan-Video/Wan2.1 `wan/modules/t5.py`), so its weights load by plain copy
once `vidfx convert` has turned the .pth into safetensors:

    token_embedding                     (vocab, dim)
    blocks.i.norm1 / norm2              T5 layer norm: x / rms(x) * weight (no mean, no bias)
    blocks.i.attn.{q,k,v,o}             bias-free projections; T5 attention has no 1/sqrt(d) scaling
    blocks.i.pos_embedding.embedding    (num_buckets, num_heads) relative-position bias, one table per layer
                                        (umT5; the original T5 shares one table across layers)
    blocks.i.ffn.gate.0, fc1, fc2       gated GELU: fc2(fc1(x) * gelu_tanh(gate(x)))
    norm                                final T5 layer norm

Pre-norm residual blocks: x += attn(norm1(x)); x += ffn(norm2(x)).

Output, as Wan feeds its DiT: the final states of the prompt's tokens (its words and the closing </s>), zero
rows after them, text_len rows in all. Padding keys are masked, so the real tokens' states do not depend on
how much padding follows; we therefore run the network on the batch's longest prompt only instead of all 512
positions (same numbers for the rows that are kept, a fraction of the work).

Tokenizer: the `tokenizer.json` that ships with google/umt5-xxl (Wan2.1 releases carry it in
`google/umt5-xxl/`), read with the `tokenizers` library — the fast tokenizer that Wan's `AutoTokenizer` call
resolves to, without transformers. It is only ever read from a local file (no hub, no download).
Install it with `pip install vidfx[wan]`. Text cleaning follows Wan's `clean='whitespace'`: HTML entities
unescaped twice, runs of whitespace collapsed (Wan also runs ftfy's mojibake repair, which we skip: it
changes nothing in ordinary prompts and would add a dependency).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidfx.weights import CheckpointError, load_into, load_state_dict


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    dim: int = 4096  # model width = the DiT's text_dim
    dim_attn: int = 4096  # width of q/k/v (num_heads * head_dim)
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32  # relative-position buckets (half for each direction)
    max_distance: int = 128  # distances beyond this share the last bucket
    eps: float = 1e-6
    text_len: int = 512  # prompts are truncated / zero-padded to this many tokens (Wan: 512)

    @classmethod
    def preset(cls, name: str) -> UMT5Config:
        """`umt5-xxl` (Wan2.1's encoder) or `tiny` (same structure and names, for tests)."""
        presets = {
            # wan/modules/t5.py umt5_xxl(): encoder_layers 24, shared_pos False.
            "umt5-xxl": cls(),
            "tiny": cls(
                vocab_size=128, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, text_len=16
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown umT5 preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def with_(self, **changes: object) -> UMT5Config:
        return replace(self, **changes)


# -- network -----------------------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """Scale-only RMS norm; statistics in fp32, result in the weight's dtype (as Wan does for bf16/fp16)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(
            self.weight.dtype
        )


class T5RelativeEmbedding(nn.Module):
    """Bidirectional relative-position bias (1, heads, L, L) from T5's log-spaced distance buckets."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, length: int) -> torch.Tensor:
        """(L, L) bucket index of key j seen from query i.

        Half the buckets are for j > i, half for j <= i; in each half, distances below half of it get their
        own bucket, larger ones share log-spaced buckets up to max_distance.
        """
        pos = torch.arange(length, device=self.embedding.weight.device)
        rel = pos[None, :] - pos[:, None]  # (Lq, Lk): key minus query
        half = self.num_buckets // 2
        exact = half // 2
        dist = rel.abs()
        # clamp(min=exact) keeps log() finite; those entries take the exact branch of the where() anyway.
        far = dist.clamp(min=exact).float()
        log_bucket = (
            exact + (torch.log(far / exact) / math.log(self.max_distance / exact) * (half - exact)).long()
        )
        log_bucket = log_bucket.clamp(max=half - 1)
        return (rel > 0).long() * half + torch.where(dist < exact, dist, log_bucket)

    def forward(self, length: int) -> torch.Tensor:
        return self.embedding(self.buckets(length)).permute(2, 0, 1).unsqueeze(0)  # (1, heads, L, L)


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim); bias (B, heads, L, L) additive: position bias plus -inf-like on padding keys."""
        b, length, _ = x.shape
        q, k, v = (
            proj(x).view(b, length, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )  # each (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # T5: unscaled logits
        return self.o(out.transpose(1, 2).reshape(b, length, -1))


class T5FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads, cfg.max_distance)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """key_mask (B, 1, 1, L) bool, True on real tokens."""
        bias = self.pos_embedding(x.shape[1]).to(x.dtype)  # (1, heads, L, L)
        bias = bias.masked_fill(~key_mask, torch.finfo(x.dtype).min)  # (B, heads, L, L)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # umT5 activations exceed fp16's range in a few channels; Wan clamps them just below it. Done always
    # (Wan: only once an inf appears), which differs only for values already within 1000 of fp16's max.
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return x.clamp(-limit, limit)


class UMT5Encoder(nn.Module):
    """Token ids -> final hidden states. Parameter names match Wan's `T5Encoder` checkpoint."""

    def __init__(self, cfg: UMT5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([T5Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int, mask (B, L) bool/int (True/1 = real token) -> (B, L, dim) in the weights' dtype.

        Rows at masked positions are whatever the network computes there (the caller zeroes them).
        """
        x = self.token_embedding(ids)
        key_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, L): broadcast over heads and queries
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


# -- tokenizer ---------------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'` minus ftfy: HTML entities unescaped (twice), whitespace runs collapsed."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class UMT5Tokenizer:
    """google/umt5-xxl's tokenizer from a local `tokenizer.json`: ids, then </s>, then <pad> to text_len."""

    def __init__(self, path: str | Path, text_len: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError(
                "the umT5 tokenizer needs the `tokenizers` package: pip install 'vidfx[wan]'"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json there")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for malformed JSON
            raise ValueError(f"{path}: not a readable tokenizer.json ({exc})") from exc
        # Padding, truncation and </s> are applied below, whatever the file configures, so ids match
        # transformers' `tokenizer(..., padding='max_length', truncation=True, max_length=text_len)`.
        self._tok.no_padding()
        self._tok.no_truncation()
        self.path = path
        self.text_len = text_len
        self.pad_id = self._special_id("<pad>")
        self.eos_id = self._special_id("</s>")

    def _special_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(
                f"{self.path}: tokenizer has no {token} token; is this google/umt5-xxl's tokenizer?"
            )
        return idx

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (B, text_len): ids long, mask bool (True on the prompt's tokens and its </s>)."""
        encodings = self._tok.encode_batch([clean_prompt(p) for p in prompts], add_special_tokens=False)
        ids = torch.full((len(prompts), self.text_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), self.text_len), dtype=torch.bool)
        for i, enc in enumerate(encodings):
            row = [*enc.ids[: self.text_len - 1], self.eos_id]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask


# -- the encoder as vidfx uses it ---------------------------------------------------------------------------


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(p for p in folder.rglob(pattern) if p.is_file())
    if len(found) != 1:
        listing = ", ".join(str(p.relative_to(folder)) for p in found) or "none"
        raise FileNotFoundError(f"{folder}: expected exactly one {what} ({pattern}), found {listing}")
    return found[0]


def find_umt5_files(folder: str | Path) -> tuple[Path, Path]:
    """(weights, tokenizer.json) inside a Wan release folder: the one `*t5*.safetensors` and the one
    `tokenizer.json` anywhere below it (Wan: `google/umt5-xxl/tokenizer.json`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    try:
        weights = _find_one(folder, "*t5*.safetensors", "umT5 weights file")
    except FileNotFoundError:
        pickled = sorted(folder.glob("*t5*.pth"))
        if pickled:
            raise CheckpointError(
                f"{pickled[0]}: convert it once with `vidfx convert {pickled[0]} "
                f"{pickled[0].with_suffix('.safetensors')}` (pickled checkpoints are not loaded)"
            ) from None
        raise
    return weights, _find_one(folder, "tokenizer.json", "tokenizer")


class UMT5TextEncoder:
    """umT5 network + tokenizer behind the `TextEncoder` protocol.

    Runs on its own `device` (e.g. "cpu" to leave the GPU to the DiT: ~11 GB of bf16 weights); `encode`
    returns fp32 on that device and callers move it to the DiT's.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: UMT5Tokenizer) -> None:
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(
                f"{tokenizer.path}: {tokenizer.vocab_size} tokens, "
                f"more than the network's {model.cfg.vocab_size}"
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_dim = model.cfg.dim
        self.max_tokens = tokenizer.text_len

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | None = None,
        *,
        weights: str | Path | None = None,
        tokenizer: str | Path | None = None,
        config: UMT5Config | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
    ) -> UMT5TextEncoder:
        """Load from a local Wan folder (see `find_umt5_files`) or explicit `weights`/`tokenizer` paths.

        The module is built on the meta device and takes the file's tensors as its parameters (no second
        copy of 5.7 B weights in memory). Names and shapes must match exactly; errors name the file.
        """
        cfg = config or UMT5Config.preset("umt5-xxl")
        if weights is None or tokenizer is None:
            if folder is None:
                raise ValueError("give a folder, or both weights= and tokenizer=")
            found_w, found_t = find_umt5_files(folder)
            weights, tokenizer = weights or found_w, tokenizer or found_t
        tok = UMT5Tokenizer(tokenizer, cfg.text_len)
        state = load_state_dict(weights, device=device)
        with torch.device("meta"):
            model = UMT5Encoder(cfg)
        load_into(model, state, weights, assign=True)
        return cls(model.to(dtype=dtype), tok)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_len, dim) fp32: token states of each prompt (with </s>), zero rows after."""
        ids, mask = self.tokenizer(prompts)
        # Only the longest prompt's length is computed: padding keys are masked, so kept rows are unchanged.
        used = int(mask.sum(1).max())
        ids, mask = ids[:, :used].to(self.device), mask[:, :used].to(self.device)
        states = self.model(ids, mask).float() * mask[..., None]  # zero the padding rows
        return F.pad(states, (0, 0, 0, self.max_tokens - used))
