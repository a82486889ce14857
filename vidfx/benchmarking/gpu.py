"""`vidfx bench gpu`: the 1.3B causal generator (Wan2.1-1.3B architecture, random weights, nothing downloaded)
streaming video-to-video at 480×832 and 320×576, one row per optimisation switched on in turn against the
eager bf16 baseline measured in the same run.

One chunk, as the node runs it: uint8 camera frames → device (pageable or pinned) → Wan VAE causal encode →
noise to σ₀ → the few-step denoise (one DiT forward per σ) against the rolling KV cache → the cache-write
forward → decode (Wan VAE, or a tiny decoder where this checkout has one) → uint8 frames on the host. A stream's
first chunk holds 1 + 4·(n−1) frames, every later one 4·n (n latent frames a chunk).

Per row and size: FPS over the timed chunks (wall clock, the host waits for every chunk's frames as the node
does), the first chunk of a fresh stream (compute ms; its first frame also waited for the chunk's frames at
the camera rate), per-stage ms (CUDA events between stages, medians: encode, each DiT forward, cache write,
decode) and peak VRAM. "Stream batch" is reported as its bound: one forward of steps+1 rows against steps+1
forwards of one row.

Without CUDA it refuses, except with `--device cpu` (a smoke run of the same code on a small preset, for
tests: its numbers are not GPU figures and it writes RESULTS.md only where `--results` points).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

from vidfx.accel import accelerate_dit
from vidfx.autoencoder.base import StreamDecoder, StreamEncoder, VideoAutoencoder
from vidfx.autoencoder.loading import build_autoencoder
from vidfx.benchmarking.results import RESULTS, cpu_name, update_section
from vidfx.config import AccelSettings
from vidfx.frames import frames_to_tensor, tensor_to_rgb
from vidfx.model import CausalDiT, CrossAttnCache, DiTConfig, KVCache
from vidfx.sampling import chunk_sigmas, noise_to, velocity_to_x0

HEADING = "## GPU: the 1.3B causal generator, video-to-video (issue 21)"
GOAL_FPS, GOAL_FIRST_FRAME_MS = 50.0, 300.0  # issue 21, at 480×832 on one H100/H200
GOAL_T2V_FPS = 25.0  # issue 21: the Self-Forcing profile's 4-step text-to-video

# Autoencoders by name: their `build_autoencoder` presets at full size and for smoke runs. A row's encoder
# encodes and its decoder decodes (the Wan VAE unless the row says TAEHV, as `--model-decoder tae` serves it).
AUTOENCODERS: dict[str, tuple[str, str]] = {"wan": ("wan2.1", "wan2.1-test"), "tae": ("taew2.1", "taew2.1-test")}


@dataclass(frozen=True)
class Row:
    """One configuration: the eager bf16 baseline plus what this row switches on."""

    accel: AccelSettings
    decoder: str = "wan"
    encoder: str = "wan"
    sessions: int = 1  # streams whose chunks share every forward (the pipeline's batched sessions)
    decode_stream: bool = False  # decode chunk j on its own CUDA stream while chunk j+1 is encoded and denoised
    text_to_video: bool = False  # no camera: each chunk from noise through `--t2v-steps` (no upload, no encode)
    cuda_only: bool = False
    note: str = ""


_EAGER = AccelSettings(pinned_transfer=False)  # bf16 weights, fp32 islands, PyTorch's SDPA choice, no compile
_ALL = _EAGER.model_copy(update={"cuda_graphs": True, "pinned_transfer": True})
# Rows that compile come last: under a time budget (`--budget-s`) the cheap rows are measured whatever happens.
ROWS: dict[str, Row] = {
    "eager": Row(_EAGER, note="baseline: eager, model dtype with fp32 islands"),
    "sdpa-flash": Row(_EAGER.model_copy(update={"sdpa_backend": "flash"})),
    "sdpa-cudnn": Row(_EAGER.model_copy(update={"sdpa_backend": "cudnn"}), cuda_only=True),
    "pinned": Row(_EAGER.model_copy(update={"pinned_transfer": True}), cuda_only=True),
    "decode-stream": Row(_EAGER, decode_stream=True, cuda_only=True),
    "sessions-2": Row(_EAGER, sessions=2, note="2 streams in one forward; FPS of both"),
    "tae-decoder": Row(_EAGER, decoder="tae", note="tiny decoder (TAEHV) instead of the Wan VAE's"),
    "t2v": Row(_EAGER, text_to_video=True, note="text-to-video, the few-step list from noise (Self-Forcing: 4)"),
    "fp8": Row(_EAGER.model_copy(update={"fp8": True}), cuda_only=True, note="the blocks' linears in FP8 (rowwise)"),
    "compile": Row(_EAGER.model_copy(update={"compile": True}), note="torch.compile of the blocks"),
    "cuda-graphs": Row(_EAGER.model_copy(update={"cuda_graphs": True}), cuda_only=True, note="compiled + graphs"),
    "all": Row(_ALL, decode_stream=True, cuda_only=True, note="cuda graphs + pinned + decode stream"),
    "all-tae": Row(_ALL, decoder="tae", decode_stream=True, cuda_only=True, note="all + tiny decoder"),
    "tae-both": Row(_EAGER, decoder="tae", encoder="tae", note="tiny encoder and decoder (TAEHV) for the Wan VAE"),
    "graphs-tae-both": Row(_ALL, decoder="tae", encoder="tae", cuda_only=True, note="cuda graphs + pinned, TAEHV"),
    "all-tae-both": Row(
        _ALL, decoder="tae", encoder="tae", decode_stream=True, cuda_only=True, note="all + TAEHV encode and decode"
    ),
    "t2v-all": Row(_ALL, text_to_video=True, decode_stream=True, cuda_only=True, note="text-to-video, all"),
    "all-tae-both-fp8": Row(
        _ALL.model_copy(update={"fp8": True}),
        decoder="tae",
        encoder="tae",
        decode_stream=True,
        cuda_only=True,
        note="all + TAEHV encode and decode + FP8 blocks",
    ),
}


@dataclass
class Measured:
    row: str
    size: tuple[int, int]
    fps: float = float("nan")
    first_chunk_ms: float = float("nan")
    first_frame_ms: float = float("nan")  # capture wait for the first chunk's frames + its compute
    stages_ms: dict[str, float] = field(default_factory=dict)
    peak_vram_gib: float = float("nan")
    warmup_s: float = float("nan")  # the stream's fill-up before timing: compiles and graph captures included
    skipped: str = ""  # why the row did not run


# -- timing --------------------------------------------------------------------------------------------------------


class StageClock:
    """Marks between stages of one chunk; CUDA events on a GPU (no sync per mark), synchronised wall clock
    otherwise. `elapsed()` after the chunk: ms per stage."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str, stream: torch.cuda.Stream | None = None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def elapsed(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:], strict=False):
            if self.cuda:
                end.synchronize()  # type: ignore[attr-defined]
                out[name] = start.elapsed_time(end)  # type: ignore[attr-defined]
            else:
                out[name] = (end - start) * 1e3  # type: ignore[operator]
        self.marks.clear()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- building ------------------------------------------------------------------------------------------------------


