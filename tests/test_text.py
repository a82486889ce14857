"""Text encoders (word-hash, umT5), the prompt-embedding cache, blends and interpolation."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidfx.model.wan_dit import CausalDiT, DiTConfig
from vidfx.text.base import TextEncoder, blend, check_prompt, interpolate
from vidfx.text.cache import PromptEmbeddings
from vidfx.text.small import HASH_SALT, HashTextEncoder, words
from vidfx.text.umt5 import (
    UMT5Config,
    UMT5Encoder,
    UMT5TextEncoder,
    UMT5Tokenizer,
    clean_prompt,
    find_umt5_files,
)
from vidfx.weights import CheckpointError

MANIFEST = Path(__file__).parent / "data" / "wan_manifest.json"


class CountingEncoder(HashTextEncoder):
    """The real hash encoder, counting how often it actually runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.prompts_encoded = 0

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        self.prompts_encoded += len(prompts)
        return super().encode(prompts)


# -- word-hash encoder ---------------------------------------------------------------------------------------


def test_hash_encoder_layout_and_defaults_match_tiny_dit():
    enc = HashTextEncoder()
    tiny = DiTConfig.preset("tiny")
    assert (enc.text_dim, enc.max_tokens) == (tiny.text_dim, tiny.text_len) == (64, 16)
    assert isinstance(enc, TextEncoder)
    out = enc.encode(["A neon, rainy CITY!", "", "one two three"])
    assert out.shape == (3, 16, 64) and out.dtype == torch.float32
    norms = out.norm(dim=-1)
    assert torch.allclose(norms[0, :4], torch.ones(4)) and torch.all(norms[0, 4:] == 0)
    assert torch.all(out[1] == 0)  # empty prompt: all padding
    assert torch.allclose(norms[2, :3], torch.ones(3)) and torch.all(norms[2, 3:] == 0)
    # Case and punctuation do not matter; word order does (row i = word i).
    assert torch.equal(enc.encode(["a neon rainy city"])[0], out[0])
    assert torch.equal(out[0, 1], enc.word_vector("neon"))
    swapped = enc.encode(["city rainy neon a"])[0]
    assert torch.equal(swapped[0], out[0, 3]) and not torch.equal(swapped, out[0])
    # The tiny DiT reads it as context.
    ctx = CausalDiT(tiny).embed_text(out)
    assert ctx.shape == (3, 16, tiny.dim) and torch.isfinite(ctx).all()


def test_hash_vectors_are_the_documented_stable_hash():
    """Recomputed here from hashlib alone: no dependence on Python's per-process salted hash()."""
    dim, word = 64, "lighthouse"
    raw = hashlib.shake_256(f"{HASH_SALT}\x00{dim}\x00{word}".encode()).digest(8 * dim)
    u = (np.frombuffer(raw, dtype="<u4").astype(np.float64) + 0.5) / 2.0**32
    g = np.sqrt(-2.0 * np.log(u[:dim])) * np.cos(2.0 * np.pi * u[dim:])
    expected = torch.from_numpy((g / np.linalg.norm(g)).astype(np.float32))
    assert torch.equal(HashTextEncoder(text_dim=dim).word_vector(word), expected)
    assert not torch.equal(HashTextEncoder(salt="other").word_vector(word), expected)


def test_hash_words_split_and_truncate():
    expected = ["foggy", "harbour", "at", "dawn", "4k", "très", "beau"]
    assert words("Foggy_harbour at dawn, 4K; très-beau!") == expected
    enc = HashTextEncoder(text_dim=16, max_tokens=3)
    out = enc.encode(["w1 w2 w3 w4 w5"])
    assert torch.equal(out[0], enc.encode(["w1 w2 w3"])[0])  # words past max_tokens are dropped


