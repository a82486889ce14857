"""The fast inference path: `AccelSettings` applied to a built pipeline (or a bare DiT), one switch at a time.

    pipe = apply_acceleration(load_pipeline(settings.model), settings.accel)

Every switch keeps what the model computes (tests/test_accel.py holds each to the eager path; exactly in fp32
where the switch runs on the CPU):

* fp32 islands — in a bf16/fp16 model, the parts Wan runs in fp32 (time embedding and projection, the
  blocks' and head's modulation, the norms' weights) are cast back to fp32 (`CausalDiT.fp32_islands`); the
  norms and RoPE always compute in fp32 inside the model.
* SDPA backend — attention restricted to one backend with `torch.nn.attention.sdpa_kernel`; PyTorch raises
  when that backend cannot run the call instead of falling back, so the backend asked for is the one taken.
* FP8 — every linear of the transformer blocks in float8 e4m3 with per-row scales (`vidfx.model.fp8`); the one
  switch that changes the output beyond rounding (quantisation: `benchmarks/bench_fp8.py` measures how much).
* compile — each transformer block `torch.compile`d. The blocks are pure functions of tensors (the cache is
  read before and written after each block), so one graph per input shape serves all layers; a stream sees a
  few shapes (one per visible-cache length until the window is full), each compiled once.
* CUDA graphs — the compiled blocks replayed as CUDA graphs (`mode="reduce-overhead"`, one graph per shape,
  i.e. per visible length); CUDA only.
* pinned transfer — frames cross host↔device through pinned memory with asynchronous copies; a no-op on the
  CPU.
* overlapped decode — the engine's worker launches a batch's decode (and the copy of its frames to pinned host
  memory) on a CUDA stream of its own, encodes and denoises the next batch meanwhile, then collects the frames
  (`StylePipeline.start_decode`); CUDA only. The same work as in order: a stream's chunks still decode in order.
* keep freed memory — glibc's malloc keeps freed host memory for reuse instead of handing it back to the OS
  (`keep_freed_memory`); the process's allocator only, nothing the model computes.

Settings that cost start-up time or need CUDA default to off; `vidfx bench gpu` measured each on an H200
(benchmarks/RESULTS.md, *GPU*; `AccelSettings` says what it found). Nothing here loads weights: loading stays
in the loader, this runs after it.
"""

from __future__ import annotations

import ctypes
import platform
from typing import TYPE_CHECKING

import torch
import torch._dynamo
from torch.nn.attention import SDPBackend

from vidfx.config import AccelSettings
from vidfx.model.fp8 import quantize_blocks
from vidfx.model.wan_dit import CausalDiT

if TYPE_CHECKING:
    from vidfx.pipeline import StylePipeline

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}

# Distinct block input shapes a stream needs compiled: visible-cache lengths × batch sizes × write/no-write
# are a few dozen at most; the default limit (8) would silently fall back to eager after the eighth.
COMPILE_RECOMPILE_LIMIT = 64


# glibc's mallopt parameters (malloc.h) and the values `keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2): blocks below come from the heap
TRIM_THRESHOLD = 2**30  # free memory at the heap's top kept mapped up to this much


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed host memory for reuse; True where it applied (glibc), False elsewhere.

    PyTorch frees a chunk's intermediate tensors (up to MBs each) and allocates the same sizes again for the
    next chunk. By default glibc serves blocks over its (adaptive) mmap threshold with fresh mappings and
    returns freed memory beyond 128 KiB at the heap's top to the OS, so every chunk faulted its pages in again:
    17,000 page faults and 28 ms of system time in a 150 ms chunk of the default model on 2 cores. With the
    blocks served from the heap and the heap kept, the pages stay mapped (benchmarks/RESULTS.md, *Serving*).
    The process's resident memory then stays at its high-water mark instead of breathing with each chunk.
    Process-wide; calling it again changes nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def accelerate_dit(dit: CausalDiT, accel: AccelSettings) -> CausalDiT:
    """Apply `accel` to `dit` in place (already on its device and dtype) and return it."""
    device = dit.patch_embedding.weight.device
    if accel.cuda_graphs and device.type != "cuda":
        raise ValueError(f"accel.cuda_graphs needs a CUDA device, the model is on {device}")
    if accel.fp32_islands and dit.patch_embedding.weight.dtype != torch.float32:
        dit.keep_fp32_islands()
    dit.sdpa_backends = None if accel.sdpa_backend == "auto" else [SDPA_BACKENDS[accel.sdpa_backend]]
    if accel.fp8:
        if device.type == "cuda" and dit.patch_embedding.weight.dtype != torch.bfloat16:
            raise ValueError("accel.fp8 on CUDA needs a bfloat16 model (`model.dtype`): FP8 matmuls give bf16")
        quantize_blocks(dit)
    if accel.compile or accel.cuda_graphs:
        for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), COMPILE_RECOMPILE_LIMIT))
        mode = "reduce-overhead" if accel.cuda_graphs else None
        for block in dit.blocks:
            # In place (nn.Module.compile): parameter names, state dicts and hooks stay those of the block.
            block.compile(mode=mode, dynamic=False, fullgraph=True)
        dit.cudagraph_steps = accel.cuda_graphs
    return dit


def warmup_chunks(pipe: StylePipeline, accel: AccelSettings, chunks: int) -> int:
    """How many chunks to warm `pipe` up with: `chunks`, or with compile or CUDA graphs on at least every shape a
    stream meets at the configured resolution (`chunks_to_fill`), so no stream compiles mid-stream."""
    return max(chunks, pipe.chunks_to_fill()) if accel.compile or accel.cuda_graphs else chunks


def apply_acceleration(pipe: StylePipeline, accel: AccelSettings) -> StylePipeline:
    """Apply `accel` to a built pipeline in place (its DiT and its frame transfers) and return it."""
    if accel.overlap_decode and pipe.device.type != "cuda":
        raise ValueError(f"accel.overlap_decode needs a CUDA device, the model is on {pipe.device}")
    if accel.keep_freed_memory:
        keep_freed_memory()
    accelerate_dit(pipe.dit, accel)
    pipe.pinned_transfer = accel.pinned_transfer and pipe.device.type == "cuda"
    pipe.overlap_decode = accel.overlap_decode
    pipe.decode_stream = torch.cuda.Stream(pipe.device) if accel.overlap_decode else None
    return pipe
