"""The model side of live stylisation: a causal DiT, a video autoencoder and a text encoder turned into a
blocking chunk-processing API for the engine's worker thread.

    pipe = load_pipeline(ModelSettings())   # vidfx.loading: "tiny-random", "default", a weights or release folder
    state = pipe.new_stream_state(StreamParams(prompts=(("a watercolor", 1.0),)))
    out = pipe.process_chunk(state, frames, params, pts_us)   # uint8 (T, H, W, 3) → uint8 (T, H, W, 3)

One chunk: pixels → resize to the model resolution → causal encode (the stream's `StreamEncoder`) → noise to
the strength's σ with the stream's generator → few-step denoise against the stream's rolling KV cache and the
prompt's cross-attention cache (`generation.denoise_chunk`, or the batched form below for several streams)
→ causal decode → (a model with a detail refiner: the decoded frames at 2× with the input frames as guide, the
autoencoder having encoded their 2×2 means) → resize back to the input size. A stream's first chunk holds
1 + k·(n−1) frames, every later one k·n (k = the autoencoder's temporal factor, n = latent frames per
chunk): `frames_per_chunk`.

Nothing here knows about asyncio, sockets or sessions; the engine owns threads and time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vidfx.autoencoder.base import StreamDecoder, StreamEncoder, VideoAutoencoder
from vidfx.autoencoder.refiner import DetailRefiner, pooled_text
from vidfx.config import ModelSettings, StreamSettings
from vidfx.frames import Fit, FrameGeometry, clip_to_rgb, frames_to_tensor, tensor_to_rgb, to_host
from vidfx.generation import denoise_chunk, write_context
from vidfx.model.kv_cache import CrossAttnCache, KVCache
from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import chunk_schedule, noise_to, velocity_to_x0
from vidfx.text.base import TextEncoder, blend, interpolate
from vidfx.text.cache import PromptEmbeddings

# -- per-stream parameters and the pure functions on them ---------------------------------------------------------

_MODEL, _STREAM = ModelSettings.model_fields, StreamSettings.model_fields


@dataclass(frozen=True)
class StreamParams:
    """What a client steers. Immutable: the engine hands the worker a snapshot with every chunk.
    Defaults are those of `vidfx.config` (the one place defaults live); `from_settings` applies a node's."""

    prompts: tuple[tuple[str, float], ...] = ((_STREAM["prompt"].default, 1.0),)  # weighted blend
    transition_s: float = _STREAM["transition_s"].default  # from the previous blend to this one (stream time)
    interpolation: Literal["linear", "slerp"] = _STREAM["interpolation"].default
    strength: float = _MODEL["strength"].default  # how far the input is noised: 1 ignores it
    seed: int = _MODEL["seed"].default
    # Same noise every chunk (the generator reseeded per chunk): a still region gets the same draw each time,
    # so it stays still instead of shimmering with fresh noise at every chunk (StreamDiffusion does likewise).
    fixed_noise: bool = _MODEL["fixed_noise"].default
    steps: tuple[int, ...] = tuple(_MODEL["steps"].default)
    motion_aware: bool = _STREAM["motion_aware"].default
    motion_range: float = _STREAM["motion_range"].default  # ± swing of strength with motion
    motion_ref: float = _STREAM["motion_ref"].default  # mean |Δpixel| in [0, 1] counted as full motion

    def with_(self, **changes: object) -> StreamParams:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, model: ModelSettings, stream: StreamSettings) -> StreamParams:
        return cls(
            prompts=((stream.prompt, 1.0),),
            transition_s=stream.transition_s,
            interpolation=stream.interpolation,
            strength=model.strength,
            seed=model.seed,
            fixed_noise=model.fixed_noise,
            steps=tuple(model.steps),
            motion_aware=stream.motion_aware,
            motion_range=stream.motion_range,
            motion_ref=stream.motion_ref,
        )