def test_hash_vectors_of_distinct_words_are_nearly_orthogonal():
    enc = HashTextEncoder()
    vocab = [f"word{i}" for i in range(300)]
    v = torch.stack([enc.word_vector(w) for w in vocab])
    cos = (v @ v.T)[~torch.eye(len(vocab), dtype=torch.bool)]
    # cos ~ N(0, 1/64): mean |cos| ~ 0.1, and 300 words give no near-duplicates.
    assert cos.abs().mean() < 0.13 and cos.abs().max() < 0.6


# -- prompt cache --------------------------------------------------------------------------------------------


def test_second_lookup_of_a_prompt_does_no_encoder_work():
    enc = CountingEncoder()
    cache = PromptEmbeddings(enc, capacity=4)
    first = cache.get("a foggy harbour at dawn")
    assert first.shape == (16, 64)
    assert (enc.calls, cache.hits, cache.misses) == (1, 0, 1)
    second = cache.get("a foggy harbour at dawn")
    assert (enc.calls, cache.hits, cache.misses) == (1, 1, 1)
    assert torch.equal(first, second)
    assert torch.equal(second, HashTextEncoder().encode(["a foggy harbour at dawn"])[0])


def test_cache_evicts_least_recently_used():
    enc = CountingEncoder()
    cache = PromptEmbeddings(enc, capacity=2)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now more recent than b
    cache.get("c")  # evicts b
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    calls = enc.calls
    cache.get("a")
    assert enc.calls == calls
    cache.get("b")
    assert enc.calls == calls + 1
    cache.clear()
    assert len(cache) == 0


def test_get_many_encodes_distinct_misses_in_one_call():
    enc = CountingEncoder()
    cache = PromptEmbeddings(enc, capacity=8)
    cache.get("x")
    out = cache.get_many(["x", "y", "z", "y"])
    assert out.shape == (4, 16, 64)
    assert enc.calls == 2 and enc.prompts_encoded == 3  # "x" once, then "y" and "z" together
    assert torch.equal(out[1], out[3])
    assert torch.equal(out, HashTextEncoder().encode(["x", "y", "z", "y"]))


