"""`vidfx bench <name>`: the benchmarks in vidfx/benchmarking, one module each."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "cache": ("per-chunk time with the rolling KV cache vs recomputing the history", "vidfx.benchmarking.cache"),
    "gpu": (
        "the 1.3B causal generator on a GPU at 480×832 / 320×576: FPS, first frame, stages, VRAM, per optimisation",
        "vidfx.benchmarking.gpu",
    ),
    "serve": ("vidfx serve at 1/2/4 streams: FPS, latency, drops, overhead vs standalone", "vidfx.benchmarking.serve"),
}


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", required=True)
    for name, (help_text, module) in BENCHMARKS.items():
        importlib.import_module(module).register(sub.add_parser(name, help=help_text, description=help_text))
