"""Frames <-> model tensors: the one place where pixels change representation.

Pixels outside: `av.VideoFrame` (any format PyAV can convert) or numpy uint8 arrays in one of three layouts,

    rgb24, bgr24   (H, W, 3)          packed, channel order as named
    yuv420p        (H * 3 // 2, W)    PyAV's planar layout: Y rows, then U and V (H/2 x W/2 each); H, W even

Pixels inside: one clip tensor (1, 3, T, h, w), RGB in [-1, 1] (0 -> -1, 255 -> 1), the DiT/VAE convention.
uint8 -> tensor -> uint8 is exact at equal size: u / 127.5 - 1 and back (x + 1) * 127.5 rounded returns u.
YUV <-> RGB goes through libswscale (PyAV), BT.601 limited range, as every encoder/decoder here does.

Size policy between the camera's (H, W) and the model's (h, w), `FrameGeometry.fit`:

* `aspect` (default): the model's resolution follows the camera: the configured model size's short side,
  the long side the camera's aspect rounded up to a multiple of what the autoencoder × patch size needs
  (`aspect_model_size`: 128 px → 128×176 for a 640×480 camera, 256 px → 256×480 for 16:9). The whole camera
  frame is resized into the model frame's largest centred box of the camera's aspect (the configured short
  side; 256×341 of 256×352 for 4:3) and the few columns or rows beside it repeat its edge; back, that box is
  cut out and resized to the camera's size — the exact inverse at one scale on both axes, so output pixels
  sit where input pixels were, the stylised frame covers the camera's field of view, and nothing is
  stretched. Why not stretch the frame to the rounded size: that rescales one axis by up to 3%, and a look's
  fine screen textures (halftone dots, hatching: periodic in the camera's pixels) drift by whole periods
  across the frame — a model rendering comic perfectly then scores 0.48 luma SSIM to it on a 640×480
  camera, 0.88 in the box. A pipeline picks the size per stream from its first frame (the DiT takes any
  latent grid).
* `cover`: centre-crop the camera frame to the model's aspect ratio, resize to (h, w). Nothing is
  distorted, the model sees a full frame; the camera's edges along the longer axis are not seen. Back: the
  model frame is centre-cropped to the camera's aspect and resized to (H, W) — no bars, no distortion, so the
  output is the cropped view enlarged by the ratio of the two aspects (1.0 when they match, 1.026 for a
  1280x720 camera on a 832x480 model).
* `contain`: resize the whole camera frame to fit inside (h, w), black bars on the rest. Back: that inner box
  is cut out and resized to (H, W) — the exact geometric inverse, so output pixels sit where input pixels
  were, at the price of bars (wasted tokens) in the model's view.
* `stretch`: resize both ways ignoring aspect: exact inverse, full frame, distorted shapes in the model.

Resizing is bilinear on whole batches with torch (antialiased when shrinking), on the tensor's device: on the
CPU in uint8 (torch's channels-last uint8 kernel, ~10x faster than fp32 there; at most one level of extra
rounding), on CUDA in float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import av
import numpy as np
import torch
import torch.nn.functional as F

PixelFormat = Literal["rgb24", "bgr24", "yuv420p"]
PIXEL_FORMATS: tuple[str, ...] = ("rgb24", "bgr24", "yuv420p")


class Fit(StrEnum):
    ASPECT = "aspect"
    COVER = "cover"
    CONTAIN = "contain"
    STRETCH = "stretch"


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: rows top..top+height, columns left..left+width."""

    top: int
    left: int
    height: int
    width: int


def _full(size: tuple[int, int]) -> Box:
    return Box(0, 0, size[0], size[1])


