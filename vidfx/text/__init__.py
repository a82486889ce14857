"""Text encoders (umT5-XXL for Wan weights, a small offline encoder for the default model), the prompt
embedding cache, and prompt blends/interpolation."""
