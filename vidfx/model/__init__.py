"""Networks. One module per checkpoint family: `wan_dit` (Wan2.1 DiT / CausVid student)."""

from vidfx.model.kv_cache import CrossAttnCache, KVCache
from vidfx.model.wan_dit import CausalDiT, DiTConfig

__all__ = ["CausalDiT", "CrossAttnCache", "DiTConfig", "KVCache"]