def _centered(outer: tuple[int, int], height: int, width: int) -> Box:
    return Box((outer[0] - height) // 2, (outer[1] - width) // 2, height, width)


def _aspect_crop(size: tuple[int, int], aspect_of: tuple[int, int]) -> Box:
    """Largest centred box of `size` with the aspect ratio of `aspect_of` (both (height, width))."""
    (h, w), (ah, aw) = size, aspect_of
    if w * ah > aw * h:  # wider than the target aspect: trim the sides
        return _centered(size, h, max(1, min(w, round(h * aw / ah))))
    return _centered(size, max(1, min(h, round(w * ah / aw))), w)


def aspect_model_size(camera: tuple[int, int], short_side: int, multiple: int) -> tuple[int, int]:
    """The model resolution (h, w) for a camera (H, W) under `aspect`: the short side `short_side` (rounded
    down to `multiple`, at least one multiple), the long side the camera's aspect times that, rounded up to a
    multiple (so the camera's box at the full short side fits; at least the short side). A square camera gets a
    square model."""
    if short_side < 1 or multiple < 1 or min(camera) < 1:
        raise ValueError(
            f"need a camera >= 1 px, short_side >= 1 and multiple >= 1, got {camera}, {short_side}, {multiple}"
        )
    short = max(multiple, short_side // multiple * multiple)
    (height, width) = camera
    exact = short * max(height, width) / min(height, width)
    long = max(short, math.ceil(round(exact, 6) / multiple) * multiple)  # round(): 4:3 × 96 is 128, not 128.0…1
    return (short, long) if height <= width else (long, short)


@dataclass(frozen=True)
class FrameGeometry:
    """How camera-sized frames map onto model-sized tensors and back; see the module docstring."""

    camera: tuple[int, int]  # (height, width)
    model: tuple[int, int]  # (height, width); under `aspect`, from `aspect_model_size` (or `for_camera`)
    fit: Fit = Fit.COVER

    @classmethod
    def for_camera(
        cls, camera: tuple[int, int], model: tuple[int, int], fit: Fit | str, multiple: int = 1
    ) -> FrameGeometry:
        """The geometry of a camera on a model configured at `model` (h, w): under `aspect` the model size is
        `aspect_model_size(camera, min(model), multiple)`, otherwise `model` itself."""
        fit = Fit(fit)
        if fit is Fit.ASPECT:
            model = aspect_model_size(camera, min(model), multiple)
        return cls(camera, model, fit)

    def __post_init__(self) -> None:
        for name, size in (("camera", self.camera), ("model", self.model)):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"FrameGeometry.{name} must be (height, width) >= 1, got {size}")
        object.__setattr__(self, "fit", Fit(self.fit))

    def forward_boxes(self) -> tuple[Box, Box]:
        """(region of the camera frame that is used, where it lands in the model frame)."""
        if self.fit is Fit.COVER:
            return _aspect_crop(self.camera, self.model), _full(self.model)
        if self.fit in (Fit.CONTAIN, Fit.ASPECT):
            return _full(self.camera), _aspect_crop(self.model, self.camera)
        return _full(self.camera), _full(self.model)  # stretch: the whole frame both ways

    def backward_boxes(self) -> tuple[Box, Box]:
        """(region of the model frame that is shown, where it lands in the camera-sized output).

        For `cover`, `contain` and `aspect` that region is the model frame's largest centred box of the camera's
        aspect: under `contain` and `aspect` it is exactly the box the camera frame was drawn into.
        """
        if self.fit is Fit.STRETCH:
            return _full(self.model), _full(self.camera)
        return _aspect_crop(self.model, self.camera), _full(self.camera)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) camera-sized pixels -> (N, 3, h, w): floats in [-1, 1] or uint8; beside the camera's
        box, bars (-1 or 0) under `contain`, its edge repeated under `aspect`."""
        return _remap(x, self.camera, self.model, *self.forward_boxes(), edge=self.fit is Fit.ASPECT)

    @property
    def box(self) -> Box:
        """Where the camera frame lies in the model frame (the whole of it under `cover` and `stretch`)."""
        return self.forward_boxes()[1]

    def to_camera(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) model-sized pixels (floats in [-1, 1] or uint8) -> (N, 3, H, W)."""
        return _remap(x, self.model, self.camera, *self.backward_boxes())


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    shrink = height < x.shape[-2] or width < x.shape[-1]
    if x.dtype == torch.uint8:
        # torch's uint8 bilinear(+antialias) kernel wants channels-last: ~10x faster than fp32 on the CPU.
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def _remap(
    x: torch.Tensor, src_size: tuple[int, int], dst_size: tuple[int, int], src: Box, dst: Box, edge: bool = False
) -> torch.Tensor:
    """`src` of x resized into `dst` of a `dst_size` frame; the rest black (-1 or 0), or with `edge` the nearest
    pixel of `dst`'s edge."""
    if tuple(x.shape[-2:]) != src_size:
        raise ValueError(f"expected frames of size {src_size}, got {tuple(x.shape[-2:])}")
    part = _resize(x[..., src.top : src.top + src.height, src.left : src.left + src.width], dst.height, dst.width)
    if (dst.height, dst.width) == dst_size:
        return part
    if edge:  # index clamping, not F.pad(mode="replicate"): that has no uint8 kernel
        rows = (torch.arange(dst_size[0], device=x.device) - dst.top).clamp(0, dst.height - 1)
        cols = (torch.arange(dst_size[1], device=x.device) - dst.left).clamp(0, dst.width - 1)
        return part.index_select(-2, rows).index_select(-1, cols)
    black = 0 if x.dtype == torch.uint8 else -1.0
    out = x.new_full((*x.shape[:-2], *dst_size), black)
    out[..., dst.top : dst.top + dst.height, dst.left : dst.left + dst.width] = part
    return out


