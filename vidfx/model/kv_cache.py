"""Streaming attention state of the causal DiT: a rolling self-attention KV cache with sink frames, and the
per-prompt cross-attention KV cache.

Lifecycle of `KVCache`:
    created  — `KVCache(...)` preallocates every layer's K/V for `sink_frames + window_frames` latent frames,
               so memory never grows on an endless stream;
    appended — the model's cache-write pass stores one chunk's keys/values (`commit_chunk` advances the
               frame counter after every layer has written);
    rolled   — once the window is full, each new chunk overwrites the oldest window frames (a ring), while
               the first `sink_frames` frames of the stream stay forever (attention sinks);
    reset    — `reset()` forgets everything (a new scene, a `reset` control message) without reallocating.

Keys are stored *before* RoPE. Each attention call rotates the visible keys by their rank in the visible
sequence (sinks first, then window frames oldest → newest, then the current chunk), so positions are
re-based inside the window and never exceed `sink_frames + window_frames + chunk_frames` however long the
stream runs (the official RoPE table covers 1,024 latent frames). While the stream still fits the cache,
ranks equal absolute frame indices, so cached generation equals the uncached block-causal forward exactly.
Re-rotating costs one complex multiply over the visible keys per layer per call: elementwise, small next to
the attention itself, and it avoids the drift of rotating stored keys backwards.

Indexing does no host work in the step: the visible order and the chunk's write slots are index tensors on the
cache's device, built at most once per chunk (the first call after a `commit_chunk`/`reset`) and then looked
up by every layer and every step. Built tensors are memoised by the ring's phase, so once a stream has gone
round the window no index is ever built or copied to the device again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Per-layer self-attention keys/values for a rolling window of latent frames plus sink frames."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        window_frames: int,
        sink_frames: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if window_frames < 1 or sink_frames < 0:
            raise ValueError(f"need window_frames ≥ 1 and sink_frames ≥ 0, got {window_frames}, {sink_frames}")
        self.num_layers = num_layers
        self.tokens_per_frame = tokens_per_frame
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        capacity = (sink_frames + window_frames) * tokens_per_frame
        shape = (num_layers, batch, capacity, num_heads, head_dim)  # (layers, B, slots, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.frames_seen = 0  # latent frames committed since creation or the last reset
        self.device = self.k.device
        # Device index tensors, memoised by ring phase (see the module docstring); `index_builds` counts the
        # ones built on the host and copied over (tests hold it to at most one per chunk).
        self._index_memo: dict[tuple[int, ...], torch.Tensor] = {}
        self._visible: torch.Tensor | None = None  # this chunk's visible order; None = not looked up yet
        self._write: dict[int, torch.Tensor] = {}  # this chunk's write slots, by chunk frames
        self.index_builds = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream; buffers and memoised indices are kept (no reallocation)."""
        self.frames_seen = 0
        self._new_chunk()

    def commit_chunk(self, num_frames: int) -> None:
        """Mark a chunk written by every layer (called once per cache-write pass)."""
        self.frames_seen += num_frames
        self._new_chunk()

    def _new_chunk(self) -> None:
        self._visible = None
        self._write = {}

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def visible_frames(self) -> int:
        """Latent frames a new chunk attends to (sinks + filled window)."""
        return min(self.frames_seen, self.sink_frames + self.window_frames)

    def _frame_slots(self, first_frame: int, num_frames: int) -> list[int]:
        """Cache frame slots for absolute frames first_frame … first_frame+num_frames-1."""
        slots = []
        for f in range(first_frame, first_frame + num_frames):
            if f < self.sink_frames:
                slots.append(f)
            else:
                slots.append(self.sink_frames + (f - self.sink_frames) % self.window_frames)
        return slots

    def _token_index(self, slots: list[int]) -> torch.Tensor:
        """Token indices (len(slots)·tokens_per_frame,) on the cache's device of the frame `slots`, in order;
        memoised, so a ring phase seen before costs a dict lookup and no host→device copy."""
        key = tuple(slots)
        index = self._index_memo.get(key)
        if index is None:
            if len(self._index_memo) >= 256:  # bounded; a stream meets a few (fill-up, then one per ring phase)
                self._index_memo.clear()
            tpf = self.tokens_per_frame
            frames = torch.tensor(slots, dtype=torch.long)
            index = (frames[:, None] * tpf + torch.arange(tpf)[None, :]).reshape(-1).to(self.device)
            self._index_memo[key] = index
            self.index_builds += 1
        return index

    def visible_order(self) -> torch.Tensor:
        """Token slot indices of the visible frames, in stream order (sinks, then oldest → newest), on the
        cache's device. The same tensor for every call until the next `commit_chunk` / `reset`."""
        if self._visible is None:
            n_window = min(max(self.frames_seen - self.sink_frames, 0), self.window_frames)
            n_sink = min(self.frames_seen, self.sink_frames)
            first_window = self.frames_seen - n_window
            frames = list(range(n_sink)) + list(range(first_window, first_window + n_window))
            self._visible = self._token_index(self._frame_slots_of(frames))
        return self._visible

    def write_index(self, num_frames: int) -> torch.Tensor:
        """Token slots the next `num_frames` frames go to, on the cache's device; once per chunk."""
        index = self._write.get(num_frames)
        if index is None:
            index = self._write[num_frames] = self._token_index(self._frame_slots(self.frames_seen, num_frames))
        return index

    def _frame_slots_of(self, frames: list[int]) -> list[int]:
        return [self._frame_slots(f, 1)[0] for f in frames]

    # -- per-layer access (used by the attention layer) -----------------------------------------------
    def read(self, layer: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible keys/values of `layer` in stream order: (B, visible_tokens, heads, head_dim) each.

        `order`: token slots on the cache's device (`visible_order()`, or any slots of this cache)."""
        if order.numel() == 0:
            empty = self.k[layer, :, :0]
            return empty, empty
        return self.k[layer].index_select(1, order), self.v[layer].index_select(1, order)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one chunk's pre-RoPE keys/values, (B, chunk_tokens, heads, head_dim), for `layer`."""
        tpf = self.tokens_per_frame
        num_frames = k.shape[1] // tpf
        if num_frames * tpf != k.shape[1]:
            raise ValueError(f"chunk of {k.shape[1]} tokens is not whole frames of {tpf} tokens")
        if num_frames > self.window_frames:
            raise ValueError(f"chunk of {num_frames} frames exceeds the {self.window_frames}-frame window")
        index = self.write_index(num_frames)
        self.k[layer].index_copy_(1, index, k.to(self.k.dtype))
        self.v[layer].index_copy_(1, index, v.to(self.v.dtype))

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class CrossAttnCache:
    """Per-layer cross-attention keys/values of one embedded prompt: computed once, swapped on prompt change.

    k[i], v[i]: (B, text_tokens, heads, head_dim) for block i.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