def motion_strength(motion: float, params: StreamParams) -> float:
    """StreamDiffusionV2-style noise control: a still scene gets up to +range more noise (stronger style, the
    cache keeps it stable), fast motion up to −range (the output follows the input instead of smearing)."""
    amount = min(max(motion / params.motion_ref, 0.0), 1.0)  # 0 = still, 1 = full motion
    s = params.strength + params.motion_range * (1.0 - 2.0 * amount)
    return min(max(s, 0.02), 1.0)


class MotionMeter:
    """Smoothed mean absolute frame difference of one stream.

    Lifecycle: created empty; `update(chunk)` compares the chunk's frames with each other and with the last
    frame of the previous chunk, and folds the result into an exponential average; `reset()` forgets both.
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        self.smoothing = smoothing
        self.last: torch.Tensor | None = None  # (3, h, w) in [-1, 1]
        self.level: float | None = None

    def update(self, pixels: torch.Tensor) -> float:
        """pixels: (1, 3, T, h, w) in [-1, 1] → smoothed mean |Δ| in [0, 1] units."""
        frames = pixels[0].transpose(0, 1)  # (T, 3, h, w)
        if self.last is not None:
            frames = torch.cat([self.last[None], frames])
        self.last = frames[-1].clone()
        if frames.shape[0] < 2:
            return self.level or 0.0
        m = float((frames[1:] - frames[:-1]).abs().mean()) / 2.0
        self.level = m if self.level is None else self.smoothing * self.level + (1 - self.smoothing) * m
        return self.level

    def reset(self) -> None:
        self.last, self.level = None, None


class PromptSchedule:
    """The conditioning of one stream over stream time: a blend, or a timed transition between two.

    Lifecycle: created on one embedding; `retarget` starts a transition from wherever the schedule is at that
    moment to a new embedding (so a change mid-transition continues smoothly); `at(t)` is pure.
    Embeddings are (max_tokens, text_dim) fp32.
    """

    def __init__(self, embedding: torch.Tensor, mode: Literal["linear", "slerp"]) -> None:
        self.source = self.target = embedding
        self.start_us = 0
        self.duration_us = 0
        self.mode: Literal["linear", "slerp"] = mode

    def retarget(
        self, embedding: torch.Tensor, now_us: int, duration_s: float, mode: Literal["linear", "slerp"]
    ) -> None:
        self.source = self.at(now_us)
        self.target = embedding
        self.start_us = now_us
        self.duration_us = int(duration_s * 1e6)
        self.mode = mode

    def alpha(self, now_us: int) -> float:
        if self.duration_us <= 0:
            return 1.0
        return min(max((now_us - self.start_us) / self.duration_us, 0.0), 1.0)

    def at(self, now_us: int) -> torch.Tensor:
        a = self.alpha(now_us)
        return self.target if a >= 1.0 else interpolate(self.source, self.target, a, self.mode)


# -- one stream's model state ---------------------------------------------------------------------------------


@dataclass
class StreamState:
    """Everything the model remembers about one stream between chunks.

    Lifecycle: created by `StylePipeline.new_stream_state`; every chunk advances the autoencoder's causal
    caches, the rolling KV cache, the noise generator and the motion meter, and may retarget the prompt
    schedule (new cross-attention cache) or reseed; `reset()` forgets the video (next chunk is a stream's first
    chunk again) but keeps the prompt and parameters.
    """

    encoder: StreamEncoder
    decoder: StreamDecoder
    kv: KVCache
    params: StreamParams
    prompt: PromptSchedule
    generator: torch.Generator
    motion: MotionMeter = field(default_factory=MotionMeter)
    cross: CrossAttnCache | None = None
    cross_of: torch.Tensor | None = None  # the embedding `cross` was computed from
    chunks: int = 0
    last_strength: float = 0.0
    # The model resolution (h, w) of this stream: chosen from its first frame (`StylePipeline.stream_geometry`),
    # kept until `reset()`; None before the first chunk.
    model_size: tuple[int, int] | None = None
    # A refiner's last base frame (1, 3, h, w), the running blend of the decoded frames (`refiner_smoothing`).
    refiner_base: torch.Tensor | None = None

    @property
    def first(self) -> bool:
        """Whether the next chunk is the stream's first (1 + k·(n−1) frames)."""
        return self.encoder.cache.at_start

    def reset(self) -> None:
        """Start over as a fresh stream with the current parameters would: same seed, prompt settled."""
        self.encoder.reset()
        self.decoder.reset()
        self.kv.reset()
        self.motion.reset()
        self.model_size = None
        self.refiner_base = None
        self.generator.manual_seed(self.params.seed)
        self.prompt = PromptSchedule(self.prompt.target, self.params.interpolation)