# -- single frames <-> RGB arrays ----------------------------------------------------------------------------


def _check_format(pixel_format: str) -> None:
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")


def to_rgb(frame: av.VideoFrame | np.ndarray, pixel_format: PixelFormat = "rgb24") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an av frame (any format) or an array laid out as `pixel_format`."""
    if isinstance(frame, av.VideoFrame):
        return frame.to_ndarray(format="rgb24")
    _check_format(pixel_format)
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"expected an av.VideoFrame or a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{pixel_format} frames must be uint8 arrays, got {frame.dtype}")
    if pixel_format == "yuv420p":
        if frame.ndim != 2 or frame.shape[0] % 3 or frame.shape[0] // 3 % 2 or frame.shape[1] % 2:
            raise ValueError(f"yuv420p arrays are (H*3/2, W) with H, W even, got shape {frame.shape}")
        return av.VideoFrame.from_ndarray(frame, format="yuv420p").to_ndarray(format="rgb24")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{pixel_format} arrays are (H, W, 3), got shape {frame.shape}")
    return frame[..., ::-1] if pixel_format == "bgr24" else frame


def from_rgb(rgb: np.ndarray, pixel_format: PixelFormat = "rgb24") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array in `pixel_format`'s layout (yuv420p: (H*3/2, W), needs H and W even)."""
    _check_format(pixel_format)
    if pixel_format == "rgb24":
        return rgb
    if pixel_format == "bgr24":
        return np.ascontiguousarray(rgb[..., ::-1])
    return _yuv_frame(rgb).to_ndarray()


def _yuv_frame(rgb: np.ndarray) -> av.VideoFrame:
    if rgb.shape[0] % 2 or rgb.shape[1] % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {rgb.shape[1]}x{rgb.shape[0]}")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")


# -- clips <-> model tensors ---------------------------------------------------------------------------------


def frames_to_tensor(
    frames: Sequence[av.VideoFrame | np.ndarray] | np.ndarray,
    pixel_format: PixelFormat = "rgb24",
    geometry: FrameGeometry | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    pinned: bool = False,
) -> torch.Tensor:
    """T frames -> (1, 3, T, h, w) in [-1, 1] on `device`.

    `frames`: av frames, arrays in `pixel_format`, or one (T, H, W, 3) rgb24/bgr24 array. With `geometry`
    they must be camera-sized and come out model-sized; without it the size is kept. uint8 pixels travel to
    the device and are converted and resized there; `pinned` (CUDA only): through pinned host memory.
    """
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"pass a list of frames or one (T, H, W, 3) array, got an array of shape {frames.shape}")
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.shape[-1] != 3 or pixel_format == "yuv420p":
            raise ValueError(
                f"a stacked clip must be (T, H, W, 3) uint8 rgb24/bgr24, got {frames.shape} {frames.dtype}"
            )
        _check_format(pixel_format)
        clip = frames[..., ::-1] if pixel_format == "bgr24" else frames
    else:
        if len(frames) == 0:
            raise ValueError("frames_to_tensor needs at least one frame")
        rgb = [to_rgb(f, pixel_format) for f in frames]
        if any(r.shape != rgb[0].shape for r in rgb):
            raise ValueError(f"frames differ in size: {sorted({r.shape[:2] for r in rgb})}")
        clip = np.stack(rgb)
    if geometry is not None and clip.shape[1:3] != geometry.camera:
        raise ValueError(f"frames are {clip.shape[1:3]} (H, W) but the geometry expects camera {geometry.camera}")
    u8 = to_device(torch.from_numpy(np.ascontiguousarray(clip)), torch.device(device), pinned)
    u8 = u8.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    if geometry is not None and _resize_in_uint8(u8.device):
        u8 = geometry.to_model(u8)
    # Reorder while still uint8 (a quarter of the bytes), then convert once, in place, on contiguous memory.
    x = u8.transpose(0, 1).contiguous().to(torch.float32).div_(127.5).sub_(1.0)  # (3, T, H|h, W|w)
    if geometry is not None and not _resize_in_uint8(u8.device):
        x = geometry.to_model(x.transpose(0, 1)).transpose(0, 1)
    return x.unsqueeze(0).contiguous().to(dtype)  # (1, 3, T, h, w)


