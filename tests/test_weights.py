"""Weight compatibility with the official Wan2.1 / CausVid releases, checked against the independent manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidfx.model import CausalDiT, DiTConfig
from vidfx.weights import CheckpointError, convert_checkpoint, load_into, load_state_dict, select_generator

MANIFEST = json.loads((Path(__file__).parent / "data" / "wan_manifest.json").read_text())
WAN_DIT = MANIFEST["wan2.1-t2v-1.3b-dit"]


def test_wan_preset_matches_the_official_model() -> None:
    """Names, shapes and the count 1,418,996,800 read from Wan2.1's own model definition (the manifest)."""
    with torch.device("meta"):
        model = CausalDiT(DiTConfig.preset("wan-1.3b"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == WAN_DIT["tensors"]
    assert model.num_params() == WAN_DIT["num_params"] == 1_418_996_800


def _official_state(layers: int) -> dict[str, torch.Tensor]:
    """Random tensors with the official names and shapes, blocks beyond `layers` left out."""
    keep = {f"blocks.{i}." for i in range(layers)}
    return {
        name: torch.randn(shape) * 0.02
        for name, shape in WAN_DIT["tensors"].items()
        if not name.startswith("blocks.") or any(name.startswith(p) for p in keep)
    }


@pytest.fixture(scope="module")
def reduced_wan() -> tuple[CausalDiT, dict[str, torch.Tensor]]:
    model = CausalDiT(DiTConfig.preset("wan-1.3b").with_(num_layers=1))
    return model, _official_state(1)


@pytest.mark.parametrize("wrap", ["plain", "generator", "generator_ema", "generator_ema+model."])
def test_official_and_causvid_layouts_load(reduced_wan, tmp_path: Path, wrap: str) -> None:
    model, state = reduced_wan
    if wrap == "plain":
        stored = state
    else:
        entry, _, prefix = wrap.partition("+")
        stored = {f"{entry}.{prefix}{k}": v for k, v in state.items()}
        # A CausVid checkpoint also carries the critic; it must be ignored, not loaded.
        stored["critic.model.head.head.bias"] = torch.zeros(64)
    path = tmp_path / "w.safetensors"
    save_file(stored, str(path))
    load_into(model, select_generator(load_state_dict(path)), path)
    assert torch.equal(model.blocks[0].self_attn.q.weight, state["blocks.0.self_attn.q.weight"])
    assert torch.equal(model.head.modulation, state["head.modulation"])


def test_ema_is_preferred_and_entry_can_be_forced() -> None:
    state = {"generator.a": torch.zeros(1), "generator_ema.a": torch.ones(1)}
    assert select_generator(state)["a"].item() == 1.0
    assert select_generator(state, "generator")["a"].item() == 0.0
    with pytest.raises(CheckpointError, match="no 'critic' entry"):
        select_generator(state, "critic")


def test_sharded_folder_loads(reduced_wan, tmp_path: Path) -> None:
    model, state = reduced_wan
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[half:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    load_into(model, load_state_dict(tmp_path), tmp_path)


def test_mismatch_names_the_file_and_the_keys(reduced_wan, tmp_path: Path) -> None:
    model, state = reduced_wan
    bad = dict(state)
    del bad["head.head.bias"]
    bad["blocks.0.ffn.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*1 missing: head\.head\.bias.*wrong shape"):
        load_into(model, bad, tmp_path / "w.safetensors")


def test_corrupt_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(64, 64)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=path.name):
            load_state_dict(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="vidfx convert"):
        load_state_dict(tmp_path / "model.pth")


def test_convert_flattens_a_causvid_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    generator = {"model.blocks.0.modulation": torch.randn(1, 6, 8), "model.head.head.bias": torch.randn(4)}
    torch.save({"generator": generator, "generator_ema": generator, "step": 1200}, src)
    dst = tmp_path / "model.safetensors"
    assert convert_checkpoint(src, dst, keep=["generator_ema"]) == 2
    loaded = select_generator(load_state_dict(dst))
    assert set(loaded) == {"blocks.0.modulation", "head.head.bias"}
    assert torch.equal(loaded["head.head.bias"], generator["model.head.head.bias"])
    # Not a checkpoint at all: a clear error naming the file, no traceback from pickle.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        convert_checkpoint(junk, tmp_path / "out.safetensors")
