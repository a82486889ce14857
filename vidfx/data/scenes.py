"""Source clips rendered on this machine: a still picture moved by a camera path, with objects crossing it.

Pictures come only from files that ship inside installed wheels (scikit-image's bundled `skimage/data` files,
matplotlib's `mpl-data/sample_data`) and, with `real_pictures()` (`vidfx dataset --real-imagery`), real
photographs inside Debian packages (`opencv-doc`'s sample photos: streets, buildings, rooms, fruit, animals,
an aerial view), never from a download, plus procedural scenes (gradients, shapes, periodic patterns, fractal
noise). Still pictures only: real video is held out for evaluation (vidfx.data.real_footage refuses it
here). Everything is drawn from one `numpy.random.Generator`, so a clip is a pure function of its seed.

Coordinates: a frame spans [-1, 1] vertically and [-aspect, aspect] horizontally ("physical" units, so that
rotations and circles stay round); `grid_sample` wants [-1, 1] on both axes ("normalized" units).
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Picture:
    package: str  # the installed package whose wheel holds the file; "deb:NAME" for a Debian package
    path: str  # path inside that package (a Debian package's: the absolute installed path)
    subject: str  # what it shows, for captions
    kind: str  # "photo" (RGB), "gray" (kept gray), "texture" (gray, tinted), "map" (elevation grid)


# Only files present in the wheels themselves (skimage.data fetches the others with pooch: not used). Left
# out on purpose: hubble_deep_field (nearly black: most looks barely change it, and its source already reads
# as neon), page/text (tiny), the chessboards (too plain).
PICTURES: dict[str, Picture] = {
    "astronaut": Picture("skimage", "data/astronaut.png", "an astronaut in a spacesuit", "photo"),
    "chelsea": Picture("skimage", "data/chelsea.png", "a tabby cat", "photo"),
    "coffee": Picture("skimage", "data/coffee.png", "a cup of coffee", "photo"),
    "rocket": Picture("skimage", "data/rocket.jpg", "a rocket on a launch pad", "photo"),
    "motorcycle": Picture("skimage", "data/motorcycle_left.png", "a motorcycle", "photo"),
    "retina": Picture("skimage", "data/retina.jpg", "the retina of an eye", "photo"),
    "ihc": Picture("skimage", "data/ihc.png", "stained tissue under a microscope", "photo"),
    "color_wheel": Picture("skimage", "data/color.png", "a color wheel", "photo"),
    "grace_hopper": Picture(
        "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "a portrait of a woman in uniform", "photo"
    ),
    "cameraman": Picture("skimage", "data/camera.png", "a man with a camera", "gray"),
    "moon": Picture("skimage", "data/moon.png", "the surface of the moon", "gray"),
    "coins": Picture("skimage", "data/coins.png", "old coins", "gray"),
    "brick": Picture("skimage", "data/brick.png", "a brick wall", "texture"),
    "grass": Picture("skimage", "data/grass.png", "grass", "texture"),
    "gravel": Picture("skimage", "data/gravel.png", "gravel", "texture"),
    "jacksboro": Picture("matplotlib", "mpl-data/sample_data/jacksboro_fault_dem.npz", "a relief map of hills", "map"),
    "topobathy": Picture("matplotlib", "mpl-data/sample_data/topobathy.npz", "a topographic map", "map"),
}

# Real photographs from Debian's opencv-doc (`scripts/setup.sh --data`), added to the pool by `real_pictures`.
_OPENCV = "/usr/share/doc/opencv-doc/examples/data/"
DEBIAN_PICTURES: dict[str, Picture] = {
    name: Picture("deb:opencv-doc", _OPENCV + file, subject, kind)
    for name, file, subject, kind in (
        ("fruits", "fruits.jpg", "fruit on a table", "photo"),
        ("baboon", "baboon.jpg", "the face of a baboon", "photo"),
        ("building", "building.jpg", "a modern building behind trees", "photo"),
        ("palace", "home.jpg", "an ornate yellow building under a blue sky", "photo"),
        ("football", "messi5.jpg", "a football player on a pitch", "photo"),
        ("orange", "orange.jpg", "an orange", "photo"),
        ("apple", "apple.jpg", "an apple", "photo"),
        ("butterfly", "butterfly.jpg", "a butterfly on a flower", "photo"),
        ("squirrel", "squirrel_cls.jpg", "a squirrel", "photo"),
        ("aerial", "aero1.jpg", "an aerial view of a town", "photo"),
        ("fish", "HappyFish.jpg", "a fish", "photo"),
        ("street", "leuvenA.jpg", "an old cobbled street with brick houses", "photo"),
        ("graffiti", "graf1.png", "graffiti on a wall", "photo"),
        ("toys", "rubberwhale1.png", "toys on a table", "photo"),
        ("desk", "stuff.jpg", "a pen and small things on a desk", "photo"),
        ("notebook", "ela_original.jpg", "a notebook with an elastic band", "photo"),
        ("objects", "box_in_scene.png", "boxes and objects on a table", "gray"),
    )
}  # fmt: skip


def real_pictures() -> tuple[str, ...]:
    """The picture pool with real photographs: every `PICTURES` name and every `DEBIAN_PICTURES` one. Raises
    if a Debian picture is not installed, so a dataset never silently differs between machines."""
    missing = [p.path for p in DEBIAN_PICTURES.values() if not Path(p.path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} packaged photos are not installed (e.g. {missing[0]}): run `bash scripts/setup.sh --data`"
        )
    return (*PICTURES, *DEBIAN_PICTURES)


def picture_info(name: str) -> Picture:
    return PICTURES[name] if name in PICTURES else DEBIAN_PICTURES[name]


def picture_sources(names: tuple[str, ...]) -> list[dict]:
    """The manifest of a picture pool: every file's package, its version and licence, path and subject."""
    from importlib import metadata

    from vidfx.data.packaged import debian_package_info

    out = []
    for name in names:
        pic = picture_info(name)
        if pic.package.startswith("deb:"):
            version, licence = debian_package_info(pic.package[4:])
            package = pic.package[4:] + " (Debian)"
        else:
            dist = {"skimage": "scikit-image", "matplotlib": "matplotlib"}.get(pic.package, pic.package)
            meta = metadata.metadata(dist)
            version = meta["Version"]
            licence = meta.get("License-Expression") or meta.get("License") or "see the wheel's metadata"
            licence = licence.splitlines()[0][:120]
            package = dist + " (PyPI)"
        out.append({"name": name, "package": package, "version": version, "licence": licence, "path": pic.path,
                    "subject": pic.subject})  # fmt: skip
    return out