def test_concurrent_lookups_of_a_new_prompt_encode_it_once():
    enc = CountingEncoder()
    cache = PromptEmbeddings(enc)
    barrier = threading.Barrier(4)
    results: list[torch.Tensor] = []

    def worker() -> None:
        barrier.wait()
        results.append(cache.get("the same new prompt"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert enc.calls == 1 and cache.hits == 3 and cache.misses == 1
    assert all(torch.equal(r, results[0]) for r in results)


def test_prompt_limits():
    cache = PromptEmbeddings(CountingEncoder(), max_chars=20)
    cache.get("x" * 20)
    with pytest.raises(ValueError, match="21 characters long; the limit is 20"):
        cache.get("x" * 21)
    with pytest.raises(ValueError, match="must be a string"):
        cache.get(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        PromptEmbeddings(CountingEncoder(), capacity=0)
    assert check_prompt("") == ""


# -- blends and interpolation --------------------------------------------------------------------------------


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 64, generator=g), 3.0 * torch.randn(16, 64, generator=g)


def test_blend_normalises_weights():
    a, b = _pair()
    assert torch.allclose(blend([(a, 0.7)]), a)
    assert torch.allclose(blend([(a, 1.0), (b, 1.0)]), (a + b) / 2)
    assert torch.allclose(blend([(a, 2.0), (b, 2.0)]), blend([(a, 1.0), (b, 1.0)]))
    assert torch.allclose(blend([(a, 3.0), (b, 1.0)]), 0.75 * a + 0.25 * b, atol=1e-6)
    assert torch.allclose(blend([(a, 2.0), (b, -1.0)]), 2 * a - b, atol=1e-5)  # negative weight, positive sum


def test_blend_rejects_bad_input():
    a, b = _pair()
    with pytest.raises(ValueError, match="at least one"):
        blend([])
    with pytest.raises(ValueError, match="sum to -1"):
        blend([(a, 1.0), (b, -2.0)])
    with pytest.raises(ValueError, match="sum to 0"):
        blend([(a, 1.0), (b, -1.0)])
    with pytest.raises(ValueError, match="shape"):
        blend([(a, 1.0), (b[:8], 1.0)])
    with pytest.raises(ValueError, match="finite"):
        blend([(a, float("nan"))])


@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_interpolate_endpoints_exact(mode):
    a, b = _pair()
    assert torch.equal(interpolate(a, b, 0.0, mode), a)
    assert torch.equal(interpolate(a, b, 1.0, mode), b)
    # and continuous into them
    assert torch.allclose(interpolate(a, b, 1e-6, mode), a, atol=1e-4)
    assert torch.allclose(interpolate(a, b, 1 - 1e-6, mode), b, atol=1e-4)


def test_linear_interpolation():
    a, b = _pair()
    assert torch.allclose(interpolate(a, b, 0.25), 0.75 * a + 0.25 * b, atol=1e-6)


def test_slerp_norm_and_angle():
    a, b = _pair()
    va, vb = a.flatten().double(), b.flatten().double()
    theta = math.acos(float(va @ vb / (va.norm() * vb.norm())))
    assert theta > 1.0  # independent random vectors: nearly orthogonal, slerp is not the fallback
    for alpha in (0.1, 0.5, 0.8):
        out = interpolate(a, b, alpha, "slerp").flatten().double()
        # norm goes linearly from |a| to |b|
        expected_norm = (1 - alpha) * float(va.norm()) + alpha * float(vb.norm())
        assert math.isclose(float(out.norm()), expected_norm, rel_tol=1e-5)
        # direction moves at constant angular speed along the a-b great circle
        to_a = math.acos(float(out @ va / (out.norm() * va.norm())))
        to_b = math.acos(float(out @ vb / (out.norm() * vb.norm())))
        assert math.isclose(to_a, alpha * theta, abs_tol=1e-4)
        assert math.isclose(to_b, (1 - alpha) * theta, abs_tol=1e-4)
    # linear midpoint of equal-norm vectors is shorter than either; slerp keeps the norm
    c = b / b.norm() * a.norm()
    assert interpolate(a, c, 0.5).norm() < 0.8 * a.norm()
    assert math.isclose(float(interpolate(a, c, 0.5, "slerp").norm()), float(a.norm()), rel_tol=1e-5)


def test_slerp_falls_back_to_linear_when_parallel():
    a, _ = _pair()
    b = 2.0 * a + 1e-4 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(interpolate(a, b, 0.3, "slerp"), interpolate(a, b, 0.3, "linear"), atol=1e-6)
    zero = torch.zeros_like(a)
    assert torch.allclose(interpolate(zero, a, 0.5, "slerp"), 0.5 * a)


def test_interpolate_rejects_bad_input():
    a, b = _pair()
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="mode"):
        interpolate(a, b, 0.5, "cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes differ"):
        interpolate(a, b[:3], 0.5)


# -- umT5 ----------------------------------------------------------------------------------------------------


def test_umt5_xxl_names_shapes_and_count_match_wan_checkpoint():
    manifest = json.loads(MANIFEST.read_text())["wan2.1-umt5-xxl-encoder"]
    with torch.device("meta"):
        model = UMT5Encoder(UMT5Config.preset("umt5-xxl"))
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest["tensors"]
    assert len(state) == 242
    assert sum(v.numel() for v in state.values()) == manifest["num_params"] == 5_680_910_336
    assert UMT5Config.preset("umt5-xxl").text_len == manifest["text_len"]


def test_tiny_preset_has_the_official_names():
    with torch.device("meta"):
        full = UMT5Encoder(UMT5Config.preset("umt5-xxl")).state_dict().keys()
    tiny = UMT5Encoder(UMT5Config.preset("tiny")).state_dict().keys()
    per_layer = {k.split(".", 2)[2] for k in full if k.startswith("blocks.0.")}
    assert per_layer == {k.split(".", 2)[2] for k in tiny if k.startswith("blocks.0.")}
    assert {k for k in tiny if not k.startswith("blocks.")} == {"token_embedding.weight", "norm.weight"}


def _t5_bucket(rel: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """T5's bidirectional bucket of one relative position (key - query), straight from the paper's recipe."""
    half = num_buckets // 2
    bucket = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return bucket + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + min(large, half - 1)


def test_relative_position_buckets():
    emb = UMT5Encoder(UMT5Config.preset("tiny")).blocks[0].pos_embedding
    got = emb.buckets(300)
    for q, k in [(0, 0), (5, 6), (6, 5), (0, 7), (8, 0), (0, 16), (20, 4), (0, 127), (299, 0), (0, 299)]:
        assert int(got[q, k]) == _t5_bucket(k - q), (q, k)
    assert int(got[0, 1]) == 17 and int(got[1, 0]) == 1 and int(got[16, 0]) == 10 and int(got[0, 299]) == 31


def _reference_forward(model: UMT5Encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain-loop umT5 encoder in fp32 (einsum attention, explicit softmax), for checking the module."""
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}

    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.eps) * w

    b, length = ids.shape
    rel = torch.tensor([[_t5_bucket(k - q) for k in range(length)] for q in range(length)])
    x = sd["token_embedding.weight"][ids]
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        h = norm(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(b, length, cfg.num_heads, -1) for n in ("q", "k", "v")
        )
        pos = sd[p + "pos_embedding.embedding.weight"][rel].permute(2, 0, 1)  # (heads, L, L)
        logits = torch.einsum("bqnc,bknc->bnqk", q, k) + pos
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = torch.einsum("bnqk,bknc->bqnc", logits.softmax(-1), v).reshape(b, length, -1)
        x = x + att @ sd[p + "attn.o.weight"].T
        h = norm(x, sd[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return norm(x, sd["norm.weight"]).float()


def _tiny_model(seed: int = 0) -> UMT5Encoder:
    torch.manual_seed(seed)
    model = UMT5Encoder(UMT5Config.preset("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))  # non-trivial norm weights
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def test_umt5_forward_matches_reference_and_ignores_padding():
    model = _tiny_model()
    ids = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :11] = True
    mask[1, :5] = True
    with torch.no_grad():
        out = model(ids, mask)
        short = model(ids[:, :11], mask[:, :11])  # what encode() runs: up to the longest prompt only
    ref = _reference_forward(model, ids, mask)
    assert out.shape == (2, 16, 32)
    for i, n in enumerate((11, 5)):
        assert torch.allclose(out[i, :n], ref[i, :n], atol=1e-4), (out[i, :n] - ref[i, :n]).abs().max()
        assert torch.allclose(short[i, :n], out[i, :n], atol=1e-5)


# tokenizer built here with the real `tokenizers` library, in the layout of google/umt5-xxl's specials
_VOCAB = ["<pad>", "</s>", "<unk>", "a", "cat", "on", "the", "red", "sofa", "neon", "city", "&", "rain"]


def _write_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def _write_wan_folder(root: Path, model: UMT5Encoder) -> Path:
    """A Wan-release-like folder: converted encoder weights (bf16, official names) + google/umt5-xxl/."""
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "models_t5_umt5-xxl-enc-bf16.safetensors"))
    _write_tokenizer(root / "google" / "umt5-xxl" / "tokenizer.json")
    return root


def test_tokenizer_appends_eos_pads_truncates_and_cleans(tmp_path):
    pytest.importorskip("tokenizers")
    tok = UMT5Tokenizer(_write_tokenizer(tmp_path / "tokenizer.json"), text_len=6)
    ids, mask = tok(["a cat", "  a\n\tred   cat &amp;amp; ", "a cat on the red sofa a cat"])
    v = {w: i for i, w in enumerate(_VOCAB)}
    assert ids.tolist()[0] == [v["a"], v["cat"], 1, 0, 0, 0]
    # whitespace collapsed, &amp;amp; -> &
    assert ids.tolist()[1] == [v["a"], v["red"], v["cat"], v["&"], 1, 0]
    assert ids.tolist()[2] == [v["a"], v["cat"], v["on"], v["the"], v["red"], 1]  # text_len-1 tokens + </s>
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6]
    assert clean_prompt(" neon &amp;lt; city\u3000") == "neon < city"


def test_umt5_text_encoder_from_folder(tmp_path):
    pytest.importorskip("tokenizers")
    model = _tiny_model(seed=3)
    folder = _write_wan_folder(tmp_path, model)
    assert find_umt5_files(folder) == (
        folder / "models_t5_umt5-xxl-enc-bf16.safetensors",
        folder / "google" / "umt5-xxl" / "tokenizer.json",
    )
    enc = UMT5TextEncoder.from_folder(folder, config=UMT5Config.preset("tiny"), dtype=torch.float32)
    assert isinstance(enc, TextEncoder) and (enc.text_dim, enc.max_tokens) == (32, 16)
    assert enc.device == torch.device("cpu") and not enc.model.token_embedding.weight.requires_grad
    out = enc.encode(["a cat", "a red cat on the neon sofa"])
    assert out.shape == (2, 16, 32) and out.dtype == torch.float32
    lengths = (2 + 1, 7 + 1)  # words + </s>
    for i, n in enumerate(lengths):
        assert torch.all(out[i, n:] == 0)
        assert torch.all(out[i, :n].norm(dim=-1) > 0)
    # same numbers as the bf16-rounded weights run directly on the full padded sequence
    ids, mask = enc.tokenizer(["a cat", "a red cat on the neon sofa"])
    bf16_model = UMT5Encoder(UMT5Config.preset("tiny"))
    bf16_model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        direct = bf16_model(ids, mask)
    for i, n in enumerate(lengths):
        assert torch.allclose(out[i, :n], direct[i, :n], atol=1e-4)
    # and behind the cache
    cache = PromptEmbeddings(enc)
    assert torch.allclose(cache.get("a cat"), out[0], atol=1e-5)  # alone: run over 3 positions, not 8


def test_umt5_bf16_weights_stay_bf16(tmp_path):
    pytest.importorskip("tokenizers")
    folder = _write_wan_folder(tmp_path, _tiny_model())
    enc = UMT5TextEncoder.from_folder(folder, config=UMT5Config.preset("tiny"))
    assert enc.model.blocks[0].attn.q.weight.dtype == torch.bfloat16
    out = enc.encode(["neon city rain"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.all(out[0, 4:] == 0)


def test_umt5_loading_errors(tmp_path):
    pytest.importorskip("tokenizers")
    tiny = UMT5Config.preset("tiny")
    folder = _write_wan_folder(tmp_path, _tiny_model())
    weights = folder / "models_t5_umt5-xxl-enc-bf16.safetensors"

    # a tensor missing
    state = {k: v for k, v in _tiny_model().state_dict().items() if k != "blocks.1.ffn.fc2.weight"}
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"enc-bf16.safetensors.*1 missing: blocks.1.ffn.fc2"):
        UMT5TextEncoder.from_folder(folder, config=tiny)

    # the full-size config against tiny weights
    _write_wan_folder(tmp_path, _tiny_model())
    with pytest.raises(CheckpointError, match="wrong shape"):
        UMT5TextEncoder.from_folder(folder)

    # a corrupt (truncated) file
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"enc-bf16.safetensors: not a readable safetensors"):
        UMT5TextEncoder.from_folder(folder, config=tiny)

    # only the pickled original: told to convert it
    weights.unlink()
    (folder / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="vidfx convert"):
        UMT5TextEncoder.from_folder(folder, config=tiny)

    # no tokenizer
    _write_wan_folder(tmp_path, _tiny_model())
    (folder / "google" / "umt5-xxl" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        UMT5TextEncoder.from_folder(folder, config=tiny)

    # a broken tokenizer.json
    (folder / "google" / "umt5-xxl" / "tokenizer.json").write_text("{ nope")
    with pytest.raises(ValueError, match="not a readable tokenizer.json"):
        UMT5TextEncoder.from_folder(folder, config=tiny)
