"""Scan-line data for the scanline task: the source, the image split, windows of lines, class weights.

Every source becomes images of lines (ScanSource). The split is by image and comes before
windowing and augmentation, so no two splits share lines of one scan: neighbouring lines of a
scan are nearly copies of each other, and a split by line would let validation see training data.
A sample is a window of consecutive lines of one image, labelled by its last line (a model reads
the scan up to the current line, as in Gordon et al., Mach. Learn.: Sci. Technol. 1 (2020) 015001).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blueberry import rundir
from blueberry.config import parse_floats
from blueberry.data import stm_synthetic
from blueberry.data.packing import BatchDataset
from blueberry.data.sources import cache_root
from blueberry.errors import UserError

# Part of the synthetic cache key: bump it whenever the cached file's layout changes.
VERSION = 1
_ALLOWED = "'synthetic' or a .npz with images [N,H,W] (or lines [N,W]) and labels [N]"
AUG_KEYS = ("flip", "noise", "line_dropout")


@dataclass
class ScanSource:
    """Images of scan lines with a class per line.

    Line-form files can hold images with different line counts: `lines` is then padded with
    zero lines (label -1) past `n_lines[i]`, and windows never reach the padding.
    """

    lines: np.ndarray                    # float32 [N_img, H, W]
    line_labels: np.ndarray              # int64 [N_img, H]
    class_names: list[str]
    image_id: np.ndarray                 # int64 [N_img]: the file's ids (0..N-1 when it has none)
    n_classes: int
    image_labels: np.ndarray | None = None   # int64 [N_img], stratifies the split; default: majority line class
    n_lines: np.ndarray | None = None        # int64 [N_img] real lines per image; default: H
    meta: dict[str, Any] = field(default_factory=dict)   # where it came from, for logs

    @functools.cached_property
    def normalised(self) -> np.ndarray:
        """`lines` with each line at mean 0 / std 1, computed once for every split's windows."""
        return normalise_lines(self.lines)

    def __post_init__(self) -> None:
        if self.n_lines is None:
            self.n_lines = np.full(len(self.lines), self.lines.shape[1], dtype=np.int64)
        if self.image_labels is None:
            self.image_labels = majority_labels(self.line_labels, self.n_classes)


def majority_labels(line_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The most common label of each image's lines (padding -1 ignored; ties: lowest class)."""
    counts = np.zeros((len(line_labels), max(n_classes, 1)), dtype=np.int64)
    img, _ = np.nonzero(line_labels >= 0)
    np.add.at(counts, (img, line_labels[line_labels >= 0]), 1)
    return counts.argmax(1).astype(np.int64)


# --- sources ------------------------------------------------------------------------------------

def load_source(cfg: Any) -> ScanSource:
    """The scan lines named by cfg.data: the synthetic generator (cached) or a .npz file."""
    if cfg.data == "synthetic":
        return _synthetic(cfg)
    return read_npz(cfg.data)


def synthetic_key_info(cfg: Any) -> dict[str, Any]:
    """Everything that shapes the generated images; its hash names the cache file."""
    return {"format": VERSION, "generator": stm_synthetic.VERSION, "n_images": cfg.n_images,
            "seed": cfg.data_seed, "image_size": cfg.image_size, "class_shares": cfg.synthetic_shares(),
            "noise_level": cfg.noise_level}


def synthetic_path(cfg: Any) -> Path:
    text = json.dumps(synthetic_key_info(cfg), sort_keys=True)
    return cache_root(cfg) / "scanline" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.npz"


def _synthetic(cfg: Any) -> ScanSource:
    path = synthetic_path(cfg)
    if path.is_file():
        try:
            source = read_npz(str(path))
            source.meta.update(source="synthetic", cache_path=str(path), cache_hit=True)
            return source
        except UserError:
            pass   # a damaged cache file: make it again
    arrays = stm_synthetic.generate_stm(cfg.n_images, cfg.data_seed, cfg.image_size, cfg.synthetic_shares(),
                                        cfg.noise_level)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        rundir.write_atomic(path, buffer.getvalue())
    except OSError as e:
        warnings.warn(f"cache_dir: could not write {path} ({e.strerror or e}); the synthetic images "
                      f"will be generated again next time", stacklevel=3)
    source = _from_images(arrays["images"], arrays["line_labels"], arrays["labels"], arrays["image_id"],
                          list(arrays["class_names"]))
    source.meta.update(source="synthetic", cache_path=str(path), cache_hit=False)
    return source


def read_npz(data: str) -> ScanSource:
    """A user's .npz: images [N,H,W] with labels [N] or line_labels [N,H], or lines [N,W] with
    labels [N] and optional image_id [N]; optional class_names [K]. UserError when malformed."""
    path = Path(data).expanduser()
    if not path.is_file():
        raise UserError(f"data={data}: no such file; use {_ALLOWED}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"data={data}: not an .npz archive (not a zip file); save it with "
                        f"numpy.savez(path, images=..., labels=...)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"data={data}: not a readable .npz archive ({reason[:200]})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"data={data}: holds one bare array, not an .npz archive; save it with "
                        f"numpy.savez(path, images=..., labels=...)")
    with archive:
        arrays = _NpzArrays(archive, data)
        if "images" in arrays:
            source = _images_form(arrays, data)
        elif "lines" in arrays:
            source = _lines_form(arrays, data)
        else:
            raise UserError(f"data={data}: needs an 'images' [N,H,W] or a 'lines' [N,W] array; "
                            f"found: {', '.join(sorted(arrays.names)) or 'no arrays'}")
    source.meta.update(source="npz", path=str(path.resolve()))
    return source


class _NpzArrays:
    """Arrays of an open .npz, each read once, with errors that name the file and the array."""

    def __init__(self, archive: Any, data: str):
        self.archive, self.data, self.names = archive, data, set(archive.files)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.archive[name]
        except ValueError:   # object arrays need pickle, which a data file must not run
            raise UserError(f"data={self.data}: array {name!r} is an object array; save it as numbers "
                            f"or strings (e.g. np.array(names, dtype=str))") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"data={self.data}: array {name!r} cannot be read ({e})") from None