@dataclass
class ChunkRequest:
    state: StreamState
    frames: np.ndarray  # uint8 (T, H, W, 3)
    params: StreamParams
    pts_us: int = 0


@dataclass
class _Prepared:
    """A chunk between encode and decode."""

    request: ChunkRequest
    geometry: FrameGeometry  # input size ↔ model size
    x: torch.Tensor  # (1, C, n, h, w) noised to sigmas[0]
    sigmas: list[float]
    timesteps: list[float]  # what the DiT is fed at each σ (`sampling.chunk_schedule`)
    source: torch.Tensor | None = None  # the clean input latent, for a source-conditioned DiT
    guide: torch.Tensor | None = None  # the input frames (1, 3, T, H, W) at the model resolution, for a refiner
    text: torch.Tensor | None = None  # a prompt-conditioned refiner's pooled embedding of this chunk's prompt
    x0: torch.Tensor | None = None


@dataclass
class DecodingChunks:
    """A batch's denoised chunks on their way to frames on the host, while the worker goes on with the next batch.

    Lifecycle: made by `StylePipeline.start_decode` from `denoise_chunks`' output; `StylePipeline.collect` (once,
    on the worker thread) returns each chunk's frames. On CUDA with a decode stream the decode and the copy to
    pinned host memory were launched on that stream, so they run beside the next batch's encode and denoise, and
    `collect` waits for them; without one the decode is deferred, and `collect` runs it.
    """

    prepared: list[_Prepared]
    host: list[torch.Tensor | Exception] | None = None  # launched: pinned (T, H, W, 3) uint8, filled by `done`
    done: torch.cuda.Event | None = None  # recorded on the decode stream after the last copy


# -- the pipeline ------------------------------------------------------------------------------------------------


