"""The GPU inference path (vidfx.accel) against the eager path, and the KV cache's per-chunk indexing.

On the CPU: every switch that runs here equals the eager fp32 path on the `tiny` preset (exactly where the
kernels are the same; to rounding where a switch picks other kernels: the math SDPA backend, inductor's fused
code); the cache builds its index tensors at most once per chunk, and none once the ring has cycled. CUDA-only
parts are skipped without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidfx.accel import accelerate_dit, apply_acceleration
from vidfx.benchmarking.gpu import HEADING
from vidfx.config import AccelSettings, ModelSettings, Settings, add_settings_flags, settings_from_args
from vidfx.generation import denoise_chunk
from vidfx.loading import load_pipeline, resolve
from vidfx.model import CausalDiT, DiTConfig, KVCache
from vidfx.model.fp8 import Fp8Linear
from vidfx.pipeline import StreamParams
from vidfx.sampling import step_sigmas

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA-only switch: no CUDA device here")


def _tiny_dit(num_layers: int = 4, seed: int = 0) -> CausalDiT:
    torch.manual_seed(seed)
    dit = CausalDiT(DiTConfig.preset("tiny").with_(num_layers=num_layers)).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)  # Wan zero-inits the head: make the output live
    return dit


def _stream(dit: CausalDiT, chunks: int, device: str = "cpu", latent: int = 8) -> torch.Tensor:
    """x0 of `chunks` chunks (1 latent frame each, 2 steps + cache write) of one stream, concatenated in time."""
    cfg = dit.cfg
    cache = dit.new_kv_cache(1, latent, latent, window_frames=3, sink_frames=1)
    gen = torch.Generator().manual_seed(1)
    sigmas = step_sigmas([1000, 500])
    outs = []
    with torch.no_grad():  # the prompt's K/V too: compiled blocks must not see tensors that need grad
        cross = dit.cross_attention_cache(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device))
        for _ in range(chunks):
            x = torch.randn(1, cfg.out_dim, 1, latent, latent, generator=gen).to(device)
            outs.append(denoise_chunk(dit, x, sigmas, cross, cache).cpu())
    return torch.cat(outs, dim=2)


# -- the KV cache's indexing ------------------------------------------------------------------------------------


def test_visible_order_is_built_once_per_chunk_and_never_after_the_ring_cycles(monkeypatch) -> None:
    """The step does no host-side indexing: `visible_order` hands every layer and step the same device tensor,
    built (on the host) at most once per chunk, and not at all once the ring's phases have all been seen."""
    builds: list[int] = []  # chunk index of every host-side build of an index tensor
    original = KVCache._frame_slots_of
    chunk = [0]

    def counting(self: KVCache, frames: list[int]) -> list[int]:
        builds.append(chunk[0])
        return original(self, frames)

    monkeypatch.setattr(KVCache, "_frame_slots_of", counting)
    orders_seen: list[set[int]] = []
    read = KVCache.read

    def recording_read(self: KVCache, layer: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        orders_seen[-1].add(id(order))
        assert order.device == self.k.device  # no host→device copy of the index in the step
        return read(self, layer, order)

    monkeypatch.setattr(KVCache, "read", recording_read)
    dit = _tiny_dit(num_layers=3)
    cfg = dit.cfg
    cache = dit.new_kv_cache(1, 8, 8, window_frames=3, sink_frames=1)
    cross = dit.cross_attention_cache(torch.randn(1, cfg.text_len, cfg.text_dim))
    sigmas = step_sigmas([1000, 757, 522])
    builds_before = cache.index_builds
    per_chunk_builds = []
    with torch.no_grad():
        for c in range(12):
            chunk[0] = c
            orders_seen.append(set())
            before = cache.index_builds
            denoise_chunk(dit, torch.randn(1, cfg.out_dim, 1, 8, 8), sigmas, cross, cache)
            per_chunk_builds.append(cache.index_builds - before)
            # 3 steps + the cache write, 3 layers each: one visible-order tensor for all 12 reads.
            assert len(orders_seen[-1]) == 1
    assert all(builds.count(c) <= 1 for c in range(12)), builds  # visible order: once per chunk at most
    assert all(n <= 2 for n in per_chunk_builds), per_chunk_builds  # + the chunk's write slots
    # The ring (sink 1 + window 3, 1-frame chunks) has three phases: from chunk 8 on all are memoised.
    assert per_chunk_builds[8:] == [0, 0, 0, 0], per_chunk_builds
    assert cache.index_builds - builds_before == sum(per_chunk_builds)


def test_visible_order_matches_the_ring_geometry() -> None:
    """The memoised order is the stream order of the ring's slots at every point of a long stream."""
    cache = KVCache(1, 1, 1, 2, tokens_per_frame=3, window_frames=4, sink_frames=2)
    for frames_seen in range(0, 23, 1):
        cache.frames_seen = frames_seen
        cache._new_chunk()
        n_sink = min(frames_seen, 2)
        n_window = min(max(frames_seen - 2, 0), 4)
        frames = list(range(n_sink)) + list(range(frames_seen - n_window, frames_seen))
        slots = [f if f < 2 else 2 + (f - 2) % 4 for f in frames]
        expected = [s * 3 + i for s in slots for i in range(3)]
        assert cache.visible_order().tolist() == expected
        assert cache.visible_order() is cache.visible_order()


# -- each switch against the eager path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "switch",
    [dict(fp32_islands=True), dict(fp32_islands=False), dict(sdpa_backend="flash"), dict(pinned_transfer=True)],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_switch_equals_eager_exactly_in_fp32(switch: dict) -> None:
    """Switches that run the same kernels on the CPU give bit-identical chunks through the whole pipeline."""
    settings = ModelSettings(name="tiny-random", width=64, height=64)
    frames = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)

    def run(accel: AccelSettings | None) -> list[np.ndarray]:
        pipe = load_pipeline(settings)
        if accel is not None:
            apply_acceleration(pipe, accel)
        state = pipe.new_stream_state(StreamParams(prompts=(("a watercolor", 1.0),)))
        out, start = [], 0
        for _ in range(3):
            n = pipe.frames_per_chunk(state.first)
            out.append(pipe.process_chunk(state, frames[start : start + n]))
            start += n
        return out

    eager = run(None)
    fast = run(AccelSettings(**switch))
    assert all(np.array_equal(a, b) for a, b in zip(eager, fast, strict=True))