def _images_form(arrays: _NpzArrays, data: str) -> ScanSource:
    images = _values(arrays["images"], "images", data, ndim=3, what="[N, H, W]")
    n, h = images.shape[:2]
    image_labels = None
    if "labels" in arrays:
        image_labels = _labels(arrays["labels"], "labels", data, (n,), "[N] (one per image)")
    if "line_labels" in arrays:
        line_labels = _labels(arrays["line_labels"], "line_labels", data, (n, h), f"[N, H] = [{n}, {h}]")
    elif image_labels is not None:
        line_labels = np.repeat(image_labels[:, None], h, 1)
    else:
        raise UserError(f"data={data}: has 'images' but no 'labels' [N] or 'line_labels' [N,H] array")
    image_id = _image_id(arrays, data, n)
    return _from_images(images, line_labels, image_labels, image_id, _class_names(arrays, data), data)


def _lines_form(arrays: _NpzArrays, data: str) -> ScanSource:
    lines = _values(arrays["lines"], "lines", data, ndim=2, what="[N, W]")
    n = len(lines)
    if "labels" not in arrays:
        raise UserError(f"data={data}: has 'lines' but no 'labels' [N] array (one label per line)")
    labels = _labels(arrays["labels"], "labels", data, (n,), "[N] (one per line)")
    names = _class_names(arrays, data)
    if "image_id" not in arrays:
        warnings.warn(f"data={data}: 'lines' without 'image_id': every line is its own image, so the "
                      f"split cannot keep neighbouring lines of one scan apart; add image_id [N]",
                      stacklevel=2)
        return _from_images(lines[:, None, :], labels[:, None], labels, np.arange(n, dtype=np.int64),
                            names, data)
    ids = _image_id(arrays, data, n)
    # images in order of first appearance, lines of an image in file order
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    group = rank[inverse.ravel()]
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=len(uniq))
    pos = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    h = int(counts.max())
    images = np.zeros((len(uniq), h, lines.shape[1]), dtype=np.float32)
    line_labels = np.full((len(uniq), h), -1, dtype=np.int64)
    images[group[order], pos] = lines[order]
    line_labels[group[order], pos] = labels[order]
    image_ids = uniq[np.argsort(first, kind="stable")]
    return _from_images(images, line_labels, None, image_ids, names, data, n_lines=counts)


def _values(a: np.ndarray, name: str, data: str, ndim: int, what: str) -> np.ndarray:
    if a.ndim != ndim or 0 in a.shape or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise UserError(f"data={data}: array {name!r} is {a.dtype} with shape {list(a.shape)}; "
                        f"expected non-empty real numbers {what}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        raise UserError(f"data={data}: array {name!r} holds NaN or infinite values "
                        f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])})")
    return a


def _labels(a: np.ndarray, name: str, data: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if a.shape != shape:
        raise UserError(f"data={data}: array {name!r} has shape {list(a.shape)}; expected {what}")
    if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise UserError(f"data={data}: array {name!r} is {a.dtype}; labels must be class indices 0..K-1")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise UserError(f"data={data}: array {name!r} holds negative labels (min {a.min()}); "
                        f"labels must be class indices 0..K-1")
    return a


def _image_id(arrays: _NpzArrays, data: str, n: int) -> np.ndarray:
    if "image_id" not in arrays:
        return np.arange(n, dtype=np.int64)
    ids = arrays["image_id"]
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"data={data}: array 'image_id' is {ids.dtype} with shape {list(ids.shape)}; "
                        f"expected integers [N] = [{n}]")
    return ids.astype(np.int64)


