"""Named video looks, and the (source clip, same clip in each look) training set made from them.

Every look is a pure function `(frames (T, 3, H, W) float in [0, 1], seed) -> same shape`, applied per frame
with fixed, screen-space textures (paper, halftone screens, scanlines). The only per-frame randomness is film
grain and sensor noise in `vintage_sepia` and `night_vision`, where the flicker is the look; it is drawn from
the clip's seed, so a clip is still a pure function of (seed, index).

Kernel sizes scale with the frame's short side (`_px`): a look at 64x64 is the 128x128 look downsampled.

    LOOKS[name] -> Look(filter, captions)
    iter_clips(seed, num_frames, size, fps) -> Clip  (source, every look, one sampled look + caption)
    iter_pairs(seed, ...) -> Pair                      (the video-to-video view: source -> one look)
    write_dataset(folder, num_clips, seed, ...)        (H.264 mp4 per clip and look + captions.jsonl)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vidfx.data.scenes import apply_lut, fractal_noise, render_source_clip

LookFn = Callable[[torch.Tensor, int], torch.Tensor]

# ------------------------------------------------------------------------------------------------ helpers


def _px(x: torch.Tensor, n: float) -> float:
    """`n` pixels of a 128-pixel frame, in this frame's pixels."""
    return n * min(x.shape[-2:]) / 128.0


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """One small 2-D kernel over every channel of (N, C, H, W); a grouped conv is ~10x faster here than
    a batch of one-channel images."""
    n, c, h, w = x.shape
    y = F.pad(x.reshape(1, n * c, h, w), pad, mode=mode)  # (1, N*C, H+, W+): channels as groups
    y = F.conv2d(y, kernel[None, None].expand(n * c, 1, -1, -1), groups=n * c)
    return y.reshape(n, c, y.shape[-2], y.shape[-1])


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflected borders. Wide blurs run at a lower resolution
    (box-downsampled by f, blurred, bilinearly upsampled): same look, a fraction of the taps."""
    if sigma < 0.3:
        return x
    h, w = x.shape[-2:]
    f = next((f for f in (4, 2) if f <= sigma / 1.5 and h % f == 0 and w % f == 0 and min(h, w) >= 8 * f), 1)
    if f > 1:
        small = F.avg_pool2d(x, f)
        # The box filter and the bilinear upsampling each add about (f^2 - 1) / 12 pixels^2 of variance.
        rest = math.sqrt(max(sigma**2 - (f**2 - 1) / 6, 0.25 * f**2)) / f
        return F.interpolate(gaussian_blur(small, rest), size=(h, w), mode="bilinear", align_corners=False)
    radius = min(max(1, int(math.ceil(3 * sigma))), x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    y = _depthwise(x, k[None, :], (radius, radius, 0, 0), "reflect")
    return _depthwise(y, k[:, None], (0, 0, radius, radius), "reflect")


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W), Rec. 601 weights."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of every channel of (N, C, H, W) (a unit step gives about 1)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype) / 4
    gx = _depthwise(x, kx, (1, 1, 1, 1), "replicate")
    gy = _depthwise(x, kx.t().contiguous(), (1, 1, 1, 1), "replicate")
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def smoothstep(lo: float, hi: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def saturate(x: torch.Tensor, amount: float) -> torch.Tensor:
    return (luma(x) + (x - luma(x)) * amount).clamp(0, 1)


def _ramp(*stops: tuple[float, float, float]) -> torch.Tensor:
    """A colour ramp of evenly spaced stops as a (256, 3) table."""
    table = torch.tensor(stops, dtype=torch.float32).t()[None]  # (1, 3, stops)
    return F.interpolate(table, size=256, mode="linear", align_corners=True)[0].t().contiguous()


def _screen_coords(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices (H, W) of a frame: fixed screen-space textures are functions of these."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    return xx, yy


def _radius(x: torch.Tensor) -> torch.Tensor:
    """Distance from the frame centre, 1 at the middle of each edge: (H, W)."""
    xx, yy = _screen_coords(x)
    h, w = x.shape[-2:]
    return torch.sqrt(((xx + 0.5) / w * 2 - 1) ** 2 + ((yy + 0.5) / h * 2 - 1) ** 2)


def _static_noise(seed: int, hw: tuple[int, int], octaves: int, base: int) -> torch.Tensor:
    """Fixed (per clip) smooth noise in [0, 1]: (H, W)."""
    return fractal_noise(np.random.default_rng(seed), hw, octaves=octaves, base=base)


def _frame_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


# -------------------------------------------------------------------------------------------------- looks


def pencil_sketch(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Colour-dodge sketch (grey divided by its blurred negative) with cross-hatched shadows on paper."""
    g = luma(x)
    dodge = (g / (1 - gaussian_blur(1 - g, _px(x, 2.5)) + 1e-3)).clamp(0, 1)
    strokes = dodge**4
    xx, yy = _screen_coords(x)
    period = max(3.0, _px(x, 5))
    # Hatching in a fixed screen-space pattern: one direction in the half-tones, crossed in the shadows.
    hatch1 = smoothstep(0.6, 0.9, torch.sin((xx + yy) * 2 * math.pi / period))
    hatch2 = smoothstep(0.6, 0.9, torch.sin((xx - yy) * 2 * math.pi / period))
    tone = gaussian_blur(g, _px(x, 2))
    shade = 1 - 0.3 * hatch1 * smoothstep(0.5, 0.25, tone) - 0.3 * hatch2 * smoothstep(0.25, 0.08, tone)
    graphite = 1 - 0.22 * (1 - tone)  # a light smudge of graphite where the picture is dark
    h, w = x.shape[-2:]
    paper = 0.92 + 0.07 * _static_noise(seed, (h, w), octaves=3, base=max(4, w // 8))
    out = strokes * shade * graphite * paper
    return out * torch.tensor([0.98, 0.97, 0.94]).view(1, 3, 1, 1)


# PICO-8's 16 colours: a palette pixel artists actually use.
PICO8 = torch.tensor(
    [
        [0, 0, 0], [29, 43, 83], [126, 37, 83], [0, 135, 81], [171, 82, 54], [95, 87, 79], [194, 195, 199],
        [255, 241, 232], [255, 0, 77], [255, 163, 0], [255, 236, 39], [0, 228, 54], [41, 173, 255],
        [131, 118, 156], [255, 119, 168], [255, 204, 170],
    ],
    dtype=torch.float32,
) / 255.0  # fmt: skip


def pixel_art(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Big square pixels in a 16-colour palette."""
    h, w = x.shape[-2:]
    block = max(2, int(round(_px(x, 4))))
    small = F.interpolate(x, size=(max(1, h // block), max(1, w // block)), mode="area")
    small = saturate((small - 0.5) * 1.15 + 0.5, 1.4)
    # Ordered (Bayer) dithering on the coarse grid, fixed in screen space, so gradients become patterns.
    sh, sw = small.shape[-2:]
    bayer = torch.tensor([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], dtype=x.dtype) / 16 - 0.47
    small = small + 0.12 * bayer.repeat(sh // 4 + 1, sw // 4 + 1)[:sh, :sw]
    flat = small.permute(0, 2, 3, 1).reshape(-1, 3)  # (N*sh*sw, 3)
    idx = torch.cdist(flat, PICO8).argmin(-1)
    quant = PICO8[idx].reshape(small.shape[0], sh, sw, 3).permute(0, 3, 1, 2)
    return F.interpolate(quant, size=(h, w), mode="nearest")


IRONBOW = _ramp(
    (0.0, 0.0, 0.02), (0.12, 0.0, 0.40), (0.45, 0.0, 0.60), (0.78, 0.10, 0.40), (0.95, 0.35, 0.05),
    (1.0, 0.68, 0.0), (1.0, 0.92, 0.35), (1.0, 1.0, 0.92),
)  # fmt: skip


def thermal(x: torch.Tensor, seed: int) -> torch.Tensor:
    """An 'ironbow' thermal-camera palette on a soft, low-resolution heat image; warm hues read hotter."""
    warmth = (x[:, 0:1] - x[:, 2:3]).clamp(-1, 1)
    heat = gaussian_blur(0.75 * luma(x) + 0.25 * (warmth * 0.5 + 0.5), _px(x, 1.5))
    heat = smoothstep(0.05, 0.95, heat)
    return apply_lut(heat[:, 0], IRONBOW)


def neon_edges(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Edges drawn as glowing neon tubes, in the source's own hue, on a near-black background."""
    soft = gaussian_blur(x, _px(x, 0.8))
    e = smoothstep(0.04, 0.25, sobel(soft).amax(1, keepdim=True))
    mx, mn = soft.amax(1, keepdim=True), soft.amin(1, keepdim=True)
    hue = (soft - mn) / (mx - mn).clamp_min(1e-3)  # full-saturation version of the source colour
    sat = (mx - mn) / mx.clamp_min(1e-3)
    # Grey sources have no hue: fall back to a cyan-to-magenta sweep across the screen.
    xx, yy = _screen_coords(x)
    h, w = x.shape[-2:]
    sweep = ((xx / w + yy / h) / 2)[None, None]
    fallback = torch.cat([sweep, 1 - sweep, torch.ones_like(sweep)], 1)
    color = torch.lerp(fallback, hue, smoothstep(0.15, 0.4, sat))
    color = color / color.amax(1, keepdim=True).clamp_min(1e-3)
    tube = e * color
    glow = gaussian_blur(tube, _px(x, 2.5)) * 1.4 + gaussian_blur(tube, _px(x, 7)) * 1.2
    core = e**3 * 0.6
    base = torch.tensor([0.02, 0.0, 0.05]).view(1, 3, 1, 1)
    return (base + tube + glow + core).clamp(0, 1)


def watercolor(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Soft pale washes with wobbly, darkened edges and granulation on white paper."""
    n, _, h, w = x.shape
    # Wobbly edges: warp the picture through a fixed screen-space displacement field.
    amp = _px(x, 2.5)
    dx = _static_noise(seed, (h, w), octaves=3, base=max(3, w // 16)) - 0.5
    dy = _static_noise(seed + 1, (h, w), octaves=3, base=max(3, w // 16)) - 0.5
    xx, yy = _screen_coords(x)
    gx = (xx + dx * 2 * amp + 0.5) / w * 2 - 1
    gy = (yy + dy * 2 * amp + 0.5) / h * 2 - 1
    grid = torch.stack([gx, gy], -1)[None].expand(n, -1, -1, -1)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    wash = gaussian_blur(warped, _px(x, 2.2))
    # Pigment settles in a few tones.
    levels = 5.0
    q = wash * levels
    wash = (torch.floor(q) + smoothstep(0.3, 0.7, q - torch.floor(q))) / levels
    wash = saturate(wash, 1.3)
    pigment = (1 - wash) * 0.62
    density = 0.75 + 0.5 * _static_noise(seed + 2, (h, w), octaves=4, base=3)
    pigment = pigment * density
    # Pigment pools at the rim of each wash.
    rim = smoothstep(0.02, 0.12, sobel(gaussian_blur(luma(wash), _px(x, 0.7))))
    pigment = pigment + rim * 0.25 * (pigment + 0.15)
    grain = _static_noise(seed + 3, (h, w), octaves=2, base=max(8, w // 3))
    paper = torch.tensor([0.99, 0.97, 0.93]).view(1, 3, 1, 1) * (0.94 + 0.06 * grain)
    return (paper * (1 - pigment)).clamp(0, 1)


SEPIA = _ramp((0.08, 0.05, 0.03), (0.36, 0.24, 0.14), (0.66, 0.52, 0.35), (0.90, 0.80, 0.62), (0.98, 0.94, 0.82))


def vintage_sepia(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Faded sepia print: soft lens, brown tones, dark vignette, film grain and exposure flicker."""
    n, _, h, w = x.shape
    g = luma(gaussian_blur(x, _px(x, 0.7)))
    g = 0.08 + 0.84 * g
    gen = torch.Generator().manual_seed(seed)
    flicker = 1 + 0.04 * torch.randn(n, 1, 1, 1, generator=gen)
    grain = gaussian_blur(torch.randn(n, 1, h, w, generator=gen), _px(x, 0.5)) * 0.06
    g = (g * flicker + grain).clamp(0, 1)
    vignette = 1 - 0.65 * _radius(x).div(1.414).pow(2.2)
    return apply_lut(g[:, 0], SEPIA) * vignette


def comic(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Comic book: flat posterized colour, Ben-Day halftone dots, thick black ink outlines."""
    soft = gaussian_blur(x, _px(x, 1.2))
    flat = torch.round(saturate(soft, 1.8) * 3) / 3
    lum = luma(soft)
    xx, yy = _screen_coords(x)
    period = max(3.0, _px(x, 6))
    # Distance to the nearest dot centre of a 45-degree screen, in units of the dot period.
    fx = torch.remainder(xx + yy, period) / period - 0.5
    fy = torch.remainder(xx - yy, period) / period - 0.5
    dist = torch.sqrt(fx**2 + fy**2)
    # Ben-Day dots: small in the lights (even a blank sky gets a screen), large in the shadows.
    dot_r = 0.2 + 0.35 * smoothstep(0.8, 0.2, lum)
    dots = smoothstep(0.05, -0.05, dist - dot_r)
    # Ink along the strong tone edges only, thickened.
    edges = sobel(gaussian_blur(lum, _px(x, 1.5)))
    width = max(1, int(round(_px(x, 1))))
    ink = F.max_pool2d(smoothstep(0.08, 0.15, edges), 2 * width + 1, stride=1, padding=width)
    out = flat * (1 - 0.45 * dots)
    return out * (1 - ink) + 0.03 * ink


PHOSPHOR = _ramp((0.0, 0.02, 0.0), (0.05, 0.30, 0.04), (0.20, 0.70, 0.12), (0.60, 1.0, 0.45), (0.92, 1.0, 0.85))


def night_vision(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Image-intensifier goggles: boosted green phosphor, sensor noise, scanlines, a round eyepiece."""
    n, _, h, w = x.shape
    g = luma(gaussian_blur(x, _px(x, 0.8)))
    g = (g * 1.7 + 0.04).clamp(0, 1) ** 0.8
    noise = gaussian_blur(_frame_noise(seed, (n, 1, h, w)), _px(x, 0.6)) * 0.09
    g = (g + noise).clamp(0, 1)
    _, yy = _screen_coords(x)
    line = max(2, int(round(_px(x, 2))))
    scan = 1 - 0.25 * (torch.remainder(yy, line) < line / 2).to(x.dtype)
    eyepiece = smoothstep(1.02, 0.9, _radius(x)) * (1 - 0.45 * _radius(x) ** 2)
    return apply_lut(g[:, 0], PHOSPHOR) * scan * eyepiece


class Look(NamedTuple):
    filter: LookFn
    captions: tuple[str, ...]


LOOKS: dict[str, Look] = {
    "pencil_sketch": Look(pencil_sketch, (
        "pencil sketch", "a graphite pencil drawing", "sketched in pencil", "a hand-drawn pencil sketch",
        "black and white pencil drawing on paper", "pencil art with cross-hatching",
        "drawn with a pencil on white paper",
    )),
    "pixel_art": Look(pixel_art, (
        "pixel art", "retro 8-bit pixel art", "a pixelated video game style", "16-color pixel art",
        "blocky low-resolution pixels", "8-bit video game graphics",
    )),
    "thermal": Look(thermal, (
        "thermal camera", "infrared thermal imaging", "a heat map from a thermal camera",
        "seen through a thermal imager", "thermal vision in an ironbow palette", "heat signature footage",
    )),
    "neon_edges": Look(neon_edges, (
        "neon edges", "glowing neon outlines", "neon lines on a black background",
        "a glowing neon outline drawing", "edges lit up in neon", "synthwave neon glow edges",
    )),
    "watercolor": Look(watercolor, (
        "watercolor painting", "a soft watercolor", "painted in watercolors", "a watercolor wash on paper",
        "aquarelle watercolor painting", "loose watercolor art",
    )),
    "vintage_sepia": Look(vintage_sepia, (
        "vintage sepia", "an old sepia photograph", "sepia toned vintage film", "old film footage in sepia",
        "a faded antique sepia photo", "1920s vintage film, sepia tone",
    )),
    "comic": Look(comic, (
        "comic book style", "a comic book panel", "a comic with bold ink outlines",
        "pop art comic with halftone dots", "cel-shaded comic cartoon", "comic book illustration",
    )),
    "night_vision": Look(night_vision, (
        "night vision", "night vision footage", "seen through green night vision goggles",
        "a military night vision camera", "image intensifier night vision", "green phosphor night vision",
    )),
}  # fmt: skip

SOURCE_CAPTIONS = (
    "the original video",
    "plain unfiltered video",
    "natural colors, no filter",
    "unedited footage",
)


def prompt_for(look: str) -> str:
    """The look's name as its captions first give it ("thermal camera", "comic book style")."""
    return LOOKS[look].captions[0]


def stylize(frames: np.ndarray, look: str, seed: int = 0) -> np.ndarray:
    """One look applied to uint8 frames (T, H, W, 3) -> uint8 (T, H, W, 3)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    return to_uint8(LOOKS[look].filter(x, seed))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# -------------------------------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    index: int  # position in the stream of seed `seed`; the clip is a function of (seed, index) only
    seed: int
    source: np.ndarray  # uint8 (T, H, W, 3)
    styled: dict[str, np.ndarray]  # look -> uint8 (T, H, W, 3), same motion as `source`
    subject: str  # what the clip shows ("a tabby cat with a red star moving across")
    motion: str  # how the camera moves ("the camera pans left")
    background: str  # which picture or procedural scene
    fps: int
    look: str | None  # one look drawn for this clip (the per-look sample view); None when `styled` is empty
    caption: str  # one caption drawn for `look` (for the source when `look` is None)
    look_seeds: dict[str, int] = field(default_factory=dict)  # the seed each look's filter got

    def captions(self, look: str | None) -> list[str]:
        """Every caption of this clip in `look` (None: the plain source clip)."""
        if look is None:
            return [f"a video of {self.subject}", f"{self.subject}, {self.motion}", *SOURCE_CAPTIONS]
        phrases = LOOKS[look].captions
        return [*phrases, f"{self.subject}, {phrases[0]}", f"{phrases[1]} of {self.subject}"]

    @property
    def target(self) -> np.ndarray:
        """The clip in its drawn look (the source itself when no look was rendered)."""
        return self.source if self.look is None else self.styled[self.look]


class Pair(NamedTuple):
    """The video-to-video view: a source clip and the same clip, same motion, in one look."""

    source: np.ndarray  # uint8 (T, H, W, 3)
    target: np.ndarray  # uint8 (T, H, W, 3)
    look: str
    caption: str
    index: int  # the clip it came from


def make_clip(
    seed: int,
    index: int,
    num_frames: int = 17,
    size: tuple[int, int] = (128, 128),
    fps: int = 16,
    looks: Sequence[str] | None = None,
    pictures: tuple[str, ...] | None = None,
    picture_share: float = 0.55,
) -> Clip:
    """Clip `index` of the stream of `seed`: a pure function of its arguments (`pictures`, `picture_share`: the
    background pool, see vidfx.data.scenes.render_background)."""
    names = list(LOOKS) if looks is None else list(looks)
    rng = np.random.default_rng([seed, index])
    src = render_source_clip(rng, num_frames, size, pictures, picture_share)
    look_seeds = {name: int(rng.integers(2**31 - 1)) for name in LOOKS}  # every look, so subsets agree
    styled = {name: to_uint8(LOOKS[name].filter(src.frames, look_seeds[name])) for name in names}
    look = names[int(rng.integers(len(names)))] if names else None
    clip = Clip(index=index, seed=seed, source=to_uint8(src.frames), styled=styled, subject=src.subject,
                motion=src.motion, background=src.background, fps=fps, look=look, caption="",
                look_seeds={n: look_seeds[n] for n in names})  # fmt: skip
    options = clip.captions(look)
    return replace(clip, caption=options[int(rng.integers(len(options)))])


def iter_clips(
    seed: int,
    num_frames: int = 17,
    size: tuple[int, int] = (128, 128),
    fps: int = 16,
    looks: Sequence[str] | None = None,
    start: int = 0,
    num_clips: int | None = None,
) -> Iterator[Clip]:
    """Clips `start`, `start + 1`, ... of the stream of `seed` (endless when `num_clips` is None)."""
    index = start
    while num_clips is None or index < start + num_clips:
        yield make_clip(seed, index, num_frames, size, fps, looks)
        index += 1


def iter_pairs(
    seed: int,
    num_frames: int = 17,
    size: tuple[int, int] = (128, 128),
    fps: int = 16,
    looks: Sequence[str] | None = None,
    num_clips: int | None = None,
) -> Iterator[Pair]:
    """For each clip, (source, the same clip in each look), with a caption drawn per pair."""
    for clip in iter_clips(seed, num_frames, size, fps, looks, num_clips=num_clips):
        rng = np.random.default_rng([seed, clip.index, 1])
        for look in clip.styled:
            options = clip.captions(look)
            yield Pair(clip.source, clip.styled[look], look, options[int(rng.integers(len(options)))], clip.index)


# ------------------------------------------------------------------------------------------------ dataset

MANIFEST = "captions.jsonl"


def write_video(path: str | Path, frames: np.ndarray, fps: int, crf: int = 18, pix_fmt: str = "yuv444p") -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4. 4:4:4 by default: at 128 pixels, 4:2:0 chroma smears the thin
    coloured lines of neon edges and comic dots (mean error about 1.6x higher); pass "yuv420p" (even H and W)
    for files that browsers play."""
    from vidfx.offline import VideoWriter

    with VideoWriter(
        path, frames.shape[1:3], Fraction(fps), crf=crf, pix_fmt=pix_fmt, options={"preset": "veryfast"}
    ) as w:
        w.stream.codec_context.thread_count = 1  # tiny frames: threads cost more than they save
        w.write(frames)


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3)."""
    from vidfx.offline import read_video as read_all

    return read_all(path)


@dataclass(frozen=True)
class DatasetInfo:
    num_clips: int
    seed: int
    num_frames: int
    size: tuple[int, int]
    fps: int
    looks: tuple[str, ...]
    manifest: Path
    seconds: float


def write_dataset(
    folder: str | Path,
    num_clips: int,
    seed: int = 0,
    num_frames: int = 17,
    size: tuple[int, int] = (128, 128),
    fps: int = 16,
    looks: Sequence[str] | None = None,
    looks_per_clip: int | None = None,
    crf: int = 18,
    pix_fmt: str = "yuv444p",
    workers: int = 2,
    progress: bool = True,
    real_imagery: bool = False,
) -> DatasetInfo:
    """Writes `clips/NNNNNN_source.mp4` and `clips/NNNNNN_<look>.mp4` for each clip, and `captions.jsonl`.

    Each manifest line: {"file", "captions", "look" (null for sources), "clip", "source" (the clip's source
    file, so styled lines pair up with theirs), "subject", "motion"}. With `looks_per_clip`, each clip gets
    that many looks drawn from its own seed instead of all of them. With `real_imagery`, backgrounds are
    mostly (75%) pictures, drawn from a pool with the real photographs of Debian packages (`real_pictures`);
    dataset.json lists every picture of the pool with its package, version and licence ("pictures").
    """
    from vidfx.data.scenes import PICTURES, picture_sources, real_pictures

    pictures = real_pictures() if real_imagery else None
    picture_share = 0.75 if real_imagery else 0.55
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    names = list(LOOKS) if looks is None else list(looks)
    folder = Path(folder)
    (folder / "clips").mkdir(parents=True, exist_ok=True)

    def render(index: int) -> list[dict]:
        chosen = names
        if looks_per_clip is not None and looks_per_clip < len(names):
            pick = np.random.default_rng([seed, index, 2]).choice(len(names), looks_per_clip, replace=False)
            chosen = [names[i] for i in sorted(pick)]
        clip = make_clip(seed, index, num_frames, size, fps, chosen, pictures, picture_share)
        source_file = f"clips/{index:06d}_source.mp4"
        records = []
        for look in [None, *chosen]:
            file = source_file if look is None else f"clips/{index:06d}_{look}.mp4"
            write_video(folder / file, clip.source if look is None else clip.styled[look], fps, crf, pix_fmt)
            records.append(
                {
                    "file": file,
                    "captions": clip.captions(look),
                    "look": look,
                    "clip": index,
                    "source": source_file,
                    "subject": clip.subject,
                    "motion": clip.motion,
                    "background": clip.background,
                }
            )
        return records

    t0 = time.perf_counter()
    # Threads, not processes: torch ops and the H.264 encoder release the GIL, and nothing is pickled. Each op
    # is tiny, so torch's own intra-op threads would only spin against the workers: one each, restored after.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with (
            ThreadPoolExecutor(max(1, workers)) as pool,
            open(folder / MANIFEST, "w") as manifest,
            tqdm(total=num_clips, desc="clips", unit="clip", disable=not progress) as bar,
        ):
            for records in pool.map(render, range(num_clips)):
                manifest.writelines(json.dumps(r) + "\n" for r in records)
                bar.update(1)
    finally:
        torch.set_num_threads(torch_threads)
    seconds = time.perf_counter() - t0
    info = {
        "num_clips": num_clips,
        "seed": seed,
        "num_frames": num_frames,
        "size": list(size),
        "fps": fps,
        "looks": names,
        "looks_per_clip": looks_per_clip,
        "crf": crf,
        "pix_fmt": pix_fmt,
        "real_imagery": real_imagery,
        "picture_share": picture_share,
        "pictures": picture_sources(pictures or tuple(PICTURES)),
    }
    (folder / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return DatasetInfo(num_clips, seed, num_frames, tuple(size), fps, tuple(names), folder / MANIFEST, seconds)


def read_manifest(folder: str | Path) -> list[dict]:
    """The records of `captions.jsonl`, in file order."""
    with open(Path(folder) / MANIFEST) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class DatasetPair(NamedTuple):
    source: Path  # the plain clip
    target: Path  # the same clip in `look`
    look: str
    captions: list[str]
    clip: int


def dataset_pairs(folder: str | Path) -> list[DatasetPair]:
    """The video-to-video view of a written dataset: one entry per (clip, look)."""
    folder = Path(folder)
    return [
        DatasetPair(folder / r["source"], folder / r["file"], r["look"], r["captions"], r["clip"])
        for r in read_manifest(folder)
        if r["look"] is not None
    ]


# ---------------------------------------------------------------------------------------------- contact sheet


def contact_sheet(
    path: str | Path,
    seed: int = 0,
    num_clips: int = 4,
    size: tuple[int, int] = (128, 128),
    num_frames: int = 17,
    indices: Sequence[int] | None = None,
    dpi: int = 100,
    looks: Sequence[str] | None = None,
) -> Path:
    """A PNG grid for people to look at: one row per clip (its middle frame), the source then each look
    (default: all). Rows are clips `indices` of the stream of `seed` (default: the first `num_clips`)."""
    from vidfx.plots import save_image_grid

    indices = list(range(num_clips)) if indices is None else list(indices)
    mid = num_frames // 2
    rows = []
    for i in indices:
        clip = make_clip(seed, i, num_frames, size, looks=looks)
        styled = [(name.replace("_", " "), frames[mid]) for name, frames in clip.styled.items()]
        cells = [("source", clip.source[mid]), *styled]
        rows.append((f"clip {clip.index}", cells))
    return save_image_grid(path, rows, title=f"vidfx looks: seed {seed}, frame {mid} of {num_frames}", dpi=dpi)
