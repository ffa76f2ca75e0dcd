"""Every ScanlineConfig field of its own (not shared with RunConfig) changes behaviour: the probes,
declared with @probes(..., task="scanline") for the register in test_fields_reach_code
(`test_every_field_is_probed`). Shared trainer fields are probed there."""

import dataclasses

import pytest
import torch
from accelerate import Accelerator

from blueberry.config import ScanlineConfig
from blueberry.data.scanline import load_source, synthetic_path
from blueberry.models.scanline import build_scanline_model
from blueberry.tasks.scanline import ScanlineTask
from probes import probes

SMALL = dict(n_images=24, image_size=32, lines_per_sample=4, line_stride=4, patch_size=8, d_model=16, n_heads=2,
             n_layers=1, d_ff=32, cnn_channels=8, lstm_hidden=16, dropout=0.0)


@pytest.fixture
def small(tmp_path):
    def make(**changes) -> ScanlineConfig:
        return dataclasses.replace(ScanlineConfig(), **{**SMALL, "cache_dir": str(tmp_path), **changes})
    return make


def _data(cfg):
    task = ScanlineTask()
    data = task.build_data(cfg, Accelerator(cpu=True))
    return task, data


# --- synthetic data ----------------------------------------------------------------------------

SOURCE_CHANGES = {"n_images": 30, "image_size": 48, "class_shares": "1,1,1,1", "noise_level": 2.0, "data_seed": 3}


@probes(*SOURCE_CHANGES, task="scanline")
@pytest.mark.parametrize("field", SOURCE_CHANGES)
def test_generator_fields_change_the_images_and_the_cache_key(small, field):
    base, changed = small(), small(**{field: SOURCE_CHANGES[field]})
    assert synthetic_path(base) != synthetic_path(changed)
    a, b = load_source(base), load_source(changed)
    assert a.lines.shape != b.lines.shape or not (a.lines == b.lines).all()


@probes("data", task="scanline")
def test_data_names_a_user_file(small, tmp_path):
    import numpy as np

    path = tmp_path / "scans.npz"
    np.savez(path, images=np.random.default_rng(0).normal(size=(6, 8, 32)), labels=np.array([0, 1, 2] * 2))
    source = load_source(small(data=str(path)))
    assert source.n_classes == 3 and source.lines.shape == (6, 8, 32) and source.meta["source"] == "npz"


@probes("cache_dir", task="scanline")
def test_cache_dir_holds_the_generated_file(small, tmp_path):
    cfg = small(cache_dir=str(tmp_path / "elsewhere"))
    load_source(cfg)
    assert synthetic_path(cfg).is_file() and synthetic_path(cfg).is_relative_to(tmp_path / "elsewhere")


# --- windows, split, augmentation, weights -------------------------------------------------------

@probes("lines_per_sample", "line_stride", task="scanline")
def test_window_fields_shape_the_samples(small):
    _, data = _data(small(lines_per_sample=6, line_stride=2))
    x, y = next(data.train_batches(0))
    assert x.shape[1:] == (6, 32) and y.dtype == torch.int64
    assert data.stats["windows"]["val"] == data.stats["images"]["val"] * ((32 - 6) // 2 + 1)


@probes("val_fraction", "test_fraction", task="scanline")
def test_split_fractions_set_the_image_counts(small):
    _, data = _data(small(val_fraction=0.25, test_fraction=0.125))
    assert data.stats["images"] == {"train": 15, "val": 6, "test": 3}
    _, no_test = _data(small(val_fraction=0.25, test_fraction=0.0))
    assert no_test.stats["images"]["test"] == 0 and "test" not in no_test.payload["eval"]


@probes("aug_flip", "aug_noise", "aug_line_dropout", task="scanline")
@pytest.mark.parametrize("field, value", [("aug_flip", False), ("aug_noise", 0.3), ("aug_line_dropout", 0.5)])
def test_augmentation_fields_reach_the_train_windows_only(small, field, value):
    _, data = _data(small(**{field: value}))
    _, base = _data(small())
    # the evaluation copies (val, and train for the gap) are never augmented
    assert data.payload["eval"]["train"].train is False and data.payload["eval"]["val"].train is False
    torch.manual_seed(0)
    a = next(data.train_batches(0))[0]
    torch.manual_seed(0)
    b = next(base.train_batches(0))[0]
    assert not torch.equal(a, b)


@probes("class_weights", task="scanline")
def test_class_weights_reach_the_loss(small):
    task, data = _data(small(class_weights="1,2,3,4"))
    assert data.stats["class_weights"] == [1, 2, 3, 4] and task.loss_weights.tolist() == [1, 2, 3, 4]
    plain, _ = _data(small(class_weights="none"))
    torch.manual_seed(0)
    batch = next(data.train_batches(0))
    torch.manual_seed(0)
    model = build_scanline_model(small(), 4, 32)
    x, y = batch
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits, y, weight=torch.tensor([1.0, 2, 3, 4]))
    weighted, _ = task.train_loss(model, batch, small())
    unweighted, _ = plain.train_loss(model, batch, small())
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert unweighted.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    _, auto = _data(small(class_weights="auto"))
    assert auto.stats["class_weights"] != [1, 1, 1, 1]