def _class_names(arrays: _NpzArrays, data: str) -> list[str] | None:
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.ndim != 1 or len(names) < 2:
        raise UserError(f"data={data}: array 'class_names' has shape {list(names.shape)}; "
                        f"expected [K] names with K >= 2")
    return [str(x) for x in names]


def _from_images(images: np.ndarray, line_labels: np.ndarray, image_labels: np.ndarray | None,
                 image_id: np.ndarray, names: list[str] | None, data: str = "synthetic",
                 n_lines: np.ndarray | None = None) -> ScanSource:
    top = int(max(line_labels.max(), -1 if image_labels is None else image_labels.max()))
    if names is not None:
        if top >= len(names):
            raise UserError(f"data={data}: label {top} found but 'class_names' names {len(names)} "
                            f"classes (labels 0..{len(names) - 1})")
    else:
        if top < 1:
            raise UserError(f"data={data}: every label is {max(top, 0)}; need at least 2 classes")
        names = [f"class{k}" for k in range(top + 1)]
    return ScanSource(lines=images.astype(np.float32, copy=False), line_labels=line_labels.astype(np.int64),
                      class_names=[str(x) for x in names], image_id=image_id.astype(np.int64), n_classes=len(names),
                      image_labels=None if image_labels is None else image_labels.astype(np.int64),
                      n_lines=None if n_lines is None else n_lines.astype(np.int64))


# --- the split ----------------------------------------------------------------------------------