def build_autoencoder_model(name: str, small: bool, device: torch.device, dtype: torch.dtype) -> VideoAutoencoder:
    """Autoencoder `name` of AUTOENCODERS with random weights."""
    full, test = AUTOENCODERS[name]
    with torch.device(device):
        ae = build_autoencoder(test if small else full)
    return ae.to(device, dtype).eval()


def build_dit(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> CausalDiT:
    """The preset's architecture with Wan's random initialisation, built on the device (seconds, not minutes)."""
    torch.manual_seed(seed)
    with torch.device(device):
        dit = CausalDiT(DiTConfig.preset(preset))
    torch.nn.init.normal_(dit.head.head.weight, std=0.02)  # a live output head (Wan zero-initialises it)
    return dit.to(device, dtype).eval()


# -- one row ---------------------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One benchmark stream (or `sessions` streams batched): caches and the prompt's cross-attention K/V."""

    encoder: StreamEncoder
    decoder: StreamDecoder
    kv: KVCache
    cross: CrossAttnCache
    chunks: int = 0


def run_row(name: str, row: Row, args: argparse.Namespace, size: tuple[int, int], dit: CausalDiT,
            encoder_ae: VideoAutoencoder, decoder_ae: VideoAutoencoder) -> Measured:  # fmt: skip
    """Warm up (compiles and captures every shape a stream meets), then time `args.chunks` chunks of a stream."""
    device = torch.device(args.device)
    height, width = size
    sf = encoder_ae.spatial_factor
    lh, lw = height // sf, width // sf
    n_lat = args.chunk_latents
    sigmas = chunk_sigmas(args.t2v_steps, 1.0) if row.text_to_video else chunk_sigmas(args.steps, args.strength)
    b = row.sessions
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (b, 4 * n_lat, height, width, 3), dtype=np.uint8)
    text = torch.randn(b, dit.cfg.text_len, dit.cfg.text_dim, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator(device=device).manual_seed(0)
    pinned = row.accel.pinned_transfer
    side = torch.cuda.Stream(device) if row.decode_stream else None
    out_dtype = dit.patch_embedding.weight.dtype

    def new_stream() -> Stream:
        return Stream(
            encoder_ae.stream_encoder(),
            decoder_ae.stream_decoder(),
            dit.new_kv_cache(b, lh, lw, args.window, args.sink),
            dit.cross_attention_cache(text.to(device)),
        )

    def denoise(st: Stream, clock: StageClock) -> torch.Tensor:
        clock.mark("start")
        latents = args.first_chunk_latents if st.chunks == 0 else n_lat
        if row.text_to_video:
            shape = (b, encoder_ae.latent_channels, latents, lh, lw)
            x = torch.randn(shape, generator=gen, device=device).to(out_dtype)
        else:
            frames = encoder_ae.frames_for_latents(latents, st.chunks == 0)
            pixels = torch.cat([frames_to_tensor(video[i, :frames], device=device, pinned=pinned) for i in range(b)])
            clock.mark("upload")
            z = st.encoder.encode(pixels).float()
            clock.mark("encode")
            x = noise_to(z, torch.randn(z.shape, generator=gen, device=device), sigmas[0]).to(out_dtype)
        x0 = x.float()
        for i, sigma in enumerate(sigmas):
            t = torch.full((b,), 1000.0 * sigma, device=device)
            v = dit.forward_chunk(x, t, st.cross, st.kv)
            x0 = velocity_to_x0(x.float(), v, sigma)
            if i + 1 < len(sigmas):
                x = noise_to(x0, torch.randn(x0.shape, generator=gen, device=device), sigmas[i + 1]).to(out_dtype)
            clock.mark(f"dit {i + 1}")
        dit.forward_chunk(x0.to(out_dtype), torch.zeros(b, device=device), st.cross, st.kv, write_cache=True)
        clock.mark("cache write")
        return x0

    def decode(st: Stream, x0: torch.Tensor, clock: StageClock) -> list[np.ndarray]:
        pixels = st.decoder.decode(x0.to(decoder_ae.param_dtype))
        clock.mark("decode")
        st.chunks += 1
        frames = [tensor_to_rgb(pixels[i : i + 1].float(), pinned=pinned) for i in range(b)]
        clock.mark("download")
        return frames

    def chunk_pipelined(st: Stream, clock: StageClock, pending: list) -> int:
        """Denoise this chunk; decode it on the side stream and collect the previous chunk's frames."""
        x0 = denoise(st, clock)
        frames_out = 0
        if side is None:
            frames_out = sum(len(f) for f in decode(st, x0, clock))
        else:
            side.wait_stream(torch.cuda.current_stream(device))
            x0.record_stream(side)
            with torch.cuda.stream(side):
                pixels = st.decoder.decode(x0.to(decoder_ae.param_dtype))
                clock.mark("decode", side)
                done = torch.cuda.Event()
                done.record(side)
            st.chunks += 1
            if pending:  # the previous chunk's frames: its decode overlapped this chunk's work
                p_pixels, p_done = pending.pop()
                p_done.synchronize()
                frames_out = sum(len(tensor_to_rgb(p_pixels[i : i + 1].float(), pinned=pinned)) for i in range(b))
            pending.append((pixels, done))
        return frames_out

    # Warm-up: a whole stream until the cache is full (every shape of a stream: compiled, captured, tuned).
    warm_chunks = max(args.warmup, -(-(args.sink + args.window) // n_lat) + 2)
    warm_start = time.perf_counter()
    st = new_stream()
    pending: list = []
    for _ in range(warm_chunks):
        chunk_pipelined(st, StageClock(device), pending)
    pending.clear()
    _sync(device)
    warmup_s = time.perf_counter() - warm_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # First chunk of a fresh stream (shapes already warm): what a new client waits for.
    st = new_stream()
    clock = StageClock(device)
    _sync(device)
    start = time.perf_counter()
    x0 = denoise(st, clock)
    decode(st, x0, clock)  # its frames are on the host when this returns
    first_ms = (time.perf_counter() - start) * 1e3
    clock.elapsed()
    capture_frames = 0 if row.text_to_video else encoder_ae.frames_for_latents(args.first_chunk_latents, True) - 1
    capture_wait_ms = 1e3 * capture_frames / args.camera_fps
    # Timed chunks of the same stream, past its fill-up (the cache window full), as the node runs them.
    for _ in range(warm_chunks - 1):
        chunk_pipelined(st, StageClock(device), pending)
    stages: dict[str, list[float]] = {}
    clocks: list[StageClock] = []
    frames_out = 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.chunks):
        # Stage times are read after the loop: reading a chunk's last event here would wait for its decode,
        # and that wait would undo the overlap the decode-stream rows measure.
        clocks.append(StageClock(device))
        frames_out += chunk_pipelined(st, clocks[-1], pending)
    if pending:  # the last decode (overlapped rows): its frames count once they are on the host
        p_pixels, p_done = pending.pop()
        p_done.synchronize()
        frames_out += sum(len(tensor_to_rgb(p_pixels[i : i + 1].float(), pinned=pinned)) for i in range(b))
    wall = time.perf_counter() - start
    for clock in clocks:
        for key, ms in clock.elapsed().items():
            stages.setdefault(key, []).append(ms)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return Measured(
        row=name,
        size=size,
        fps=frames_out / wall,
        first_chunk_ms=first_ms,
        first_frame_ms=capture_wait_ms + first_ms,
        stages_ms={k: statistics.median(v) for k, v in stages.items()},
        peak_vram_gib=peak,
        warmup_s=warmup_s,
    )


def stream_batch_bound(dit: CausalDiT, args: argparse.Namespace, size: tuple[int, int], sf: int) -> tuple[float, float]:
    """ms of one full-cache DiT chunk forward at batch 1 and at batch steps+1 (StreamDiffusion's stream batch:
    the steps of successive chunks and the cache-write row in one forward)."""
    device = torch.device(args.device)
    lh, lw = size[0] // sf, size[1] // sf
    rows = len(chunk_sigmas(args.steps, args.strength)) + 1
    dtype = dit.patch_embedding.weight.dtype
    out = []
    for b in (1, rows):
        kv = dit.new_kv_cache(b, lh, lw, args.window, args.sink)
        cross = dit.cross_attention_cache(torch.randn(b, dit.cfg.text_len, dit.cfg.text_dim, device=device))
        x = torch.randn(b, dit.cfg.out_dim, args.chunk_latents, lh, lw, device=device, dtype=dtype)
        t = torch.full((b,), 500.0, device=device)
        with torch.no_grad():
            while kv.visible_frames < args.sink + args.window:
                dit.forward_chunk(x, t, cross, kv, write_cache=True)
            times = []
            for _ in range(max(3, args.chunks)):
                _sync(device)
                start = time.perf_counter()
                dit.forward_chunk(x, t, cross, kv)
                _sync(device)
                times.append((time.perf_counter() - start) * 1e3)
        out.append(statistics.median(times))
    return out[0], out[1]


# -- the run ---------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        cuda = torch.version.cuda or "?"
        cudnn = torch.backends.cudnn.version()
        return f"{name}, torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn}"
    return f"CPU ({cpu_name()}), torch {torch.__version__}: a smoke run, not GPU figures"


def _parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def measure(args: argparse.Namespace) -> tuple[list[Measured], dict[tuple[int, int], tuple[float, float]]]:
    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    small = args.preset != "wan-1.3b"
    results: list[Measured] = []
    bounds: dict[tuple[int, int], tuple[float, float]] = {}
    rows = [ROWS[r] for r in [*args.rows, *args.other_size_rows]]
    autoencoders: dict[str, VideoAutoencoder] = {
        name: build_autoencoder_model(name, small, device, dtype)
        for name in sorted({"wan"} | {r.decoder for r in rows} | {r.encoder for r in rows})
    }
    for k, size in enumerate(args.sizes):
        budget_s = args.budget_s[min(k, len(args.budget_s) - 1)]
        deadline = time.monotonic() + budget_s
        for name in args.rows if k == 0 or not args.other_size_rows else args.other_size_rows:
            row = ROWS[name]
            m = Measured(row=name, size=size)
            encoder, decoder = autoencoders[row.encoder], autoencoders[row.decoder]
            if row.cuda_only and device.type != "cuda":
                m.skipped = "needs CUDA"
            elif time.monotonic() > deadline:
                m.skipped = f"over this size's {budget_s:.0f} s budget"
            if m.skipped:
                results.append(m)
                print(f"{size} {name}: skipped ({m.skipped})", file=sys.stderr)
                continue
            torch._dynamo.reset()  # every compiled row compiles afresh: no row inherits another's graphs
            dit = build_dit(args.preset, device, dtype)  # the same seed: the same weights in every row
            accelerate_dit(dit, row.accel)
            with torch.no_grad():
                try:
                    m = run_row(name, row, args, size, dit, encoder, decoder)
                except Exception as exc:  # a row that cannot run (a restricted SDPA backend, a compile error)
                    m.skipped = f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
            results.append(m)
            print(f"{size} {name}: {m}", file=sys.stderr)
            if args.json:  # after every row: a run cut short still leaves what it measured
                args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
            if name == "eager":
                bounds[size] = stream_batch_bound(dit, args, size, encoder.spatial_factor)
            del dit
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results, bounds


def report(results: list[Measured], bounds: dict, args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    steps = len(chunk_sigmas(args.steps, args.strength))
    lines = [
        HEADING,
        "",
        f"`vidfx bench gpu` on {environment(device)}, {datetime.now(UTC):%Y-%m-%d}. Preset `{args.preset}` with "
        f"random weights in {args.dtype}, video-to-video: {args.chunk_latents} latent frames a chunk "
        f"({4 * args.chunk_latents} video frames; a stream's first chunk {args.first_chunk_latents} latent "
        f"frame(s)), {steps} denoising forwards + the cache write (steps "
        f"{list(args.steps)} at strength {args.strength}), cache of {args.sink} sink + {args.window} window latent "
        f"frames, {args.chunks} timed chunks after the stream's cache is full. Goal at 480×832: ≥ {GOAL_FPS:.0f} FPS, "
        f"first frame < {GOAL_FIRST_FRAME_MS:.0f} ms (its capture wait at {args.camera_fps:.0f} FPS included). "
        f"Text-to-video rows (`t2v…`) denoise each chunk from noise in {len(args.t2v_steps)} forwards "
        f"({list(args.t2v_steps)}) + the cache write; goal ≥ {GOAL_T2V_FPS:.0f} FPS.",
        "",
        "| size | row | FPS | × eager | first chunk ms (first frame) | upload | encode | DiT forwards | cache write "
        "| decode | download | peak VRAM GiB | warm-up s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = {m.size: m.fps for m in results if m.row == "eager" and not m.skipped}
    for m in results:
        size = f"{m.size[0]}×{m.size[1]}"
        note = ROWS[m.row].note
        if m.skipped:
            lines.append(f"| {size} | {m.row} |{' — |' * 11} skipped: {m.skipped} |")
            continue
        s = m.stages_ms
        dits = " / ".join(f"{s[k]:.1f}" for k in sorted(s) if k.startswith("dit "))
        ratio = f"{m.fps / eager[m.size]:.2f}" if m.size in eager else "—"
        vram = f"{m.peak_vram_gib:.1f}" if m.peak_vram_gib == m.peak_vram_gib else "—"
        stage = {k: f"{s[k]:.1f}" if k in s else "—" for k in ("upload", "encode", "cache write", "decode", "download")}
        lines.append(
            f"| {size} | {m.row} | {m.fps:.1f} | {ratio} | {m.first_chunk_ms:.0f} ({m.first_frame_ms:.0f}) "
            f"| {stage['upload']} | {stage['encode']} | {dits} | {stage['cache write']} | {stage['decode']} "
            f"| {stage['download']} | {vram} | {m.warmup_s:.0f} | {note} |"
        )
    for size, (one, many) in bounds.items():
        lines.append("")
        lines.append(
            f"Stream batch bound at {size[0]}×{size[1]}: one full-cache DiT forward of {steps + 1} rows takes "
            f"{many:.1f} ms against {steps + 1} × {one:.1f} ms for one row each ({many / ((steps + 1) * one):.0%})."
        )
    return "\n".join(lines)


def plot(results: list[Measured], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({m.size for m in results}, reverse=True)
    rows = list(dict.fromkeys(m.row for m in results))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2.0), 4.0))
    width = 0.8 / len(sizes)
    for j, size in enumerate(sizes):
        fps = [next((m.fps for m in results if m.row == r and m.size == size and not m.skipped), 0.0) for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], fps, width, label=f"{size[0]}×{size[1]}")
    ax.axhline(GOAL_FPS, color="k", linestyle="--", linewidth=1, label=f"goal {GOAL_FPS:.0f} FPS (480×832)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows, rotation=30, ha="right")
    ax.set_ylabel("frames per second")
    ax.set_title("vidfx bench gpu: one optimisation at a time (0 = skipped)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "vidfx bench gpu: no CUDA device here (torch " + torch.__version__ + "). It measures the GPU path and "
            "needs one; `--device cpu --preset tiny` runs the same code as a smoke test.",
            file=sys.stderr,
        )
        return 2
    unknown = [r for r in [*args.rows, *args.other_size_rows] if r not in ROWS]
    if unknown:
        print(f"vidfx bench gpu: unknown rows {unknown}; choose from {list(ROWS)}", file=sys.stderr)
        return 2
    args.first_chunk_latents = args.first_chunk_latents or args.chunk_latents
    # The baseline every ratio is taken against, always measured in the same run.
    args.rows = list(dict.fromkeys(["eager", *args.rows]))
    if args.other_size_rows:
        args.other_size_rows = list(dict.fromkeys(["eager", *args.other_size_rows]))
    torch.set_float32_matmul_precision("high")
    results, bounds = measure(args)
    text = report(results, bounds, args)
    print(text)
    results_path: Path | None = args.results or (RESULTS if device.type == "cuda" else None)
    if args.json:
        args.json.write_text(json.dumps([m.__dict__ for m in results], indent=1, default=str))
    plot_path: Path | None = args.plot or (results_path.parent / "gpu.png" if results_path else None)
    if plot_path:
        plot(results, plot_path)
        link = plot_path.name if results_path and plot_path.parent == results_path.parent else str(plot_path)
        text += f"\n\n![FPS per optimisation]({link})"
    if results_path:
        update_section(HEADING, text, results_path)
        print(f"wrote {results_path}", file=sys.stderr)
    return 0


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run, not GPU figures)")
    p.add_argument("--preset", default="wan-1.3b", choices=["wan-1.3b", "tiny"], help="DiT architecture")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--sizes", type=_parse_size, nargs="+", default=[(480, 832), (320, 576)], metavar="HxW")
    p.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run, from {list(ROWS)}")
    p.add_argument(
        "--other-size-rows", nargs="+", default=[], help="rows at the sizes after the first (default: --rows)"
    )
    p.add_argument("--chunk-latents", type=int, default=3, help="latent frames a chunk (3: 12 video frames)")
    p.add_argument(
        "--first-chunk-latents",
        type=int,
        default=None,
        help="latent frames of a stream's first chunk (1: one frame; default: --chunk-latents)",
    )
    p.add_argument("--window", type=int, default=8, help="rolling cache window, latent frames")
    p.add_argument("--sink", type=int, default=1, help="sink latent frames")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 757, 522], help="few-step list (0..1000 grid)")
    p.add_argument("--strength", type=float, default=0.7, help="video-to-video strength (0.7: 2 forwards)")
    p.add_argument("--t2v-steps", type=int, nargs="+", default=[1000, 750, 500, 250], help="text-to-video rows")
    p.add_argument("--chunks", type=int, default=6, help="timed chunks per row")
    p.add_argument(
        "--budget-s", type=float, nargs="+", default=[float("inf")], help="per size: start no row after this many s"
    )
    p.add_argument("--warmup", type=int, default=4, help="warm-up chunks (at least until the cache is full)")
    p.add_argument("--camera-fps", type=float, default=30.0, help="camera rate for the first frame's capture wait")
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to update (default: the repo's, on CUDA)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of FPS per row (default: gpu.png beside RESULTS)")
    p.add_argument("--json", type=Path, default=None, help="raw measurements")
    p.set_defaults(func=run)
