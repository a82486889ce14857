"""Reading and writing weights: safetensors only, plus the one-way `.pt` → safetensors converter.

Checkpoint layouts we accept (all end up as the plain module names of the network that loads them):

* official releases: the module's own names (`blocks.0.self_attn.q.weight`, …), one file or a folder of
  `*.safetensors` shards (diffusers-style `diffusion_pytorch_model-0000k-of-0000n.safetensors`);
* CausVid / Self-Forcing training checkpoints: `{"generator": sd, "generator_ema": sd, …}`, whose inner
  names may carry a wrapper prefix (`model.`, `_fsdp_wrapped_module.`, `module.`). `vidfx convert`
  flattens the dict into `generator.<name>` / `generator_ema.<name>` keys of one safetensors file and
  `select_generator` picks one entry and strips the wrappers.

Nothing here unpickles except `convert_checkpoint`, and that only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

GENERATOR_ENTRIES = ("generator_ema", "generator")  # preferred first: EMA weights sample better
WRAPPER_PREFIXES = ("_orig_mod.", "_fsdp_wrapped_module.", "module.", "model.", "base_model.")
DIT_SHARDS = "diffusion_pytorch_model*.safetensors"  # a Wan release's DiT; its VAE and umT5 sit beside it
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # pickled checkpoints: opened only by `vidfx convert`


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the network; the message names the file."""


def convert_command(path: Path) -> str:
    """The command that turns the pickled checkpoint `path` into the safetensors file beside it."""
    return f"vidfx convert {path} {path.with_suffix('.safetensors')}"


def pickle_refused(path: Path, then: str = "") -> CheckpointError:
    """The error for a pickled checkpoint where safetensors are expected, naming the exact command to run;
    `then` says what to do with the converted file."""
    return CheckpointError(
        f"{path}: pickled checkpoints are not loaded; convert it once with `{convert_command(path)}`{then}"
    )


def _folder_shards(path: Path) -> list[Path]:
    """The files of one network in a folder: a Wan release's DiT shards (those its index names, else every
    `diffusion_pytorch_model*.safetensors`), so converted VAE/umT5 files beside them are not taken in; in any
    other folder every `*.safetensors`."""
    index = path / DIT_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a readable shard index ({exc})") from exc
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard named by {index.name} is missing")
        return files
    files = sorted(path.glob(DIT_SHARDS)) or sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: folder holds no *.safetensors file")
    return files


def shard_files(path: Path) -> list[Path]:
    """The safetensors files `load_state_dict(path)` reads (refusing pickles with the convert command)."""
    if path.is_dir():
        return _folder_shards(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise pickle_refused(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    return [path]


def load_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of every shard in a folder. Corrupt files raise CheckpointError."""
    state: dict[str, torch.Tensor] = {}
    for shard in shard_files(Path(path)):
        try:
            part = load_file(str(shard), device=str(device))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{shard}: not a readable safetensors file ({exc})") from exc
        overlap = state.keys() & part.keys()
        if overlap:
            raise CheckpointError(f"{shard}: repeats tensors of an earlier shard, e.g. {sorted(overlap)[0]}")
        state.update(part)
    return state


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove training-wrapper prefixes (`model.`, `module.`, …) that every key shares."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def select_generator(state: Mapping[str, torch.Tensor], entry: str | None = None) -> dict[str, torch.Tensor]:
    """The generator's weights from a flattened CausVid/Self-Forcing checkpoint, or `state` itself.

    `entry` forces `generator` or `generator_ema`; by default EMA is used when present.
    """
    present = [e for e in GENERATOR_ENTRIES if any(k.startswith(e + ".") for k in state)]
    if entry is not None and entry not in present:
        raise CheckpointError(f"checkpoint has no '{entry}' entry (has: {present or 'plain weights'})")
    chosen = entry or (present[0] if present else None)
    if chosen is None:
        return strip_wrappers(state)
    prefix = chosen + "."
    return strip_wrappers({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def load_into(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path, assign: bool = False
) -> None:
    """Copy `state` into `module`, demanding exactly its names and shapes; errors name `source`.

    `assign=True` makes the state's tensors the module's parameters instead of copying them: the way to fill
    a module built on the meta device (copying into meta tensors would silently do nothing).
    """
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                parts.append(f"{len(names)} {label}: {shown}")
        raise CheckpointError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True, assign=assign)


def _flatten(obj: object, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach().contiguous()
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)
    # Other values (step counters, optimiser hyper-parameters, strings) are not weights: dropped.


def convert_checkpoint(src: str | Path, dst: str | Path, keep: Iterable[str] | None = None) -> int:
    """Convert an official `.pt`/`.pth` to safetensors; returns the number of tensors written.

    `keep` limits top-level entries (e.g. `("generator_ema",)`); nested dicts are flattened with dots.
    Shared storage is cloned because safetensors refuses aliased tensors.
    """
    src = Path(src)
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or hostile files
        raise CheckpointError(f"{src}: cannot be read as a weights-only torch checkpoint ({exc})") from exc
    if isinstance(obj, Mapping) and keep is not None:
        obj = {k: v for k, v in obj.items() if k in set(keep)}
    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat)
    if not flat:
        raise CheckpointError(f"{src}: holds no tensors")
    save_file({k: v.clone() for k, v in flat.items()}, str(dst))
    return len(flat)