def split_by_image(source: ScanSource, val_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, np.ndarray]:
    """Sorted image indices of "train", "val" and "test", deterministic by seed.

    Stratified by image label: every class of at least two images puts one in val (three: one
    in test too) before the rest is shared out in proportion, so rare classes are validated.
    Totals are round(fraction * N), at least 1 for a fraction > 0.
    """
    n = len(source.lines)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in "
                        f"[0, 1) and their sum < 1")
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise UserError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: cannot split {n} "
                        f"image(s) into non-empty train/val/test; add images or lower the fractions")
    labels = source.image_labels
    classes = np.unique(labels)
    sizes = np.array([(labels == c).sum() for c in classes])
    val = _apportion(n_val, sizes, reserve=np.minimum(sizes, 1), want_min=sizes >= 2)
    test = _apportion(n_test, sizes - val, reserve=np.minimum(sizes - val, 1), want_min=sizes >= 3)
    rng = np.random.default_rng([seed, 0x5CA1])
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c, k_val, k_test in zip(classes, val, test):
        members = rng.permutation(np.flatnonzero(labels == c))
        out["val"].append(members[:k_val])
        out["test"].append(members[k_val:k_val + k_test])
        out["train"].append(members[k_val + k_test:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in out.items()}


def _apportion(total: int, sizes: np.ndarray, reserve: np.ndarray, want_min: np.ndarray) -> np.ndarray:
    """Split `total` over classes in proportion to `sizes`, one each where `want_min` (if the total
    allows), leaving `reserve` per class to train while possible, exactly `total` overall."""
    ideal = total * sizes / max(sizes.sum(), 1)
    alloc = np.floor(ideal).astype(np.int64)
    if want_min.sum() <= total:
        alloc = np.where(want_min, np.maximum(alloc, 1), alloc)
    for cap in (sizes - reserve, sizes):   # take a class's last train image only when unavoidable
        alloc = np.minimum(alloc, np.maximum(cap, 0))
        while alloc.sum() > total:
            floor = np.where(want_min & (want_min.sum() <= total), 1, 0)
            over = np.where(alloc > floor, alloc - ideal, -np.inf)
            alloc[np.argmax(over)] -= 1
        while alloc.sum() < total and (alloc < cap).any():
            under = np.where(alloc < cap, ideal - alloc, -np.inf)
            alloc[np.argmax(under)] += 1
    return alloc


# --- windows ------------------------------------------------------------------------------------

def augmentation(cfg: Any) -> dict[str, Any]:
    """The train-time augmentation settings of a ScanlineConfig, as ScanlineWindows takes them."""
    return {"flip": bool(cfg.aug_flip), "noise": float(cfg.aug_noise), "line_dropout": float(cfg.aug_line_dropout)}


def normalise_lines(lines: np.ndarray) -> np.ndarray:
    """Each line to mean 0 and std 1 (float32); a constant line becomes zeros."""
    out = np.empty(lines.shape, dtype=np.float32)
    flat_in, flat_out = lines.reshape(-1, lines.shape[-1]), out.reshape(-1, lines.shape[-1])
    for a in range(0, len(flat_in), 65536):   # bounds the float64 temporaries
        x = flat_in[a:a + 65536].astype(np.float64)
        centred = x - x.mean(1, keepdims=True)
        std = np.sqrt((centred ** 2).mean(1, keepdims=True))
        # below float32 resolution of the line's level, the "signal" is rounding noise
        flat = std <= 1e-6 * np.abs(x).max(1, keepdims=True)
        flat_out[a:a + 65536] = np.where(flat, 0.0, centred / np.where(flat, 1.0, std))
    return out


class ScanlineWindows(BatchDataset):
    """Windows of `lines_per_sample` consecutive lines of one image, one starting every
    `line_stride` lines; sample i is (x float32 [lines_per_sample, W], y int64 = last line's class).

    Lines are normalised per line (ScanSource.normalised, shared by all splits) before
    augmentation. Augmentation (train=True only) draws from torch's global RNG, which the trainer
    checkpoints: flip the window left-right with probability 0.5, add Gaussian noise, zero each
    line with probability line_dropout (never all of them).
    A BatchDataset: `batch(indices)` builds a whole batch at once.
    """

    def __init__(self, source: ScanSource, image_indices: Sequence[int] | np.ndarray, lines_per_sample: int,
                 line_stride: int, train: bool, aug: dict[str, Any] | None = None):
        if lines_per_sample < 1 or line_stride < 1:
            raise ValueError("lines_per_sample and line_stride must be >= 1")
        unknown = set(aug or {}) - set(AUG_KEYS)
        if unknown:
            raise ValueError(f"unknown augmentation keys {sorted(unknown)}; allowed: {AUG_KEYS}")
        idx = np.asarray(image_indices, dtype=np.int64).reshape(-1)
        self.source, self.image_indices = source, idx
        self.lines_per_sample, self.line_stride, self.train = lines_per_sample, line_stride, train
        self.aug = {"flip": False, "noise": 0.0, "line_dropout": 0.0, **(aug or {})}
        n_lines = source.n_lines[idx]
        counts = np.maximum(0, (n_lines - lines_per_sample) // line_stride + 1)
        if len(idx) and not counts.sum():
            raise UserError(f"lines_per_sample={lines_per_sample}: longer than every image here "
                            f"(at most {int(n_lines.max())} lines); lower it")
        self.images = np.repeat(idx, counts)                 # source image of each window
        self.starts = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * line_stride
        self.labels = source.line_labels[self.images, self.starts + lines_per_sample - 1].astype(np.int64)
        self._offsets = np.arange(lines_per_sample)

    def __len__(self) -> int:
        return len(self.labels)

    def image_of(self, i: int) -> int:
        """Index (into the source) of the image window i was cut from."""
        return int(self.images[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 [B, lines_per_sample, W] and y int64 [B] in one fancy index."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        rows = self.starts[idx][:, None] + self._offsets
        x = torch.from_numpy(self.source.normalised[self.images[idx][:, None], rows])
        y = torch.from_numpy(self.labels[idx])
        if self.train:
            x = self._augment(x)
        return x, y

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b, n_lines = x.shape[:2]
        if self.aug["flip"]:
            flip = torch.rand(b) < 0.5
            x[flip] = x[flip].flip(-1)
        if self.aug["noise"] > 0:
            x += self.aug["noise"] * torch.randn_like(x)
        p = self.aug["line_dropout"]
        if p > 0 and n_lines > 1:
            drop = torch.rand(b, n_lines) < p
            spare = torch.randint(n_lines, (b,))
            # a window with every line dropped keeps one at random
            drop[torch.arange(b), spare] &= ~drop.all(1)
            x[drop] = 0.0
        return x


# --- class weights ------------------------------------------------------------------------------

def class_weights(spec: str, train_labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Cross-entropy weights [K]: "auto" = 1/(K * share) over the train windows (0 for a class
    absent from train, with a warning), "none" = ones, or K comma-separated numbers."""
    if spec == "none":
        return torch.ones(n_classes)
    if spec == "auto":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes)[:n_classes]
        missing = np.flatnonzero(counts == 0)
        if len(missing):
            warnings.warn(f"class_weights=auto: class(es) {missing.tolist()} have no train windows; "
                          f"their weight is 0", stacklevel=2)
        share = counts / max(counts.sum(), 1)
        weights = np.where(counts > 0, 1.0 / (n_classes * np.where(counts > 0, share, 1.0)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    values = parse_floats(spec, "class_weights")
    if len(values) != n_classes or min(values) < 0 or not all(np.isfinite(values)):
        raise UserError(f"class_weights={spec!r}: give {n_classes} non-negative numbers (one per class), "
                        f"or auto, or none")
    return torch.tensor(values, dtype=torch.float32)
