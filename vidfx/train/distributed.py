"""Scale: one process on CPU, or many GPUs under `torchrun`, replicated (DDP) or sharded (FSDP, the 1.3B).

Everything a stage needs from the hardware goes through `Dist` and a few functions:

* `setup(run)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it this is one process.
* `prepare(module, dist)` readies a network on its device for the job, in place, names unchanged:
  - "none": nothing;
  - "ddp": every rank holds a full replica; parameters are broadcast from rank 0 once, and after each
    backward `sync_gradients` averages gradients with one all-reduce per ~25 MB bucket. This is data-parallel
    training as `DistributedDataParallel` does it, minus overlapping communication with the backward pass;
    chosen because the DMD generator's rollout calls `forward_chunk` many times per step with and without
    gradients, which DDP's reducer (bound to `forward`) does not support;
  - "fsdp": FSDP2 `fully_shard` on each block's self-attention and FFN (~85% of the weights), then on the
    root, which keeps the rest (embeddings, head, modulations, and the cross-attention layers: ~1.1 GB fp32
    at 1.3B); gradients are reduce-scattered by FSDP itself during backward. The cross-attention layers stay
    with the root because `cross_attention_cache` computes their keys/values outside any block's forward;
    it and `forward_chunk` are registered as FSDP forward methods, so chunk-by-chunk rollouts unshard
    parameters as `forward` does. Frozen networks (the real score) are sharded the same way, which is what
    lets a 1.3B generator, critic and teacher share a GPU.
* `enable_gradient_checkpointing(model)` recomputes each block in backward (non-reentrant checkpoint).

bf16 is autocast only (`autocast(run, device)`): master weights, gradients and optimiser state stay fp32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidfx.model.wan_dit import CausalDiT
from vidfx.train.config import RunConfig


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def mean(self, value: float) -> float:
        """Average of a scalar over processes (for logging)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return float(t.item()) / self.world


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def setup(run: RunConfig) -> Dist:
    """The process's place in the job. Starts the process group when torchrun launched us."""
    if run.distributed not in ("none", "ddp", "fsdp"):
        raise ValueError(f"run.distributed must be none, ddp or fsdp, got {run.distributed!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and run.distributed == "none":
        return Dist(device=pick_device(run.device))
    if "RANK" not in os.environ:
        raise RuntimeError(f"run.distributed={run.distributed!r} needs torchrun (RANK/WORLD_SIZE are not set)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(run.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    mode = run.distributed if run.distributed != "none" else "ddp"
    return Dist(rank=rank, world=world, local_rank=local_rank, mode=mode, device=device)


def teardown(dist: Dist) -> None:
    if dist.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def prepare(module: CausalDiT, dist: Dist) -> CausalDiT:
    """Ready `module` (already on dist.device) for the job, in place; see the module docstring."""
    if dist.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for blk in module.blocks:
            fully_shard(blk.self_attn)
            fully_shard(blk.ffn)
        fully_shard(module)
        register_fsdp_forward_method(module, "forward_chunk")
        register_fsdp_forward_method(module, "cross_attention_cache")
    elif dist.mode == "ddp":
        with torch.no_grad():
            for p in module.parameters():
                torch_dist.broadcast(p.data, src=0)
    return module


def sync_gradients(module: nn.Module, dist: Dist, bucket_bytes: int = 25 << 20) -> None:
    """DDP mode: average gradients over ranks (bucketed all-reduce). No-op otherwise (FSDP reduces itself)."""
    if dist.mode != "ddp" or dist.world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes or i == len(grads) - 1:
            flat = torch.cat([b.reshape(-1) for b in bucket])  # one collective per bucket
            torch_dist.all_reduce(flat)
            flat /= dist.world
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a (maybe FSDP-sharded) parameter: gathers a DTensor, returns others as they are."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def enable_gradient_checkpointing(model: CausalDiT) -> None:
    """Recompute every block's activations in backward instead of storing them.

    Blocks write the KV cache only in no-grad cache-write passes, so the recomputation of a grad-carrying
    block reads the same cache slots it read the first time (training caches hold the whole clip: no slot
    is overwritten between forward and backward).
    """
    for blk in model.blocks:
        plain = blk.forward

        def forward(*args: object, _plain: Callable[..., torch.Tensor] = plain, **kwargs: object) -> torch.Tensor:
            if torch.is_grad_enabled():
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)

        blk.forward = forward  # an instance attribute: parameter names are untouched


def autocast(run: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when run.bf16, otherwise nothing."""
    if run.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
