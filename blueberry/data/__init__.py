"""Text data: corpus sources, tokenizers, the token cache, leakage checks and window packing."""