# --- models ------------------------------------------------------------------------------------

MODEL_CHANGES = {"model": "sequential", "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64}
LSTM_CHANGES = {"cnn_channels": 16, "lstm_hidden": 24}


@probes(*MODEL_CHANGES, *LSTM_CHANGES, task="scanline")
@pytest.mark.parametrize("field, value, model", [*((f, v, "vit") for f, v in MODEL_CHANGES.items()),
                                                 *((f, v, "cnn_lstm") for f, v in LSTM_CHANGES.items())])
def test_model_fields_change_the_model(small, field, value, model):
    x = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(0))

    def logits(cfg):
        torch.manual_seed(0)
        net = build_scanline_model(cfg, 4, 32).eval()
        return sum(p.numel() for p in net.parameters()), net(x).detach()

    n0, a = logits(small(model=model))
    n1, b = logits(small(**{"model": model, field: value}))
    assert n0 != n1 or not torch.allclose(a, b)


# --- relations between fields (found untested by benchmarks/mutation.py) ---------------------------

REFUSED = [({"class_shares": "1"}, "class_shares='1': give at least two non-negative shares, e.g. 0.25,0.25,0.25,0.25"),
           ({"class_shares": "1,-1"}, "class_shares='1,-1': give at least two non-negative shares"),
           ({"class_shares": "0,0"}, "class_shares='0,0': give at least two non-negative shares"),
           ({"class_shares": "a,b"}, "class_shares='a,b': must be comma-separated numbers"),
           ({"class_weights": "1,x"}, "class_weights='1,x': must be comma-separated numbers"),
           ({"class_shares": "1,0"}, "class_shares='1,0': the synthetic data has 4 classes"),
           ({"class_weights": "1,2"}, "class_weights='1,2': give 4 non-negative numbers"),
           ({"class_weights": "1,1,1,nan"}, "class_weights='1,1,1,nan': give 4 non-negative numbers"),
           ({"class_weights": "1,-2", "data": "scans.npz"}, "class_weights='1,-2': give K non-negative numbers"),
           ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction=0.5: val_fraction + test_fraction must be < 1"),
           ({"lines_per_sample": 33}, "lines_per_sample=33: must be <= image_size (32)"),
           ({"d_model": 30, "n_heads": 4}, "n_heads=4: must divide d_model (30)"),
           ({"patch_size": 5}, "patch_size=5: must divide the line length image_size (32)")]
ACCEPTED = [{"class_shares": "1,0,0,0"}, {"class_shares": "1,0", "data": "scans.npz"}, {"class_weights": "1,2", "data": "scans.npz"}, {"class_weights": "none"}, {"val_fraction": 0.6, "test_fraction": 0.3},
            {"lines_per_sample": 32}, {"lines_per_sample": 33, "data": "scans.npz"},
            {"model": "cnn_lstm", "d_model": 30, "n_heads": 4}, {"model": "sequential", "patch_size": 5},
            {"patch_size": 5, "data": "scans.npz"}]


def test_scanline_field_relations_are_checked():
    import re

    from blueberry.errors import UserError

    for changes, message in REFUSED:
        with pytest.raises(UserError, match="^" + re.escape(message)):
            dataclasses.replace(ScanlineConfig(), **{**SMALL, **changes}).validate()
    for changes in ACCEPTED:
        dataclasses.replace(ScanlineConfig(), **{**SMALL, **changes}).validate()
