"""What `accel.fp8` does to the output, against fp32 (and bf16, the GPU's usual dtype, for scale), on the CPU.

    python benchmarks/bench_fp8.py [--chunks 5] [--latent 16] [--out benchmarks/fp8.json]

1. The shipped default model on the live path: a moving 640×480 camera clip, the six looks' prompts, `--chunks`
   chunks each through `StylePipeline.process_chunk`; the stylised frames' mean and largest |Δ| in 8-bit levels
   against the fp32 pipeline's, for bf16 (with fp32 islands) and for FP8 blocks (on fp32 and on bf16).
2. The released architecture (Wan2.1-T2V-1.3B's DiT, random weights with Wan's initialisation and a live head),
   block by block (`released_architecture`): a 1 + 3 frame cache of `--latent`² latents and a 1-frame chunk.

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


def released_architecture(latent: int) -> dict[str, dict[str, float]]:
    """Per-block error at the 1.3B architecture: with random weights a whole 30-layer forward is chaotic (bf16
    alone moves its output by more than its own norm), so each block is fed the fp32 model's input to that block
    (one forward of a 1 + 3 frame context and a 1-frame chunk) and its output compared with the fp32 block's."""
    cfg = DiTConfig.preset("wan-1.3b")
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    torch.manual_seed(0)
    base = CausalDiT(cfg).eval()
    torch.nn.init.normal_(base.head.head.weight, std=0.02)  # a live output head (Wan zero-initialises it)
    inputs: list[tuple[tuple, dict]] = []
    outputs: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, args: tuple, kwargs: dict, out: tuple) -> None:
        inputs.append((args, kwargs))
        outputs.append(out[0].float())

    hooks = [block.register_forward_hook(capture, with_kwargs=True) for block in base.blocks]
    cache = base.new_kv_cache(1, latent, latent, window_frames=3, sink_frames=1)
    sigmas = step_sigmas([1000, 500])
    with torch.no_grad():
        cross = base.cross_attention_cache(text)
        for _ in range(5):  # fill the cache, then capture one cache-full chunk's first forward
            inputs.clear()
            outputs.clear()
            x = torch.randn(1, cfg.out_dim, 1, latent, latent, generator=gen)
            denoise_chunk(base, x, sigmas[:1], cross, cache)
    for h in hooks:
        h.remove()
    inputs, outputs = inputs[: len(base.blocks)], outputs[: len(base.blocks)]  # the chunk's step forward
    state = base.state_dict()
    del base

    def cast(args: tuple, dtype: torch.dtype) -> tuple:
        """A block's (x, e, rot, mask, past, cross_kv) as the model of `dtype` passes them: e and rot stay fp32."""
        x, e, rot, mask, past, cross_kv = args
        past = None if past is None else tuple(t.to(dtype) for t in past)
        return x.to(dtype), e, rot, mask, past, tuple(t.to(dtype) for t in cross_kv)

    result = {}
    for label, (dtype_name, accel) in VARIANTS.items():
        dtype = getattr(torch, dtype_name)
        dit = CausalDiT(cfg).eval()
        dit.load_state_dict(state)
        dit = accelerate_dit(dit.to(dtype), accel)
        errors = []
        with torch.no_grad():
            for block, (args, kwargs), want in zip(dit.blocks, inputs, outputs, strict=True):
                got = block(*cast(args, dtype), **kwargs)[0].float()
                errors.append(float((got - want).norm() / want.norm()))
        result[label] = {"mean": float(np.mean(errors)), "max": float(np.max(errors))}
        print(f"1.3B blocks, {label}: relative error mean {result[label]['mean']:.4f}, max {result[label]['max']:.4f}",
              flush=True)  # fmt: skip
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
    result = {"wan_1_3b": released_architecture(args.latent), "default_model": default_model_pixels(args.chunks)}
    print(
        "\n| variant | default model: mean / p99 / max \\|Δ\\| (levels of 255) | 1.3B: block output relative error, "
        "mean / max over the 30 blocks |"
    )
    print("|---|---|---|")
    for label in VARIANTS:
        d, w = result["default_model"][label], result["wan_1_3b"][label]
        print(f"| {label} | {d['mean_levels']:.2f} / {d['p99_levels']:.0f} / {d['max_levels']} "
              f"| {w['mean']:.4f} / {w['max']:.4f} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
