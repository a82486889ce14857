"""Does a model do what the looks ask? Video-to-video through the live pipeline, judged by the look classifier.

For `clips` scenes from a seed the training set never used (vidfx.data's generator, sources only) and every
look, each scene is streamed through the pipeline (`vidfx.offline.stylize_frames`, the path of `vidfx run`
and the live node) with the look's name (`prompt_for`) as the prompt, and measured:

* accuracy — the fraction of the output's classifier windows (non-overlapping, `classifier.config.frames`
  frames each) whose most likely class is the asked look;
* flicker ratio — `coarse_change` of the output over that of the input: the mean frame-to-frame change of
  8×8-pixel block means (RGB in [0, 1]). 1 means the output's regions brighten, darken and change colour
  from frame to frame as much as the input's do; more is flicker the model added. Block means because
  several looks add per-pixel grain on purpose (night vision's sensor noise, vintage film grain, pixel art's
  palette snapping): that averages out within a block, a region that pumps or a chunk that jumps does not.
  The same ratio of the dataset's own rendering of the look (`reference_flicker_ratio`) is reported beside
  it, and the per-pixel ratio (`pixel_change_ratio`, grain included) after it;
* structure kept — SSIM of the Sobel edge maps of input and output (vidfx.train.eval.structure_kept);
* target PSNR — PSNR (dB) of the output against the dataset's own rendering of the look on the same scene:
  how close video-to-video comes to the job it was shown (the look *and* the scene), which the classifier,
  judging palette and texture, does not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vidfx.config import StreamSettings
from vidfx.data.look_classifier import LookClassifier, predict
from vidfx.data.looks import make_clip, prompt_for
from vidfx.offline import stylize_frames
from vidfx.pipeline import StreamParams, StylePipeline
from vidfx.train.eval import mean_frame_difference, structure_kept


@dataclass
class LookScore:
    look: str
    accuracy: float
    flicker_ratio: float
    reference_flicker_ratio: float
    pixel_change_ratio: float
    structure_kept: float
    windows: int
    target_psnr: float


def coarse_change(x: torch.Tensor, block: int = 8) -> float:
    """Mean |Δ| between consecutive frames of the `block`×`block` means of clips (B, 3, T, H, W) in [-1, 1],
    on the [0, 1] scale."""
    b, c, t, h, w = x.shape
    pooled = torch.nn.functional.avg_pool2d(x.transpose(1, 2).reshape(b * t, c, h, w), block, ceil_mode=True)
    return mean_frame_difference(pooled.reshape(b, t, c, *pooled.shape[-2:]).transpose(1, 2)) / 2


def _clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) → (1, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def look_windows(video: np.ndarray, frames: int, size: int) -> torch.Tensor:
    """Non-overlapping windows of uint8 (T, H, W, 3) as the classifier takes them: uint8 (N, frames, 3, s, s)."""
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="area").round().to(torch.uint8)
    n = x.shape[0] // frames
    return x[: n * frames].reshape(n, frames, *x.shape[1:])


def evaluate_looks(
    pipe: StylePipeline,
    classifier: LookClassifier,
    looks: Sequence[str] | None = None,
    clips: int = 4,
    frames: int = 33,
    size: tuple[int, int] = (128, 128),
    strength: float | None = None,
    seed: int = 1001,  # vidfx dataset's default is 0; another seed is another stream of scenes
) -> list[LookScore]:
    """One `LookScore` per look (default: every look the classifier knows, i.e. its dataset's) over `clips`
    held-out scenes (see the module docstring)."""
    cfg = classifier.config
    looks = list(cfg.looks if looks is None else looks)
    scenes = [make_clip(seed, i, num_frames=frames, size=size, looks=looks) for i in range(clips)]
    scores = []
    for look in looks:
        params = StreamParams.from_settings(pipe.settings, StreamSettings()).with_(prompts=((prompt_for(look), 1.0),))
        if strength is not None:
            params = params.with_(strength=strength)
        hits = total = 0
        flicker, reference, pixel, structure, psnr = [], [], [], [], []
        for scene in scenes:
            source = scene.source
            out = np.concatenate(list(stylize_frames(pipe, ((f, 0) for f in source), params)))
            pred = predict(classifier, look_windows(out, cfg.frames, cfg.size))
            hits += int((pred == cfg.classes.index(look)).sum())
            total += len(pred)
            src_t, out_t = _clip_tensor(source), _clip_tensor(out)
            motion = max(coarse_change(src_t), 1e-12)
            flicker.append(coarse_change(out_t) / motion)
            reference.append(coarse_change(_clip_tensor(scene.styled[look])) / motion)
            pixel.append(mean_frame_difference(out_t) / max(mean_frame_difference(src_t), 1e-12))
            structure.append(structure_kept(src_t, out_t))
            mse = np.mean((out.astype(np.float64) - scene.styled[look].astype(np.float64)) ** 2)
            psnr.append(10 * np.log10(255.0**2 / max(mse, 1e-12)))
        scores.append(
            LookScore(
                look,
                hits / total,
                float(np.mean(flicker)),
                float(np.mean(reference)),
                float(np.mean(pixel)),
                float(np.mean(structure)),
                total,
                float(np.mean(psnr)),
            )
        )
    return scores


def scores_table(scores: Sequence[LookScore]) -> str:
    """A Markdown table of `evaluate_looks`' result."""
    lines = [
        "| look | classifier names it | flicker ratio (output / input) | same ratio, dataset's rendering | "
        "per-pixel change ratio | structure kept (edge SSIM) | PSNR to the look's rendering (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        lines.append(
            f"| {s.look} | {s.accuracy:.0%} of {s.windows} windows | {s.flicker_ratio:.2f} | "
            f"{s.reference_flicker_ratio:.2f} | {s.pixel_change_ratio:.2f} | {s.structure_kept:.2f} | "
            f"{s.target_psnr:.1f} |"
        )
    return "\n".join(lines)


def scores_dict(scores: Sequence[LookScore]) -> list[dict]:
    return [asdict(s) for s in scores]
