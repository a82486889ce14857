"""Frames <-> model tensors: exactness, channel order, YUV, the size policies, and input checks."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from vidfx.frames import (
    Box,
    Fit,
    FrameGeometry,
    frames_to_tensor,
    from_rgb,
    tensor_to_arrays,
    tensor_to_frames,
    tensor_to_rgb,
    to_rgb,
)


def _random_clip(t: int = 3, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _smooth_clip(t: int = 2, h: int = 96, w: int = 128) -> np.ndarray:
    """Low-frequency content: survives resizing and 4:2:0 chroma almost unchanged."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    frames = []
    for k in range(t):
        r = 128 + 90 * np.sin(2 * np.pi * (xx + 0.1 * k))
        g = 128 + 90 * np.cos(2 * np.pi * yy)
        b = 60 + 150 * xx * yy
        frames.append(np.stack([r, g, b], -1))
    return np.round(np.stack(frames)).astype(np.uint8)


# -- exactness and layouts -----------------------------------------------------------------------------------


def test_rgb24_round_trip_is_exact_at_model_size():
    clip = _random_clip()
    x = frames_to_tensor(list(clip))
    assert x.shape == (1, 3, 3, 32, 48) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert np.array_equal(tensor_to_rgb(x), clip)
    assert all(np.array_equal(a, b) for a, b in zip(tensor_to_arrays(x), clip, strict=True))
    # every level survives, 0 -> -1 and 255 -> 1 exactly
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    y = frames_to_tensor([levels])
    assert float(y[0, 0, 0, 0, 0]) == -1.0 and float(y[0, 0, 0, 15, 15]) == 1.0
    assert np.array_equal(tensor_to_rgb(y)[0], levels)
    # a stacked (T, H, W, 3) array and a list of frames agree
    assert torch.equal(frames_to_tensor(clip), x)


def test_channel_order_bgr24():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50  # R, G, B
    bgr = rgb[..., ::-1].copy()
    x = frames_to_tensor([bgr], "bgr24")
    assert torch.allclose(x[0, :, 0, 0, 0], torch.tensor([200, 100, 50]) / 127.5 - 1)  # channel 0 is red
    assert torch.equal(x, frames_to_tensor([rgb], "rgb24"))
    out = tensor_to_arrays(x, "bgr24")[0]
    assert np.array_equal(out, bgr) and out.flags.c_contiguous
    frame = tensor_to_frames(x, "bgr24")[0]
    assert frame.format.name == "bgr24" and np.array_equal(frame.to_ndarray(), bgr)
    assert np.array_equal(
        frames_to_tensor(_random_clip(), "bgr24")[0, 0], frames_to_tensor(_random_clip())[0, 2]
    )


def test_av_frames_in_and_out():
    clip = _random_clip(t=2)
    frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in clip]
    assert torch.equal(frames_to_tensor(frames), frames_to_tensor(clip))
    out = tensor_to_frames(frames_to_tensor(clip), "rgb24")
    assert [f.format.name for f in out] == ["rgb24", "rgb24"]
    assert all(np.array_equal(f.to_ndarray(), c) for f, c in zip(out, clip, strict=True))


