"""The detail refiner: the last stage of the default model's decoder, which renders the look at twice the
autoencoder's resolution with the camera frame as a guide.

Why it exists: the embedded model's DiT and autoencoder work at 128 px on the short side, where a 2-core CPU
keeps them real-time, and everything finer than a latent pixel (8×8 pixels) is lost in between — faces became
grey blurs. The refiner gets the decoded frame (the look, the layout: what the DiT generated) and the camera
frame it came from at 2× that resolution (the detail the latents cannot carry) and returns the frame in the
look at 2× resolution. It is per frame and has no state of its own (the pipeline feeds it a running blend of a
stream's decoded frames: `ModelSettings.refiner_smoothing`).

    refiner = DetailRefiner(RefinerConfig())
    out = refiner(base, guide, text, box)  # base (N, 3, h, w), guide (N, 3, 2h, 2w) or None, in [-1, 1];
                                           # text: the prompt's `pooled_text` (text_dim,) for a conditioned one;
                                           # box: where the camera's picture lies in the output (None: all of it)
                                           # → (N, 3, 2h, 2w) in [-1, 1]

Architecture (≈ 3.5k multiply-adds per output pixel, nearly all of it at the base's resolution):
* the guide is pixel-unshuffled to the base's grid (12 channels), stacked with the base and a "has a guide"
  channel (text-to-video has no camera frame: zeros and 0 there, as trained on 10% of samples);
* a 3×3 convolution, then `blocks` residual blocks (5×5 depthwise, 1×1, ReLU) at the base's resolution;
* with `text_dim`, the prompt steers them (FiLM: a linear map of the pooled text embedding scales and shifts
  the stem's and each block's pre-activations, folded into the convolutions' weights at inference). Why: the
  refiner otherwise reads which look to draw from the base's colours, and the DiT's 128-px base is the weakest
  part of the model (27% of the reachable gain on real footage alone); told the look, the refiner takes it
  from the camera frame and the base's layout;
* with `position`, where a base pixel sits in the frame (`frame_position`: u, v, radius, radius²) adds to the
  stem's pre-activations through a 1×1 map: sepia's vignette and night vision's eyepiece are functions of the
  place in the frame, which neither input carries at full resolution (a fixed map per frame size at inference);
* a 1×1 head gives 12 sub-pixel channels (pixel-shuffled: the full-resolution colour, added to the bilinearly
  upsampled base), one amplitude map per learnt screen texture (`textures`) and, with `tone_bins`,
  `colour_matrix` and `channel_bins`, a tone curve, a colour matrix and a curve per colour channel per base
  pixel applied to its 2×2 guide pixels (`_guided`);
* a texture is a learnt mixture of fixed waves: sin/cos of the pixel position along x, y, x+y and x−y at
  `periods` (in pixels of a 128-pixel short side, scaled with the camera's picture, `box`) — a convolution
  cannot place a pattern fixed to the screen (hatching, halftone dots, scanlines), it can say how strongly one
  shows here;
  the output is colour · (1 + Σ amplitude · texture).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass(frozen=True)
class RefinerConfig:
    channels: int = 32
    blocks: int = 4
    scale: int = 2  # output pixels per base pixel along each side
    periods: tuple[float, ...] = (2.0, 2.5, 3.0, 5.0, 6.0)  # screen-space wave periods, pixels at 128 px
    textures: int = 6  # learnt mixtures of the waves, each with its own amplitude map
    text_dim: int = 0  # > 0: conditioned on the prompt, the pooled text embedding of this width (FiLM)
    tone_bins: int = 0  # > 0: a tone curve of the guide's luma per base pixel, with this many knots
    position: bool = False  # the base pixel's place in the frame steers the stem (vignettes, eyepieces)
    colour_matrix: bool = False  # a 3×3 matrix per base pixel applied to the colour of its guide pixels
    channel_bins: int = 0  # > 0: a curve of each colour channel of the guide per base pixel, this many knots

    @property
    def guided(self) -> int:
        """Coefficients a colour per base pixel of the guide-pixel functions (tone knots, matrix columns, channel
        curve knots)."""
        return self.tone_bins + 3 * self.colour_matrix + self.channel_bins

    @property
    def waves(self) -> int:
        return len(self.periods) * 8  # 4 directions × (sin, cos)


Region = tuple[float, float, float, float]  # (top, left, height, width) in a frame's pixels


def frame_position(hw: tuple[int, int], dtype: torch.dtype = torch.float32, box: Region | None = None) -> torch.Tensor:
    """Where each pixel of an (H, W) frame sits: u, v (−1 … 1 across the picture `box`, the whole frame when
    None, at the pixel centres), the radius r = √(u² + v²) (1 at the middle of each edge, as the looks measure
    vignettes) and r²: (4, H, W)."""
    h, w = hw
    top, left, bh, bw = box or (0.0, 0.0, h, w)
    v, u = torch.meshgrid(
        (torch.arange(h, dtype=torch.float64) + 0.5 - top) / bh * 2 - 1,
        (torch.arange(w, dtype=torch.float64) + 0.5 - left) / bw * 2 - 1,
        indexing="ij",
    )
    r2 = u * u + v * v
    return torch.stack([u, v, r2.sqrt(), r2]).to(dtype)


def screen_waves(
    hw: tuple[int, int], periods: tuple[float, ...], dtype: torch.dtype = torch.float32, box: Region | None = None
) -> torch.Tensor:
    """sin/cos of the pixel position along x, y, x+y, x−y at each period (pixels of a 128-px short side,
    scaled to the picture): (len(periods)·8, H, W). The picture is `box` of the frame (None: all of it): its
    short side sets the scale and its top-left pixel is the origin, so the waves lie on the picture as on a
    frame of its own size (a look's screen is fixed to the camera's pixels, not to the margins beside them)."""
    h, w = hw
    top, left, bh, bw = box or (0.0, 0.0, h, w)
    scale = min(bh, bw) / 128.0
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) - top, torch.arange(w, dtype=torch.float64) - left, indexing="ij"
    )
    out = []
    for axis in (xx, yy, xx + yy, xx - yy):
        for period in periods:
            phase = axis * (2 * math.pi / (period * scale))
            out += [torch.sin(phase), torch.cos(phase)]
    return torch.stack(out).to(dtype)


Film = tuple[torch.Tensor, torch.Tensor]  # a stage's FiLM: (scale, shift), each (1 or N, C)
_Key = tuple[tuple[int, int], Region | None, torch.dtype, torch.device]  # a fixed map's cache key


def modulated(conv: nn.Conv2d, x: torch.Tensor, film: Film | None) -> torch.Tensor:
    """conv(x) with FiLM on its output channels: conv(x)·scale + shift. One prompt for the whole batch (a
    stream's chunk) is folded into the convolution's weights and bias, so inference pays nothing per pixel
    for it (the multiply-add over the features cost 4 ms a frame at 352×256); a prompt per sample (training)
    is applied to the features."""
    if film is None:
        return conv(x)
    scale, shift = film
    if scale.shape[0] == 1:
        assert conv.bias is not None
        weight = conv.weight * scale[0].view(-1, 1, 1, 1)
        return F.conv2d(x, weight, conv.bias * scale[0] + shift[0], conv.stride, conv.padding, groups=conv.groups)
    return conv(x) * scale[:, :, None, None] + shift[:, :, None, None]


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, film: Film | None = None) -> torch.Tensor:
        return x + F.relu(modulated(self.mix, self.spatial(x), film))


class DetailRefiner(nn.Module):
    """Decoded frame + camera frame at `scale`× → the frame in the look at `scale`× (module docstring)."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s, c = cfg.scale, cfg.channels
        self.stem = nn.Conv2d(3 * s * s + 3 + 1, c, 3, padding=1)
        self.body = nn.Sequential(*[_Block(c) for _ in range(cfg.blocks)])
        self.head = nn.Conv2d(c, 3 * s * s + cfg.textures + 3 * cfg.guided, 1)
        # the frame position's share of the stem's pre-activations: a fixed map per frame size once trained
        self.place = nn.Conv2d(4, c, 1, bias=False) if cfg.position else None
        if self.place is not None:
            nn.init.zeros_(self.place.weight)
        # FiLM: the prompt scales and shifts the stem's and every block's pre-activations (zero: unconditioned)
        self.film = nn.Linear(cfg.text_dim, 2 * c * (cfg.blocks + 1)) if cfg.text_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        nn.init.zeros_(self.head.weight)  # starts as the upsampled base
        nn.init.zeros_(self.head.bias)
        self.mixing = nn.Parameter(torch.randn(cfg.textures, cfg.waves) / math.sqrt(cfg.waves))
        self._waves: dict[_Key, torch.Tensor] = {}
        self._textures: dict[_Key, torch.Tensor] = {}
        self._placed: dict[_Key, torch.Tensor] = {}
        self.to(memory_format=torch.channels_last)

    @property
    def scale(self) -> int:
        return self.cfg.scale

    def waves(self, hw: tuple[int, int], like: torch.Tensor, box: Region | None = None) -> torch.Tensor:
        """`screen_waves` of an output size and picture box, built once per size, box, dtype and device."""
        key = (hw, box, like.dtype, like.device)
        if key not in self._waves:
            self._waves[key] = screen_waves(hw, self.cfg.periods, box=box).to(like.device, like.dtype)
        return self._waves[key]

    def textures(self, hw: tuple[int, int], like: torch.Tensor, box: Region | None = None) -> torch.Tensor:
        """The learnt screen textures of an output size and picture box (textures, H, W)."""
        return self._fixed(self._textures, hw, box, like, self._mix)

    def placed(self, hw: tuple[int, int], like: torch.Tensor, box: Region | None = None) -> torch.Tensor:
        """The stem's position term for a base of size `hw` with the picture in `box` (base pixels): `place`
        applied to `frame_position` (1, C, h, w)."""
        return self._fixed(self._placed, hw, box, like, self._place)

    def _fixed(
        self,
        cache: dict[_Key, torch.Tensor],
        hw: tuple[int, int],
        box: Region | None,
        like: torch.Tensor,
        make: Callable[[tuple[int, int], Region | None, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`make(hw, box, like)`, a map of the weights and the frame geometry only: made on every call while
        training, once per size, box, dtype and device when not (the weights are then fixed)."""
        if self.training or torch.is_grad_enabled():
            cache.clear()
            return make(hw, box, like)
        key = (hw, box, like.dtype, like.device)
        if key not in cache:
            cache[key] = make(hw, box, like)
        return cache[key]

    def _mix(self, hw: tuple[int, int], box: Region | None, like: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tk,khw->thw", self.mixing.to(like.dtype), self.waves(hw, like, box))

    def _place(self, hw: tuple[int, int], box: Region | None, like: torch.Tensor) -> torch.Tensor:
        assert self.place is not None
        pos = frame_position(hw, box=box).to(like.device, like.dtype)[None]
        return self.place(pos).contiguous(memory_format=torch.channels_last)

    def forward(
        self,
        base: torch.Tensor,
        guide: torch.Tensor | None,
        text: torch.Tensor | None = None,
        box: Region | None = None,
    ) -> torch.Tensor:
        """base (N, 3, h, w), guide (N, 3, s·h, s·w) or None, in [-1, 1]; text (N, text_dim) or (text_dim,),
        the pooled prompt embedding (`pooled_text`; required when the refiner is conditioned); box: where the
        camera's picture lies in the output frame (top, left, height, width in output pixels; None: the whole
        frame), which places the screen textures and the frame position → (N, 3, s·h, s·w) in [-1, 1]."""
        s, cfg = self.cfg.scale, self.cfg
        n, _, h, w = base.shape
        if guide is None:
            fine = base.new_zeros(n, 3 * s * s, h, w)
            has = base.new_zeros(n, 1, h, w)
        else:
            if guide.shape != (n, 3, h * s, w * s):
                raise ValueError(f"guide must be {(n, 3, h * s, w * s)}, got {tuple(guide.shape)}")
            fine = F.pixel_unshuffle(guide, s)
            has = base.new_ones(n, 1, h, w)
        # channels-last: ~10x faster for these small convolutions on the CPU (oneDNN's native layout)
        x = torch.cat([fine, base, has], 1).contiguous(memory_format=torch.channels_last)
        films = self._films(text, base)
        feat = modulated(self.stem, x, films[0])
        if self.place is not None:
            base_box = None if box is None else (box[0] / s, box[1] / s, box[2] / s, box[3] / s)
            feat = feat + self.placed((h, w), base, base_box)
        feat = F.relu(feat)
        for block, film in zip(self.body, films[1:], strict=True):
            feat = block(feat, film)
        out = self.head(feat)
        k = 3 * s * s + cfg.textures
        sub = out[:, : 3 * s * s]
        if cfg.guided and guide is not None:
            sub = sub + self._guided(out[:, k:], fine)
        colour = F.pixel_shuffle(sub, s) + F.interpolate(base, scale_factor=s, mode="bilinear", align_corners=False)
        amps = F.interpolate(out[:, 3 * s * s : k], scale_factor=s, mode="nearest")  # (N, textures, s·h, s·w)
        texture = (amps * self.textures((h * s, w * s), base, box)).sum(1, keepdim=True)
        # [-1, 1] ↔ [0, 1] around the multiplication, so a wave darkens towards black, as the looks' textures do
        return ((colour + 1) * (1 + texture) - 1).clamp(-1, 1)

    def _films(self, text: torch.Tensor | None, like: torch.Tensor) -> list[Film | None]:
        """Per stage (stem, each block): FiLM (scale, shift) from the pooled prompt — (1, C) each for one prompt
        (text (D,)), (N, C) for a prompt per sample — or None everywhere for an unconditioned refiner."""
        stages = self.cfg.blocks + 1
        if self.film is None:
            return [None] * stages
        if text is None:
            raise ValueError("this refiner is conditioned on the prompt: pass its pooled text embedding")
        film = self.film(text.to(like).reshape(-1, self.cfg.text_dim)).view(-1, stages, 2, self.cfg.channels)
        return [(1 + film[:, i, 0], film[:, i, 1]) for i in range(stages)]

    def _guided(self, coeffs: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """Per base pixel, functions of the colour of each of its s×s guide pixels: coeffs (N, 3·B, h, w) (B =
        `cfg.guided`), fine the pixel-unshuffled guide (N, 3·s², h, w) → (N, 3·s², h, w) in pixel-unshuffled
        order. Why: a base pixel's features must otherwise say each of its 4 full-resolution colours at once;
        these put one function per base pixel on all of them, at the base's resolution (bilinearly upsampled
        coefficients cost 6.4 ms a frame at 352×256, the tone curve this way 1.9–2.9 ms):
        * a tone curve (`tone_bins` K): the value at K evenly spaced luma knots for each colour, the pixel's luma
          interpolated linearly between its two knots — thermal, sepia and night vision are curves of luma;
        * a colour matrix (`colour_matrix`, after the curve's rows): 3×3 on the pixel's colour — comic's
          saturation and watercolor's palette are, locally, linear maps of the camera's colour;
        * a channel curve (`channel_bins` C, after the matrix's rows): each colour channel's value at C knots of
          that channel — comic posterises each channel to four levels, which is a step function of the channel,
          not of the luma, and not linear.
        """
        k, s2 = self.cfg.tone_bins, self.cfg.scale**2
        n, _, h, w = fine.shape
        # pixels as rows, (3, ·) × (·, s²) products each: 2× faster than channel-first broadcasting or gathers;
        # one product per function, summed, is faster than one over the concatenated coefficients
        g = fine.permute(0, 2, 3, 1).reshape(n, h, w, 3, s2)
        coeffs = coeffs.permute(0, 2, 3, 1)
        products, at = [], 0  # `at`: the first head row of the next function
        if k:
            pos = (0.299 * g[..., 0, :] + 0.587 * g[..., 1, :] + 0.114 * g[..., 2, :] + 1) * (0.5 * (k - 1))
            knots = torch.arange(k, dtype=pos.dtype, device=pos.device)
            hats = (1 - (pos[..., None] - knots).abs()).clamp_min(0)  # (N, h, w, s², K): 2 knots ≠ 0 a pixel
            products.append(coeffs[..., : 3 * k].reshape(n, h, w, 3, k) @ hats.transpose(-1, -2))
            at = 3 * k
        if self.cfg.colour_matrix:
            products.append(coeffs[..., at : at + 9].reshape(n, h, w, 3, 3) @ g)
            at += 9
        if c := self.cfg.channel_bins:
            # a position per colour, not one luma for all three: gathers here (16 against 56 ms per 4 frames at
            # 176×128 for a product with the hats; the tone curve's one product is the faster there, 13 vs 17)
            curves = coeffs[..., at : at + 3 * c].reshape(n, h, w, 3, c)
            products.append(_piecewise_linear(curves, (g + 1) * (0.5 * (c - 1))))
        out = sum(products[1:], products[0])  # (N, h, w, 3, s²)
        return out.reshape(n, h, w, 3 * s2).permute(0, 3, 1, 2)


def _piecewise_linear(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Curves through `values` (..., C) at knots 0 … C−1, read at positions pos (..., P) in [0, C−1] →
    (..., P): each position between its two knots, by two gathers (a product with every knot's hat cost 1.5×
    the whole refiner's training step)."""
    pos = pos.clamp(0, values.shape[-1] - 1)
    lower = pos.detach().floor().clamp(max=values.shape[-1] - 2)
    frac = pos - lower
    index = lower.long()
    return values.gather(-1, index) * (1 - frac) + values.gather(-1, index + 1) * frac


def pooled_text(embedding: torch.Tensor) -> torch.Tensor:
    """A prompt's text embedding (L, D) or (N, L, D) → the refiner's condition (D,) or (N, D): the sum of the
    token rows (the hash encoder's rows are one unit vector a word, zeros after the last; a weighted blend of
    prompts stays the same blend)."""
    return embedding.sum(-2)


REFINER_FILE = "refiner.safetensors"


def save_refiner(refiner: DetailRefiner, path: str | Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in refiner.state_dict().items()}
    save_file(state, str(path), metadata={"vidfx.refiner": json.dumps(asdict(refiner.cfg))})


def load_refiner(path: str | Path) -> DetailRefiner:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "vidfx.refiner" not in meta:
        raise ValueError(f"{path}: not a vidfx detail refiner (no 'vidfx.refiner' metadata)")
    raw = json.loads(meta["vidfx.refiner"])
    cfg = RefinerConfig(**{**raw, "periods": tuple(raw["periods"])})
    refiner = DetailRefiner(cfg)
    refiner.load_state_dict(load_file(str(path)))
    return refiner.eval()


__all__ = [
    "DetailRefiner",
    "RefinerConfig",
    "REFINER_FILE",
    "load_refiner",
    "pooled_text",
    "save_refiner",
    "frame_position",
    "screen_waves",
]
