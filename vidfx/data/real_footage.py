"""Real camera footage for evaluation only (the clips, `FOOTAGE`, are listed in vidfx.data.packaged), and how
close a model comes to each look on them.

The clips (`FOOTAGE`) are the sample videos of Debian's `opencv-doc` (installed by `scripts/setup.sh --dev`):
pedestrians on a street, a tree in the wind, an animated film. They are held out: the training set builder
refuses every file listed here and every video file (`refuse_for_training`), so these numbers measure what a
user's camera will get, not what the model has seen.

For one clip and one look, with the source frames S (camera-sized), the model's output M, the look's own
rendering L = look(S) (vidfx.data.looks, at the camera's resolution) and the perfect model's P (the look rendered
at the model's resolution — `geometry.to_model(S)`, then resized back with `geometry.to_camera`, i.e. what a
model that renders the look exactly at its working resolution would show; under `cover` this includes the
crop's enlargement):

* PSNR (dB, RGB) and luma SSIM of M to L, and P's luma SSIM: the ceiling at the model's resolution (the looks'
  screen textures — halftone dots, scanlines, grain — are sized in camera pixels, so P's resampled ones miss L's);
* share of the reachable gain: (PSNR(M, L) − PSNR(S, L)) / (PSNR(P, L) − PSNR(S, L)): 0 = doing nothing
  (returning the input), 1 = the perfect model at the model's resolution; negative = worse than the input;
* flicker ratio: `coarse_change(M) / coarse_change(L)` (8×8 block means, as vidfx.data.look_eval): 1 = the
  output's regions change from frame to frame as much as the look's own rendering does.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import torch

from vidfx.config import StreamSettings
from vidfx.data.look_eval import coarse_change
from vidfx.data.looks import luma, prompt_for, stylize
from vidfx.data.packaged import FOOTAGE, FootageClip
from vidfx.frames import FrameGeometry
from vidfx.offline import stylize_frames
from vidfx.pipeline import StreamParams, StylePipeline
from vidfx.train.eval import ssim


def read_footage(path: str | Path, frames: int, start_s: float = 0.0, short_side: int = 240) -> np.ndarray:
    """`frames` consecutive frames from `start_s` of a video (`.gz` read through gzip), resized so the short
    side is `short_side` (even sizes, aspect kept): uint8 (T, H, W, 3)."""
    path = Path(path)
    source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == ".gz" else str(path)
    out: list[np.ndarray] = []
    with av.open(source) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is not None and frame.time < start_s:
                continue
            h, w = frame.height, frame.width
            scale = short_side / min(h, w)
            size = (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))
            out.append(frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
            if len(out) == frames:
                break
    if len(out) < frames:
        raise ValueError(f"{path}: only {len(out)} frames from {start_s}s, wanted {frames}")
    return np.stack(out)


@dataclass
class FootageScore:
    clip: str
    look: str
    camera: tuple[int, int]  # (H, W) of the evaluated frames
    model: tuple[int, int]  # (h, w) the model worked at
    psnr: float  # model output to the look's rendering, dB
    psnr_input: float  # the input itself to the look's rendering (doing nothing)
    psnr_perfect: float  # the look rendered at the model's resolution and resized back
    ssim_luma: float
    ssim_luma_input: float
    ssim_luma_perfect: float  # the ceiling at the model's resolution: textures sized in camera pixels resample
    gain_share: float
    flicker_ratio: float  # output's coarse change / the look's own


def _tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) → (1, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * float(np.log10(255.0**2 / max(mse, 1e-12)))


def luma_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma of two uint8 clips (T, H, W, 3), per frame, data range 1."""

    def y(x: np.ndarray) -> torch.Tensor:
        return luma(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0)

    return ssim(y(a), y(b))


def perfect_rendering(source: np.ndarray, look: str, geometry: FrameGeometry) -> np.ndarray:
    """The look rendered at the model's resolution — on the camera's picture in the model frame
    (`geometry.box`), not the margins beside it — resized back to the camera's: uint8 (T, H, W, 3)."""
    camera = torch.from_numpy(np.ascontiguousarray(source)).permute(0, 3, 1, 2)
    x = geometry.to_model(camera).clone()  # (T, 3, h, w) uint8; a copy: at equal sizes it is `source` itself
    b = geometry.box
    picture = x[..., b.top : b.top + b.height, b.left : b.left + b.width].permute(0, 2, 3, 1).contiguous().numpy()
    x[..., b.top : b.top + b.height, b.left : b.left + b.width] = torch.from_numpy(stylize(picture, look)).permute(
        0, 3, 1, 2
    )
    return geometry.to_camera(x).permute(0, 2, 3, 1).contiguous().numpy()


