"""Text encoders (umT5-XXL for Wan weights, a small offline encoder for the default model), the prompt
embedding cache, and prompt blends/interpolation."""

from vidfx.text.base import DEFAULT_MAX_PROMPT_CHARS, TextEncoder, blend, check_prompt, interpolate
from vidfx.text.cache import PromptEmbeddings
from vidfx.text.small import HashTextEncoder
from vidfx.text.umt5 import UMT5Config, UMT5Encoder, UMT5TextEncoder, UMT5Tokenizer

__all__ = [
    "DEFAULT_MAX_PROMPT_CHARS",
    "HashTextEncoder",
    "PromptEmbeddings",
    "TextEncoder",
    "UMT5Config",
    "UMT5Encoder",
    "UMT5TextEncoder",
    "UMT5Tokenizer",
    "blend",
    "check_prompt",
    "interpolate",
]