def test_yuv420p_round_trip_within_codec_rounding():
    """Tolerance: 4:2:0 subsampling plus 8-bit limited-range YUV (libswscale, BT.601): on smooth content
    at most 6 levels anywhere and under 2 on average (measured: 5 and 1.6); flat colours within 2 levels
    (the 16-235 Y range cannot hit every RGB level)."""
    clip = _smooth_clip()
    yuv = [from_rgb(f, "yuv420p") for f in clip]
    assert yuv[0].shape == (96 * 3 // 2, 128) and yuv[0].dtype == np.uint8
    back = tensor_to_rgb(frames_to_tensor(yuv, "yuv420p")).astype(int)
    err = np.abs(back - clip.astype(int))
    assert err.max() <= 6 and err.mean() < 2.0, (err.max(), err.mean())
    # the same through av.VideoFrames, as a WebRTC track delivers them
    frames = tensor_to_frames(frames_to_tensor(clip), "yuv420p")
    assert [f.format.name for f in frames] == ["yuv420p"] * 2 and (frames[0].height, frames[0].width) == (
        96,
        128,
    )
    err2 = np.abs(tensor_to_rgb(frames_to_tensor(frames)).astype(int) - clip.astype(int))
    assert err2.max() <= 6 and err2.mean() < 2.0
    for colour in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        flat = np.full((8, 8, 3), colour, np.uint8)
        got = tensor_to_rgb(frames_to_tensor([from_rgb(flat, "yuv420p")], "yuv420p"))[0]
        assert np.abs(got.astype(int) - flat.astype(int)).max() <= 2, colour
    # and yuv420p is not mistaken for another layout: the planes decode to the right colour
    red = tensor_to_rgb(
        frames_to_tensor([from_rgb(np.full((8, 8, 3), (255, 0, 0), np.uint8), "yuv420p")], "yuv420p")
    )
    assert red[0, 0, 0, 0] > 250 and red[0, 0, 0, 1] < 5 and red[0, 0, 0, 2] < 5


def test_output_dtype_and_device_arguments():
    clip = _random_clip(t=1)
    x = frames_to_tensor(clip, device="cpu", dtype=torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.device.type == "cpu"
    # bf16 keeps 8 significant bits: within one level after the round trip
    assert np.abs(tensor_to_rgb(x).astype(int) - clip.astype(int)).max() <= 1


# -- size policies -------------------------------------------------------------------------------------------


def test_geometry_boxes_for_a_720p_camera_on_a_480p_model():
    cover = FrameGeometry((720, 1280), (480, 832), "cover")
    assert cover.fit is Fit.COVER
    assert cover.forward_boxes() == (Box(0, 16, 720, 1248), Box(0, 0, 480, 832))  # 1248/720 = 832/480
    assert cover.backward_boxes() == (Box(6, 0, 468, 832), Box(0, 0, 720, 1280))  # 832/468 ~ 1280/720
    contain = FrameGeometry((720, 1280), (480, 832), Fit.CONTAIN)
    assert contain.forward_boxes() == (Box(0, 0, 720, 1280), Box(6, 0, 468, 832))
    assert contain.backward_boxes() == (Box(6, 0, 468, 832), Box(0, 0, 720, 1280))
    stretch = FrameGeometry((720, 1280), (480, 832), "stretch")
    assert stretch.forward_boxes() == (Box(0, 0, 720, 1280), Box(0, 0, 480, 832))
    portrait = FrameGeometry((1280, 720), (480, 832), "cover")
    assert portrait.forward_boxes()[0] == Box(432, 0, 415, 720)  # 720 * 480/832 = 415.4 rows, centred


@pytest.mark.parametrize("fit", ["cover", "contain", "stretch"])
def test_resize_round_trip_shapes_and_content(fit):
    clip = _smooth_clip(t=2, h=96, w=128)
    geo = FrameGeometry((96, 128), (48, 64), fit)  # same aspect: every policy is a plain 2x resize
    x = frames_to_tensor(clip, geometry=geo)
    assert x.shape == (1, 3, 2, 48, 64)
    back = tensor_to_rgb(x, geo)
    assert back.shape == (2, 96, 128, 3) and back.dtype == np.uint8
    err = np.abs(back.astype(int) - clip.astype(int))
    assert err.mean() < 2.0 and err.max() <= 12, (err.mean(), err.max())


def test_shrinking_is_antialiased():
    """1-pixel white stripes every 3 columns, shrunk 3x: a box filter gives 255/3 everywhere, whereas point
    sampling (bilinear without antialiasing lands on the black column between stripes) would give 0."""
    stripes = np.zeros((8, 96, 3), np.uint8)
    stripes[:, ::3] = 255
    x = frames_to_tensor([stripes], geometry=FrameGeometry((8, 96), (8, 32), "stretch"))
    # (the first and last columns see the edge through the triangle filter's tails)
    assert np.abs(tensor_to_rgb(x)[:, :, 1:-1].astype(int) - 85).max() <= 1


@pytest.mark.parametrize("fit", ["cover", "contain", "stretch"])
def test_float_and_uint8_resizing_agree(fit):
    """CUDA resizes floats, the CPU resizes uint8: both give the same pixels to within rounding."""
    clip = _smooth_clip(t=2, h=90, w=160)
    geo = FrameGeometry((90, 160), (48, 64), fit)
    u8 = torch.from_numpy(clip).permute(0, 3, 1, 2)  # (T, 3, H, W)
    via_u8 = geo.to_model(u8).float() / 127.5 - 1
    via_float = geo.to_model(u8.float() / 127.5 - 1)
    assert via_u8.shape == via_float.shape == (2, 3, 48, 64)
    assert (via_u8 - via_float).abs().max() <= 1.01 / 127.5
    m = frames_to_tensor(clip, geometry=geo)[0].transpose(0, 1)  # (T, 3, h, w)
    back_u8 = geo.to_camera(((m + 1) * 127.5).round().to(torch.uint8)).float()
    back_float = (geo.to_camera(m) + 1) * 127.5
    assert back_u8.shape == (2, 3, 90, 160) and (back_u8 - back_float).abs().max() <= 1.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu():
    clip = _smooth_clip(t=2, h=90, w=160)
    for fit in ("cover", "contain", "stretch"):
        geo = FrameGeometry((90, 160), (48, 64), fit)
        x_gpu = frames_to_tensor(clip, geometry=geo, device="cuda")
        x_cpu = frames_to_tensor(clip, geometry=geo)
        assert x_gpu.device.type == "cuda" and (x_gpu.cpu() - x_cpu).abs().max() <= 1.01 / 127.5
        diff = tensor_to_rgb(x_gpu, geo).astype(int) - tensor_to_rgb(x_cpu, geo).astype(int)
        assert np.abs(diff).max() <= 2
    assert np.array_equal(tensor_to_rgb(frames_to_tensor(clip, device="cuda")), clip)


def test_cover_crops_the_sides_and_contain_letterboxes():
    cam = np.zeros((90, 160, 3), np.uint8)
    cam[:, :, 2] = 255  # blue centre ...
    cam[:, :20] = (255, 0, 0)  # ... red margins, outside a 4:3 centre crop (120 of 160 columns)
    cam[:, -20:] = (255, 0, 0)
    cover = FrameGeometry((90, 160), (48, 64), "cover")
    x = frames_to_tensor([cam], geometry=cover)
    assert x.shape == (1, 3, 1, 48, 64)
    model_view = tensor_to_rgb(x)[0].astype(int)
    assert np.abs(model_view - np.array([0, 0, 255])).max() <= 1  # the model sees only the blue centre
    out = tensor_to_rgb(x, cover)
    assert out.shape == (1, 90, 160, 3)

    contain = FrameGeometry((90, 160), (48, 64), "contain")
    y = frames_to_tensor([cam], geometry=contain)
    box = contain.forward_boxes()[1]
    assert box == Box(6, 0, 36, 64)
    top, h = box.top, box.height
    assert torch.all(y[..., :top, :] == -1.0) and torch.all(y[..., top + h :, :] == -1.0)  # black bars
    inner = tensor_to_rgb(y)[0, top : top + h]
    assert inner[:, 0, 0].min() > 200 and inner[:, 32, 2].min() > 250  # red edge and blue centre both seen
    back = tensor_to_rgb(y, contain)[0].astype(int)
    assert back.shape == (90, 160, 3)
    assert np.abs(back[:, 5] - np.array([255, 0, 0])).max() < 30  # red margin back in place
    assert np.abs(back[:, 80] - np.array([0, 0, 255])).max() <= 2  # blue centre back in place
    assert back[:, 40:120, 0].max() < 10 and back[:, :15, 2].max() < 10  # no bars in the output


# -- input checks --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    ok = _random_clip(t=1)[0]
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor([ok.astype(np.float32)])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        frames_to_tensor([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"yuv420p arrays are \(H\*3/2, W\)"):
        frames_to_tensor([np.zeros((8, 8, 3), np.uint8)], "yuv420p")
    with pytest.raises(ValueError, match="yuv420p"):
        frames_to_tensor([np.zeros((15, 9), np.uint8)], "yuv420p")
    with pytest.raises(ValueError, match="pixel format"):
        frames_to_tensor([ok], "rgba")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one frame"):
        frames_to_tensor([])
    with pytest.raises(ValueError, match="differ in size"):
        frames_to_tensor([ok, ok[:16]])
    with pytest.raises(ValueError, match="list of frames"):
        frames_to_tensor(ok)
    with pytest.raises(ValueError, match="geometry expects camera"):
        frames_to_tensor([ok], geometry=FrameGeometry((64, 64), (32, 32)))
    with pytest.raises(ValueError, match="numpy array"):
        to_rgb([[1, 2, 3]])  # type: ignore[arg-type]
    x = frames_to_tensor([ok])
    with pytest.raises(ValueError, match=r"\(1, 3, T, h, w\)"):
        tensor_to_rgb(x[0])
    with pytest.raises(ValueError, match="floating point"):
        tensor_to_rgb(x.to(torch.uint8))
    with pytest.raises(ValueError, match="geometry expects"):
        tensor_to_rgb(x, FrameGeometry((64, 64), (16, 16)))
    with pytest.raises(ValueError, match="even"):
        tensor_to_frames(frames_to_tensor([np.zeros((9, 8, 3), np.uint8)]), "yuv420p")
    with pytest.raises(ValueError, match="height, width"):
        FrameGeometry((0, 10), (8, 8))
    with pytest.raises(ValueError):
        FrameGeometry((10, 10), (8, 8), "zoom")  # type: ignore[arg-type]