def test_sdpa_math_backend_equals_eager_to_rounding() -> None:
    eager = _stream(_tiny_dit(), 6)
    math = _stream(accelerate_dit(_tiny_dit(), AccelSettings(sdpa_backend="math")), 6)
    torch.testing.assert_close(math, eager, rtol=1e-5, atol=1e-5)


def test_restricted_backend_that_cannot_run_raises_instead_of_falling_back() -> None:
    """'Checked to be taken': a backend that cannot run this call is an error, never a silent fallback."""
    dit = accelerate_dit(_tiny_dit(num_layers=1), AccelSettings(sdpa_backend="cudnn"))
    if CUDA:
        pytest.skip("cuDNN attention may run here; the CPU has none")
    with pytest.raises(RuntimeError):
        _stream(dit, 1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's own (it reads .grad of non-leaf tensors)
def test_compiled_blocks_equal_eager() -> None:
    """torch.compile (inductor, on the CPU here) of the blocks: one graph per shape for all layers, no graph
    break (fullgraph), and the same chunks up to fp32 rounding of fused kernels. A 2-layer tiny model on a small
    latent keeps the compile to seconds."""
    eager = _stream(_tiny_dit(num_layers=2), 6, latent=4)
    compiled_dit = accelerate_dit(_tiny_dit(num_layers=2), AccelSettings(compile=True))
    assert all(blk._compiled_call_impl is not None for blk in compiled_dit.blocks)
    compiled = _stream(compiled_dit, 6, latent=4)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_bf16_keeps_wans_fp32_islands_and_stays_close_to_fp32() -> None:
    reference = _stream(_tiny_dit(), 4)
    plain = _tiny_dit().to(torch.bfloat16)
    islands = accelerate_dit(_tiny_dit().to(torch.bfloat16), AccelSettings(fp32_islands=True))
    for part in islands.fp32_islands():
        params = [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
        assert all(p.dtype == torch.float32 for p in params)
    assert islands.blocks[0].ffn[0].weight.dtype == torch.bfloat16  # the matmuls stay bf16
    out_islands, out_plain = _stream(islands, 4), _stream(plain, 4)
    assert out_islands.dtype == torch.float32 and torch.isfinite(out_islands).all()
    scale = reference.abs().mean()
    err_islands = float((out_islands - reference).abs().mean() / scale)
    err_plain = float((out_plain - reference).abs().mean() / scale)
    assert err_islands < 0.05, (err_islands, err_plain)


def test_fp8_linear_computes_its_quantised_product() -> None:
    """`Fp8Linear` is the product of the e4m3 input and weight with their row scales (to fp32 rounding: the
    kernel does what the module says) and within FP8's error of the fp32 linear."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 80)
    x = torch.randn(2, 21, 96) * torch.linspace(0.1, 10, 21)[:, None]  # rows of very different magnitude
    fp8 = Fp8Linear(linear)
    rows = x.reshape(-1, 96)
    scale = rows.abs().amax(1, keepdim=True) / 448
    x_deq = (rows / scale).to(torch.float8_e4m3fn).float() * scale
    w_deq = fp8.weight.float() * fp8.weight_scale.t()
    want = (x_deq @ w_deq.t() + linear.bias).reshape(2, 21, 80)
    with torch.no_grad():
        got, exact = fp8(x), linear(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    err = float((got - exact).norm() / exact.norm())
    assert 1e-3 < err < 0.05, err  # quantised (not exact), but close


def test_fp8_dit_stays_close_to_the_eager_dit() -> None:
    """`accel.fp8`: every linear of the blocks is FP8 (10 a block); a stream's chunks stay within a few percent of
    the eager fp32 stream (the bench measures the released-size architecture and the default model's pixels)."""
    eager = _stream(_tiny_dit(), 6)
    dit = accelerate_dit(_tiny_dit(), AccelSettings(fp8=True))
    assert sum(isinstance(m, Fp8Linear) for m in dit.modules()) == 10 * len(dit.blocks)
    assert not any(isinstance(m, torch.nn.Linear) for m in dit.blocks.modules())
    err = float((_stream(dit, 6) - eager).norm() / eager.norm())
    assert 1e-4 < err < 0.08, err


def test_cuda_graphs_refused_off_cuda() -> None:
    if CUDA:
        pytest.skip("this checks the CPU refusal")
    with pytest.raises(ValueError, match="CUDA"):
        accelerate_dit(_tiny_dit(num_layers=1), AccelSettings(cuda_graphs=True))


@needs_cuda
def test_cuda_switches_equal_eager_on_cuda() -> None:
    """fp32: the switches that run in fp32 against the eager path to rounding. bf16: the flash and cuDNN
    kernels (half precision only) against the eager bf16 path, to bf16's rounding."""
    eager = _stream(_tiny_dit().cuda(), 6, device="cuda")
    for switch in (dict(sdpa_backend="efficient"), dict(cuda_graphs=True)):
        fast = _stream(accelerate_dit(_tiny_dit().cuda(), AccelSettings(**switch)), 6, device="cuda")
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4, msg=str(switch))
    eager16 = _stream(accelerate_dit(_tiny_dit().cuda().bfloat16(), AccelSettings()), 6, device="cuda")
    for switch in (dict(sdpa_backend="flash"), dict(sdpa_backend="cudnn"), dict(cuda_graphs=True)):
        fast = _stream(accelerate_dit(_tiny_dit().cuda().bfloat16(), AccelSettings(**switch)), 6, device="cuda")
        err = (fast - eager16).norm() / eager16.norm()
        assert err < 2e-2, (switch, float(err))


@needs_cuda
def test_fp8_on_cuda_equals_fp8_on_the_cpu() -> None:
    """The CUDA FP8 kernels compute what the CPU's reference kernel does (bf16 model, to bf16 rounding)."""
    cpu = _stream(accelerate_dit(_tiny_dit().bfloat16(), AccelSettings(fp8=True)), 4).float()
    gpu = _stream(accelerate_dit(_tiny_dit().cuda().bfloat16(), AccelSettings(fp8=True)), 4, device="cuda").float()
    assert float((gpu - cpu).norm() / cpu.norm()) < 3e-2


@needs_cuda
def test_pinned_transfer_equals_pageable_on_cuda() -> None:
    from vidfx.frames import frames_to_tensor, tensor_to_rgb

    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    pageable = frames_to_tensor(frames, device="cuda")
    pinned = frames_to_tensor(frames, device="cuda", pinned=True)
    assert torch.equal(pageable, pinned)
    assert np.array_equal(tensor_to_rgb(pinned, pinned=True), tensor_to_rgb(pageable))


_HEAP_PROBE = """
import ctypes, sys, torch
from vidfx.accel import keep_freed_memory
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                                "fordblks keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = libc.mallinfo2()
blocks = [torch.ones(5 * 2**20) for _ in range(3)]  # three 20 MiB blocks
held = libc.mallinfo2()
del blocks
after = libc.mallinfo2()
print((held.hblkhd - before.hblkhd) >> 20, (held.arena - before.arena) >> 20, (after.arena - before.arena) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_freed_memory_is_kept_for_the_next_chunk() -> None:
    """`keep_freed_memory` in a fresh process: chunk-sized blocks (20 MiB) come from the heap, not from fresh
    mappings, and the heap keeps them once freed; glibc's default maps them (and unmaps them on free)."""

    def probe(side: str) -> list[int]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, side], capture_output=True, text=True, env=env,
                             check=True, timeout=120).stdout  # fmt: skip
        return [int(v) for v in out.split()]

    mapped, heap, heap_after_free = probe("keep")
    assert mapped == 0 and heap >= 50 and heap_after_free >= 50, (mapped, heap, heap_after_free)
    mapped, heap, heap_after_free = probe("default")
    assert mapped >= 40 and heap_after_free < 40, (mapped, heap, heap_after_free)  # the check can fail