# Named colours, so that captions can say "a red star".
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.97, 0.88, 0.15),
    "green": (0.15, 0.70, 0.25),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.50, 0.20, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "white": (0.96, 0.96, 0.94),
    "black": (0.06, 0.06, 0.08),
}

SHAPES = ("circle", "square", "triangle", "star", "ring")


@dataclass(frozen=True)
class SourceClip:
    frames: torch.Tensor  # (T, 3, H, W) float32 in [0, 1]
    subject: str  # e.g. "a tabby cat with a red star moving across"
    motion: str  # e.g. "the camera pans left"
    background: str  # which source: a PICTURES name or "procedural:<kind>"


# ------------------------------------------------------------------------------------------------ pictures


def picture_file(name: str) -> importlib.resources.abc.Traversable | Path:
    pic = picture_info(name)
    if pic.package.startswith("deb:"):
        from vidfx.data.packaged import refuse_for_training

        refuse_for_training(pic.path)  # still pictures only: packaged video is held out for evaluation
        return Path(pic.path)
    return importlib.resources.files(pic.package).joinpath(pic.path)


@lru_cache(maxsize=len(PICTURES) + len(DEBIAN_PICTURES))
def _load_picture(name: str) -> np.ndarray:
    """The picture at full resolution, (H, W, 3) float32 in [0, 1]; maps as raw elevation in [0, 1]."""
    from PIL import Image

    pic = picture_info(name)
    with picture_file(name).open("rb") as fh:
        if pic.kind == "map":
            data = np.load(fh)
            z = np.asarray(data["elevation" if "elevation" in data.files else "topo"], dtype=np.float32)
            z = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
            return np.repeat(z[..., None], 3, axis=-1)
        img = np.asarray(Image.open(fh).convert("RGB"), dtype=np.float32) / 255.0
    return img


