"""Training checkpoints without pickle: safetensors for every tensor, msgpack for everything else.

A run folder::

    runs/teacher/
      config.toml                     the resolved config of the run
      losses.csv, losses.png          loss history and its plot
      checkpoints/
        LATEST                        name of the newest complete checkpoint (written last, by rename)
        step_00000100/
          model.safetensors           "<role>.<param>", "<role>_ema.<param>" (e.g. generator, generator_ema,
                                      fake_score): plain module names after the role prefix
          state.safetensors           optimiser tensors ("<optimiser>.<path>") and the torch RNG state
          state.msgpack               step, seed, optimiser structure (hyper-parameters, which tensor is
                                      where), loss history

Optimiser state dicts are taken in the FQN-keyed "full" form of `torch.distributed.checkpoint.state_dict`
(the same for one process, DDP and FSDP) and flattened: each tensor goes to state.safetensors under its path,
and the msgpack tree keeps {"__tensor__": path} in its place (tuples as {"__tuple__": [...]}).

A checkpoint is written into `step_N.tmp` and renamed; LATEST is updated after the rename, so a run killed
mid-save resumes from the previous complete checkpoint. Under DDP/FSDP every rank calls `save` (gathering
sharded tensors is collective) and rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vidfx.train.distributed import Dist, local_tensor
from vidfx.weights import CheckpointError, load_into, load_state_dict

LATEST = "LATEST"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FULL_LOAD = StateDictOptions(full_state_dict=True)

# -- nested state ↔ (tensors, msgpack tree) ----------------------------------------------------------------


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list/tuple by a reference; tensors are collected by path."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        return {k: flatten_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{prefix}: cannot store a {type(obj).__name__} in a checkpoint")


def unflatten_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(tree, Mapping):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


# -- EMA ---------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a module's parameters, kept beside it with the same sharding.

    `update(step)` after optimiser step `step` (1-based): before `start_step` the average is a copy of the
    weights (early weights move too fast to be worth averaging), from then on ema ← decay·ema + (1−decay)·w.
    """

    def __init__(self, module: nn.Module, decay: float, start_step: int) -> None:
        self.decay, self.start_step = decay, start_step
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        weight = 1.0 if step < self.start_step else 1.0 - self.decay
        for n, p in module.named_parameters():
            self.shadow[n].lerp_(p.detach(), weight)

    def full_state(self) -> dict[str, torch.Tensor]:
        return {n: local_tensor(t).detach().cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_full_state(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise CheckpointError(f"EMA state does not fit the module: {sorted(missing)[:3]}")
        for n, t in self.shadow.items():
            full = state[n]
            if hasattr(t, "device_mesh"):  # a DTensor shard: take our part of the full tensor
                from torch.distributed.tensor import distribute_tensor

                t.copy_(distribute_tensor(full.to(t.device, t.dtype), t.device_mesh, t.placements))
            else:
                t.copy_(full)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            p.copy_(self.shadow[n])


# -- save / load -------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    ckpts = Path(run_dir) / "checkpoints"
    marker = ckpts / LATEST
    if not marker.exists():
        return None
    path = ckpts / marker.read_text().strip()
    if not (path / "state.msgpack").exists():
        raise CheckpointError(f"{marker}: names {path.name}, which is incomplete")
    return path


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    dist: Dist,
    models: Mapping[str, nn.Module],
    emas: Mapping[str, EMA],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
    extra: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` (collective: call on every rank). `optimizers`: name → (module, optimiser)."""
    weights: dict[str, torch.Tensor] = {}
    for role, module in models.items():
        for k, v in get_model_state_dict(module, options=_FULL).items():
            weights[f"{role}.{k}"] = v.contiguous()
    for role, ema in emas.items():
        for k, v in ema.full_state().items():
            weights[f"{role}_ema.{k}"] = v.contiguous()
    tensors: dict[str, torch.Tensor] = {}
    optim_trees = {
        name: flatten_state(get_optimizer_state_dict(module, opt, options=_FULL), name, tensors)
        for name, (module, opt) in optimizers.items()
    }
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    final = checkpoint_dir(run_dir, step)
    if dist.is_main:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {"format": 1, "step": step, "optimizers": optim_trees, **extra}
        (tmp / "state.msgpack").write_bytes(msgpack.packb(meta, use_bin_type=True))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker = final.parent / LATEST
        (final.parent / (LATEST + ".tmp")).write_text(final.name)
        os.replace(final.parent / (LATEST + ".tmp"), marker)
        old = sorted(p for p in final.parent.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for p in old[: max(0, len(old) - keep)]:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(
    path: str | Path,
    models: Mapping[str, nn.Module],
    emas: Mapping[str, EMA],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
) -> dict[str, Any]:
    """Restore a checkpoint folder into the (already wrapped) modules; returns the msgpack metadata."""
    path = Path(path)
    meta = msgpack.unpackb((path / "state.msgpack").read_bytes(), raw=False, strict_map_key=False)
    weights = load_file(str(path / "model.safetensors"))
    tensors = load_file(str(path / "state.safetensors"))
    for role, module in models.items():
        state = {k[len(role) + 1 :]: v for k, v in weights.items() if k.startswith(role + ".")}
        if not state:
            raise CheckpointError(f"{path}: has no '{role}' weights")
        set_model_state_dict(module, state, options=_FULL_LOAD)
    for role, ema in emas.items():
        prefix = f"{role}_ema."
        ema.load_full_state({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    for name, (module, opt) in optimizers.items():
        state = unflatten_state(meta["optimizers"][name], tensors)
        set_optimizer_state_dict(module, opt, state, options=_FULL_LOAD)
    torch.set_rng_state(tensors["rng.torch_cpu"])
    return meta


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The msgpack metadata (stage, step, seed, history, …) of a checkpoint folder or a run's newest."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: run folder has no complete checkpoint")
        path = latest
    return msgpack.unpackb((path / "state.msgpack").read_bytes(), raw=False, strict_map_key=False)


# -- weights for the next stage ----------------------------------------------------------------------------

ROLE_ORDER = ("generator", "teacher", "fake_score")


def read_weights(path: str | Path, role: str | None = None, ema: bool = True) -> dict[str, torch.Tensor]:
    """Plain module weights from a run folder (its latest checkpoint), a checkpoint folder, or a safetensors
    file/folder of plain or CausVid-style weights. With `ema`, `<role>_ema` is used when present.
    `role` picks an entry of a vidfx checkpoint (None: the first present of generator, teacher, fake_score);
    plain weights are returned whatever the role."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: run folder has no complete checkpoint")
        path = latest
    if path.is_dir() and (path / "state.msgpack").exists():
        path = path / "model.safetensors"
    state = load_state_dict(path)
    roles = {k.split(".", 1)[0] for k in state}
    known = [r for r in ROLE_ORDER if r in roles]
    if not known:
        return state  # plain module weights (an official release): they are whatever role asks for them
    chosen = role or known[0]
    for name in (chosen + "_ema", chosen) if ema else (chosen,):
        if name in roles:
            prefix = name + "."
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise CheckpointError(f"{path}: has no '{chosen}' weights (has {sorted(roles)})")


def load_weights(module: nn.Module, path: str | Path, role: str | None = None, ema: bool = True) -> None:
    load_into(module, read_weights(path, role, ema), path)
