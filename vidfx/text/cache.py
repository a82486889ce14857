"""`PromptEmbeddings`: an LRU cache of prompt embeddings in front of a text encoder.

Lifecycle: created empty around one encoder; `get`/`get_many` fill it (one batched encoder call for all the
misses of a request) and move hits to the most-recent end; when full, the least recently used prompt is
dropped; `clear()` empties it (e.g. after swapping encoder weights, since cached entries would be stale).
Counters: `hits`, `misses` (prompts looked up) and `encoder_calls` (times the encoder actually ran).

Thread-safe: the model worker reads embeddings while the engine's text worker encodes new prompts. Two locks:
`_lock` guards the entries for a moment (a cached prompt never waits for an encoder call in progress), and
`_encode_lock` serialises encoder calls, so two threads asking for the same new prompt encode it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from vidfx.text.base import DEFAULT_MAX_PROMPT_CHARS, TextEncoder, check_prompt


class PromptEmbeddings:
    """Cached `encoder` outputs, keyed by the exact prompt text.

    Returned tensors are the cached ones (no copy on the hot path): treat them as read-only.
    """

    def __init__(self, encoder: TextEncoder, capacity: int = 64, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> None:
        if capacity < 1:
            raise ValueError(f"PromptEmbeddings capacity must be at least 1, got {capacity}")
        self.encoder = encoder
        self.capacity = capacity
        self.max_chars = max_chars
        self.hits = 0
        self.misses = 0
        self.encoder_calls = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._entries

    def get(self, prompt: str) -> torch.Tensor:
        """(max_tokens, text_dim) fp32 embedding of `prompt`."""
        return self.get_many([prompt])[0]

    def get_many(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), max_tokens, text_dim): cached rows plus one encoder call for the distinct misses."""
        if not prompts:
            raise ValueError("get_many needs at least one prompt")
        for p in prompts:
            check_prompt(p, self.max_chars)
        with self._lock:
            if all(p in self._entries for p in prompts):  # the hot path: never waits for an encoder call
                self.hits += len(prompts)
                return self._take(prompts, {})
        with self._encode_lock:
            with self._lock:
                missing = [p for p in dict.fromkeys(prompts) if p not in self._entries]
            fresh: dict[str, torch.Tensor] = {}
            if missing:
                out = self.encoder.encode(missing)  # seconds for umT5-XXL on a CPU: outside `_lock`
                self.encoder_calls += 1
                expected = (len(missing), self.encoder.max_tokens, self.encoder.text_dim)
                if tuple(out.shape) != expected:
                    raise ValueError(f"encoder returned {tuple(out.shape)}, expected {expected}")
                # Own copies: a row view would keep the whole batch alive until every row is evicted.
                fresh = {p: out[i].float().clone() for i, p in enumerate(missing)}
            with self._lock:
                n_missed = sum(1 for p in prompts if p in fresh)
                self.misses += n_missed
                self.hits += len(prompts) - n_missed
                return self._take(prompts, fresh)

    def _take(self, prompts: Sequence[str], fresh: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of `prompts` (from `fresh` or the entries), storing `fresh`, LRU order and bound kept. Under _lock."""
        rows = [fresh[p] if p in fresh else self._entries[p] for p in prompts]
        for p in prompts:
            if p in fresh:
                self._entries[p] = fresh[p]
            self._entries.move_to_end(p)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return torch.stack(rows)

    def clear(self) -> None:
        """Drop every entry (counters are kept: they describe the cache's whole life)."""
        with self._lock:
            self._entries.clear()