def _resize_crop(img: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A random crop to the aspect of `hw` (at least 70% of the largest), resized: (3, h, w)."""
    h, w = hw
    ih, iw = img.shape[:2]
    target = w / h
    ch, cw = (ih, int(round(ih * target))) if iw / ih > target else (int(round(iw / target)), iw)
    frac = rng.uniform(0.7, 1.0)
    ch, cw = max(1, int(ch * frac)), max(1, int(cw * frac))
    y0 = int(rng.integers(0, ih - ch + 1))
    x0 = int(rng.integers(0, iw - cw + 1))
    crop = torch.from_numpy(np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])).permute(2, 0, 1)[None]
    out = F.interpolate(crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0, 1)


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> torch.Tensor:
    """A matplotlib colormap as a (256, 3) float32 table."""
    import matplotlib

    return torch.from_numpy(matplotlib.colormaps[name].resampled(256)(np.arange(256))[:, :3].astype(np.float32))


def apply_lut(v: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] of shape (..., H, W) through an (N, 3) table, interpolated: (..., 3, H, W)."""
    n = lut.shape[0]
    pos = v.clamp(0, 1) * (n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    frac = (pos - lo)[..., None]
    rgb = lut[lo] * (1 - frac) + lut[lo + 1] * frac  # (..., 3)
    return rgb.movedim(-1, -3)


# --------------------------------------------------------------------------------------- procedural scenes


def _coords(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in physical units: x (h, w) in [-aspect, aspect], y (h, w) in [-1, 1]."""
    h, w = hw
    aspect = w / h
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    x = ((torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1) * aspect
    return x[None, :].expand(h, w), y[:, None].expand(h, w)


def random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.4, 1.0)) -> torch.Tensor:
    hue = rng.uniform(0, 1)
    s = rng.uniform(*sat)
    v = rng.uniform(0.45, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)
    return torch.tensor(rgb, dtype=torch.float32)


def fractal_noise(rng: np.random.Generator, hw: tuple[int, int], octaves: int = 5, base: int = 3) -> torch.Tensor:
    """Smooth value noise summed over octaves, normalized to [0, 1]: (h, w)."""
    h, w = hw
    total = torch.zeros(1, 1, h, w)
    for o in range(octaves):
        g = base * 2**o
        grid = torch.from_numpy(rng.standard_normal((g + 3, g + 3)).astype(np.float32))[None, None]
        total += F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0:1] * 0.55**o
    total = total[0, 0]
    return (total - total.min()) / (total.max() - total.min()).clamp_min(1e-6)


def _gradient(rng: np.random.Generator, hw: tuple[int, int]) -> torch.Tensor:
    x, y = _coords(hw)
    if rng.uniform() < 0.6:
        phi = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(phi) + y * math.sin(phi)
    else:
        cx, cy = rng.uniform(-0.8, 0.8, size=2)
        t = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-6)
    colors = torch.stack([random_color(rng) for _ in range(int(rng.integers(2, 4)))])  # (k, 3)
    return apply_lut(t, colors)


def _shape_mask(shape: str, x: torch.Tensor, y: torch.Tensor, radius: float, angle: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a shape of the given radius centred at the origin."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    r = torch.sqrt(u**2 + v**2)
    phi = torch.atan2(v, u)
    if shape == "circle":
        d = r - radius
    elif shape == "ring":
        d = (r - radius * 0.75).abs() - radius * 0.25
    elif shape == "square":
        d = torch.maximum(u.abs(), v.abs()) - radius * 0.8
    elif shape == "triangle":
        # Regular polygon: distance along the normal of the nearest edge.
        sector = 2 * math.pi / 3
        a = torch.remainder(phi + math.pi / 2, sector) - sector / 2
        d = r * torch.cos(a) - radius * 0.48
    elif shape == "star":
        a = torch.remainder(phi + math.pi / 2, 2 * math.pi / 5) - math.pi / 5
        d = r - radius * (1.0 - 0.6 * a.abs() / (math.pi / 5))
    else:
        raise KeyError(shape)
    pixel = 2.0 / x.shape[0]
    return (0.5 - d / pixel).clamp(0, 1)


def _shapes(rng: np.random.Generator, hw: tuple[int, int]) -> torch.Tensor:
    img = _gradient(rng, hw) * rng.uniform(0.5, 0.9) + 0.1
    x, y = _coords(hw)
    aspect = hw[1] / hw[0]
    for _ in range(int(rng.integers(5, 14))):
        cx, cy = rng.uniform(-aspect, aspect), rng.uniform(-1, 1)
        m = _shape_mask(
            SHAPES[int(rng.integers(len(SHAPES)))],
            x - cx,
            y - cy,
            rng.uniform(0.12, 0.45),
            rng.uniform(0, 6.3),
        )
        img = img * (1 - m) + random_color(rng)[:, None, None] * m
    return img


def _pattern(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[torch.Tensor, str]:
    x, y = _coords(hw)
    phi = rng.uniform(0, math.pi)
    u, v = x * math.cos(phi) + y * math.sin(phi), -x * math.sin(phi) + y * math.cos(phi)
    f = rng.uniform(4, 14)
    kind = ["stripes", "checkerboard", "rings", "waves"][int(rng.integers(4))]
    if kind == "stripes":
        t = torch.sin(u * f)
    elif kind == "checkerboard":
        t = torch.sin(u * f) * torch.sin(v * f)
    elif kind == "rings":
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        t = torch.sin(torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) * f * 1.5)
    else:
        t = torch.sin(u * f + 1.5 * torch.sin(v * f * 0.5))
    sharp = rng.uniform(1, 8)
    t = 0.5 + 0.5 * torch.tanh(t * sharp) / math.tanh(sharp)
    names = {
        "stripes": "a striped pattern",
        "checkerboard": "a checkerboard pattern",
        "rings": "concentric rings",
        "waves": "a wavy pattern",
    }
    colors = torch.stack([random_color(rng), random_color(rng)])
    return apply_lut(t, colors), names[kind]


NOISE_COLORMAPS = (
    "viridis",
    "plasma",
    "magma",
    "cividis",
    "twilight",
    "terrain",
    "ocean",
    "cubehelix",
    "Spectral",
    "coolwarm",
    "gist_earth",
    "YlGnBu",
)


def _noise(rng: np.random.Generator, hw: tuple[int, int]) -> torch.Tensor:
    t = fractal_noise(rng, hw, octaves=int(rng.integers(3, 6)), base=int(rng.integers(2, 5)))
    return apply_lut(t, colormap_lut(NOISE_COLORMAPS[int(rng.integers(len(NOISE_COLORMAPS)))]))


def render_background(
    rng: np.random.Generator, hw: tuple[int, int], pictures: tuple[str, ...] | None = None, picture_share: float = 0.55
) -> tuple[torch.Tensor, str, str]:
    """A still canvas (3, h, w) in [0, 1], its subject and its source name: with probability `picture_share` a
    picture from `pictures` (default: `PICTURES`; `real_pictures()` adds real photographs), else procedural."""
    pool = list(PICTURES) if pictures is None else list(pictures)
    u = rng.uniform()
    if u < picture_share:
        name = pool[int(rng.integers(len(pool)))]
        pic = picture_info(name)
        img = _resize_crop(_load_picture(name), hw, rng)
        if pic.kind == "texture":
            img = img * (_gradient(rng, hw) * 0.8 + 0.35)
        elif pic.kind == "map":
            lut = colormap_lut(["terrain", "gist_earth", "viridis", "cubehelix"][int(rng.integers(4))])
            img = apply_lut(img[0], lut)
        subject = f"a black and white photo of {pic.subject}" if pic.kind == "gray" else pic.subject
        return img.clamp(0, 1), subject, name
    # Plain gradients are the rarest: on them most looks have little to show.
    kinds: list[tuple[str, Callable[[np.random.Generator, tuple[int, int]], torch.Tensor], str]] = [
        ("gradient", _gradient, "a smooth color gradient"),
        ("shapes", _shapes, "colorful geometric shapes"),
        ("noise", _noise, "swirling colorful clouds"),
    ]
    if u < picture_share + 0.15 * (1 - picture_share) / 0.45:  # the procedural kinds keep their proportions
        img, subject = _pattern(rng, hw)
        return img.clamp(0, 1), subject, "procedural:pattern"
    kind, fn, subject = kinds[int(rng.choice(len(kinds), p=[0.2, 0.45, 0.35]))]
    return fn(rng, hw).clamp(0, 1), subject, f"procedural:{kind}"


# --------------------------------------------------------------------------------------------------- sprites


@lru_cache(maxsize=4)
def _sprite_picture(name: str, side: int) -> torch.Tensor:
    """Premultiplied RGBA (4, side, side) of a sprite picture from a wheel."""
    from PIL import Image

    files = {
        "horse": ("skimage", "data/horse.png"),
        "gift": ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
        "logo": ("skimage", "data/logo.png"),
    }
    package, path = files[name]
    with importlib.resources.files(package).joinpath(path).open("rb") as fh:
        img = Image.open(fh).convert("RGBA")
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    rgba = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1).clone()
    if name == "horse":  # an opaque black-on-white drawing: the dark pixels are the horse
        rgba[3] = (1 - rgba[:3].mean(0)) * (rgba[3] > 0)
    elif name == "logo":  # an opaque square: keep the round badge
        x, y = _coords((side, side))
        rgba[3] *= (0.5 - (torch.sqrt(x**2 + y**2) - 0.97) * side / 2).clamp(0, 1)
    rgba[:3] *= rgba[3]
    return rgba


def sprite(rng: np.random.Generator, side: int = 96) -> tuple[torch.Tensor, str]:
    """A random object: premultiplied RGBA (4, side, side) and its name for captions."""
    u = rng.uniform()
    if u < 0.25:
        name = ["horse", "gift", "logo"][int(rng.integers(3))]
        rgba = _sprite_picture(name, side).clone()
        if name == "horse":
            color_name = list(COLORS)[int(rng.integers(len(COLORS)))]
            rgba[:3] = torch.tensor(COLORS[color_name])[:, None, None] * rgba[3:4]
            return rgba, f"a {color_name} horse"
        return rgba, {"gift": "a gift box", "logo": "a round logo"}[name]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color_name = list(COLORS)[int(rng.integers(len(COLORS)))]
    x, y = _coords((side, side))
    alpha = _shape_mask(shape, x, y, 0.95, 0.0)
    rgb = torch.tensor(COLORS[color_name])[:, None, None].expand(3, side, side)
    # A little shading, so that sprites are not perfectly flat discs of colour.
    rgb = rgb * (1.0 - 0.25 * (x + y)[None].clamp(-1, 1) * 0.5)
    return torch.cat([rgb * alpha, alpha[None]]).clamp(0, 1), f"a {color_name} {shape}"


def _sprite_theta(center: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor, aspect: float) -> torch.Tensor:
    """Per-frame affine map from output normalized coords to sprite texture coords: (T, 2, 3)."""
    c, s = torch.cos(angle), torch.sin(angle)
    # sprite = R(-angle) (phys - center) / radius, phys = (x * aspect, y)
    m00, m01 = c * aspect / radius, s / radius
    m10, m11 = -s * aspect / radius, c / radius
    b0 = -(c * center[:, 0] + s * center[:, 1]) / radius
    b1 = -(-s * center[:, 0] + c * center[:, 1]) / radius
    return torch.stack([torch.stack([m00, m01, b0], -1), torch.stack([m10, m11, b1], -1)], 1)


def composite_sprite(frames: torch.Tensor, rgba: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    t = frames.shape[0]
    grid = F.affine_grid(theta, [t, 4, *frames.shape[-2:]], align_corners=False)
    layer = F.grid_sample(
        rgba[None].expand(t, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return frames * (1 - layer[:, 3:4]) + layer[:, :3]


# ----------------------------------------------------------------------------------------------- camera paths


def _smooth_jitter(rng: np.random.Generator, tau: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth wobble (sum of three sinusoids of random phase), deterministic and flicker-free."""
    out = np.zeros_like(tau)
    for k in range(3):
        freq = rng.uniform(1.5, 4.0) * (k + 1)
        out += np.sin(2 * math.pi * freq * tau + rng.uniform(0, 2 * math.pi)) / (k + 1)
    return amplitude * out / 1.83


@dataclass(frozen=True)
class CameraPath:
    center: np.ndarray  # (T, 2) view centre, normalized canvas units
    zoom: np.ndarray  # (T,) view half-extent as a fraction of the canvas
    angle: np.ndarray  # (T,) radians
    description: str

    def theta(self, aspect: float) -> torch.Tensor:
        """(T, 2, 3): output normalized coords -> canvas normalized coords."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        z = self.zoom
        # canvas_norm = diag(1/aspect, 1) z R diag(aspect, 1) out_norm + center
        rows = [
            np.stack([z * c, -z * s / aspect, self.center[:, 0]], -1),
            np.stack([z * s * aspect, z * c, self.center[:, 1]], -1),
        ]
        return torch.from_numpy(np.stack(rows, 1).astype(np.float32))


def camera_path(rng: np.random.Generator, num_frames: int) -> CameraPath:
    tau = np.linspace(0.0, 1.0, num_frames)
    # Ease in and out, as a camera operator would.
    ease = 0.5 - 0.5 * np.cos(math.pi * tau)
    lin = tau if rng.uniform() < 0.5 else ease
    kind = ["pan", "pan", "zoom in", "zoom out", "rotate", "shake", "still"][int(rng.integers(7))]
    center = np.zeros((num_frames, 2))
    angle = np.full(num_frames, rng.uniform(-0.15, 0.15))
    if kind == "pan":
        zoom = np.full(num_frames, rng.uniform(0.5, 0.75))
        dirs = {
            "right": (1, 0),
            "left": (-1, 0),
            "down": (0, 1),
            "up": (0, -1),
            "diagonally": (0.7 * rng.choice([-1, 1]), 0.7 * rng.choice([-1, 1])),
        }
        word = list(dirs)[int(rng.integers(len(dirs)))]
        d = np.array(dirs[word])
        reach = (1 - zoom[0]) * rng.uniform(0.6, 0.95)
        center = (lin[:, None] * 2 - 1) * reach * d[None]
        description = f"the camera pans {word}"
    elif kind in ("zoom in", "zoom out"):
        wide = rng.uniform(0.8, 0.97)
        close = wide * rng.uniform(0.45, 0.7)
        zoom = wide * (close / wide) ** (lin if kind == "zoom in" else 1 - lin)
        center = np.tile(rng.uniform(-1, 1, size=2) * (1 - wide), (num_frames, 1))
        description = f"the camera zooms {kind.split()[1]}"
    elif kind == "rotate":
        zoom = np.full(num_frames, rng.uniform(0.5, 0.68))
        sweep = rng.uniform(0.2, 0.6) * rng.choice([-1, 1])
        angle = angle + sweep * lin
        center = np.tile(rng.uniform(-1, 1, size=2) * (1 - zoom[0] * 1.42), (num_frames, 1))
        description = "the camera rotates slowly"
    elif kind == "shake":
        zoom = np.full(num_frames, rng.uniform(0.6, 0.8))
        description = "a shaky handheld camera"
    else:
        zoom = np.full(num_frames, rng.uniform(0.6, 0.9))
        center = np.tile(rng.uniform(-1, 1, size=2) * (1 - zoom[0]), (num_frames, 1))
        description = "a still camera"
    if kind == "shake" or (kind != "still" and rng.uniform() < 0.25):
        amp = rng.uniform(0.015, 0.05)
        center = center + np.stack([_smooth_jitter(rng, tau, amp), _smooth_jitter(rng, tau, amp)], -1)
        angle = angle + _smooth_jitter(rng, tau, rng.uniform(0.01, 0.04))
        if kind != "shake":
            description += " with camera shake"
    return CameraPath(center=center, zoom=zoom, angle=angle, description=description)


# ----------------------------------------------------------------------------------------------------- clips


def render_source_clip(
    rng: np.random.Generator,
    num_frames: int,
    size: tuple[int, int],
    pictures: tuple[str, ...] | None = None,
    picture_share: float = 0.55,
) -> SourceClip:
    """One source clip: background moved by a camera path, 0-3 objects crossing the frame (`render_background`
    for `pictures` and `picture_share`)."""
    h, w = size
    aspect = w / h
    path = camera_path(rng, num_frames)
    # Canvas resolution: about one canvas pixel per output pixel at the clip's typical zoom.
    ref = float(np.exp(np.log(path.zoom).mean()))
    canvas_hw = (max(8, int(round(h / ref))), max(8, int(round(w / ref))))
    background, subject, source = render_background(rng, canvas_hw, pictures, picture_share)
    theta = path.theta(aspect)
    grid = F.affine_grid(theta, [num_frames, 3, h, w], align_corners=False)
    frames = F.grid_sample(
        background[None].expand(num_frames, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="reflection",
        align_corners=False,
    )
    n_sprites = int(rng.choice([0, 1, 1, 2, 3])) if path.description != "a still camera" else int(rng.integers(1, 4))
    names = []
    tau = torch.linspace(0, 1, num_frames)
    for _ in range(n_sprites):
        rgba, name = sprite(rng)
        radius = rng.uniform(0.18, 0.45)
        speed = rng.uniform(0.8, 2.6)  # physical units travelled over the clip
        heading = rng.uniform(0, 2 * math.pi)
        mid = np.array([rng.uniform(-0.5, 0.5) * aspect, rng.uniform(-0.5, 0.5)])
        d = np.array([math.cos(heading), math.sin(heading)])
        start, end = torch.tensor(mid - d * speed / 2), torch.tensor(mid + d * speed / 2)
        center = (start[None] * (1 - tau[:, None]) + end[None] * tau[:, None]).float()
        bob = torch.sin(2 * math.pi * (tau * rng.uniform(0.5, 2) + rng.uniform()))[:, None]
        center = center + bob * rng.uniform(0, 0.08) * torch.tensor([-d[1], d[0]], dtype=torch.float32)
        spin = float(rng.uniform(-1.5, 1.5)) * tau + float(rng.uniform(-0.3, 0.3))
        theta_s = _sprite_theta(center, torch.full((num_frames,), radius), spin, aspect)
        frames = composite_sprite(frames, rgba, theta_s)
        names.append(name)
    if names:
        subject += " with " + " and ".join(names) + (" moving across" if len(names) == 1 else " moving")
    return SourceClip(frames=frames.clamp(0, 1), subject=subject, motion=path.description, background=source)