def to_device(host: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    """A host tensor on `device`. `pinned` and CUDA: staged in pinned memory (PyTorch's caching host allocator
    reuses the block, and keeps it until the copy is done) and copied asynchronously, so the copy runs at full
    bus speed and the host thread does not wait for it."""
    if pinned and device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def to_host(x: torch.Tensor, pinned: bool) -> torch.Tensor:
    """A device tensor on the host; `pinned` and CUDA: copied into pinned memory (one wait for the copy)."""
    if pinned and x.device.type == "cuda":
        out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        out.copy_(x, non_blocking=True)
        torch.cuda.current_stream(x.device).synchronize()
        return out
    return x.cpu()


def _resize_in_uint8(device: torch.device) -> bool:
    # CPU: resize the uint8 pixels (fast kernel, at most half a level of extra rounding). CUDA has no uint8
    # interpolation and float is cheap there: convert first.
    return device.type == "cpu"


def tensor_to_rgb(x: torch.Tensor, geometry: FrameGeometry | None = None, pinned: bool = False) -> np.ndarray:
    """(1, 3, T, h, w) in [-1, 1] -> (T, H, W, 3) uint8 RGB on the CPU (camera-sized with `geometry`);
    `pinned` (CUDA only): through pinned host memory."""
    return to_host(clip_to_rgb(x, geometry), pinned).numpy()


def clip_to_rgb(x: torch.Tensor, geometry: FrameGeometry | None = None) -> torch.Tensor:
    """(1, 3, T, h, w) in [-1, 1] -> (T, H, W, 3) uint8 RGB on x's device (camera-sized with `geometry`): what
    `tensor_to_rgb` copies to the host."""
    if x.ndim != 5 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected a (1, 3, T, h, w) clip tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"clip tensors are floating point in [-1, 1], got {x.dtype}")
    if geometry is not None and tuple(x.shape[-2:]) != geometry.model:
        raise ValueError(f"tensor is {tuple(x.shape[-2:])} (h, w) but the geometry expects {geometry.model}")
    frames = x[0].float()  # (3, T, h, w)
    if geometry is not None and not _resize_in_uint8(frames.device):
        frames = geometry.to_camera(frames.transpose(0, 1)).transpose(0, 1)
    # uint8 on the device before the copy to the host: a quarter of the bytes of fp32.
    u8 = frames.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).transpose(0, 1)  # (T, 3, h, w)
    if geometry is not None and _resize_in_uint8(frames.device):
        u8 = geometry.to_camera(u8)
    return u8.permute(0, 2, 3, 1).contiguous()


def tensor_to_arrays(
    x: torch.Tensor, pixel_format: PixelFormat = "rgb24", geometry: FrameGeometry | None = None
) -> list[np.ndarray]:
    """(1, 3, T, h, w) -> T uint8 arrays in `pixel_format`'s layout."""
    _check_format(pixel_format)
    return [from_rgb(f, pixel_format) for f in tensor_to_rgb(x, geometry)]


def tensor_to_frames(
    x: torch.Tensor, pixel_format: PixelFormat = "yuv420p", geometry: FrameGeometry | None = None
) -> list[av.VideoFrame]:
    """(1, 3, T, h, w) -> T av.VideoFrames in `pixel_format` (yuv420p: what video encoders take)."""
    _check_format(pixel_format)
    out = []
    for rgb in tensor_to_rgb(x, geometry):
        if pixel_format == "yuv420p":
            out.append(_yuv_frame(rgb))
        else:
            out.append(av.VideoFrame.from_ndarray(from_rgb(rgb, pixel_format), format=pixel_format))
    return out
