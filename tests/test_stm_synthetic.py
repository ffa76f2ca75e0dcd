"""The embedded STM generator: shapes, exact class shares, determinism, and the physics the
classifier must see through (row period set by the scan size, tip changes mid-image)."""

import numpy as np
import pytest

from blueberry.data import stm_synthetic
from blueberry.data.stm_synthetic import CLASS_NAMES, DEFAULT_SHARES, generate_stm


@pytest.fixture(scope="module")
def scans():
    return generate_stm(200, seed=1)


def test_shapes_dtypes_and_names(scans):
    assert scans["images"].shape == (200, 128, 128) and scans["images"].dtype == np.float32
    assert scans["line_labels"].shape == (200, 128) and scans["line_labels"].dtype == np.int64
    assert scans["labels"].shape == (200,) and list(scans["class_names"]) == list(CLASS_NAMES)
    assert np.isfinite(scans["images"]).all()
    assert list(scans["image_id"]) == list(range(200))
    assert generate_stm(3, seed=0, image_size=64)["images"].shape == (3, 64, 64)


def test_class_counts_follow_the_shares_exactly(scans):
    counts = np.bincount(scans["labels"], minlength=4)
    assert counts.tolist() == stm_synthetic.exact_counts(np.array(DEFAULT_SHARES), 200).tolist() == [17, 88, 34, 61]
    # the image label is the class of most of its lines
    majority = [np.bincount(lines, minlength=4).argmax() for lines in scans["line_labels"]]
    assert (scans["labels"] == majority).all()
    custom = generate_stm(40, seed=0, class_shares=(1, 1, 0, 2))["labels"]
    assert np.bincount(custom, minlength=4).tolist() == [10, 10, 0, 20]


def test_deterministic_by_seed():
    a, b, c = generate_stm(12, seed=5), generate_stm(12, seed=5), generate_stm(12, seed=6)
    for key in ("images", "labels", "line_labels", "scan_size_nm"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["images"], c["images"])


def test_row_period_in_pixels_follows_the_scan_size():
    """Dimer rows are 0.77 nm apart: an image of S nm holds S/0.77 rows, whatever the class of its
    tip, so the period in pixels is a property of the zoom, not of the label."""
    scans = generate_stm(200, seed=1, noise_level=0.0)
    rows = np.flatnonzero((scans["labels"] == 2) & (scans["scan_size_nm"] < 25))
    assert len(rows) >= 15
    found = []
    for i in rows:
        z = scans["images"][i] - scans["images"][i].mean(1, keepdims=True)
        power = np.abs(np.fft.rfft2(z))
        radius = np.hypot(np.fft.fftfreq(128)[:, None] * 128, np.arange(power.shape[1])[None, :])
        power[radius < 3] = 0                     # the image's tilt and step edges
        peak = radius[np.unravel_index(power.argmax(), power.shape)]
        found.append(abs(peak / (scans["scan_size_nm"][i] / stm_synthetic.ROW_NM) - 1) < 0.15)
    assert np.mean(found) > 0.6
    sizes = generate_stm(300, seed=2)["scan_size_nm"]
    assert sizes.min() >= 3.0 and sizes.max() <= 80.0 and sizes.max() / sizes.min() > 8


def test_tip_changes_split_an_image_into_two_labelled_parts(scans):
    changes = np.array([(np.diff(lines) != 0).sum() for lines in scans["line_labels"]])
    assert set(changes.tolist()) == {0, 1}          # at most one tip change per image, at a line
    assert 0.05 < changes.mean() < 0.5
    change_lines = [int(np.flatnonzero(np.diff(lines))[0]) for lines in scans["line_labels"][changes == 1]]
    assert len(set(change_lines)) > 5               # at random lines


def test_noise_level_makes_neighbouring_lines_less_alike():
    """Noise, tip artefacts and offsets grow with noise_level: normalised neighbouring lines agree
    less (their mean product is their correlation)."""
    from blueberry.data.scanline import normalise_lines

    def neighbour_correlation(noise):
        z = normalise_lines(generate_stm(30, seed=3, noise_level=noise)["images"])
        return float((z[:, 1:] * z[:, :-1]).mean())
    clean, real, hard = (neighbour_correlation(n) for n in (0.0, 1.0, 2.0))
    assert clean > real + 0.05 and real > hard + 0.05


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="class_shares"):
        generate_stm(4, seed=0, class_shares=(1, 1))
    for bad in (dict(n_images=0), dict(image_size=4), dict(noise_level=-1.0)):
        with pytest.raises(ValueError, match="need n_images >= 1, image_size >= 8 and noise_level >= 0"):
            generate_stm(**{"n_images": 4, **bad}, seed=0)
