"""The model side of live stylisation: a causal DiT, a video autoencoder and a text encoder turned into a
blocking chunk-processing API for the engine's worker thread.

    pipe = load_pipeline(ModelSettings())                 # "tiny-random", "default" or a weights folder
    state = pipe.new_stream_state(StreamParams(prompts=(("a watercolor", 1.0),)))
    out = pipe.process_chunk(state, frames, params, pts_us)   # uint8 (T, H, W, 3) → uint8 (T, H, W, 3)

One chunk: pixels → resize to the model resolution → causal encode (the stream's `StreamEncoder`) → noise to
the strength's σ with the stream's generator → few-step denoise against the stream's rolling KV cache and the
prompt's cross-attention cache (`generation.denoise_chunk`, or the batched form below for several streams)
→ causal decode → resize back to the input size. A stream's first chunk holds 1 + k·(n−1) frames, every
later one k·n (k = the autoencoder's temporal factor, n = latent frames per chunk): `frames_per_chunk`.

Nothing here knows about asyncio, sockets or sessions; the engine owns threads and time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vidfx.autoencoder.base import StreamDecoder, StreamEncoder, VideoAutoencoder
from vidfx.config import ModelSettings, StreamSettings
from vidfx.frames import Fit, FrameGeometry, frames_to_tensor, tensor_to_rgb
from vidfx.generation import denoise_chunk, write_context
from vidfx.model.kv_cache import CrossAttnCache, KVCache
from vidfx.model.wan_dit import CausalDiT, DiTConfig
from vidfx.sampling import chunk_sigmas, noise_to, step_sigmas, velocity_to_x0
from vidfx.text.base import TextEncoder, blend, interpolate
from vidfx.text.cache import PromptEmbeddings
from vidfx.weights import CheckpointError, load_into, load_state_dict

# The model `vidfx serve` uses unless told otherwise: the one trained by our recipe and shipped in the package
# (vidfx/weights/default/MODEL_CARD.md), and the look classifier trained on its dataset (for `vidfx eval`).
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default"
MODEL_ALIASES: dict[str, str] = {"default": str(DEFAULT_WEIGHTS)}
DEFAULT_CLASSIFIER = DEFAULT_WEIGHTS / "look_classifier.safetensors"


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
    source: torch.Tensor | None = None  # the clean input latent, for a source-conditioned DiT
    x0: torch.Tensor | None = None


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
    ) -> None:
        if text.text_dim != dit.cfg.text_dim or text.max_tokens > dit.cfg.text_len:
            raise ValueError(
                f"text encoder ({text.max_tokens}×{text.text_dim}) does not fit the DiT "
                f"({dit.cfg.text_len}×{dit.cfg.text_dim})"
            )
        if autoencoder.latent_channels != dit.cfg.out_dim:
            raise ValueError(f"autoencoder has {autoencoder.latent_channels} latent channels, DiT {dit.cfg.out_dim}")
        s = autoencoder.spatial_factor * dit.cfg.patch_size[1]
        if settings.width % s or settings.height % s:
            raise ValueError(f"model resolution {settings.width}x{settings.height} must be a multiple of {s}")
        self.dit = dit.eval()
        self.autoencoder = autoencoder.eval()
        self.text = text
        self.embeddings = PromptEmbeddings(text, capacity=256)
        self.settings = settings
        self.name = name
        self.looks = looks  # prompts of the looks the model is known to render (its card's); () if unknown
        self.latent_hw = (settings.height // autoencoder.spatial_factor, settings.width // autoencoder.spatial_factor)

    # -- geometry ------------------------------------------------------------------------------------------
    def frames_per_chunk(self, first: bool) -> int:
        return self.autoencoder.frames_for_latents(self.settings.latent_frames_per_chunk, first)

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device

    def geometry(self, camera: tuple[int, int]) -> FrameGeometry:
        """How frames of `camera` (H, W) map to the model resolution and back (`ModelSettings.fit`; under
        `aspect` the model resolution follows the camera's aspect, see vidfx.frames)."""
        multiple = self.autoencoder.spatial_factor * self.dit.cfg.patch_size[1]
        return FrameGeometry.for_camera(
            camera, (self.settings.height, self.settings.width), self.settings.fit, multiple
        )

    def stream_geometry(self, state: StreamState, camera: tuple[int, int]) -> FrameGeometry:
        """`geometry` of one stream: its model resolution is chosen on its first chunk (from that frame's
        size) and kept until `reset()`; the stream's KV cache is sized for that latent grid. Later frames of
        another size map onto the same resolution (under `aspect`, stretched to it)."""
        if state.model_size is None or state.first:
            state.model_size = self.geometry(camera).model
            f, (_, ph, pw) = self.autoencoder.spatial_factor, self.dit.cfg.patch_size
            lh, lw = state.model_size[0] // f, state.model_size[1] // f
            if (lh // ph) * (lw // pw) != state.kv.tokens_per_frame:  # another grid: a cache of its size
                state.kv = self.dit.new_kv_cache(1, lh, lw, self.settings.window_frames, self.settings.sink_frames)
        return FrameGeometry(camera, state.model_size, Fit(self.settings.fit))

    # -- streams -------------------------------------------------------------------------------------------
    def embed(self, prompts: Sequence[tuple[str, float]]) -> torch.Tensor:
        """A weighted prompt blend → (max_tokens, text_dim) fp32."""
        embs = self.embeddings.get_many([p for p, _ in prompts])
        return blend([(embs[i], w) for i, (_, w) in enumerate(prompts)])

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
                    self.dit, p.x, p.sigmas, st.cross, st.kv, st.generator, self.settings.context_sigma, p.source
                )
            else:
                self._denoise_batch(group)
        return [self._decode(p) for p in prepared]

    @torch.no_grad()
    def generate_chunk(
        self, state: StreamState, size: tuple[int, int], image: np.ndarray | None = None, pts_us: int = 0
    ) -> np.ndarray:
        """The stream's next chunk from noise (text-to-video): uint8 (T, H, W, 3) frames of `size` (H, W).

        `image` (H, W, 3) uint8, only for a stream's first chunk: it becomes that chunk (one frame, through the
        autoencoder) and the context every later chunk attends to — CausVid's zero-shot image-to-video.
        """
        if image is not None and state.chunks:
            raise ValueError("an image can only start a stream (its first chunk)")
        self._apply(state, state.params, pts_us)
        assert state.cross is not None
        n = self.settings.latent_frames_per_chunk
        geometry = self.stream_geometry(state, image.shape[:2] if image is not None else size)
        if image is not None:
            x0 = state.encoder.encode(frames_to_tensor(image[None], geometry=geometry, device=self.device)).float()
            write_context(self.dit, x0, state.cross, state.kv, state.generator, self.settings.context_sigma)
        else:
            h, w = (side // self.autoencoder.spatial_factor for side in geometry.model)
            noise = torch.randn((1, self.dit.cfg.out_dim, n, h, w), generator=state.generator, device=self.device).to(
                self.dit.patch_embedding.weight.dtype
            )
            sigmas = step_sigmas(list(state.params.steps))
            x0 = denoise_chunk(
                self.dit, noise, sigmas, state.cross, state.kv, state.generator, self.settings.context_sigma
            )
        pixels = state.decoder.decode(x0.to(self.autoencoder.param_dtype))  # the decoder tracks first/later
        state.chunks += 1
        return tensor_to_rgb(pixels.float(), FrameGeometry(size, geometry.model, geometry.fit))

    def _encode(self, request: ChunkRequest) -> _Prepared:
        st = request.state
        frames = request.frames
        expected = self.frames_per_chunk(st.first)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] != expected:
            raise ValueError(f"expected uint8 frames ({expected}, H, W, 3), got {frames.dtype} {frames.shape}")
        self._apply(st, request.params, request.pts_us)
        geometry = self.stream_geometry(st, (frames.shape[1], frames.shape[2]))
        pixels = frames_to_tensor(frames, geometry=geometry, device=self.device)  # (1, 3, T, h, w)
        z = st.encoder.encode(pixels).float()  # (1, C, n, h, w)
        strength = request.params.strength
        if request.params.motion_aware:
            strength = motion_strength(st.motion.update(pixels), request.params)
        st.last_strength = strength
        sigmas = chunk_sigmas(request.params.steps, strength)
        if request.params.fixed_noise:
            st.generator.manual_seed(request.params.seed)  # this chunk's draws (here and between steps) as the last's
        noise = torch.randn(z.shape, generator=st.generator, device=z.device, dtype=z.dtype)
        source = z if self.dit.cfg.condition_dim == self.dit.cfg.out_dim else None  # a source-conditioned DiT
        return _Prepared(request, geometry, noise_to(z, noise, sigmas[0]), sigmas, source)

    def _decode(self, p: _Prepared) -> np.ndarray:
        assert p.x0 is not None
        st = p.request.state
        pixels = st.decoder.decode(p.x0.to(self.autoencoder.param_dtype))  # (1, 3, T, h, w) in [-1, 1]
        st.chunks += 1
        return tensor_to_rgb(pixels.float(), p.geometry)

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
        for i, sigma in enumerate(sigmas):
            t = torch.full((x.shape[0],), 1000.0 * sigma, device=x.device)
            v = self.dit.forward_chunk(x, t, cross, joint, condition=source)
            x0 = velocity_to_x0(x.float(), v, sigma)
            if i + 1 < len(sigmas):
                x = noise_to(x0, fresh_noise(x0), sigmas[i + 1])
        ctx_sigma = self.settings.context_sigma
        ctx = noise_to(x0, fresh_noise(x0), ctx_sigma) if ctx_sigma > 0 else x0
        t = torch.full((x.shape[0],), 1000.0 * ctx_sigma, device=x.device)
        self.dit.forward_chunk(ctx, t, cross, joint, write_cache=True, condition=source)
        new_slots = torch.arange(visible * joint.tokens_per_frame, (visible + n) * joint.tokens_per_frame)
        for b, (p, st) in enumerate(zip(group, states, strict=True)):
            for layer in range(joint.num_layers):
                k, v = joint.read(layer, new_slots)  # (B, n·tokens, heads, head_dim)
                st.kv.write(layer, k[b : b + 1], v[b : b + 1])
            st.kv.commit_chunk(n)
            p.x0 = x0[b : b + 1]

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


# -- loading ---------------------------------------------------------------------------------------------------


def _tiny_random(settings: ModelSettings) -> tuple[CausalDiT, VideoAutoencoder, TextEncoder]:
    """The tiny DiT preset, the tiny autoencoder and the hashing text encoder with seeded random weights."""
    from vidfx.autoencoder.tiny import TinyAEConfig, TinyAutoencoder
    from vidfx.text.small import HashTextEncoder

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        cfg = DiTConfig.preset("tiny")
        dit = CausalDiT(cfg)
        # Wan zero-initialises the output head and gives the text MLP tiny weights (training moves both); an
        # untrained stand-in needs them live, or the velocity ignores the prompt and the output the steering.
        for layer in (dit.head.head, dit.text_embedding[0], dit.text_embedding[2]):
            torch.nn.init.xavier_uniform_(layer.weight)
        ae = TinyAutoencoder(TinyAEConfig(latent_channels=cfg.out_dim))
        # PyTorch's default init shrinks the signal layer by layer: the decoded frames would be a flat grey
        # whatever the latents. Variance-preserving weights keep the output sensitive to what the DiT does.
        for m in ae.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
        text = HashTextEncoder(text_dim=cfg.text_dim, max_tokens=cfg.text_len)
    finally:
        torch.random.set_rng_state(gen_state)
    return dit, ae, text


def look_prompts(looks: list[str]) -> tuple[str, ...]:
    """model.json `looks` (look names of vidfx.data.looks, e.g. "thermal") → their prompts ("thermal camera")."""
    from vidfx.data.looks import LOOKS, prompt_for

    return tuple(prompt_for(look) if look in LOOKS else look.replace("_", " ") for look in looks)


def _from_folder(folder: Path) -> tuple[CausalDiT, VideoAutoencoder, TextEncoder, tuple[str, ...]]:
    """A weights folder: `model.json` ({"dit": DiTConfig fields, "text": {"kind": "hash", "config": {…}},
    optionally "looks": the looks its card claims}), `dit.safetensors` and `autoencoder.safetensors` (any
    autoencoder `load_autoencoder` reads)."""
    from vidfx.autoencoder.loading import load_autoencoder
    from vidfx.text.small import HashTextEncoder

    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no model.json (a weights folder holds model.json + *.safetensors)")
    meta = json.loads(meta_path.read_text())
    dit_cfg = dict(meta.get("dit", {}))
    if "patch_size" in dit_cfg:
        dit_cfg["patch_size"] = tuple(dit_cfg["patch_size"])
    dit = CausalDiT(DiTConfig(**dit_cfg))
    load_into(dit, load_state_dict(folder / "dit.safetensors"), str(folder / "dit.safetensors"))
    ae = load_autoencoder(folder / "autoencoder.safetensors")
    text_meta = meta.get("text", {"kind": "hash", "config": {}})
    if text_meta.get("kind") != "hash":
        raise CheckpointError(f"{folder}: text encoder kind {text_meta.get('kind')!r} is not supported here yet")
    text_cfg = {"text_dim": dit.cfg.text_dim, "max_tokens": dit.cfg.text_len, **text_meta.get("config", {})}
    return dit, ae, HashTextEncoder(**text_cfg), look_prompts(list(meta.get("looks", [])))


def load_pipeline(settings: ModelSettings) -> StylePipeline:
    """The one loader: a model name ("tiny-random", "default") or a weights folder → a ready pipeline."""
    name = MODEL_ALIASES.get(settings.name, settings.name)
    looks: tuple[str, ...] = ()
    if name == "tiny-random":
        dit, ae, text = _tiny_random(settings)
    elif Path(name).is_dir():
        dit, ae, text, looks = _from_folder(Path(name))
    else:
        raise ValueError(f"unknown model {settings.name!r}: use tiny-random, default, or a weights folder")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.dtype]
    dit = dit.to(settings.device, dtype)
    ae = ae.to(settings.device)
    return StylePipeline(dit, ae, text, settings, name=settings.name, looks=looks)


def sigma_schedule_summary(params: StreamParams) -> list[float]:
    """σ list a chunk runs at the stream's base strength (for status reports)."""
    return [round(s, 4) for s in chunk_sigmas(params.steps, params.strength)]
