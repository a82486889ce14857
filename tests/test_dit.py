"""The causal generator: cached streaming equals the block-causal forward; causality; rolling cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import randomized_dit
from vidfx.generation import denoise_chunk
from vidfx.model import CausalDiT, DiTConfig
from vidfx.sampling import step_sigmas


def _clip(cfg: DiTConfig, frames: int, batch: int = 2, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, cfg.in_dim, frames, hw, hw)
    context = torch.randn(batch, cfg.text_len - 3, cfg.text_dim)  # shorter than text_len: exercises padding
    return x, context


@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_chunks_equal_block_causal_forward(tiny_dit: CausalDiT, chunk: int) -> None:
    cfg = tiny_dit.cfg
    frames = 4 * chunk
    x, context = _clip(cfg, frames)
    t = torch.rand(2, frames) * 1000  # per-frame timesteps, as in diffusion forcing
    with torch.no_grad():
        full = tiny_dit(x, t, context, chunk_frames=chunk)
        cross = tiny_dit.cross_attention_cache(context)
        cache = tiny_dit.new_kv_cache(2, 8, 8, window_frames=frames)
        streamed = torch.cat(
            [
                tiny_dit.forward_chunk(x[:, :, i : i + chunk], t[:, i : i + chunk], cross, cache, write_cache=True)
                for i in range(0, frames, chunk)
            ],
            dim=2,
        )
    assert streamed.shape == full.shape == (2, cfg.out_dim, frames, 8, 8)
    assert (streamed - full).abs().max().item() <= 1e-5
    assert full.abs().max().item() > 1e-2  # a real signal, not zeros


def test_source_condition_channels_stream_like_the_clip_and_default_to_zeros() -> None:
    """A source-conditioned DiT (in_dim = 2 · out_dim): the condition rides beside x through the cached
    stream exactly as through the block-causal forward; no condition means zeros; a wrong one is refused."""
    base = DiTConfig.preset("tiny")
    torch.manual_seed(0)
    dit = randomized_dit(dataclasses.replace(base, in_dim=2 * base.out_dim))
    frames, chunk = 4, 1
    x, context = _clip(base, frames)
    source = torch.randn_like(x)
    t = torch.rand(2, frames) * 1000
    with torch.no_grad():
        full = dit(x, t, context, chunk_frames=chunk, condition=source)
        cross = dit.cross_attention_cache(context)
        cache = dit.new_kv_cache(2, 8, 8, window_frames=frames)
        streamed = torch.cat(
            [
                dit.forward_chunk(x[:, :, i : i + 1], t[:, i : i + 1], cross, cache, True, source[:, :, i : i + 1])
                for i in range(frames)
            ],
            dim=2,
        )
        assert (streamed - full).abs().max().item() <= 1e-5
        unconditioned = dit(x, t, context, chunk_frames=chunk)
        torch.testing.assert_close(unconditioned, dit(x, t, context, chunk_frames=chunk, condition=0 * source))
        assert (unconditioned - full).abs().mean() > 1e-2  # the source reaches the output
        with pytest.raises(ValueError, match="condition has 3 channels"):
            dit(x, t, context, condition=source[:, :3])


def test_reading_the_cache_does_not_change_it(tiny_dit: CausalDiT) -> None:
    x, context = _clip(tiny_dit.cfg, 2)
    cross = tiny_dit.cross_attention_cache(context)
    cache = tiny_dit.new_kv_cache(2, 8, 8, window_frames=4)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        tiny_dit.forward_chunk(x[:, :, :1], t, cross, cache, write_cache=True)
        before = cache.k.clone()
        a = tiny_dit.forward_chunk(x[:, :, 1:], t, cross, cache)
        b = tiny_dit.forward_chunk(x[:, :, 1:], t, cross, cache)
    assert cache.frames_seen == 1
    assert torch.equal(before, cache.k)
    assert torch.equal(a, b)


def test_block_causal_is_causal_and_bidirectional_is_not(tiny_dit: CausalDiT) -> None:
    chunk = 2
    x, context = _clip(tiny_dit.cfg, 3 * chunk)
    t = torch.full((2,), 700.0)
    later = x.clone()
    later[:, :, chunk:] += torch.randn_like(later[:, :, chunk:])  # change chunks 1 and 2 only
    with torch.no_grad():
        causal_a = tiny_dit(x, t, context, chunk_frames=chunk)
        causal_b = tiny_dit(later, t, context, chunk_frames=chunk)
        bi_a = tiny_dit(x, t, context)
        bi_b = tiny_dit(later, t, context)
    assert torch.equal(causal_a[:, :, :chunk], causal_b[:, :, :chunk])
    assert (causal_a[:, :, chunk:] - causal_b[:, :, chunk:]).abs().max() > 1e-3
    assert (bi_a[:, :, :chunk] - bi_b[:, :, :chunk]).abs().max() > 1e-3


def test_text_conditioning_matters(tiny_dit: CausalDiT) -> None:
    x, context = _clip(tiny_dit.cfg, 2)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        a = tiny_dit(x, t, context)
        b = tiny_dit(x, t, torch.randn_like(context))
    assert (a - b).abs().max() > 1e-3


def test_rolling_cache_far_past_the_rope_table() -> None:
    """2,000 latent frames (the RoPE table holds 1,024): constant memory, finite outputs, sinks kept."""
    cfg = DiTConfig.preset("tiny").with_(num_layers=1)
    model = randomized_dit(cfg)
    sink, window, chunk = 2, 6, 2  # the sink is the stream's first chunk
    cache = model.new_kv_cache(1, 4, 4, window_frames=window, sink_frames=sink)
    cross = model.cross_attention_cache(torch.randn(1, 5, cfg.text_dim))
    sigmas = step_sigmas([1000])  # one step + the cache write: 2 forwards a chunk keep 1,000 chunks quick
    buffers = (cache.k.data_ptr(), cache.v.data_ptr(), cache.nbytes())
    sink_tokens = sink * cache.tokens_per_frame
    gen = torch.Generator().manual_seed(0)
    sink_k = None
    for i in range(2000 // chunk):
        x = torch.randn(1, cfg.in_dim, chunk, 4, 4, generator=gen)
        out = denoise_chunk(model, x, sigmas, cross, cache, generator=gen)
        assert torch.isfinite(out).all()
        if i == 0:
            sink_k = cache.k[:, :, :sink_tokens].clone()
    assert cache.frames_seen == 2000
    assert cache.visible_frames == sink + window
    assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.nbytes()) == buffers
    assert sink_k is not None and torch.equal(cache.k[:, :, :sink_tokens], sink_k)
    # The ring holds exactly the newest `window` frames, in stream order.
    order = cache.visible_order().view(-1, cache.tokens_per_frame)[:, 0] // cache.tokens_per_frame
    expected = list(range(sink)) + [sink + (f - sink) % window for f in range(2000 - window, 2000)]
    assert order.tolist() == expected


def test_cache_reset_restarts_the_stream(tiny_dit: CausalDiT) -> None:
    x, context = _clip(tiny_dit.cfg, 2)
    cross = tiny_dit.cross_attention_cache(context)
    cache = tiny_dit.new_kv_cache(2, 8, 8, window_frames=2)
    t = torch.full((2,), 300.0)
    with torch.no_grad():
        first = tiny_dit.forward_chunk(x[:, :, :1], t, cross, cache, write_cache=True)
        tiny_dit.forward_chunk(x[:, :, 1:], t, cross, cache, write_cache=True)
        cache.reset()
        again = tiny_dit.forward_chunk(x[:, :, :1], t, cross, cache, write_cache=True)
    assert torch.equal(first, again)


def test_bad_shapes_raise(tiny_dit: CausalDiT) -> None:
    cfg = tiny_dit.cfg
    with pytest.raises(ValueError, match="divisible"):
        tiny_dit(torch.randn(1, cfg.in_dim, 1, 7, 8), torch.zeros(1), torch.randn(1, 2, cfg.text_dim))
    with pytest.raises(ValueError, match="text_len"):
        tiny_dit(torch.randn(1, cfg.in_dim, 1, 8, 8), torch.zeros(1), torch.randn(1, cfg.text_len + 1, cfg.text_dim))
    cache = tiny_dit.new_kv_cache(1, 8, 8, window_frames=2)
    cross = tiny_dit.cross_attention_cache(torch.randn(1, 2, cfg.text_dim))
    with pytest.raises(ValueError, match="tokens a frame"):
        tiny_dit.forward_chunk(torch.randn(1, cfg.in_dim, 1, 4, 4), torch.zeros(1), cross, cache)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.preset("huge")


def test_shapes_of_the_output_head(tiny_dit: CausalDiT) -> None:
    """Pins the patch/unpatch layout: a per-position output survives the round trip unchanged."""
    cfg = tiny_dit.cfg
    tokens = torch.arange(2 * 3 * 4 * 4 * cfg.out_dim * 4, dtype=torch.float32).view(2, 3 * 4 * 4, -1)
    video = tiny_dit._unpatchify(tokens, (3, 4, 4))
    assert video.shape == (2, cfg.out_dim, 3, 8, 8)
    # Channel c of pixel (f, 2h+i, 2w+j) comes from token (f, h, w), feature ((i·2 + j)·out + c).
    f, h, w, i, j, c = 1, 2, 3, 1, 0, 5
    assert video[0, c, f, 2 * h + i, 2 * w + j] == tokens[0, f * 16 + h * 4 + w, (i * 2 + j) * cfg.out_dim + c]
