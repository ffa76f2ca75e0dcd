"""Scan-line data: user .npz files, the split by source image, windows, augmentation and class
weights; and the evaluation metrics against scikit-learn."""

import dataclasses

import numpy as np
import pytest
import torch

from blueberry.config import ScanlineConfig
from blueberry.data.scanline import (ScanlineWindows, ScanSource, class_weights, load_source, read_npz,
                                     split_by_image, synthetic_path)
from blueberry.errors import UserError


def source(n_images=30, h=16, w=32, seed=0, n_classes=4) -> ScanSource:
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) % n_classes
    line_labels = np.repeat(labels[:, None], h, 1)
    line_labels[::3, h // 2:] = (labels[::3, None] + 1) % n_classes     # a tip change in some images
    lines = rng.normal(3.0, 2.0, (n_images, h, w)).astype(np.float32)
    return ScanSource(lines=lines, line_labels=line_labels, class_names=[f"c{k}" for k in range(n_classes)],
                      image_id=np.arange(100, 100 + n_images), n_classes=n_classes)


# --- the split --------------------------------------------------------------------------------

def test_split_is_by_image_disjoint_complete_stratified_and_seeded():
    src = source(40)
    split = split_by_image(src, 0.2, 0.2, seed=3)
    sets = {k: set(v.tolist()) for k, v in split.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(40))
    assert (len(sets["val"]), len(sets["test"])) == (8, 8)
    assert set(src.image_labels[split["val"]].tolist()) == {0, 1, 2, 3}      # every class validated
    again, other = split_by_image(src, 0.2, 0.2, seed=3), split_by_image(src, 0.2, 0.2, seed=4)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["val"], other["val"])


def test_no_window_of_one_image_lands_in_two_splits():
    src = source(40)
    split = split_by_image(src, 0.2, 0.2, seed=0)
    images = {name: {ScanlineWindows(src, idx, 4, 2, train=False).image_of(i)
                     for i in range(len(ScanlineWindows(src, idx, 4, 2, train=False)))}
              for name, idx in split.items()}
    assert images["train"] and images["val"] and images["test"]
    assert not (images["train"] & images["val"]) and not (images["train"] & images["test"])
    assert not (images["val"] & images["test"])


def test_split_rejects_fractions_that_leave_nothing_to_train():
    with pytest.raises(UserError, match="val_fraction"):
        split_by_image(source(2), 0.5, 0.45, seed=0)


# --- windows ----------------------------------------------------------------------------------

