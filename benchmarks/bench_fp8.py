"""What `accel.fp8` does to the output, against fp32 (and bf16, the GPU's usual dtype, for scale), on the CPU.

    python benchmarks/bench_fp8.py [--chunks 5] [--latent 16] [--out benchmarks/fp8.json]

1. The shipped default model on the live path: a moving 640×480 camera clip, the six looks' prompts, `--chunks`
   chunks each through `StylePipeline.process_chunk`; the stylised frames' mean and largest |Δ| in 8-bit levels
   against the fp32 pipeline's, for bf16 (with fp32 islands) and for FP8 blocks (on fp32 and on bf16).
2. The released architecture (Wan2.1-T2V-1.3B's DiT, random weights with Wan's initialisation and a live head):
   one stream of `--chunks` chunks (1 latent frame of `--latent`² latents, 2 steps + the cache write, a 1 + 3
   frame cache); the relative L2 error of each chunk's x0 against fp32.

The CPU runs FP8 through PyTorch's reference kernel, so this measures what FP8 changes, not its speed (that is a
GPU row of `vidfx bench gpu`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_fit import moving_clip  # this folder (run as a script)

from vidfx.accel import accelerate_dit, apply_acceleration
from vidfx.config import AccelSettings, ModelSettings
from vidfx.generation import denoise_chunk
from vidfx.loading import load_pipeline
from vidfx.model import CausalDiT, DiTConfig
from vidfx.pipeline import StreamParams
from vidfx.sampling import step_sigmas

VARIANTS = {  # label: (model dtype, accel)
    "bf16": ("bfloat16", AccelSettings()),
    "fp8 (fp32 model)": ("float32", AccelSettings(fp8=True)),
    "fp8 (bf16 model)": ("bfloat16", AccelSettings(fp8=True)),
}


def default_model_pixels(chunks: int) -> dict[str, dict[str, float]]:
    def run(dtype: str, accel: AccelSettings | None) -> np.ndarray:
        pipe = load_pipeline(ModelSettings(dtype=dtype))
        if accel is not None:
            apply_acceleration(pipe, accel)
        clip = moving_clip(pipe.frames_per_chunk(True) + chunks * pipe.frames_per_chunk(False), 480, 640)
        out = []
        for prompt in pipe.looks:
            state = pipe.new_stream_state(StreamParams(prompts=((prompt, 1.0),)))
            start = 0
            for _ in range(chunks + 1):
                n = pipe.frames_per_chunk(state.first)
                out.append(pipe.process_chunk(state, clip[start : start + n]))
                start += n
        return np.concatenate(out).astype(np.int16)

    reference = run("float32", None)
    result = {}
    for label, (dtype, accel) in VARIANTS.items():
        diff = np.abs(run(dtype, accel) - reference)
        result[label] = {"mean_levels": float(diff.mean()), "max_levels": int(diff.max()),
                         "p99_levels": float(np.percentile(diff, 99))}  # fmt: skip
        print(f"default model, {label}: {result[label]}", flush=True)
    return result


def released_architecture(chunks: int, latent: int) -> dict[str, list[float]]:
    cfg = DiTConfig.preset("wan-1.3b")
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    noise = [torch.randn(1, cfg.out_dim, 1, latent, latent, generator=gen) for _ in range(chunks)]
    sigmas = step_sigmas([1000, 500])

    def stream(dit: CausalDiT) -> list[torch.Tensor]:
        cache = dit.new_kv_cache(1, latent, latent, window_frames=3, sink_frames=1)
        with torch.no_grad():
            cross = dit.cross_attention_cache(text)
            return [denoise_chunk(dit, x, sigmas, cross, cache).float() for x in noise]

    torch.manual_seed(0)
    base = CausalDiT(cfg).eval()
    torch.nn.init.normal_(base.head.head.weight, std=0.02)  # a live output head (Wan zero-initialises it)
    state = base.state_dict()
    reference = stream(base)
    del base
    result = {}
    for label, (dtype, accel) in VARIANTS.items():
        dit = CausalDiT(cfg).eval()
        dit.load_state_dict(state)
        dit = accelerate_dit(dit.to(getattr(torch, dtype)), accel)
        out = stream(dit)
        result[label] = [float((o - r).norm() / r.norm()) for o, r in zip(out, reference, strict=True)]
        print(f"1.3B, {label}: relative error per chunk {[round(e, 4) for e in result[label]]}", flush=True)
        del dit
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--latent", type=int, default=16, help="latent side of the 1.3B stream (pixels / 8)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"default_model": default_model_pixels(args.chunks),
              "wan_1_3b": released_architecture(args.chunks, args.latent)}  # fmt: skip
    print("\n| variant | default model: mean / p99 / max \\|Δ\\| (levels of 255) | 1.3B: x0 relative error, chunks |")
    print("|---|---|---|")
    for label in VARIANTS:
        d, w = result["default_model"][label], result["wan_1_3b"][label]
        print(f"| {label} | {d['mean_levels']:.2f} / {d['p99_levels']:.0f} / {d['max_levels']} "
              f"| {min(w):.3f}–{max(w):.3f} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
