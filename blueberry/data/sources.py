"""Where documents come from (synthetic, local files, the hub) and the document-level split.

Every source yields a `datasets.Dataset` with a column "text" (and "group" when `group_field` is
set), one row per document, empty documents dropped and `max_docs` applied, so the rest of the
pipeline sees a single shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from blueberry.data.hub import require_hub
from blueberry.data.near_dup import group_split
from blueberry.data.synthetic_text import generate_documents
from blueberry.errors import UserError

if TYPE_CHECKING:   # imported where documents are loaded: a warm token cache never needs it (~1.5 s)
    import datasets

# suffix -> datasets packaged builder
FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_ALLOWED = "'synthetic', hf:NAME, or a .txt/.jsonl/.json/.parquet file or folder"


def cache_root(cfg: Any) -> Path:
    """The blueberry cache folder: cfg.cache_dir, else $BLUEBERRY_CACHE, else ~/.cache/blueberry."""
    root = cfg.cache_dir or os.environ.get("BLUEBERRY_CACHE") or "~/.cache/blueberry"
    return Path(root).expanduser().resolve()


def is_local(data: str) -> bool:
    return data != "synthetic" and not data.startswith("hf:")


def local_files(data: str) -> list[Path]:
    """The files a local `data` path reads, resolved and sorted; UserError when there are none."""
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data={data}: no such file or folder; use {_ALLOWED}")
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"data={data}: unsupported file type {path.suffix or '(none)'!r}; "
                            f"allowed: {', '.join(FORMATS)}")
        return [path.resolve()]
    files = sorted(p.resolve() for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in FORMATS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"data={data}: folder holds no {'/'.join(FORMATS)} files")
    builders = {FORMATS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        found = sorted({p.suffix.lower() for p in files})
        raise UserError(f"data={data}: folder mixes {', '.join(found)} files; keep one format per folder")
    return files


def load_documents(cfg: Any, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """The corpus named by cfg.data as a Dataset with one column "text".

    `cache_dir` is where `datasets` keeps its Arrow copy of local files (default: the blueberry
    cache's datasets/ folder); the token cache points it at its temporary build folder so the copy
    does not outlive the build.
    """
    import datasets

    group_field = getattr(cfg, "group_field", "")
    if group_field and (cfg.data == "synthetic" or (is_local(cfg.data) and
                                                    FORMATS[local_files(cfg.data)[0].suffix.lower()] == "text")):
        raise UserError(f"group_field={group_field!r}: only jsonl/json/parquet and hub data have columns; "
                        f"data={cfg.data} has none (leave group_field empty)")
    if cfg.data == "synthetic":
        n = cfg.synthetic_docs if not cfg.max_docs else min(cfg.max_docs, cfg.synthetic_docs)
        # generate_documents is prefix-stable (document i depends on (seed, i) only), so
        # generating n documents equals generating all and keeping the first n.
        return datasets.Dataset.from_dict({"text": generate_documents(n, cfg.data_seed)})
    if cfg.data.startswith("hf:"):
        return _load_hub(cfg)
    return _load_local(cfg, Path(cache_dir) if cache_dir else cache_root(cfg) / "datasets")


def _load_local(cfg: Any, cache_dir: Path) -> datasets.Dataset:
    import datasets

    files = local_files(cfg.data)
    builder = FORMATS[files[0].suffix.lower()]
    kwargs: dict[str, Any] = {}
    if builder == "text":
        # One .txt file is a corpus of paragraphs; a folder of .txt files is a corpus of files.
        kwargs["sample_by"] = "paragraph" if Path(cfg.data).expanduser().is_file() else "document"
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                   cache_dir=str(cache_dir), **kwargs)
    except (datasets.exceptions.DatasetsError, ValueError) as e:
        # malformed JSON/parquet (ArrowInvalid is a ValueError), bad encoding: the user's file
        cause = e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UserError(f"data={cfg.data}: could not read as {builder} ({reason[:200]})") from None
    if builder != "text":
        ds = _text_column(ds, cfg.text_field, cfg.data, getattr(cfg, "group_field", ""))
    else:
        # the paragraph splitter leaves the extra newlines of runs of blank lines
        ds = ds.map(lambda b: {"text": [t.strip() for t in b["text"]]}, batched=True)
    ds = ds.filter(_non_empty, batched=True)
    if cfg.max_docs:
        ds = ds.select(range(min(cfg.max_docs, len(ds))))
    return ds


def _text_column(ds: datasets.Dataset, field: str, data: str, group_field: str = "") -> datasets.Dataset:
    """Only the text column, named "text" (and the group column as "group" when asked for)."""
    for name, kind in ((field, "text_field"), (group_field, "group_field")):
        if name and name not in ds.column_names:
            raise UserError(f"{kind}={name!r}: no such column in {data}; columns: {', '.join(ds.column_names)}")
    feature = ds.features[field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise UserError(f"text_field={field!r}: column in {data} holds {feature}, not text")
    columns = {field: "text", **({group_field: "group"} if group_field else {})}
    ds = ds.select_columns(list(columns))
    if group_field:
        ds = ds.map(lambda b: {"group": [str(g) for g in b[group_field]]}, batched=True,
                    remove_columns=[group_field] if group_field != "group" else None)
        columns.pop(group_field)
    return ds.rename_columns({k: v for k, v in columns.items() if k != v})


def _non_empty(batch: dict[str, list]) -> list[bool]:
    return [isinstance(t, str) and bool(t.strip()) for t in batch["text"]]


def _load_hub(cfg: Any) -> datasets.Dataset:
    import datasets

    name = cfg.data[3:]
    if not name:
        raise UserError(f"data={cfg.data}: name the dataset, e.g. hf:HuggingFaceTB/smollm-corpus")
    if not cfg.max_docs:
        raise UserError("max_docs=0: hub datasets are streamed; set max_docs (e.g. --max_docs 20000)")
    require_hub(f"data={cfg.data}")
    try:
        stream = datasets.load_dataset(name, cfg.data_subset or None, split=cfg.data_split,
                                       streaming=True)
    except (FileNotFoundError, ValueError) as e:  # unknown dataset, subset or split
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"data={cfg.data}: {reason[:300]}") from None
    from tqdm.auto import tqdm

    texts: list[str] = []
    groups: list[str] = []
    group_field = getattr(cfg, "group_field", "")
    with tqdm(total=cfg.max_docs, desc=f"stream {name}", unit="doc", delay=2.0) as bar:
        for row in stream:
            if cfg.text_field not in row:
                raise UserError(f"text_field={cfg.text_field!r}: no such column in {cfg.data}; "
                                f"columns: {', '.join(row)}")
            if group_field and group_field not in row:
                raise UserError(f"group_field={group_field!r}: no such column in {cfg.data}; "
                                f"columns: {', '.join(row)}")
            text = row[cfg.text_field]
            if isinstance(text, str) and text.strip():
                texts.append(text)
                if group_field:
                    groups.append(str(row[group_field]))
                bar.update()
                if len(texts) >= cfg.max_docs:
                    break
    return datasets.Dataset.from_dict({"text": texts, **({"group": groups} if group_field else {})})


def split_documents(ds: datasets.Dataset, val_fraction: float, seed: int,
                    groups: np.ndarray | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out about ceil(val_fraction * n) documents for validation, chosen by `seed`; documents
    with one label in `groups` (near-duplicate clusters, user groups) all go to the same side."""
    n = len(ds)
    if n >= 2:
        train, val = group_split(np.arange(n) if groups is None else groups, val_fraction, seed)
    if n < 2 or not len(train) or not len(val):
        whole = "" if groups is None or n < 2 else f" in {len(np.unique(groups))} group(s)"
        raise UserError(f"val_fraction={val_fraction}: cannot split {n} document(s){whole} into non-empty "
                        f"train and val sets; add documents or change val_fraction")
    # (file-backed datasets write the split's index files beside their Arrow files; in the
    # token cache those live in the temporary build folder.)
    return ds.select(train), ds.select(val)