def test_windows_are_consecutive_normalised_lines_labelled_by_the_last_line():
    src = source(6, h=16)
    ds = ScanlineWindows(src, [1, 3], lines_per_sample=5, line_stride=3, train=False)
    assert len(ds) == 2 * ((16 - 5) // 3 + 1)
    x, y = ds[5]                                   # image 3, start 3 * (5 - 4) = 3
    assert ds.image_of(5) == 3 and x.shape == (5, 32) and x.dtype == torch.float32
    raw = src.lines[3, 3:8]
    expected = (raw - raw.mean(1, keepdims=True)) / raw.std(1, keepdims=True)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    assert int(y) == src.line_labels[3, 7]
    assert ds.labels.tolist() == [int(ds[i][1]) for i in range(len(ds))]
    single = ScanlineWindows(src, [0], lines_per_sample=1, line_stride=1, train=False)
    assert len(single) == 16 and single[0][0].shape == (1, 32)


def test_windows_never_run_past_an_image_and_say_when_too_long():
    src = source(4, h=16)
    with pytest.raises(UserError, match="lines_per_sample=17"):
        ScanlineWindows(src, [0, 1], lines_per_sample=17, line_stride=1, train=False)


def test_augmentation_only_in_training():
    src = source(4, h=16)
    aug = {"flip": True, "noise": 0.1, "line_dropout": 0.3}
    evaluation = ScanlineWindows(src, [0, 1], 8, 4, train=False, aug=aug)
    training = ScanlineWindows(src, [0, 1], 8, 4, train=True, aug=aug)
    torch.manual_seed(0)
    first = evaluation.batch(range(len(evaluation)))[0]
    assert torch.equal(first, evaluation.batch(range(len(evaluation)))[0])      # no randomness
    clean = first.clone()
    torch.manual_seed(0)
    augmented, labels = training.batch(range(len(training)))
    assert not torch.allclose(augmented, clean) and torch.equal(labels, torch.as_tensor(training.labels))
    assert (augmented.abs().sum(-1) == 0).any()                                 # dropped lines
    flipped = ScanlineWindows(src, [0], 8, 4, train=True, aug={"flip": True})
    x = torch.stack([flipped[0][0] for _ in range(20)])
    clean0 = evaluation[0][0]
    assert any(torch.equal(v, clean0.flip(-1)) for v in x) and any(torch.equal(v, clean0) for v in x)


# --- class weights ----------------------------------------------------------------------------

def test_auto_class_weights_are_inverse_shares():
    """The scanline study's weights for shares 8.8/43.9/16.9/30.4 %."""
    labels = np.repeat(np.arange(4), [88, 439, 169, 304])
    np.testing.assert_allclose(class_weights("auto", labels, 4).numpy(), [2.841, 0.569, 1.479, 0.822], atol=2e-3)
    assert class_weights("none", labels, 4).tolist() == [1, 1, 1, 1]
    assert class_weights("2.845,0.569,1.478,0.823", labels, 4).tolist() == pytest.approx([2.845, 0.569, 1.478, 0.823])
    with pytest.raises(UserError, match="class_weights='1,2'"):
        class_weights("1,2", labels, 4)
    with pytest.warns(UserWarning, match=r"class\(es\) \[3\]"):
        assert class_weights("auto", np.array([0, 1, 2]), 4)[3] == 0


# --- user files -------------------------------------------------------------------------------

def test_images_npz_detects_classes_and_names(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scans.npz"
    np.savez(path, images=rng.normal(size=(9, 10, 24)), labels=np.arange(9) % 3,
             class_names=np.array(["clean", "double", "blunt"]), image_id=np.arange(9) * 7)
    src = read_npz(str(path))
    assert src.n_classes == 3 and src.class_names == ["clean", "double", "blunt"]
    assert src.lines.shape == (9, 10, 24) and src.line_labels[4].tolist() == [1] * 10
    assert src.image_id.tolist() == [0, 7, 14, 21, 28, 35, 42, 49, 56]
    np.savez(path, images=rng.normal(size=(4, 10, 24)), labels=np.array([0, 4, 1, 2]))
    assert read_npz(str(path)).n_classes == 5 and read_npz(str(path)).class_names[4] == "class4"


def test_lines_npz_groups_lines_into_images_by_image_id(tmp_path):
    lines = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    ids = np.array([5, 5, 2, 5, 2, 9, 9])
    path = tmp_path / "lines.npz"
    np.savez(path, lines=lines, labels=np.array([0, 0, 1, 0, 1, 1, 0]), image_id=ids)
    src = read_npz(str(path))
    assert src.image_id.tolist() == [5, 2, 9] and src.n_lines.tolist() == [3, 2, 2]
    np.testing.assert_array_equal(src.lines[0], lines[[0, 1, 3]])            # image 5, file order
    assert src.line_labels[1].tolist() == [1, 1, -1]                         # padding past its lines
    windows = ScanlineWindows(src, [0, 1, 2], lines_per_sample=2, line_stride=1, train=False)
    assert len(windows) == 2 + 1 + 1 and -1 not in windows.labels.tolist()


@pytest.mark.parametrize("arrays, message", [
    ({"pictures": np.zeros((2, 3, 3))}, "needs an 'images' [N,H,W] or a 'lines' [N,W] array; found: pictures"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.array([0, 1, 1])}, "array 'labels' has shape [3]; expected [N]"),
    ({"images": np.zeros((2, 3)), "labels": np.array([0, 1])}, "array 'images' is float64 with shape [2, 3]"),
    ({"images": np.full((2, 3, 3), np.nan), "labels": np.array([0, 1])}, "holds NaN or infinite values"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.array([0, -1])}, "negative labels"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.array([0, 0])}, "need at least 2 classes"),
    ({"lines": np.zeros((2, 3))}, "has 'lines' but no 'labels'"),
])
def test_malformed_files_name_the_file_and_the_array(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError) as error:
        read_npz(str(path))
    assert str(error.value).startswith(f"data={path}: ") and message in str(error.value)


def test_bad_data_file_is_exit_2_one_line(cli):
    (cli.cwd / "broken.npz").write_text("not a zip")
    res = cli("train", "scanline", "--data=broken.npz", "--max_steps=30")
    assert res.returncode == 2 and res.stderr.startswith("error: data=broken.npz: not an .npz archive (not a zip")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(cli.cwd.glob("runs/*"))                 # no run dir left behind


def test_synthetic_source_is_cached_by_its_settings(tmp_path):
    cfg = dataclasses.replace(ScanlineConfig(), n_images=8, image_size=32, cache_dir=str(tmp_path))
    first = load_source(cfg)
    second = load_source(cfg)
    assert (first.meta["cache_hit"], second.meta["cache_hit"]) == (False, True)
    np.testing.assert_array_equal(first.lines, second.lines)
    assert synthetic_path(cfg) != synthetic_path(dataclasses.replace(cfg, data_seed=1))
    assert synthetic_path(cfg) != synthetic_path(dataclasses.replace(cfg, noise_level=2.0))


# --- metrics ----------------------------------------------------------------------------------

def test_metrics_equal_scikit_learn_on_a_fixed_example():
    from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

    from blueberry.tasks.scanline import classification_metrics

    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (300,), generator=gen)
    logits = torch.randn(300, 4, generator=gen) + 1.5 * torch.nn.functional.one_hot(targets, 4)
    probs = logits.softmax(-1)
    weights = torch.tensor([2.845, 0.569, 1.478, 0.823])
    m = classification_metrics(probs, targets, 4, weights, ["a", "b", "c", "d"], prefix="val")
    y, p = targets.numpy(), probs.numpy()
    assert m["val/auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6)
    assert m["val/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), abs=1e-6)
    assert m["val/accuracy"] == pytest.approx((p.argmax(1) == y).mean(), abs=1e-6)
    assert [m[f"val/recall/{c}"] for c in "abcd"] == pytest.approx(recall_score(y, p.argmax(1), average=None))
    assert m["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, weight=weights).item(),
                                          rel=1e-5)
