"""What a config's model will weigh, without data or memory: built on the meta device."""

from __future__ import annotations

from typing import Any

from blueberry.config import bpe_size


def model_sizes(cfg: Any) -> dict[str, int] | None:
    """Parameter counts (total, active per token, active without embeddings) and optimizer-state
    bytes of cfg's language model; None when the shape depends on data (scanline: classes and line
    length come from the files) or on a pretrained tokenizer."""
    vocab = bpe_size(cfg.tokenizer) if cfg.task == "lm" else None
    if vocab is None:
        return None
    import torch

    from blueberry.models.lm import Decoder
    from blueberry.optim.build import optimizer_state_bytes

    with torch.device("meta"):
        model = Decoder(cfg, vocab)
    counts = model.param_counts()
    return {"vocab_size": vocab, "params_total": counts["total"], "params_active": counts["active"],
            "params_active_no_embedding": counts["active"] - counts["embedding"],
            "optimizer_state_bytes": optimizer_state_bytes(model, cfg)}


def sizes_comment(cfg: Any) -> str:
    """YAML comment lines for --print-config."""
    sizes = model_sizes(cfg)
    if sizes is None:
        return "# parameter counts: known once the data is read (the model's shape depends on it)\n"
    mib = sizes["optimizer_state_bytes"] / 2 ** 20
    return (f"# parameters: total {sizes['params_total']:,}; active per token {sizes['params_active']:,}; "
            f"active without embeddings {sizes['params_active_no_embedding']:,} (vocab_size {sizes['vocab_size']:,}: "
            f"bpe can stop short of it)\n"
            f"# optimizer state ({cfg.optimizer}): {sizes['optimizer_state_bytes']:,} bytes ({mib:.1f} MiB)\n")