def score_footage(
    clip: str, look: str, source: np.ndarray, output: np.ndarray, geometry: FrameGeometry
) -> FootageScore:
    """The module docstring's numbers for one clip's source and a model's output (uint8 (T, H, W, 3) each)."""
    target = stylize(source, look)
    perfect = perfect_rendering(source, look, geometry)
    p_out, p_in, p_best = psnr(output, target), psnr(source, target), psnr(perfect, target)
    reachable = p_best - p_in
    return FootageScore(
        clip=clip,
        look=look,
        camera=(source.shape[1], source.shape[2]),
        model=geometry.model,
        psnr=p_out,
        psnr_input=p_in,
        psnr_perfect=p_best,
        ssim_luma=luma_ssim(output, target),
        ssim_luma_input=luma_ssim(source, target),
        ssim_luma_perfect=luma_ssim(perfect, target),
        gain_share=(p_out - p_in) / reachable if abs(reachable) > 1e-9 else float("nan"),
        flicker_ratio=coarse_change(_tensor(output)) / max(coarse_change(_tensor(target)), 1e-12),
    )


def evaluate_footage(
    pipe: StylePipeline,
    clips: Sequence[str | Path],
    looks: Sequence[str],
    frames: int = 33,
    short_side: int = 240,
    strength: float | None = None,
    keep_frames: bool = False,
    on_score: Callable[[FootageScore], None] | None = None,
) -> tuple[list[FootageScore], list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]]:
    """Every clip (a `FOOTAGE` name or a video path) through the pipeline in every look (`stylize_frames`, the
    path of `vidfx run` and the live node), scored against the look's own rendering. With `keep_frames`, also
    (clip, look, source, look's rendering, output) middle frames (H, W, 3) for `footage_grid`. `on_score` is
    called with each score as it comes (progress)."""
    scores = []
    kept: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]] = []
    for name in clips:
        clip = FOOTAGE.get(str(name)) or FootageClip(Path(name).stem, "", Path(name), "", "")
        if not clip.installed:
            raise FileNotFoundError(f"{clip.path}: not installed (Debian's {clip.package or 'package'})")
        source = read_footage(clip.path, frames, clip.start_s, short_side)
        geometry = pipe.geometry(source.shape[1:3])
        for look in looks:
            params = StreamParams.from_settings(pipe.settings, StreamSettings()).with_(
                prompts=((prompt_for(look), 1.0),)
            )
            if strength is not None:
                params = params.with_(strength=strength)
            output = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in source), params)))
            scores.append(score_footage(clip.name, look, source, output, geometry))
            if on_score is not None:
                on_score(scores[-1])
            if keep_frames:
                mid = len(source) // 2
                kept.append((clip.name, look, source[mid], stylize(source[mid : mid + 1], look)[0], output[mid]))
    return scores, kept


def footage_grid(kept: Sequence[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]], path: str | Path) -> None:
    """A PNG: one row per (clip, look), columns input | the look's rendering | the model, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kept), 3, figsize=(9, 2.4 * len(kept)), squeeze=False)
    for row, (clip, look, source, target, output) in zip(axes, kept, strict=True):
        for ax, image, title in zip(
            row, (source, target, output), ("input", f"{look} (the look)", "model"), strict=True
        ):
            ax.imshow(image)
            ax.set_title(f"{clip}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def footage_summary(scores: Sequence[FootageScore]) -> list[dict]:
    """Per look, averaged over clips: PSNR, SSIM, gain share, mean and worst flicker ratio."""
    out = []
    for look in dict.fromkeys(s.look for s in scores):
        mine = [s for s in scores if s.look == look]
        out.append(
            {
                "look": look,
                "clips": len(mine),
                "psnr": float(np.mean([s.psnr for s in mine])),
                "psnr_input": float(np.mean([s.psnr_input for s in mine])),
                "psnr_perfect": float(np.mean([s.psnr_perfect for s in mine])),
                "ssim_luma": float(np.mean([s.ssim_luma for s in mine])),
                "ssim_luma_perfect": float(np.mean([s.ssim_luma_perfect for s in mine])),
                "gain_share": float(np.mean([s.gain_share for s in mine])),
                "flicker_ratio": float(np.mean([s.flicker_ratio for s in mine])),
                "worst_flicker_ratio": float(np.max([s.flicker_ratio for s in mine])),
            }
        )
    return out


def footage_table(scores: Sequence[FootageScore]) -> str:
    """A Markdown table of `footage_summary` plus the mean over looks."""
    rows = footage_summary(scores)
    lines = [
        "| look | clips | PSNR to look (dB) | input's | perfect's | luma SSIM | perfect's | share of reachable gain | "
        "flicker / look's (mean, worst clip) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['look']} | {r['clips']} | {r['psnr']:.2f} | {r['psnr_input']:.2f} | {r['psnr_perfect']:.2f} | "
            f"{r['ssim_luma']:.3f} | {r['ssim_luma_perfect']:.3f} | {r['gain_share']:.0%} | "
            f"{r['flicker_ratio']:.2f}, {r['worst_flicker_ratio']:.2f} |"
        )
    if rows:
        keys = ("psnr", "ssim_luma", "ssim_luma_perfect", "gain_share", "flicker_ratio")
        m = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        lines.append(
            f"| **mean** | | {m['psnr']:.2f} | | | {m['ssim_luma']:.3f} | {m['ssim_luma_perfect']:.3f} | "
            f"{m['gain_share']:.1%} | "
            f"{m['flicker_ratio']:.2f} |"
        )
    return "\n".join(lines)


def footage_dict(scores: Sequence[FootageScore]) -> dict:
    return {"clips": [asdict(s) for s in scores], "looks": footage_summary(scores)}
