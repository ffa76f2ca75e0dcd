"""Every ScanlineConfig field of its own (not shared with RunConfig) changes behaviour: a probe
below, or the test that proves it end to end. A new field without either fails
`test_every_scanline_field_is_covered`. Shared trainer fields are covered in test_fields_reach_code."""

import dataclasses

import pytest
import torch
from accelerate import Accelerator

from blueberry.config import RunConfig, ScanlineConfig, field_map
from blueberry.data.scanline import load_source, synthetic_path
from blueberry.models.scanline import build_scanline_model
from blueberry.tasks.scanline import ScanlineTask

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


@pytest.mark.parametrize("field", SOURCE_CHANGES)
def test_generator_fields_change_the_images_and_the_cache_key(small, field):
    base, changed = small(), small(**{field: SOURCE_CHANGES[field]})
    assert synthetic_path(base) != synthetic_path(changed)
    a, b = load_source(base), load_source(changed)
    assert a.lines.shape != b.lines.shape or not (a.lines == b.lines).all()


def test_data_names_a_user_file(small, tmp_path):
    import numpy as np

    path = tmp_path / "scans.npz"
    np.savez(path, images=np.random.default_rng(0).normal(size=(6, 8, 32)), labels=np.array([0, 1, 2] * 2))
    source = load_source(small(data=str(path)))
    assert source.n_classes == 3 and source.lines.shape == (6, 8, 32) and source.meta["source"] == "npz"


def test_cache_dir_holds_the_generated_file(small, tmp_path):
    cfg = small(cache_dir=str(tmp_path / "elsewhere"))
    load_source(cfg)
    assert synthetic_path(cfg).is_file() and synthetic_path(cfg).is_relative_to(tmp_path / "elsewhere")


# --- windows, split, augmentation, weights -------------------------------------------------------

def test_window_fields_shape_the_samples(small):
    _, data = _data(small(lines_per_sample=6, line_stride=2))
    x, y = next(data.train_batches(0))
    assert x.shape[1:] == (6, 32) and y.dtype == torch.int64
    assert data.stats["windows"]["val"] == data.stats["images"]["val"] * ((32 - 6) // 2 + 1)


def test_split_fractions_set_the_image_counts(small):
    _, data = _data(small(val_fraction=0.25, test_fraction=0.125))
    assert data.stats["images"] == {"train": 15, "val": 6, "test": 3}
    _, no_test = _data(small(val_fraction=0.25, test_fraction=0.0))
    assert no_test.stats["images"]["test"] == 0 and "test" not in no_test.payload["eval"]


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


PROBED_HERE = {*SOURCE_CHANGES, "data", "cache_dir", "lines_per_sample", "line_stride", "val_fraction", "test_fraction",
               "aug_flip", "aug_noise", "aug_line_dropout", "class_weights", *MODEL_CHANGES, *LSTM_CHANGES}
PROVEN_END_TO_END: dict[str, str] = {}


def test_every_scanline_field_is_covered():
    import pathlib

    own = set(field_map(ScanlineConfig)) - set(field_map(RunConfig))
    assert own == PROBED_HERE | set(PROVEN_END_TO_END), sorted(own ^ (PROBED_HERE | set(PROVEN_END_TO_END)))
    for where in PROVEN_END_TO_END.values():
        module, test = where.split("::")
        assert f"def {test}(" in (pathlib.Path(__file__).parent / module).read_text(), where
