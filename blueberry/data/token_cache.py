"""Tokenise a corpus once and keep the tokens on disk, keyed by everything that shapes them.

An entry tokens/<key>/ holds train.bin and val.bin (documents concatenated, EOS after each),
tokenizer.json + tokenizer_config.json, and meta.json (sizes, the near-duplicate pass's result,
leakage figures). It is built in a temporary folder beside it and renamed into place, so a reader
never sees a half-built entry; of two processes that race, the one whose rename loses discards its
copy. Near-duplicate documents are found before the split (data/near_dup.py) and kept on one side
of it or dropped, so the entry caches that pass too.

Written by hand rather than with `datasets.map` caching: that cache is keyed by fingerprints of
Python functions (not by the source files' content or the tokenizer that training produced),
stores tokens as Arrow lists per document instead of one flat array a memmap can window, and is
not published atomically for several processes or nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import numpy as np

from blueberry.data import near_dup, synthetic_text
from blueberry.data.fingerprint import texts_digest
from blueberry.data.leakage import leak_fraction
from blueberry.data.sources import cache_root, is_local, load_documents, local_files, split_documents
from blueberry.data.tokenizer import TextTokenizer, build_tokenizer

if TYPE_CHECKING:   # only a cache miss builds Datasets (sources.py imports it there)
    import datasets

# Part of the key: bump it whenever the bytes a given config produces change.
FORMAT_VERSION = 3
_BATCH_DOCS = 1000


@dataclass
class TextData:
    """Token arrays of both splits (read-only memmaps) and what the trainer needs to use them."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    eos_id: int
    tokenizer: TextTokenizer
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, str] = field(default_factory=dict)   # {"corpus": ..., "split": ...}