class StylePipeline:
    """A causal DiT + a video autoencoder + a text encoder, streaming chunk by chunk. Blocking; one thread."""

    def __init__(
        self,
        dit: CausalDiT,
        autoencoder: VideoAutoencoder,
        text: TextEncoder,
        settings: ModelSettings,
        name: str = "",
        looks: tuple[str, ...] = (),
        profile: str = "",
        refiner: DetailRefiner | None = None,
    ) -> None:
        if text.text_dim != dit.cfg.text_dim or text.max_tokens > dit.cfg.text_len:
            raise ValueError(
                f"text encoder ({text.max_tokens}×{text.text_dim}) does not fit the DiT "
                f"({dit.cfg.text_len}×{dit.cfg.text_dim})"
            )
        if autoencoder.latent_channels != dit.cfg.out_dim:
            raise ValueError(f"autoencoder has {autoencoder.latent_channels} latent channels, DiT {dit.cfg.out_dim}")
        self.dit = dit.eval()
        self.autoencoder = autoencoder.eval()
        self.refiner: DetailRefiner | None = refiner.eval() if refiner is not None else None
        s = self.pixel_factor * dit.cfg.patch_size[1]
        if settings.width % s or settings.height % s:
            raise ValueError(f"model resolution {settings.width}x{settings.height} must be a multiple of {s}")
        self.text = text
        self.embeddings = PromptEmbeddings(text, capacity=256)
        self.settings = settings
        self.name = name
        self.looks = looks  # prompts of the looks the model is known to render (its card's); () if unknown
        self.profile = profile  # the release profile whose sampler settings apply ("" for our own models)
        self.latent_hw = (settings.height // self.pixel_factor, settings.width // self.pixel_factor)
        self.pinned_transfer = False  # frames through pinned host memory (CUDA; vidfx.accel sets it)
        # The engine decodes each batch while the worker encodes and denoises the next: on `decode_stream` (CUDA,
        # vidfx.accel sets both), or without one deferred to the worker's next call (same work, in another order).
        self.overlap_decode = False
        self.decode_stream: torch.cuda.Stream | None = None

    # -- geometry ------------------------------------------------------------------------------------------
    def chunk_latents(self, first: bool) -> int:
        """Latent frames of a stream's first chunk, or of every later one."""
        s = self.settings
        return s.first_chunk_latents or s.latent_frames_per_chunk if first else s.latent_frames_per_chunk

    def frames_per_chunk(self, first: bool) -> int:
        return self.autoencoder.frames_for_latents(self.chunk_latents(first), first)

    @property
    def pixel_factor(self) -> int:
        """Model-resolution pixels per latent pixel along each side: the autoencoder's, × the refiner's scale
        where there is one (the autoencoder then works at a fraction of the model resolution, the refiner
        renders the rest)."""
        return self.autoencoder.spatial_factor * (self.refiner.scale if self.refiner is not None else 1)

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device

    def geometry(self, camera: tuple[int, int]) -> FrameGeometry:
        """How frames of `camera` (H, W) map to the model resolution and back (`ModelSettings.fit`; under
        `aspect` the model resolution follows the camera's aspect, see vidfx.frames)."""
        multiple = self.pixel_factor * self.dit.cfg.patch_size[1]
        return FrameGeometry.for_camera(
            camera, (self.settings.height, self.settings.width), self.settings.fit, multiple
        )

    def stream_geometry(self, state: StreamState, camera: tuple[int, int]) -> FrameGeometry:
        """`geometry` of one stream: its model resolution is chosen on its first chunk (from that frame's
        size) and kept until `reset()`; the stream's KV cache is sized for that latent grid. Later frames of
        another size map onto the same resolution (under `aspect`, into its box of their own aspect)."""
        if state.model_size is None or state.first:
            state.model_size = self.geometry(camera).model
            f, (_, ph, pw) = self.pixel_factor, self.dit.cfg.patch_size
            lh, lw = state.model_size[0] // f, state.model_size[1] // f
            if (lh // ph) * (lw // pw) != state.kv.tokens_per_frame:  # another grid: a cache of its size
                state.kv = self.dit.new_kv_cache(1, lh, lw, self.settings.window_frames, self.settings.sink_frames)
        return FrameGeometry(camera, state.model_size, Fit(self.settings.fit))

    def schedule(self, steps: Sequence[int], strength: float) -> list[tuple[float, float]]:
        """(t, σ) of each step of a chunk at `strength`, read the way the model's release reads step lists."""
        m = self.settings
        return chunk_schedule(steps, strength, m.shift, m.warp_steps, m.timestep_pairing)

    def sampler_status(self, params: StreamParams) -> dict[str, object]:
        """How a chunk is sampled at the stream's base strength (for `status`)."""
        pairs = self.schedule(params.steps, params.strength)
        m = self.settings
        return {
            "profile": self.profile or None,
            "steps": list(params.steps),
            "warp": m.warp_steps,
            "shift": m.shift,
            "pairing": m.timestep_pairing,
            "timesteps": [round(t, 3) for t, _ in pairs],
            "sigmas": [round(sg, 6) for _, sg in pairs],
            "latent_frames_per_chunk": m.latent_frames_per_chunk,
            "sink_frames": m.sink_frames,
            "window_frames": m.window_frames,
            "context_sigma": m.context_sigma,
            "cfg": None,
        }

    # -- streams -------------------------------------------------------------------------------------------
    def embed(self, prompts: Sequence[tuple[str, float]]) -> torch.Tensor:
        """A weighted prompt blend → (max_tokens, text_dim) fp32."""
        embs = self.embeddings.get_many([p for p, _ in prompts])
        return blend([(embs[i], w) for i, (_, w) in enumerate(prompts)])

    def prompts_ready(self, prompts: Sequence[tuple[str, float]]) -> bool:
        """Whether every prompt of a blend is in the embedding cache (`embed` would not run the encoder)."""
        return all(p in self.embeddings for p, _ in prompts)

    def new_stream_state(self, params: StreamParams) -> StreamState:
        h, w = self.latent_hw
        return StreamState(
            encoder=self.autoencoder.stream_encoder(),
            decoder=self.autoencoder.stream_decoder(),
            kv=self.dit.new_kv_cache(1, h, w, self.settings.window_frames, self.settings.sink_frames),
            params=params,
            prompt=PromptSchedule(self.embed(params.prompts), params.interpolation),
            generator=torch.Generator(device=self.device).manual_seed(params.seed),
        )

    def _apply(self, state: StreamState, params: StreamParams, pts_us: int) -> None:
        """Bring the stream's state to the parameters of this chunk."""
        old = state.params
        if params.prompts != old.prompts:
            state.prompt.retarget(self.embed(params.prompts), pts_us, params.transition_s, params.interpolation)
        if params.seed != old.seed:
            state.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        state.params = params
        embedding = state.prompt.at(pts_us)
        if state.cross is None or embedding is not state.cross_of:
            state.cross = self.dit.cross_attention_cache(embedding[None].to(self.device))
            state.cross_of = embedding

    # -- one chunk, or several streams' chunks at once --------------------------------------------------------
    def process_chunk(
        self, state: StreamState, frames: np.ndarray, params: StreamParams | None = None, pts_us: int = 0
    ) -> np.ndarray:
        """uint8 frames (T, H, W, 3) of one stream → stylised uint8 frames of the same shape."""
        return self.process_chunks([ChunkRequest(state, frames, params or state.params, pts_us)])[0]

    @torch.no_grad()
    def process_chunks(self, requests: Sequence[ChunkRequest], batch: bool = True) -> list[np.ndarray]:
        """Several streams' chunks; the DiT runs once for every group that can share a forward (same σ list and
        cache length), unless `batch` is False. Results are in request order."""
        return [self._decode(p) for p in self.denoise_chunks(requests, batch)]

    @torch.no_grad()
    def denoise_chunks(self, requests: Sequence[ChunkRequest], batch: bool = True) -> list[_Prepared]:
        """`process_chunks` up to the denoised latents (each request's `x0`): every stream state but the
        decoder's has advanced. Decode them with `start_decode` and `collect`, in the order they were denoised."""
        prepared = [self._encode(r) for r in requests]
        groups: dict[tuple, list[_Prepared]] = {}
        for p in prepared:
            key = (tuple(p.sigmas), p.request.state.kv.visible_frames, tuple(p.x.shape)) if batch else (id(p),)
            groups.setdefault(key, []).append(p)
        for group in groups.values():
            if len(group) == 1:
                p = group[0]
                st = p.request.state
                assert st.cross is not None
                p.x0 = denoise_chunk(
                    self.dit, p.x, p.sigmas, st.cross, st.kv, st.generator, self.settings.context_sigma, p.source,
                    p.timesteps,
                )  # fmt: skip
            else:
                self._denoise_batch(group)
        return prepared

    def start_decode(self, prepared: list[_Prepared]) -> DecodingChunks:
        """Launch the decode of denoised chunks on the decode stream (CUDA), or defer it (`DecodingChunks`)."""
        side = self.decode_stream
        if side is None:
            return DecodingChunks(prepared)
        side.wait_stream(torch.cuda.current_stream(self.device))  # the latents are ready before it reads them
        host: list[torch.Tensor | Exception] = []
        with torch.no_grad(), torch.cuda.stream(side):
            for p in prepared:
                for made_on_main in (p.x0, p.guide):
                    if made_on_main is not None:  # not reused by the main stream until the decode stream is done
                        made_on_main.record_stream(side)
                try:
                    rgb = self._decode_rgb(p)
                    host.append(torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True).copy_(rgb, non_blocking=True))
                except Exception as exc:  # this chunk's; the batch's other chunks go on
                    host.append(exc)
            done = torch.cuda.Event()
            done.record(side)
        return DecodingChunks(prepared, host, done)

    @torch.no_grad()
    def collect(self, decoding: DecodingChunks) -> list[np.ndarray | Exception]:
        """Each chunk's uint8 frames (T, H, W, 3), or the exception its decode raised (`DecodingChunks`)."""
        if decoding.host is None:
            out: list[np.ndarray | Exception] = []
            for p in decoding.prepared:
                try:
                    out.append(self._decode(p))
                except Exception as exc:
                    out.append(exc)
            return out
        assert decoding.done is not None
        decoding.done.synchronize()
        return [h if isinstance(h, Exception) else h.numpy() for h in decoding.host]

    @torch.no_grad()
    def generate_chunk(
        self, state: StreamState, size: tuple[int, int], image: np.ndarray | None = None, pts_us: int = 0
    ) -> np.ndarray:
        """The stream's next chunk from noise (text-to-video): uint8 (T, H, W, 3) frames of `size` (H, W).

        `image` (H, W, 3) uint8, only for a stream's first chunk: it becomes that chunk (one frame, through the
        autoencoder; as it is for a model with a refiner) and the context every later chunk attends to —
        CausVid's zero-shot image-to-video.
        """
        if image is not None and state.chunks:
            raise ValueError("an image can only start a stream (its first chunk)")
        self._apply(state, state.params, pts_us)
        assert state.cross is not None
        n = self.chunk_latents(state.chunks == 0)  # text-to-video never encodes: `state.first` stays True
        geometry = self.stream_geometry(state, image.shape[:2] if image is not None else size)
        guide = None
        if image is not None:
            guide = frames_to_tensor(image[None], geometry=geometry, device=self.device)
            x0 = state.encoder.encode(self._autoencoder_input(guide)).float()
            write_context(self.dit, x0, state.cross, state.kv, state.generator, self.settings.context_sigma)
        else:
            h, w = (side // self.pixel_factor for side in geometry.model)
            noise = torch.randn((1, self.dit.cfg.out_dim, n, h, w), generator=state.generator, device=self.device).to(
                self.dit.patch_embedding.weight.dtype
            )
            pairs = self.schedule(state.params.steps, 1.0)
            x0 = denoise_chunk(
                self.dit, noise, [sg for _, sg in pairs], state.cross, state.kv, state.generator,
                self.settings.context_sigma, timesteps=[t for t, _ in pairs],
            )  # fmt: skip
        decoded = state.decoder.decode(x0.to(self.autoencoder.param_dtype))  # also advances the decoder's cache
        if image is not None and guide is not None and self.refiner is not None:
            # the image is the stream's context, not a frame of the look: shown as it is (a refiner renders the
            # prompt's look, and the image's detail is finer than the autoencoder keeps), no blend carries it on
            pixels = guide.float()
            state.refiner_base = None
        else:
            pixels = self._refine(state, decoded, guide, geometry, self._refiner_text(state))
        state.chunks += 1
        return tensor_to_rgb(pixels, FrameGeometry(size, geometry.model, geometry.fit))

    def _autoencoder_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames at the model resolution (1, 3, T, H, W) → what the autoencoder encodes: the same, or with a
        refiner their 2×2 means (the refiner keeps the full frames as its guide)."""
        if self.refiner is None:
            return pixels
        s = self.refiner.scale
        return F.avg_pool3d(pixels, (1, s, s))

    def _refiner_text(self, state: StreamState) -> torch.Tensor | None:
        """What a prompt-conditioned refiner reads: the pooled embedding the chunk's DiT ran with (transitions
        included); None for a refiner without text, or none at all."""
        if self.refiner is None or not self.refiner.cfg.text_dim or state.cross_of is None:
            return None
        return pooled_text(state.cross_of)

    def _refine(
        self,
        state: StreamState,
        decoded: torch.Tensor,
        guide: torch.Tensor | None,
        geometry: FrameGeometry,
        text: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decoded frames (1, 3, T, h, w) → float frames at the model resolution: the refiner's, given the
        chunk's input frames (1, 3, T, H, W) as its guide (None: text-to-video), the prompt (`_refiner_text`, taken
        when the chunk was denoised) and where the camera's picture lies in the model frame (`geometry.box`), or
        the decoded ones as they are.

        The refiner's base is the running blend of the stream's decoded frames (`refiner_smoothing` a = weight of
        the last blend: b_t = a·b_{t−1} + (1 − a)·d_t; a stream's first frame as it is). The DiT's frames change
        from chunk to chunk where a still scene does not, and the refiner passed that on as flicker; its detail
        and motion come from the guide, so the blend steadies the look without smearing the picture (measured on
        real footage: flicker 1.56 → 0.96× the look's at 0.75, the gain toward the look unchanged)."""
        decoded = decoded.float()
        if self.refiner is None:
            return decoded
        a = self.settings.refiner_smoothing
        blended, last = [], state.refiner_base
        for t in range(decoded.shape[2]):
            frame = decoded[:, :, t]
            last = frame if last is None or last.shape != frame.shape or a == 0 else a * last + (1 - a) * frame
            blended.append(last)
        state.refiner_base = last
        base = torch.cat(blended)  # (T, 3, h, w)
        frames = guide[0].transpose(0, 1).to(base) if guide is not None else None
        b = geometry.box
        return self.refiner(base, frames, text, box=(b.top, b.left, b.height, b.width)).transpose(0, 1)[None]

    def _encode(self, request: ChunkRequest) -> _Prepared:
        st = request.state
        frames = request.frames
        expected = self.frames_per_chunk(st.first)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] != expected:
            raise ValueError(f"expected uint8 frames ({expected}, H, W, 3), got {frames.dtype} {frames.shape}")
        self._apply(st, request.params, request.pts_us)
        geometry = self.stream_geometry(st, (frames.shape[1], frames.shape[2]))
        pixels = frames_to_tensor(frames, geometry=geometry, device=self.device, pinned=self.pinned_transfer)
        z = st.encoder.encode(self._autoencoder_input(pixels)).float()  # (1, C, n, h, w)
        strength = request.params.strength
        if request.params.motion_aware:
            strength = motion_strength(st.motion.update(pixels), request.params)
        st.last_strength = strength
        pairs = self.schedule(request.params.steps, strength)
        sigmas = [sg for _, sg in pairs]
        if request.params.fixed_noise:
            st.generator.manual_seed(request.params.seed)  # this chunk's draws (here and between steps) as the last's
        noise = torch.randn(z.shape, generator=st.generator, device=z.device, dtype=z.dtype)
        source = z if self.dit.cfg.condition_dim == self.dit.cfg.out_dim else None  # a source-conditioned DiT
        guide = pixels if self.refiner is not None else None
        return _Prepared(
            request, geometry, noise_to(z, noise, sigmas[0]), sigmas, [t for t, _ in pairs], source, guide,
            self._refiner_text(st),
        )  # fmt: skip

    def _decode(self, p: _Prepared) -> np.ndarray:
        return to_host(self._decode_rgb(p), self.pinned_transfer).numpy()

    def _decode_rgb(self, p: _Prepared) -> torch.Tensor:
        """A denoised chunk → its camera-sized uint8 frames (T, H, W, 3) on the model's device; advances the
        stream's decoder (and refiner base), so a stream's chunks go through here in order."""
        assert p.x0 is not None
        st = p.request.state
        decoded = st.decoder.decode(p.x0.to(self.autoencoder.param_dtype))
        pixels = self._refine(st, decoded, p.guide, p.geometry, p.text)  # [-1, 1]
        st.chunks += 1
        return clip_to_rgb(pixels, p.geometry)

    def _denoise_batch(self, group: list[_Prepared]) -> None:
        """Few-step denoise + cache write of B streams' chunks in one forward per step.

        The streams' caches are laid side by side in a temporary cache holding each stream's visible frames in
        stream order (their RoPE ranks are unchanged), the chunks run as one batch, and each stream's cache then
        receives its own chunk's keys/values. Noise is drawn from each stream's own generator, so the result
        equals running the streams one by one.
        """
        states = [p.request.state for p in group]
        x = torch.cat([p.x for p in group])  # (B, C, n, h, w)
        n = x.shape[2]
        visible = states[0].kv.visible_frames
        first = states[0].kv
        joint = KVCache(
            first.num_layers, len(group), self.dit.cfg.num_heads, self.dit.cfg.head_dim, first.tokens_per_frame,
            window_frames=visible + n, sink_frames=0, dtype=first.k.dtype, device=first.k.device,
        )  # fmt: skip
        if visible:
            orders = [st.kv.visible_order() for st in states]
            for layer in range(joint.num_layers):
                past = [st.kv.read(layer, o) for st, o in zip(states, orders, strict=True)]
                joint.write(layer, torch.cat([k for k, _ in past]), torch.cat([v for _, v in past]))
            joint.commit_chunk(visible)
        cross = CrossAttnCache(
            [torch.cat([st.cross.k[i] for st in states]) for i in range(joint.num_layers)],  # type: ignore[union-attr]
            [torch.cat([st.cross.v[i] for st in states]) for i in range(joint.num_layers)],  # type: ignore[union-attr]
        )

        def fresh_noise(like: torch.Tensor) -> torch.Tensor:
            shape = like[:1].shape
            return torch.cat(
                [torch.randn(shape, generator=st.generator, device=like.device, dtype=like.dtype) for st in states]
            )

        sigmas = group[0].sigmas
        sources = [p.source for p in group if p.source is not None]  # all or none: one DiT
        source = torch.cat(sources) if sources else None
        x0 = x
        for i, (sigma, t_value) in enumerate(zip(sigmas, group[0].timesteps, strict=True)):
            t = torch.full((x.shape[0],), t_value, device=x.device)
            v = self.dit.forward_chunk(x, t, cross, joint, condition=source)
            x0 = velocity_to_x0(x.float(), v, sigma)
            if i + 1 < len(sigmas):
                x = noise_to(x0, fresh_noise(x0), sigmas[i + 1])
        ctx_sigma = self.settings.context_sigma
        ctx = noise_to(x0, fresh_noise(x0), ctx_sigma) if ctx_sigma > 0 else x0
        t = torch.full((x.shape[0],), 1000.0 * ctx_sigma, device=x.device)
        self.dit.forward_chunk(ctx, t, cross, joint, write_cache=True, condition=source)
        # This chunk's slots in the joint cache, built on the device once (not per layer and stream).
        tpf = joint.tokens_per_frame
        new_slots = torch.arange(visible * tpf, (visible + n) * tpf, device=joint.device)
        for layer in range(joint.num_layers):
            k, v = joint.read(layer, new_slots)  # (B, n·tokens, heads, head_dim), one gather per layer
            for b, st in enumerate(states):
                st.kv.write(layer, k[b : b + 1], v[b : b + 1])
        for b, (p, st) in enumerate(zip(group, states, strict=True)):
            st.kv.commit_chunk(n)
            p.x0 = x0[b : b + 1]

    def chunks_to_fill(self) -> int:
        """Chunks of a stream up to and including its first with a full cache: every later chunk has that one's
        shapes, so this many warm a compiled model up for the stream's whole life (at its resolution)."""
        s = self.settings
        rest = max(0, s.sink_frames + s.window_frames - self.chunk_latents(True))
        return 2 + -(-rest // s.latent_frames_per_chunk)

    def warm_up(self, chunks: int, state: StreamState | None = None) -> StreamState:
        """Run `chunks` chunks of a throwaway stream (first kernels, allocator, prompt cache); pass the returned
        state back in to continue the same stream."""
        state = state or self.new_stream_state(StreamParams())
        rng = np.random.default_rng(state.chunks)
        for _ in range(chunks):
            n = self.frames_per_chunk(state.first)
            frames = rng.integers(0, 256, (n, self.settings.height, self.settings.width, 3), dtype=np.uint8)
            self.process_chunk(state, frames)
        return state