# -- settings ---------------------------------------------------------------------------------------------------


def test_accel_settings_from_env_and_flags(monkeypatch) -> None:
    import argparse

    monkeypatch.setenv("VIDFX_ACCEL__SDPA_BACKEND", "math")
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    settings = settings_from_args(parser.parse_args(["--accel-compile", "--env-file", "/nonexistent"]))
    assert settings.accel.compile and settings.accel.sdpa_backend == "math"
    assert Settings(_env_file=None).accel == AccelSettings(sdpa_backend="math")  # type: ignore[call-arg]


# -- vidfx bench gpu ---------------------------------------------------------------------------------------------

BENCH_SMOKE = ["--device", "cpu", "--preset", "tiny", "--dtype", "float32", "--sizes", "32x32", "--chunk-latents", "1",
               "--window", "2", "--sink", "1", "--chunks", "2", "--warmup", "1"]  # fmt: skip


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vidfx.cli", "bench", "gpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_bench_gpu_smoke_on_cpu_end_to_end(tmp_path) -> None:
    """The CPU smoke mode runs the benchmark's whole path (build, warm-up, timed chunks, stages, stream-batch
    bound, report, plot) and writes its section only where told; CUDA-only rows say they were skipped."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    rows = ["sdpa-flash", "sessions-2", "tae-decoder", "cuda-graphs"]
    done = _bench(*BENCH_SMOKE, "--rows", *rows, "--results", str(results), "--json", str(tmp_path / "raw.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert "## Other\n\nkept" in text and HEADING in text and "smoke run, not GPU figures" in text
    table = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| 32×32 |")}
    assert list(table) == ["eager", *rows]  # the baseline first, in the same run
    assert "| 1.00 |" in table["eager"]
    assert "skipped: needs CUDA" in table["cuda-graphs"]
    raw = {m["row"]: m for m in json.loads((tmp_path / "raw.json").read_text())}
    for row in ("eager", "sdpa-flash", "sessions-2"):
        m = raw[row]
        assert m["fps"] > 0 and m["first_chunk_ms"] > 0 and not m["skipped"]
        assert {"upload", "encode", "dit 1", "dit 2", "cache write", "decode", "download"} <= set(m["stages_ms"])
    tae_present = importlib.util.find_spec("vidfx.autoencoder.tae") is not None
    assert bool(raw["tae-decoder"]["skipped"]) != tae_present  # runs where the tiny decoder exists
    assert "Stream batch bound at 32×32" in text
    assert (tmp_path / "gpu.png").stat().st_size > 1000


@pytest.mark.skipif(CUDA, reason="checks the refusal without CUDA")
def test_bench_gpu_refuses_without_cuda(tmp_path) -> None:
    done = _bench("--results", str(tmp_path / "R.md"), timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert not (tmp_path / "R.md").exists()


def test_wan_random_model_runs_the_serving_path_at_the_real_architecture() -> None:
    """`wan-1.3b-random` (what `vidfx bench serve` measures on a GPU): the 1.3B DiT, its own run settings unless
    the user's, TAEHV on the side asked for, and a chunk through the whole pipeline."""
    from vidfx.autoencoder import TAEHV

    resolved = resolve(ModelSettings(name="wan-1.3b-random", width=64))
    assert (resolved.settings.height, resolved.settings.width, resolved.settings.latent_frames_per_chunk) == (
        480, 64, 3,
    )  # fmt: skip
    settings = ModelSettings(name="wan-1.3b-random", dtype="bfloat16", encoder="tae", height=64, width=64)
    pipe = load_pipeline(settings)
    assert sum(p.numel() for p in pipe.dit.parameters()) == 1_418_996_800  # names, shapes: test_weights
    assert isinstance(pipe.autoencoder.encoding, TAEHV) and not isinstance(pipe.autoencoder.decoding, TAEHV)
    frames = np.random.default_rng(0).integers(0, 256, (pipe.frames_per_chunk(True), 64, 64, 3), dtype=np.uint8)
    out = pipe.process_chunk(pipe.new_stream_state(StreamParams()), frames)
    assert out.shape == frames.shape and out.std() > 1  # a live picture, not a constant