def token_key_info(cfg: Any) -> dict[str, Any]:
    """Everything that shapes the tokens; its hash names the cache entry."""
    info: dict[str, Any] = {
        "format": FORMAT_VERSION, "data": cfg.data, "data_subset": cfg.data_subset,
        "data_split": cfg.data_split, "text_field": cfg.text_field, "max_docs": cfg.max_docs,
        "data_seed": cfg.data_seed, "val_fraction": cfg.val_fraction, "tokenizer": cfg.tokenizer,
        "dedup": cfg.dedup, "group_field": cfg.group_field,
    }
    if cfg.dedup != "off":
        info["dedup_threshold"] = cfg.dedup_threshold
        info["near_dup"] = [near_dup.SHINGLE_WORDS, near_dup.NUM_PERM]
    if cfg.data == "synthetic":
        info["synthetic_docs"] = cfg.synthetic_docs
        info["synthetic_version"] = synthetic_text.VERSION
    elif is_local(cfg.data):
        files = local_files(cfg.data)
        info["data"] = str(Path(cfg.data).expanduser().resolve())
        info["files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return info


def token_key(cfg: Any) -> str:
    text = json.dumps(token_key_info(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def build_text_data(cfg: Any,
                    main_process_first: Callable[[], ContextManager] = contextlib.nullcontext,
                    eval_windows: int | None = None) -> TextData:
    """Load the cached tokens for cfg, building them first on a miss.

    `main_process_first` (e.g. Accelerate's `accelerator.main_process_first`) lets rank 0 build
    while the other ranks wait; they then find the entry and only open it. `eval_windows`: how many
    val windows evaluation reads (the first ones); leakage is measured on exactly those, else on up
    to 4000 spread over the split.
    """
    tokens_dir = cache_root(cfg) / "tokens"
    entry = tokens_dir / token_key(cfg)
    with main_process_first():
        cache = "hit"
        if not (entry / "meta.json").is_file():
            _build(cfg, entry)
            cache = "miss"
        data = _open(entry)
        data.stats.update(cache=cache, cache_path=str(entry), leak_ngram=cfg.leak_ngram,
                          leak_fraction=_leak(entry, data, cfg.seq_len, cfg.leak_ngram, eval_windows))
    return data


def _open(entry: Path) -> TextData:
    meta = json.loads((entry / "meta.json").read_text())
    arrays = {split: np.memmap(entry / f"{split}.bin", dtype=meta["dtype"], mode="r",
                               shape=(meta[f"{split}_tokens"],)) for split in ("train", "val")}
    tokenizer = TextTokenizer.load(entry)
    stats = {"unique_train_tokens": meta["unique_train_tokens"], "train_tokens": meta["train_tokens"],
             "val_tokens": meta["val_tokens"], "train_docs": meta["train_docs"], "val_docs": meta["val_docs"],
             "vocab_size": meta["vocab_size"], **meta["near_dup"]}
    return TextData(arrays["train"], arrays["val"], meta["vocab_size"], meta["eos_id"], tokenizer,
                    stats, meta["fingerprint"])


def _leak(entry: Path, data: TextData, seq_len: int, n: int, eval_windows: int | None) -> float:
    # seq_len is not part of the token key, so one entry serves several (seq_len, n) pairs.
    meta = json.loads((entry / "meta.json").read_text())
    name = f"seq_len={seq_len},n={n}" + (f",eval={eval_windows}" if eval_windows else "")
    if name not in meta.setdefault("leak", {}):
        windows = None
        if eval_windows:
            windows = np.arange(min(eval_windows, max(0, (len(data.val) - 1) // seq_len)))
        meta["leak"][name] = leak_fraction(data.train, data.val, seq_len, n, windows=windows)
        with contextlib.suppress(OSError):  # a read-only shared cache: just don't remember it
            _write_json(entry / "meta.json", meta)
    return meta["leak"][name]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _build(cfg: Any, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        docs = load_documents(cfg, cache_dir=tmp / "datasets")
        corpus = texts_digest(docs["text"][:])   # the documents as read, before near-duplicates and the split
        docs, labels, near_stats = _near_duplicates(cfg, docs)
        groups = near_dup.consistent_groups(labels, docs["group"][:] if cfg.group_field else None, len(docs))
        if labels is not None:   # the cluster of each document rides along, for unique_train_tokens
            docs = docs.add_column("_cluster", labels.tolist())
        train_ds, val_ds = split_documents(docs, cfg.val_fraction, cfg.data_seed, groups)
        tokenizer = build_tokenizer(cfg.tokenizer, _texts(train_ds))
        vocab_size = tokenizer.vocab_size
        dtype = np.uint16 if vocab_size <= 65535 else np.uint32
        train_tokens, unique_train = _write_tokens(tokenizer, train_ds, tmp / "train.bin", dtype, "train")
        meta = {"key": token_key_info(cfg), "vocab_size": vocab_size, "eos_id": tokenizer.eos_id,
                "dtype": np.dtype(dtype).name, "train_docs": len(train_ds), "val_docs": len(val_ds),
                "train_tokens": train_tokens, "unique_train_tokens": unique_train,
                "val_tokens": _write_tokens(tokenizer, val_ds, tmp / "val.bin", dtype, "val")[0],
                "near_dup": near_stats, "leak": {},
                "fingerprint": {"corpus": corpus, "split": texts_digest(val_ds["text"][:], len(train_ds))}}
        tokenizer.save(tmp)
        # the Arrow copy of local files was only needed to get here
        del docs, train_ds, val_ds
        shutil.rmtree(tmp / "datasets", ignore_errors=True)
        _write_json(tmp / "meta.json", meta)  # last: an entry with meta.json is complete
        _publish(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, entry: Path) -> None:
    try:
        os.rename(tmp, entry)
    except OSError:
        if (entry / "meta.json").is_file():  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # an entry without meta.json was not written by us (renames are whole); set it aside
        trash = entry.parent / f".trash-{entry.name}-{uuid.uuid4().hex[:8]}"
        os.rename(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, entry)


def _near_duplicates(cfg: Any, docs: datasets.Dataset
                     ) -> tuple[datasets.Dataset, np.ndarray | None, dict[str, Any]]:
    """(documents, near-duplicate cluster per document or None, stats) after cfg.dedup: off
    skips the pass; drop keeps the first document of each cluster; group keeps them all."""
    if cfg.dedup == "off":
        return docs, None, {"dedup": "off"}
    found = near_dup.find_near_duplicates(docs["text"][:], cfg.dedup_threshold)   # [:]: a list, read at once
    stats: dict[str, Any] = {"dedup": cfg.dedup, "docs_before_dedup": len(docs), **found.stats()}
    if cfg.dedup == "drop":
        return docs.select(found.keep_first()), None, stats   # near_dup_redundant documents go
    return docs, found.labels, stats


def _texts(ds: datasets.Dataset) -> Iterator[str]:
    for batch in ds.iter(batch_size=_BATCH_DOCS):
        yield from batch["text"]


def _write_tokens(tokenizer: TextTokenizer, ds: datasets.Dataset, path: Path, dtype: Any,
                  split: str) -> tuple[int, int]:
    """Encode `ds` in batches, EOS after each document, appending to `path`.

    Returns (tokens, unique tokens): the second counts each near-duplicate cluster (column
    "_cluster", when present) once, by its first document here.
    """
    from tqdm.auto import tqdm

    eos = [tokenizer.eos_id]
    total = unique = 0
    seen: set[int] = set()
    # delay: the bar appears only when tokenising takes a while (large corpora)
    with open(path, "wb") as f, tqdm(total=len(ds), desc=f"tokenize {split}", unit="doc",
                                     delay=3.0) as bar:
        for batch in ds.iter(batch_size=_BATCH_DOCS):
            ids = tokenizer.encode_batch(batch["text"])
            count = sum(len(x) for x in ids) + len(ids)
            flat = np.fromiter(itertools.chain.from_iterable(x + eos for x in ids), dtype=dtype,
                               count=count)
            f.write(flat.tobytes())
            total += count
            clusters = batch.get("_cluster") or [None] * len(ids)
            for doc, cluster in zip(ids, clusters):
                if cluster is None or cluster not in seen:
                    unique += len(doc) + 1
                    seen.add(cluster)
            bar.update(len(ids))
    return total, unique
