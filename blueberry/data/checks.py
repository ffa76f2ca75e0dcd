"""Warnings about a text corpus that would silently skew results, from the token cache's stats."""

from __future__ import annotations

from typing import Any

from blueberry.config import bpe_size


def data_warnings(cfg: Any, stats: dict[str, Any]) -> list[str]:
    """One line per problem: near-duplicates above dedup_warn, a val split far from val_fraction
    (tiny corpora, big groups), a BPE vocabulary that stopped short of the size asked for."""
    out = []
    rate = stats.get("near_dup_rate")
    if rate is not None and rate > cfg.dedup_warn:
        what = {"group": "each cluster is kept on one side of the train/val split",
                "drop": f"{stats.get('near_dup_redundant', 0)} redundant copies were dropped"}[cfg.dedup]
        out.append(f"{rate:.1%} of {stats.get('docs_before_dedup', '?')} documents have a near-duplicate "
                   f"({stats['near_dup_clusters']} clusters, Jaccard >= {cfg.dedup_threshold}; dedup_warn="
                   f"{cfg.dedup_warn}): {what}"
                   + ("; train repeats their text, see unique_train_tokens" if cfg.dedup == "group" else ""))
    docs = stats.get("train_docs", 0) + stats.get("val_docs", 0)
    if docs:
        share = stats["val_docs"] / docs
        if share > max(2 * cfg.val_fraction, cfg.val_fraction + 0.05):
            out.append(f"val_fraction={cfg.val_fraction} but val holds {stats['val_docs']} of {docs} documents "
                       f"({share:.0%}; train {stats['train_docs']}): too few documents or groups to split finely; "
                       "add documents or raise val_fraction knowingly")
    asked, vocab = bpe_size(cfg.tokenizer), stats.get("vocab_size")
    if asked is not None and vocab is not None and vocab < asked:
        out.append(f"tokenizer={cfg.tokenizer} stopped at {vocab} tokens: the train split has no more merges "
                   f"to learn; the model uses vocab_size {vocab} (recorded in the run's data stats)")
    return out
