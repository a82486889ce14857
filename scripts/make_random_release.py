"""Write a Wan2.1-T2V-1.3B release folder of the official layout, names and sizes, with random weights, plus a
CausVid-style generator checkpoint: for GPU speed/memory checks of `vidfx serve --model … --model-dit …` on a
machine that cannot download the real files.

    python scripts/make_random_release.py OUT [--device cuda] [--small]

OUT/wan/{config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.safetensors,
models_t5_umt5-xxl-enc-bf16.safetensors, google/umt5-xxl/tokenizer.json} and
OUT/autoregressive_checkpoint/model.safetensors (`generator.model.*` names, as `vidfx convert` writes CausVid's).
`--small` writes the reduced dims the tests use. Random weights: speed and memory are real, the pictures not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidfx.autoencoder.wan_vae import WanVAE, WanVAEConfig
from vidfx.model.wan_dit import CausalDiT, DiTConfig
from vidfx.text.umt5 import UMT5Config, UMT5Encoder

FULL = {"dim": 1536, "ffn_dim": 8960, "freq_dim": 256, "num_heads": 12, "num_layers": 30, "text_len": 512,
        "text_dim": 4096}  # fmt: skip
SMALL = {"dim": 64, "ffn_dim": 128, "freq_dim": 32, "num_heads": 2, "num_layers": 2, "text_len": 16, "text_dim": 32}


def random_state(module: torch.nn.Module, device: str, dtype: torch.dtype, std: float = 0.02) -> dict:
    """Random tensors under the module's names and shapes (module built on meta: no init cost)."""
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for name, t in module.state_dict().items():
        value = torch.randn(tuple(t.shape), generator=g, device=device, dtype=torch.float32) * std
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight", "norm1.weight", "norm2.weight",
                          "norm.weight", "gamma")):  # fmt: skip
            value = value + 1.0  # norms near identity, as trained ones are
        out[name] = value.to(dtype).cpu().contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    dims = SMALL if args.small else FULL
    wan = args.out / "wan"
    (wan / "google" / "umt5-xxl").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "WanModel", "model_type": "t2v", "in_dim": 16, "out_dim": 16, "eps": 1e-06, **dims}
    (wan / "config.json").write_text(json.dumps(config, indent=1))
    cfg = DiTConfig(**{k: v for k, v in config.items() if not k.startswith("_") and k != "model_type"})
    umt5_cfg = UMT5Config() if not args.small else UMT5Config(vocab_size=16, dim=32, dim_attn=32, dim_ffn=64,
                                                                num_heads=4, num_layers=2)  # fmt: skip
    with torch.device("meta"):
        dit, umt5 = CausalDiT(cfg), UMT5Encoder(umt5_cfg)
        vae = WanVAE(WanVAEConfig.preset("wan2.1" if not args.small else "test"))
    dit_state = random_state(dit, args.device, torch.float32)
    save_file(dit_state, str(wan / "diffusion_pytorch_model.safetensors"))
    ckpt = args.out / "autoregressive_checkpoint"
    ckpt.mkdir(exist_ok=True)
    save_file({f"generator.model.{k}": v.to(torch.bfloat16) for k, v in dit_state.items()},
              str(ckpt / "model.safetensors"))  # fmt: skip
    del dit_state
    save_file(random_state(vae, args.device, torch.float32), str(wan / "Wan2.1_VAE.safetensors"))
    save_file(random_state(umt5, args.device, torch.bfloat16), str(wan / "models_t5_umt5-xxl-enc-bf16.safetensors"))
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>", "a", "cat", "on", "the", "red", "sofa", "neon", "city", "pencil", "sketch"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(wan / "google" / "umt5-xxl" / "tokenizer.json"))
    print(f"wrote {wan} and {ckpt / 'model.safetensors'}")


if __name__ == "__main__":
    main()
