"""`vidfx models check DIR [--model-dit CKPT] [--model-lora LORA] [--model-profile P]`: before anyone waits for
a 6 GB load, which parts of a model were found, which are missing, which need `vidfx convert`, the resolved
architecture and profile, and parameter counts (read from the safetensors headers: no weights are loaded)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", required=True)
    check = sub.add_parser("check", help="report a model folder's parts, architecture, profile and sizes")
    check.add_argument("folder", help="a Wan2.1 release folder or one of our weights folders")
    check.add_argument("--model-dit", default="", help="causal generator checkpoint (.safetensors)")
    check.add_argument("--model-lora", default="", help="LoRA checkpoint (.safetensors)")
    check.add_argument("--model-profile", default="auto", help="release profile (default: detected)")
    check.add_argument("--model-decoder", default="wan", choices=["wan", "tae"], help="latent decoder to look for")
    check.add_argument("--model-encoder", default="wan", choices=["wan", "tae"], help="latent encoder to look for")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run)


def tensor_count(path: Path) -> int:
    """Parameters in a safetensors file or a release's DiT shards, from the headers only; of a training
    checkpoint, those of the generator entry loading would take (`generator_ema`, else `generator`)."""
    from safetensors import safe_open

    from vidfx.weights import GENERATOR_ENTRIES, shard_files

    total = 0
    for shard in shard_files(path):
        with safe_open(str(shard), framework="pt") as f:
            keys = list(f.keys())
            entries = [e + "." for e in GENERATOR_ENTRIES if any(k.startswith(e + ".") for k in keys)]
            prefix = entries[0] if entries else ""
            for key in keys:
                if key.startswith(prefix):
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    total += n
    return total


def check_model(
    folder: str, dit: str = "", lora: str = "", profile: str = "auto", decoder: str = "wan", encoder: str = "wan"
) -> dict[str, Any]:
    """The report `vidfx models check` prints; `ok` is whether loading would find every part."""
    from vidfx.config import ModelSettings
    from vidfx.loading import dit_config_from_release, is_wan_release, release_parts, resolve
    from vidfx.weights import CheckpointError

    path = Path(folder)
    report: dict[str, Any] = {"folder": str(path), "ok": True, "parts": [], "errors": []}
    if not path.is_dir():
        report.update(ok=False, errors=[f"{path}: not a folder"])
        return report
    if is_wan_release(path):
        parts = release_parts(path, dit, lora, decoder, encoder)
        report["kind"] = "wan-release"
        report["parts"] = [p.as_dict() for p in parts.values()]
        report["ok"] = all(p.status == "found" for p in parts.values())
        try:
            cfg = dit_config_from_release(path)
            report["architecture"] = {k: getattr(cfg, k) for k in
                                      ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len",
                                       "in_dim", "out_dim", "patch_size")}  # fmt: skip
        except CheckpointError as exc:
            report["errors"].append(str(exc))
        counts = {}
        for name, p in parts.items():
            if p.status == "found" and p.path is not None and name not in ("config", "tokenizer"):
                try:
                    counts[name] = tensor_count(p.path if name != "dit" or dit else path)
                except Exception as exc:  # safetensors raises several types for a truncated or foreign header
                    report["errors"].append(f"{p.path}: unreadable safetensors ({exc})")
        report["parameters"] = counts
    else:
        report["kind"] = "weights" if (path / "model.json").is_file() else "unknown"
    try:
        settings = ModelSettings(name=str(path), dit=dit, lora=lora, profile=profile)  # type: ignore[arg-type]
        resolved = resolve(settings)
        m = resolved.settings
        report["profile"] = resolved.profile
        report["sampler"] = {"steps": m.steps, "warp": m.warp_steps, "shift": m.shift,
                             "pairing": m.timestep_pairing, "latent_frames_per_chunk": m.latent_frames_per_chunk,
                             "sink_frames": m.sink_frames, "window_frames": m.window_frames,
                             "resolution": [m.height, m.width]}  # fmt: skip
    except (CheckpointError, ValueError) as exc:
        report["errors"].append(str(exc))
    report["ok"] = report["ok"] and not report["errors"]
    return report


def run(args: argparse.Namespace) -> int:
    report = check_model(
        args.folder, args.model_dit, args.model_lora, args.model_profile, args.model_decoder, args.model_encoder
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['folder']}: {report.get('kind')}")
        for part in report["parts"]:
            hint = f"  → {part['hint']}" if part["hint"] and part["status"] != "found" else ""
            print(f"  {part['part']:<10} {part['status']:<14} {part['path'] or ''}{hint}")
        for key in ("architecture", "profile", "sampler", "parameters"):
            if key in report:
                print(f"  {key}: {report[key]}")
        for err in report["errors"]:
            print(f"  error: {err}")
    return 0 if report["ok"] else 1
