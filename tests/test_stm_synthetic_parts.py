"""The parts of the synthetic STM generator, one rule at a time.

tests/test_stm_synthetic.py checks whole scans; this file checks the pieces against oracles written
here (a Gaussian train summed term by term, largest remainder by hand, the analytic Gaussian blob,
the power-law spectrum) and the documented rules of the parameter draw and the renderer on
hand-built parameters with everything but the feature under test switched off. No expected value
is copied from the generator's output: each comes from the inputs the test chooses.
"""

import warnings

import numpy as np
import pytest

from blueberry.data import stm_synthetic as stm
from blueberry.data.stm_synthetic import (CLASS_NAMES, DIMER_NM, H_OFFSET_NM, ROW_NM, SCAN_RANGE_NM,
                                          STEP_NM, TIP_SIGMA_NM)

# ---------------------------------------------------------------------------------------------
# _gauss_train: exact oracle


def gauss_train_oracle(t, period, width, blur):
    """Unit-height Gaussians (std width) at k*period blurred by a normalised Gaussian (std blur):
    Gaussians of std s = sqrt(width^2 + blur^2) and height width/s, summed directly."""
    s = np.sqrt(width ** 2 + blur ** 2)
    k = np.arange(-60, 61)
    t = np.asarray(t, dtype=np.float64)
    terms = np.exp(-(t[..., None] - k * period) ** 2 / (2 * s[..., None] ** 2))
    return (width / s) * terms.sum(-1)


@pytest.mark.parametrize("period, width, blurs", [
    (1.0, 0.05, (0.0, 0.01)),          # narrow peaks: many harmonics needed
    (ROW_NM, 0.18, (0.05, 0.12)),      # the rows pattern
    (DIMER_NM, 0.07, (0.02, 0.2)),     # dimers, from sharp to washed out
    (2.0, 0.3, (0.4, 0.9)),            # wide against the period
])
def test_gauss_train_matches_the_direct_sum_of_blurred_gaussians(period, width, blurs):
    t = np.linspace(-1.3 * period, 2.7 * period, 401)
    blur = np.array(blurs)[:, None]                       # one blur per row, as the renderer does
    got = stm._gauss_train(np.broadcast_to(t, (2, t.size)), period, width, blur)
    want = gauss_train_oracle(np.broadcast_to(t, (2, t.size)), period, width, blur)
    np.testing.assert_allclose(got, want, atol=2e-3 * want.max(), rtol=0)


def test_gauss_train_peaks_sit_at_multiples_of_the_period_with_unit_height_when_unblurred():
    period = 0.5
    t = np.arange(-2.0, 2.0, 0.001)
    got = stm._gauss_train(t, period, 0.04, np.array([0.0]))
    assert got.max() == pytest.approx(1.0, abs=2e-3)
    peaks = t[(got > np.roll(got, 1)) & (got > np.roll(got, -1)) & (got > 0.5)]
    np.testing.assert_allclose(peaks, np.arange(-2.0, 2.0, period), atol=2e-3)


# ---------------------------------------------------------------------------------------------
# exact_counts: largest remainder


def largest_remainder(shares, n):
    raw = [s * n for s in shares]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))   # ties: lower index
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def test_exact_counts_is_the_largest_remainder_method():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shares = rng.dirichlet(np.ones(4))
        n = int(rng.integers(1, 500))
        got = stm.exact_counts(shares, n)
        assert got.sum() == n
        assert got.tolist() == largest_remainder(list(shares), n)


def test_exact_counts_gives_the_extra_unit_to_the_largest_remainder_not_the_largest_share():
    # raw 7, 1.5, 1.5: the remainder (0.5) decides, and the tie goes to the first
    assert stm.exact_counts(np.array([0.7, 0.15, 0.15]), 10).tolist() == [7, 2, 1]
    assert stm.exact_counts(np.array([0.25, 0.25, 0.25, 0.25]), 6).tolist() == [2, 2, 1, 1]


# ---------------------------------------------------------------------------------------------
# _cell_random


def test_cell_random_is_uniform_on_unit_interval_deterministic_and_seeded():
    iu, iv = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    a = stm._cell_random(iu, iv, np.int64(12345))
    assert a.shape == iu.shape and (a >= 0).all() and (a < 1).all()
    np.testing.assert_array_equal(a, stm._cell_random(iu, iv, np.int64(12345)))
    # uniform: 16 equal bins hold 65536/16 = 4096 each, sd 62
    hist = np.bincount((a * 16).astype(int).ravel(), minlength=16)
    assert np.abs(hist - 4096).max() < 400
    assert a.mean() == pytest.approx(0.5, abs=0.01)
    # neighbouring cells are unrelated, and another seed gives other numbers
    for da, db in ((a[1:], a[:-1]), (a[:, 1:], a[:, :-1])):
        assert abs(np.corrcoef(da.ravel(), db.ravel())[0, 1]) < 0.03
    b = stm._cell_random(iu, iv, np.int64(777))
    assert (a != b).mean() > 0.95 and abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.03
    # many distinct values: 16 bits of hash, not a handful
    assert len(np.unique(a)) > 30000


# ---------------------------------------------------------------------------------------------
# _pink


def test_pink_noise_has_unit_std_zero_mean_and_a_power_law_spectrum():
    rng = np.random.default_rng(1)
    length, per = 4095, 24                    # an odd length: the series keeps its length
    alpha = np.repeat([0.8, 1.3], per)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no divide-by-zero at f = 0
        out = stm._pink(rng, 2 * per, length, alpha)
    assert out.shape == (2 * per, length)
    np.testing.assert_allclose(out.std(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out.mean(1), 0.0, atol=1e-9)
    spec = np.fft.rfft(out, axis=1)[:, 1:-1]
    f = np.fft.rfftfreq(length)[1:-1]
    assert (np.abs(spec) > 0).all()           # every frequency but DC carries power
    for rows, a in ((slice(0, per), 0.8), (slice(per, None), 1.3)):
        power = (np.abs(spec[rows]) ** 2).mean(0)
        slope = np.polyfit(np.log(f), np.log(power), 1)[0]
        assert slope == pytest.approx(-a, abs=0.08)
        # random phases: once whitened, real and imaginary parts are alike and Gaussian
        white = spec[rows] * f ** (a / 2)
        ratio = white.imag.var() / white.real.var()
        assert ratio == pytest.approx(1.0, abs=0.1)
        kurt = ((white.real - white.real.mean()) ** 4).mean() / white.real.var() ** 2
        assert kurt == pytest.approx(3.0, abs=0.3)
        # no single frequency is forced: the whitened spectrum varies from series to series
        assert white.real.std(0).min() > 0


# ---------------------------------------------------------------------------------------------
# _blobs


def blob_oracle(image, sigma):
    """The one Gaussian of std sigma (px) whose centre is the image's extreme pixel, and its
    volume (peak * 2 pi sigma^2). NB the code draws each blob with a *volume* uniform in `heights`
    (a normalised kernel), although its docstring says height: see the report."""
    flat = np.abs(image).argmax()
    y0, x0 = np.unravel_index(flat, image.shape)
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    peak = image[y0, x0]
    return peak * 2 * np.pi * sigma ** 2, (y0, x0), peak * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma ** 2))


def test_a_single_blob_is_a_gaussian_of_the_given_width_without_wraparound():
    rng = np.random.default_rng(2)
    n, size = 300, 30                                    # 30 + 15 padding: an odd grid
    sigma = np.where(np.arange(n) % 2 == 0, 1.5, 4.0)
    bright = stm._blobs(rng, np.ones(n, int), np.zeros(n, int), sigma, size)
    dark = stm._blobs(rng, np.zeros(n, int), np.ones(n, int), sigma, size)
    heights, centres = [], []
    for i in range(n):
        h, c, want = blob_oracle(bright[i], sigma[i])
        np.testing.assert_allclose(bright[i], want, atol=2e-3 * want.max())
        heights.append(h)
        centres.append(c)
        hd, _, want = blob_oracle(dark[i], sigma[i])
        np.testing.assert_allclose(dark[i], want, atol=2e-3 * abs(want).max())
        heights.append(hd)
    heights = np.array(heights)
    pos, neg = heights[heights > 0], heights[heights < 0]
    # bright blobs: uniform in [1.5, 3]; dark ones: -heights / 1.5, i.e. [-2, -1]
    assert len(pos) == n and len(neg) == n
    assert pos.min() >= 1.5 - 1e-3 and pos.max() <= 3.0 + 1e-3 and pos.min() < 1.6 and pos.max() > 2.9
    assert neg.min() >= -2.0 - 1e-3 and neg.max() <= -1.0 + 1e-3 and neg.min() < -1.9 and neg.max() > -1.1
    # centres anywhere on the image, edges included
    centres = np.array(centres)
    assert centres.min() == 0 and centres.max() == size - 1


def test_blobs_count_heights_range_and_empty_images():
    rng = np.random.default_rng(3)
    n_pos, n_neg = np.array([0, 3, 0, 1]), np.array([0, 0, 2, 1])
    out = stm._blobs(rng, n_pos, n_neg, np.full(4, 1.0), 64, heights=(2.0, 8.0))
    assert out.shape == (4, 64, 64)
    assert not out[0].any()                                  # no blob, nothing drawn
    # sigma 1 px: each blob holds its drawn amount, less what falls off an edge (at most 3/4)
    vol = out.sum((1, 2))
    assert 3 * 2.0 / 4 < vol[1] < 3 * 8.0 and -2 * 8.0 / 1.5 < vol[2] < -2 * 2.0 / 1.5 / 4
    assert out[3].max() > 0 > out[3].min()                  # one bright and one dark
    assert stm._blobs(rng, np.zeros(3, int), np.zeros(3, int), np.ones(3), 16).any() == False  # noqa: E712


# ---------------------------------------------------------------------------------------------
# _draw_image_params: the documented rules, statistically on many images

SHARES = np.array([0.25, 0.25, 0.25, 0.25])


def draw(n=20000, size=64, eta=1.0, shares=SHARES, seed=0):
    return stm._draw_image_params(np.random.default_rng(seed), n, size, np.asarray(shares, float), eta)


def test_labels_follow_the_shares_and_scan_sizes_are_log_uniform_in_their_class_range():
    params = draw()
    n = len(params["label"])
    assert np.bincount(params["label"], minlength=4).tolist() == [n // 4] * 4
    for c, (lo, hi) in enumerate(SCAN_RANGE_NM):
        s = params["scan_nm"][params["label"] == c]
        assert s.min() >= lo and s.max() <= hi
        pos = (np.log(s) - np.log(lo)) / (np.log(hi) - np.log(lo))    # uniform on [0, 1)
        assert pos.min() < 0.01 and pos.max() > 0.99
        assert pos.mean() == pytest.approx(0.5, abs=0.02) and pos.std() == pytest.approx(12 ** -0.5, abs=0.02)


@pytest.mark.parametrize("eta, rate", [(0.0, 0.0), (1.0, 0.35), (2.0, 0.7), (5.0, 0.9)])
def test_tip_change_rate_is_035_eta_capped_at_09(eta, rate):
    p = draw(n=8000, eta=eta)
    assert p["has_change"].mean() == pytest.approx(rate, abs=0.02)      # sd <= 0.0056


def test_change_line_range_and_segments():
    params = draw()
    size = 64
    ch, has = params["change_line"], params["has_change"]
    assert (ch[~has] == size).all()
    assert ch[has].min() == size // 10 and ch[has].max() == size - size // 10 - 1
    lines = params["line_class"]
    seg = params["seg_class"]
    for i in np.flatnonzero(has)[:500]:
        assert (lines[i, :ch[i]] == seg[i, 0]).all() and (lines[i, ch[i]:] == seg[i, 1]).all()
    # the majority segment keeps the label; only the minority one may change class
    before = ch < size / 2                       # the first part is the shorter one
    label = params["label"]
    np.testing.assert_array_equal(np.where(before, seg[:, 1], seg[:, 0]), label)
    minority = np.where(before, seg[:, 0], seg[:, 1])
    assert (minority[~has] == label[~has]).all()
    changed = has & (minority != label)
    assert (changed & before).sum() > 100 and (changed & ~before).sum() > 100
    # a tip change takes another class with probability 0.6
    assert changed.sum() / has.sum() == pytest.approx(0.6, abs=0.03)


def test_another_class_is_drawn_from_the_other_classes_shares():
    shares = np.array([0.1, 0.2, 0.3, 0.4])
    p = draw(n=20000, eta=2.5, shares=shares)              # 0.875 of images change tip
    seg, ch, label = p["seg_class"], p["change_line"], p["label"]
    minority = np.where(ch < 64 / 2, seg[:, 0], seg[:, 1])
    for c in range(4):
        moved = minority[(label == c) & p["has_change"] & (minority != c)]
        assert len(moved) > 300
        want = np.where(np.arange(4) == c, 0.0, shares) / (1 - shares[c])
        got = np.bincount(moved, minlength=4) / len(moved)
        np.testing.assert_allclose(got, want, atol=4 * np.sqrt(0.25 / len(moved)))


def test_a_class_with_one_share_never_changes_class():
    p = draw(n=2000, eta=2.0, shares=[0, 1, 0, 0])
    assert p["has_change"].any() and (p["line_class"] == 1).all() and (p["seg_class"] == 1).all()


def test_every_image_has_smear_blobs_or_streaks_and_the_three_are_equally_likely():
    params = draw()
    feats = params["feats"]
    assert feats.shape == (20000, 5)
    assert feats[:, [1, 2, 4]].any(1).all()
    freq = feats.mean(0)
    assert ((freq > 0.2) & (freq < 0.8)).all()                       # each one random
    assert np.ptp(freq[[1, 2, 4]]) < 0.03                             # symmetric among the three
    assert freq[[1, 2, 4]].min() > freq[[0, 3]].max() + 0.02          # those three are topped up


def test_bad_lines_come_in_runs_and_cover_about_bad_frac_of_the_image():
    p = draw(n=4000, size=256)
    bad = p["bad_line"]
    # the chain starts in its long-run share: line 0 is as often bad as any other line
    assert bad[:, 0].mean() == pytest.approx(0.625, abs=0.03)
    later = bad
    # bad_frac ~ U(0.4, 0.85): the long-run fraction of bad lines averages 0.625
    assert later.mean() == pytest.approx(0.625, abs=0.02)
    frac = later.mean(1)
    assert np.quantile(frac, 0.05) > 0.25 and np.quantile(frac, 0.95) < 0.97 and frac.std() > 0.1
    # runs: a bad line is more likely after a bad line (mean run length 1/leave, leave = 1/U(2, 6))
    prev, cur = later[:, :-1], later[:, 1:]
    stay = (prev & cur).sum() / prev.sum()
    assert stay == pytest.approx(1 - np.mean(1 / np.random.default_rng(0).uniform(2, 6, 10 ** 6)), abs=0.02)
    # stationary: the fraction does not drift along the image
    assert abs(later[:, :120].mean() - later[:, 120:].mean()) < 0.01


def test_tip_blur_is_drawn_per_segment_class_and_heavy_for_blurred_defect_tips():
    params = draw()
    tip, seg, feats = params["tip_nm"], params["seg_class"], params["feats"]
    heavy = (seg == 3) & feats[:, :1]
    assert heavy.any() and ((seg == 3) & ~feats[:, :1]).any()
    assert tip[heavy].min() >= 0.15 and tip[heavy].max() <= 0.45
    assert tip[heavy].min() < 0.16 and tip[heavy].max() > 0.44
    for c, (lo, hi) in enumerate(TIP_SIGMA_NM):
        t = tip[(seg == c) & ~heavy]
        assert t.min() >= lo and t.max() <= hi and t.min() < lo + 0.01 * (hi - lo) + 1e-4 and t.max() > hi - 0.01 * (hi - lo)


def test_amplitude_changes_only_with_a_tip_change_and_symmetrically_in_log():
    p1, p2, p3 = draw(eta=1.0), draw(eta=2.0), draw(eta=3.0)
    for p in (p1, p2, p3):
        ratio = p["seg_amp"][:, 1] / p["seg_amp"][:, 0]
        assert (ratio[~p["has_change"]] == 1).all()
        assert len(np.unique(ratio[p["has_change"]])) == p["has_change"].sum()
        assert np.log(ratio[p["has_change"]]).mean() == pytest.approx(0, abs=0.03)
    assert (draw(eta=0.0)["seg_amp"][:, 1] == draw(eta=0.0)["seg_amp"][:, 0]).all()
    spread = [np.log(p["seg_amp"][:, 1] / p["seg_amp"][:, 0])[p["has_change"]].std() for p in (p1, p2, p3)]
    assert spread[1] == pytest.approx(2 * spread[0], rel=0.1)
    assert spread[2] == pytest.approx(spread[1], rel=0.05)        # the factor stops growing at eta 2
    amp = p1["seg_amp"][:, 0]
    assert 0.02 < np.median(amp) < 0.1                            # tens of pm of corrugation


def test_ghosts_never_on_defect_images_unless_the_defect_tip_is_double():
    for eta in (0.0, 1.0, 10.0):
        p = draw(n=20000, eta=eta)
        gain, label, seg, feats = p["ghost_gain"], p["label"], p["seg_class"], p["feats"]
        strong = feats[:, 3] & (seg == 3).any(1)
        assert strong.any()
        assert gain[strong].min() >= 0.35 and gain[strong].max() <= 0.8
        assert gain[strong].min() < 0.36 and gain[strong].max() > 0.79
        assert (gain[(label == 3) & ~strong] == 0).all()
        weak = gain[(label != 3) & ~strong]
        if eta == 0:
            assert (weak == 0).all()
            continue
        rate = min(0.9, 0.12 * eta)
        assert (weak > 0).mean() == pytest.approx(rate, abs=0.02)
        g = weak[weak > 0] / min(eta, 2.0)
        assert g.min() >= 0.15 and g.max() <= 0.4 and g.min() < 0.16 and g.max() > 0.39
    shift = draw(n=5000)["ghost_shift"]
    assert shift.shape == (5000, 2)
    assert sorted(set(np.abs(shift).ravel().tolist())) == list(range(2, 9))
    assert (shift > 0).mean() == pytest.approx(0.5, abs=0.03)


def test_artefacts_vanish_at_noise_level_zero_and_scale_linearly_with_it():
    base, double, zero = draw(n=3000, eta=1.0), draw(n=3000, eta=2.0), draw(n=3000, eta=0.0)
    for key in ("white", "pink", "tilt", "skew", "creep", "lag_px"):
        assert not zero[key].any(), key
        assert base[key].std() > 0, key
        np.testing.assert_allclose(double[key], 2 * base[key], rtol=1e-12, err_msg=key)
    assert base["white"].shape == (3000, 2) and base["tilt"].shape == (3000, 2)
    assert (base["white"][:, 0] != base["white"][:, 1]).all()      # white noise changes with the tip
    assert (base["tilt"][:, 0] != base["tilt"][:, 1]).all()
    # the defect tip's own features do not depend on the noise level
    for key in ("feats", "bad_line", "blob_count", "smear_px", "label", "scan_nm", "blob_px"):
        np.testing.assert_array_equal(zero[key], base[key], err_msg=key)
    assert (base["smear_px"] > base["lag_px"]).all()                 # a defect tip smears much more


def test_other_per_image_draws_have_their_documented_shapes_and_ranges():
    params = draw()
    n = 20000
    theta = params["theta"]
    near = np.minimum(np.abs(theta), np.abs(theta - np.pi / 2))
    assert np.rad2deg(near).max() < 20 and ((np.abs(theta) < 0.35).mean() == pytest.approx(0.5, abs=0.02))
    assert np.rad2deg(theta[np.abs(theta) < 0.35]).std() == pytest.approx(3.0, rel=0.05)
    assert params["phase"].shape == (n, 4) and params["phase"].min() >= 0 and params["phase"].max() < 1
    assert np.unique(params["phase"]).size == 4 * n
    assert sorted(set(params["base_pattern"].tolist())) == [1, 2]
    assert len(np.unique(params["hash_seed"])) > 0.95 * n
    assert (params["blob_count"][~params["feats"][:, 2]] == 0).all()
    assert params["blob_count"][params["feats"][:, 2]].min() >= 2
    steps = params["n_steps"]
    assert sorted(set(steps.tolist())) == [0, 1, 2, 3]
    big, small = params["scan_nm"] > 40, params["scan_nm"] < 6
    assert (steps[big] > 0).mean() > (steps[small] > 0).mean() + 0.3     # more steps on larger scans
    huge = params["scan_nm"] > 60                                          # but never certain
    assert 0.7 < (steps[huge] > 0).mean() < 0.9
    for key in ("step_jitter", "step_pos", "step_meander", "step_wave", "step_wphase"):
        assert params[key].shape == (n, 3), key
    assert (np.diff(params["step_pos"], axis=1) >= 0).all()              # a staircase, in order
    assert np.abs(params["step_pos"]).max() < 0.5                        # edges inside the image
    for key in ("db_density", "vac_density", "blob_px", "smear_px", "streak_p", "pink_alpha",
                "creep_lines", "buckled"):
        assert params[key].shape == (n,) and params[key].min() >= 0 and params[key].std() > 0, key
    assert params["streak_p"].max() <= 1 and params["buckled"].max() <= 1
    # drift, tilt and row misalignment have no preferred sign
    assert abs(params["skew"].mean()) < 5 * params["skew"].std() / np.sqrt(n)
    assert np.abs(params["tilt"].mean(0)).max() < 5 * params["tilt"].std() / np.sqrt(n)
    mis = np.rad2deg(theta - np.where(np.abs(theta) < 0.35, 0.0, np.pi / 2))
    assert abs(mis.mean()) < 5 * mis.std() / np.sqrt(n)
    # 2 + Poisson(5) clusters when the tip picks some up
    counts = params["blob_count"][params["feats"][:, 2]]
    assert counts.mean() == pytest.approx(7, abs=0.15) and counts.var() == pytest.approx(5, rel=0.1)
    assert params["step_pos"].min() < -0.3 and params["step_pos"].max() > 0.3


# ---------------------------------------------------------------------------------------------
# _lattice


def lattice(cls, u, v, blur=0.02, buckled=0.0, seed=5):
    p = {"hash_seed": np.array([seed]), "buckled": np.array([buckled])}
    u, v = np.asarray(u, np.float32)[None], np.asarray(v, np.float32)[None]
    return stm._lattice(cls, u, v, np.full((1, 1, 1), blur), p, np.array([0]))[0]


def grid(nu=309, nv=385, su=3 * ROW_NM, sv=3 * DIMER_NM):
    return np.meshgrid(np.linspace(0, su, nu, endpoint=False), np.linspace(0, sv, nv, endpoint=False),
                       indexing="ij")


def test_lattice_is_non_negative_unit_scale_and_periodic_in_both_directions():
    u, v = grid()
    for cls, buckled in ((0, 0.0), (1, 0.0), (1, 1.0), (2, 0.0)):
        z = lattice(cls, u, v, buckled=buckled)
        assert z.min() > -1e-3 and 0.8 < z.max() < 2.0, cls
        shift = lattice(cls, u + ROW_NM, v + DIMER_NM, buckled=buckled)
        np.testing.assert_allclose(shift, z, atol=2e-3)
    np.testing.assert_allclose(lattice(0, u + ROW_NM, v), lattice(0, u, v), atol=2e-3)
    np.testing.assert_allclose(lattice(0, u, v + DIMER_NM), lattice(0, u, v), atol=2e-3)


def test_rows_show_nothing_along_the_rows():
    u, v = grid()
    z = lattice(2, u, v, blur=0.05)
    assert z.std(1).max() < 1e-5 and z.std(0).min() > 0.1 * z.max()


def test_atoms_show_two_peaks_per_dimer_at_the_h_positions():
    u = np.linspace(-ROW_NM / 2, ROW_NM / 2, 771)
    across = lattice(0, u[:, None], np.zeros((771, 1)))[:, 0]                 # through a dimer
    peaks = u[1:-1][(across[1:-1] > across[:-2]) & (across[1:-1] > across[2:])]
    np.testing.assert_allclose(sorted(peaks), [-H_OFFSET_NM, H_OFFSET_NM], atol=0.003)
    between = lattice(0, u[:, None], np.full((771, 1), DIMER_NM / 2))[:, 0]   # between dimers
    assert between.max() < 0.3 * across.max()
    # along the row through an H atom: one peak per dimer spacing
    v = np.linspace(0, 4 * DIMER_NM, 800, endpoint=False)
    along = lattice(0, np.full((1, 800), H_OFFSET_NM), v[None])[0]
    assert ((along > np.roll(along, 1)) & (along > np.roll(along, -1))).sum() == 4
    assert along.max() > 3 * along.min() + 0.1


def test_asymmetries_show_one_bump_per_dimer_and_buckled_ones_zigzag_brighter():
    u = np.linspace(-ROW_NM / 2, ROW_NM / 2, 771)

    def bump(buckled, iv):
        prof = lattice(1, u[:, None], np.full((771, 1), iv * DIMER_NM), buckled=buckled)[:, 0]
        tops = u[1:-1][(prof[1:-1] > prof[:-2]) & (prof[1:-1] > prof[2:])]
        return tops, prof.max(), prof

    tops, flat_max, prof = bump(0.0, 0)
    np.testing.assert_allclose(tops, [0.0], atol=0.003)                         # one centred bump
    assert prof.min() > 0.1 * flat_max                                         # on a row background
    between = lattice(1, u[:, None], np.full((771, 1), DIMER_NM / 2))[:, 0]
    assert between.max() < 0.6 * flat_max                                      # dimer contrast along v
    shifts = []
    for iv in range(4):
        t, top, _ = bump(1.0, iv)                                              # every dimer buckled
        assert len(t) == 1 and top > 1.1 * flat_max
        shifts.append(t[0])
    shifts = np.array(shifts)
    assert (np.abs(shifts) > 0.05).all() and (np.abs(shifts) < ROW_NM / 4).all()
    assert (np.sign(shifts[1:]) != np.sign(shifts[:-1])).all()                 # a zig-zag
    # ... and neighbouring rows buckle the other way (c(4x2)): the sign alternates across rows too
    for iu in range(1, 5):
        prof = lattice(1, (iu * ROW_NM + u)[:, None], np.zeros((771, 1)), buckled=1.0)[:, 0]
        top = u[1:-1][(prof[1:-1] > prof[:-2]) & (prof[1:-1] > prof[2:])]
        assert len(top) == 1 and np.sign(top[0]) == np.sign(shifts[0]) * (-1) ** iu, iu
    # a fraction `buckled` of the dimers buckle
    iu, iv = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    moved = lattice(1, iu * ROW_NM, iv * DIMER_NM, buckled=0.3) != lattice(1, iu * ROW_NM, iv * DIMER_NM)
    assert moved.mean() == pytest.approx(0.3, abs=0.05)


# ---------------------------------------------------------------------------------------------
# _render on hand-built parameters


def clean_params(n=1, size=64, cls=2, scan_nm=None, **over):
    """Parameters with every artefact off: one class, no steps, ghosts, blobs or noise."""
    scan = np.full(n, size * ROW_NM / 20) if scan_nm is None else scan_nm   # a row period is 20 px
    p = dict(
        label=np.full(n, cls), scan_nm=scan, line_class=np.full((n, size), cls),
        seg_class=np.full((n, 2), cls), change_line=np.full(n, size), has_change=np.zeros(n, bool),
        feats=np.zeros((n, 5), bool), tip_nm=np.full((n, 2), 0.05), seg_amp=np.full((n, 2), 0.05),
        theta=np.zeros(n), phase=np.zeros((n, 4)), base_pattern=np.full(n, 2), buckled=np.zeros(n),
        hash_seed=np.arange(n), n_steps=np.zeros(n, int), step_dir=np.zeros(n),
        step_jitter=np.zeros((n, 3)), step_pos=np.zeros((n, 3)), step_meander=np.zeros((n, 3)),
        step_wave=np.full((n, 3), 0.5), step_wphase=np.zeros((n, 3)), db_density=np.zeros(n),
        vac_density=np.zeros(n), blob_count=np.zeros(n, int), blob_px=np.full(n, 3.0),
        smear_px=np.full(n, 6.0), lag_px=np.zeros(n), streak_p=np.full(n, 0.5),
        bad_line=np.zeros((n, size), bool), ghost_gain=np.zeros(n), ghost_shift=np.full((n, 2), 3),
        white=np.zeros((n, 2)), pink=np.zeros(n), pink_alpha=np.ones(n), tilt=np.zeros((n, 2)),
        skew=np.zeros(n), creep=np.zeros(n), creep_lines=np.full(n, 10.0))
    p.update(over)
    return p


def render(p, seed=0, eta=0.0):
    size = p["line_class"].shape[1]
    return stm._render(np.random.default_rng(seed), p, size, eta)


def test_a_clean_render_is_the_lattice_times_the_amplitude_and_has_no_random_part():
    p = clean_params(n=3, cls=0)
    p["label"] = p["line_class"][:, 0] = np.array([0, 1, 2])
    p["line_class"] = np.repeat(np.array([0, 1, 2])[:, None], 64, 1)
    a, b = render(p, seed=0), render(p, seed=1)
    assert a.dtype == np.float32 and a.shape == (3, 64, 64)
    np.testing.assert_array_equal(a, b)
    px = p["scan_nm"][0] / 64
    x = np.arange(64) * px
    uu, vv = np.meshgrid(x, x, indexing="xy")                  # theta 0: u = x, v = y
    blur = np.sqrt(0.05 ** 2 + (0.3 * px) ** 2)
    for cls in range(3):
        np.testing.assert_allclose(a[cls], 0.05 * lattice(cls, uu, vv, blur=blur, seed=cls), atol=1e-6)


def test_rows_run_along_the_rotated_direction():
    theta = np.deg2rad(30)
    p = clean_params(scan_nm=np.array([20.0]), theta=np.array([theta]))
    z = render(p)[0]
    power = np.abs(np.fft.fft2(z - z.mean())) ** 2
    ky, kx = np.unravel_index(power.argmax(), power.shape)
    ky, kx = np.fft.fftfreq(64)[ky] * 64, np.fft.fftfreq(64)[kx] * 64
    angle = np.rad2deg(np.arctan2(ky, kx)) % 180
    assert angle == pytest.approx(30, abs=4)
    assert np.hypot(kx, ky) == pytest.approx(20.0 / ROW_NM, rel=0.06)


def test_a_phase_moves_the_rows_by_that_fraction_of_the_row_spacing():
    z0 = render(clean_params())[0]                             # 20 px per row period
    z1 = render(clean_params(phase=np.array([[0.5, 0.0, 0.0, 0.0]])))[0]
    np.testing.assert_allclose(z1[:, :-10], z0[:, 10:], atol=1e-5)
    z2 = render(clean_params(phase=np.array([[0.25, 0.0, 0.0, 0.0]])))[0]
    assert np.abs(z2 - z0).max() > 0.5 * np.ptp(z0)


def test_a_step_lifts_one_side_by_a_monatomic_height():
    size = 64
    flat = clean_params(seg_amp=np.zeros((1, 2)), n_steps=np.array([1]))      # no lattice: heights only
    z = render(flat)[0]
    # step_dir 0: the edge normal points along +x; step_pos 0: through the centre
    assert set(np.round(z / STEP_NM, 6).ravel().tolist()) == {0.0, 1.0}
    cols = np.arange(size)
    np.testing.assert_allclose(z, np.where(cols > size / 2, STEP_NM, 0.0)[None, :].repeat(size, 0), atol=1e-7)
    # a staircase of three edges, normal along +y, at a quarter of the width either side
    p = clean_params(seg_amp=np.zeros((1, 2)), n_steps=np.array([3]), step_dir=np.array([np.pi / 2]),
                     step_pos=np.array([[-0.2, 0.05, 0.3]]))
    z = render(p)[0]
    level = (cols[:, None] > size * (0.5 + np.array([-0.2, 0.05, 0.3]))).sum(1)
    np.testing.assert_allclose(z, (level * STEP_NM)[:, None].repeat(size, 1), atol=1e-6)


def test_a_meandering_step_edge_wiggles_with_the_given_amplitude_and_wavelength():
    size = 128
    p = clean_params(size=size, seg_amp=np.zeros((1, 2)), n_steps=np.array([1]),
                     step_meander=np.array([[0.05, 0, 0]]), step_wave=np.array([[0.25, 0.5, 0.5]]),
                     step_wphase=np.array([[1.0, 0, 0]]))
    z = render(p)[0]
    edge = (z < STEP_NM / 2).sum(1).astype(float)            # first upper column, per line
    rows = np.arange(size)
    wave = 0.25 * size                                        # fractions of the image width
    a, b = (2 * np.mean((edge - edge.mean()) * f(2 * np.pi * rows / wave)) for f in (np.sin, np.cos))
    assert np.hypot(a, b) == pytest.approx(0.05 * size, rel=0.15)
    assert edge.mean() == pytest.approx(size / 2, abs=1.5)


def test_rows_turn_90_degrees_on_alternate_terraces():
    size = 64
    # two edges with their normal along +y: terraces 0, 1, 2 from the top lines down
    p = clean_params(n_steps=np.array([2]), step_dir=np.array([np.pi / 2]),
                     step_pos=np.array([[-0.2, 0.2, 0.0]]))
    z = render(p)[0]
    top, mid, low = z[2:16], z[26:38], z[50:62]
    for even in (top, low):                                   # rows across x: each column constant
        assert even.std(0).max() < 1e-5 and even.std(1).min() > 0.005
    assert mid.std(1).max() < 1e-5 and mid.std(0).min() > 0.005   # turned: each line constant
    np.testing.assert_allclose(low - 2 * STEP_NM, top[:12], atol=1e-5)   # same registry: phases 0


def test_segments_after_the_tip_change_use_their_own_amplitude_and_tip():
    size = 80                                                 # four row periods of 20 px
    p = clean_params(size=size, change_line=np.array([20]), has_change=np.array([True]),
                     seg_amp=np.array([[0.05, 0.1]]))
    z, ref = render(p)[0], render(clean_params(size=size))[0]
    np.testing.assert_allclose(z[20:] / 2, ref[20:], atol=1e-6)
    np.testing.assert_allclose(z[:20], ref[:20], atol=1e-6)
    sharp = render(clean_params(size=size, tip_nm=np.array([[0.03, 0.03]])))[0]
    blunt = render(clean_params(size=size, change_line=np.array([20]), tip_nm=np.array([[0.03, 0.15]])))[0]
    np.testing.assert_array_equal(blunt[:20], sharp[:20])
    # blur damps the first harmonic (4 cycles per line) by exp(-2 pi^2 (0.15^2 - 0.03^2) / 0.77^2)
    ratio = np.abs(np.fft.rfft(blunt[30])[4]) / np.abs(np.fft.rfft(sharp[30])[4])
    assert ratio == pytest.approx(np.exp(-2 * np.pi ** 2 * (0.15 ** 2 - 0.03 ** 2) / ROW_NM ** 2), rel=0.02)


def test_defect_lines_show_the_base_pattern():
    size = 64
    for base in (1, 2):
        want = render(clean_params(cls=base))[0]
        got = render(clean_params(cls=3, base_pattern=np.array([base])))[0]
        np.testing.assert_array_equal(got, want)
    # only the defect lines take the base pattern; the other lines keep their class
    lines = np.full((1, size), 0)
    lines[0, 40:] = 3
    got = render(clean_params(cls=0, line_class=lines, base_pattern=np.array([2])))[0]
    np.testing.assert_array_equal(got[:40], render(clean_params(cls=0))[0][:40])
    np.testing.assert_array_equal(got[40:], render(clean_params(cls=2))[0][40:])


def test_a_double_tip_adds_a_shifted_weaker_copy():
    size = 64
    base = clean_params(n=3, cls=0, n_steps=np.array([1, 1, 1]), step_dir=np.array([0.4, 2.0, 4.0]))
    z0 = render(base)
    shift = np.array([[3, -5], [-4, 6], [2, 2]])
    z1 = render(dict(base, ghost_gain=np.array([0.3, 0.6, 0.0]), ghost_shift=shift))
    for i, gain in enumerate((0.3, 0.6, 0.0)):
        iy = np.clip(np.arange(size) + shift[i, 0], 0, size - 1)      # clamped at the frame
        ix = np.clip(np.arange(size) + shift[i, 1], 0, size - 1)
        np.testing.assert_allclose(z1[i], z0[i] + gain * z0[i][iy][:, ix], atol=1e-6)


def test_smear_hits_only_the_bad_lines_of_a_defect_tip_as_a_first_order_lag():
    size = 64
    bad = np.zeros((1, size), bool)
    bad[0, 10:30] = True
    bad[0, 50:] = True
    lines = np.full((1, size), 3)
    lines[0, 45:] = 2                                         # a tip change back to rows
    base = clean_params(cls=3, line_class=lines, bad_line=bad, base_pattern=np.array([2]),
                        theta=np.array([0.3]), smear_px=np.array([6.0]))
    z0 = render(base)[0]
    feats = np.zeros((1, 5), bool)
    feats[0, 1] = True
    z1 = render(dict(base, feats=feats))[0]
    hit = bad[0] & (lines[0] == 3)
    np.testing.assert_array_equal(z1[~hit], z0[~hit])
    keep = np.exp(-1 / 6.0)
    want = z0[hit].copy()
    for j in range(1, size):
        want[:, j] = keep * want[:, j - 1] + (1 - keep) * want[:, j]
    np.testing.assert_allclose(z1[hit], want, atol=1e-6)


def test_streaks_and_tip_blobs_stay_on_the_defect_lines():
    size, n = 64, 40
    rng = np.random.default_rng(4)
    bad = rng.random((n, size)) < 0.5
    lines = np.full((n, size), 3)
    lines[:, 40:] = 1
    feats = np.zeros((n, 5), bool)
    # the second segment's amplitude is never used (no tip change): artefacts scale with the first
    base = clean_params(n=n, cls=3, line_class=lines, bad_line=bad, base_pattern=np.full(n, 1),
                        streak_p=np.ones(n), seg_amp=np.tile([[0.05, 0.5]], (n, 1)))
    z0 = render(base)
    f4 = feats.copy()
    f4[:, 4] = True
    z1 = render(dict(base, feats=f4), seed=1)
    hit = bad & (lines == 3)
    diff = np.abs(z1 - z0) > 0
    assert not diff[~hit].any()
    assert diff[hit].any(1).all()                              # streak_p 1: every such line
    # a burst is one contiguous stretch of the line, at least size // 8 long unless it runs off
    # the end, and never the whole line (it starts at a random column and is shorter than a line)
    runs = (np.diff(diff[hit].astype(int), axis=1) == 1).sum(1) + diff[hit][:, 0]
    assert (runs == 1).all()
    first, last = diff[hit].argmax(1), size - diff[hit][:, ::-1].argmax(1)
    assert ((last == size) | (last - first >= size // 8)).all()
    assert (~diff[hit]).any(1).all() and len(np.unique(last - first)) > 20
    assert len(np.unique((last - first)[last < size])) > 10
    # burst noise: N(0, 1) times U(1, 3) amplitudes, so its rms is sqrt(13 / 3) amplitudes
    amp = 0.05
    burst = (z1 - z0)[hit]
    assert burst[diff[hit]].std() / amp == pytest.approx(np.sqrt(13 / 3), rel=0.1)
    assert (burst.std(1) > 0).all() and (np.abs(np.diff(burst, axis=1)) > 0).sum() > 0.5 * diff[hit].sum()
    # streak_p is the chance that a bad line of a defect tip is streaky
    half = render(dict(base, feats=f4, streak_p=np.full(n, 0.5)), seed=1)
    streaky = (np.abs(half - z0) > 0).any(2)
    assert not streaky[~hit].any() and streaky[hit].mean() == pytest.approx(0.5, abs=0.06)
    blobs = render(dict(base, blob_count=np.full(n, 6)), seed=2)
    d = np.abs(blobs - z0).max(2) > 1e-7
    assert not d[lines != 3].any() and d[lines == 3].mean() > 0.3


def test_point_defects_appear_with_density_and_noise_level_adds_random_artefacts():
    n = 8
    base = clean_params(n=n, cls=2)
    dense = dict(base, db_density=np.full(n, 2.0), vac_density=np.full(n, 2.0))   # ~12 each on 2.5 nm
    a, b = render(dense, seed=0), render(dense, seed=1)
    assert not np.array_equal(a, b)                            # defects at random places
    z0 = render(base)
    up, down = (a - z0).max((1, 2)), (a - z0).min((1, 2))
    assert (up > 0).all() and (down < 0).all()                # bright dangling bonds, dark vacancies
    noisy0, noisy1 = render(base, seed=0, eta=1.0), render(base, seed=1, eta=1.0)
    assert not np.array_equal(noisy0, noisy1)
    line_mean = (noisy0 - z0).mean(2)
    assert line_mean.std(1).mean() > 0.1 * 0.05                  # per-line offsets of order amp / 2


def test_terraces_keep_their_own_registry_and_turn_on_odd_ones():
    """Oracle from the stated rule: on terrace k the lattice coordinates are (x, y) rotated by
    theta, turned (u, v) -> (v, -u) when k is odd, then shifted by (phase0 + k phase2) rows and
    (phase1 + k phase3) dimers; each terrace sits k steps up."""
    size = 64
    phase = np.array([[0.1, 0.3, 0.125, 0.35]])
    theta = 0.3
    p = clean_params(cls=0, n_steps=np.array([2]), step_dir=np.array([np.pi / 2]),
                     step_pos=np.array([[-0.2, 0.2, 0.0]]), phase=phase, theta=np.array([theta]))
    z = render(p)[0]
    px = p["scan_nm"][0] / size
    x = np.arange(size) * px
    xx, yy = np.meshgrid(x, x, indexing="xy")
    xx, yy = xx * np.cos(theta) + yy * np.sin(theta), yy * np.cos(theta) - xx * np.sin(theta)
    blur = np.sqrt(0.05 ** 2 + (0.3 * px) ** 2)
    for k, lines in ((0, slice(2, 16)), (1, slice(26, 38)), (2, slice(50, 62))):
        u0, v0 = xx[lines], yy[lines]
        u, v = (v0, -u0) if k % 2 else (u0, v0)
        u = u + (phase[0, 0] + k * phase[0, 2]) * ROW_NM
        v = v + (phase[0, 1] + k * phase[0, 3]) * DIMER_NM
        want = 0.05 * lattice(0, u, v, blur=blur, seed=0) + k * STEP_NM
        np.testing.assert_allclose(z[lines], want, atol=2e-5, err_msg=f"terrace {k}")


def test_drift_and_creep_shift_where_each_line_samples_the_surface():
    """Pixel (row, col) images the surface at x = (col + shift(row)) px, with
    shift = skew * row + creep * exp(-row / creep_lines): a vertical step edge leans and bends."""
    size = 64
    p = clean_params(seg_amp=np.zeros((1, 2)), n_steps=np.array([1]), skew=np.array([0.1]),
                     creep=np.array([5.0]), creep_lines=np.array([10.0]))
    z = render(p)[0]
    rows = np.arange(size)
    shift = 0.1 * rows + 5.0 * np.exp(-rows / 10.0)
    edge = (z < STEP_NM / 2).sum(1)                           # columns still on the lower terrace
    want = np.floor(size / 2 - shift) + 1                     # cols with col + shift <= size / 2
    np.testing.assert_array_equal(edge, want)


def test_a_residual_plane_is_added_in_units_of_the_amplitude():
    base = clean_params(seg_amp=np.array([[0.05, 0.2]]))
    z0 = render(base)[0]
    z1 = render(dict(base, tilt=np.array([[0.002, -0.003]])))[0]
    rows, cols = np.mgrid[:64, :64]
    np.testing.assert_allclose(z1 - z0, 0.05 * (0.002 * cols - 0.003 * rows), atol=1e-6)


def test_feedback_lag_low_passes_every_line_along_the_fast_scan():
    base = clean_params(theta=np.array([0.4]))
    z0 = render(base)[0]
    z1 = render(dict(base, lag_px=np.array([0.5])))[0]
    keep = np.exp(-1 / 0.5)
    want = z0.copy()
    for j in range(1, 64):
        want[:, j] = keep * want[:, j - 1] + (1 - keep) * want[:, j]
    np.testing.assert_allclose(z1, want, atol=1e-6)
    assert np.abs(z1 - z0).max() > 0.01 * np.ptp(z0)


def test_white_and_pink_noise_follow_their_amplitudes_per_segment():
    n, size = 16, 64
    base = clean_params(n=n, seg_amp=np.tile([[0.05, 0.5]], (n, 1)), change_line=np.full(n, 24),
                        has_change=np.ones(n, bool))
    z0 = render(base)
    white = render(dict(base, white=np.tile([[0.1, 0.3]], (n, 1))), seed=1) - z0
    # white noise std: white[segment] * amp (the first segment's amplitude: artefacts scale with it)
    assert white[:, :24].std() == pytest.approx(0.1 * 0.05, rel=0.05)
    assert white[:, 24:].std() == pytest.approx(0.3 * 0.05, rel=0.05)
    assert abs(np.corrcoef(white[:, :, 1:].ravel(), white[:, :, :-1].ravel())[0, 1]) < 0.03
    pink = render(dict(base, pink=np.full(n, 0.2), pink_alpha=np.full(n, 1.0)), seed=2) - z0
    np.testing.assert_allclose(pink.reshape(n, -1).std(1), 0.2 * 0.05, rtol=1e-4)
    # 1/f in raster order: neighbouring pixels of a line are strongly correlated
    assert np.corrcoef(pink[:, :, 1:].ravel(), pink[:, :, :-1].ravel())[0, 1] > 0.5


def test_line_offsets_and_jumps_grow_with_noise_level():
    n, size = 64, 64
    base = clean_params(n=n, seg_amp=np.tile([[0.05, 0.5]], (n, 1)))
    z0 = render(base)
    for eta in (0.5, 1.0, 2.0):
        d = (render(base, seed=3, eta=eta) - z0) / 0.05          # in units of the amplitude
        med = np.median(d, axis=2)                                 # per-line offset
        step = np.diff(med, axis=1)
        mad = np.median(np.abs(step)) / 0.6745                     # robust std of line-to-line change
        # offsets ~ N(0, 0.5 eta) per line: differences have std sqrt(2) * 0.5 * eta
        assert mad == pytest.approx(np.sqrt(2) * 0.5 * eta, rel=0.12), eta
        # no bias: offsets and jumps are centred on zero
        assert abs(np.median(med)) < 0.5 * eta and abs(med[:, -1].mean()) < 0.5 + 0.5 * eta
        # jumps persist: the offsets wander away from zero down the image (a random walk)
        assert med[:, 48:].var() > 3 * med[:, :16].var()


def test_spikes_are_single_pixels_far_off_the_surface():
    n, size, eta = 64, 64, 4.0
    base = clean_params(n=n)
    z0 = render(base)
    d = (render(base, seed=5, eta=eta) - z0) / 0.05
    resid = d - np.median(d, axis=2, keepdims=True)
    # a mid-line jump moves a run of pixels; a spike moves one, by 1.5 to 4 amplitudes
    isolated = (np.abs(resid - np.roll(resid, 1, 2)) > 1.4) & (np.abs(resid - np.roll(resid, -1, 2)) > 1.4)
    isolated[:, :, [0, -1]] = False
    count = isolated.sum()
    expected = 1.5e-4 * eta * size * size * n * (62 / 64)
    assert count == pytest.approx(expected, rel=0.35)
    h = np.abs(resid[isolated])
    assert np.quantile(h, 0.9) < 4.0 + 0.2 and np.median(h) > 1.5
    assert (resid[isolated] > 0).mean() == pytest.approx(0.5, abs=0.12)        # up or down
    assert len(np.unique(np.round(h, 3))) > 0.8 * len(h) and np.quantile(h, 0.1) < 2.2   # U(1.5, 4)


def test_mid_line_jumps_persist_to_the_end_of_their_line():
    """A jump at a random column (never the first) shifts the rest of the line by N(0, 2)
    amplitudes; 2 % of lines per unit noise level."""
    n, size, eta = 128, 64, 2.0    # ~280 jumps: 25 % is 4 sd
    base = clean_params(n=n, size=size)
    z0 = render(base)
    d = (render(base, seed=7, eta=eta) - z0) / 0.05
    r = d - d[:, :, :1]                                        # relative to the line's first pixel
    end = r[:, :, -1]
    jumped = (np.abs(end) > 0.3) & (np.abs(end - r[:, :, -2]) < 1e-3) & (np.abs(end - r[:, :, -3]) < 1e-3)
    # P(|N(0, 2)| > 0.3) = 0.88; jumps in the last two columns are missed (2 / 63)
    expected = 0.02 * eta * n * size * 0.88 * (61 / 63)
    assert jumped.sum() == pytest.approx(expected, rel=0.25)
    heights = end[np.abs(end) > 0.3]
    assert abs(np.median(heights)) < 0.6
    assert np.median(np.abs(end[jumped])) == pytest.approx(2 * 0.6745 * 1.1, rel=0.3)


def isolated_blobs(d, sign):
    """(volume, volume / peak) of images holding one blob of that sign well inside the frame."""
    out = []
    for img in d * sign:
        peak = np.unravel_index(img.argmax(), img.shape)
        local = (img > 0.2 * img.max()) & (img >= np.roll(img, 1, 0)) & (img >= np.roll(img, -1, 0)) \
            & (img >= np.roll(img, 1, 1)) & (img >= np.roll(img, -1, 1))
        if img.max() > 0 and local.sum() == 1 and min(peak) >= 10 and max(peak) < img.shape[0] - 10:
            out.append((img.sum(), img.sum() / img.max()))
    return np.array(out)


def test_point_defects_are_tip_blurred_and_their_number_follows_density_times_area():
    n, size = 200, 48
    scan = np.full(n, 12.0)                                   # 0.25 nm per pixel
    tips = np.tile([[0.4, 0.1]], (n, 1))                      # the first segment's tip blurs them
    base = clean_params(n=n, size=size, cls=2, scan_nm=scan, tip_nm=tips, seg_amp=np.zeros((n, 2)))
    dense = dict(base, seg_amp=np.tile([[1.0, 1.0]], (n, 1)))
    bright = render(dict(dense, db_density=np.full(n, 0.006)), seed=1) - render(dense)   # ~0.9 a frame
    got = isolated_blobs(bright, 1)
    assert len(got) > 15
    sigma2 = (0.3 ** 2 + 0.4 ** 2) / 0.25 ** 2                  # sqrt(0.3^2 + tip^2) nm, in px
    # volume / peak = 2 pi sigma^2 (a few frames hide a second, faint blob: hence the fraction)
    assert (np.abs(got[:, 1] / (2 * np.pi * sigma2) - 1) < 0.01).mean() > 0.8
    assert np.quantile(got[:, 0], 0.1) >= 1.5 - 0.05 and np.quantile(got[:, 0], 0.9) <= 3.0 + 0.05
    dark = render(dict(dense, vac_density=np.full(n, 0.006)), seed=1) - render(dense)
    assert bright.min() > -1e-6 and dark.max() < 1e-6
    got = isolated_blobs(dark, -1)
    assert len(got) > 15
    assert np.quantile(got[:, 0], 0.1) >= 1.0 - 0.05 and np.quantile(got[:, 0], 0.9) <= 2.0 + 0.05
    # number: Poisson(density * scan^2); at 1 nm a pixel the blobs are single bright pixels
    n, size = 32, 64
    base = clean_params(n=n, size=size, cls=2, scan_nm=np.full(n, 64.0), seg_amp=np.ones((n, 2)))
    d = render(dict(base, db_density=np.full(n, 0.004)), seed=2) - render(base)
    maxima = (d > 0.5) & (d >= np.roll(d, 1, 1)) & (d >= np.roll(d, -1, 1)) & (d >= np.roll(d, 1, 2)) \
        & (d >= np.roll(d, -1, 2))
    assert maxima.sum() / n == pytest.approx(0.004 * 64.0 ** 2, rel=0.1)


def test_tip_blobs_have_volume_two_to_eight_amplitudes_and_width_blob_px():
    n, size = 200, 48
    base = clean_params(n=n, size=size, cls=3, base_pattern=np.full(n, 2), seg_amp=np.tile([[0.5, 0.5]], (n, 1)))
    z0 = render(base)
    d = (render(dict(base, blob_count=np.ones(n, int), blob_px=np.full(n, 2.5)), seed=3) - z0) / 0.5
    got = isolated_blobs(d, 1)
    assert len(got) > 60
    assert (np.abs(got[:, 1] / (2 * np.pi * 2.5 ** 2) - 1) < 0.01).mean() > 0.8
    assert np.quantile(got[:, 0], 0.05) >= 2.0 - 0.05 and np.quantile(got[:, 0], 0.95) <= 8.0 + 0.05
    assert got[:, 0].min() < 2.5 and got[:, 0].max() > 7.5


# ---------------------------------------------------------------------------------------------
# generate_stm: arguments, dtypes, chunked rendering


def test_generate_stm_defaults_to_noise_level_one_and_documents_its_dtypes():
    a, b = stm.generate_stm(3, seed=4, image_size=16), stm.generate_stm(3, seed=4, image_size=16, noise_level=1.0)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["scan_size_nm"].dtype == np.float32 and a["image_id"].dtype == np.int64
    assert a["labels"].dtype == np.int64 and list(a["class_names"]) == list(CLASS_NAMES)


def test_generate_stm_accepts_the_smallest_valid_arguments_and_rejects_bad_shares():
    one = stm.generate_stm(1, seed=0, image_size=8, noise_level=0.0)
    assert one["images"].shape == (1, 8, 8)
    for bad in ((1, -0.5, 1, 1), (0, 0, 0, 0), (1, 1, 1)):
        with pytest.raises(ValueError, match="class_shares"):
            stm.generate_stm(2, seed=0, class_shares=bad)


def test_images_are_rendered_in_order_in_chunks_of_fixed_size(monkeypatch):
    seen = []
    real = stm._render

    def spy(rng, p, size, eta):
        seen.append(p["scan_nm"].copy())
        return real(rng, p, size, eta)

    monkeypatch.setattr(stm, "_render", spy)
    out = stm.generate_stm(70, seed=0, image_size=8)
    assert [len(s) for s in seen] == [stm._CHUNK, stm._CHUNK, 70 - 2 * stm._CHUNK]
    np.testing.assert_array_equal(np.concatenate(seen).astype(np.float32), out["scan_size_nm"])


def test_each_image_in_a_batch_uses_its_own_parameters():
    """Rendering two images together gives what each gives alone (no random part at eta 0)."""
    two = clean_params(n=2, cls=1, seg_amp=np.array([[0.05, 0.02], [0.08, 0.11]]),
                       tip_nm=np.array([[0.03, 0.1], [0.06, 0.02]]), change_line=np.array([20, 40]),
                       has_change=np.ones(2, bool), theta=np.array([0.1, 1.4]), buckled=np.array([0.3, 0.5]))
    both = render(two)
    for i in range(2):
        alone = render({k: v[i:i + 1] for k, v in two.items()})[0]
        np.testing.assert_allclose(both[i], alone, atol=1e-7)
    noisy = render(dict(two, white=np.array([[0.1, 0.1], [0.3, 0.3]])), seed=1) - both
    np.testing.assert_allclose(noisy.std((1, 2)), [0.1 * 0.05, 0.3 * 0.08], rtol=0.05)


def test_an_oblique_step_edge_meanders_along_its_own_direction():
    size, d = 128, 0.5
    p = clean_params(size=size, seg_amp=np.zeros((1, 2)), n_steps=np.array([1]), step_dir=np.array([d]),
                     step_meander=np.array([[0.04, 0, 0]]), step_wave=np.array([[0.3, 0.5, 0.5]]))
    upper = render(p)[0] > STEP_NM / 2
    rows, cols = np.mgrid[:size, :size] - size / 2
    # signed distance of each pixel beyond the straight edge, and its position along the edge
    across, along = cols * np.cos(d) + rows * np.sin(d), rows * np.cos(d) - cols * np.sin(d)
    near = np.abs(across) < 0.04 * size + 1.5
    boundary = near & (upper != np.roll(upper, 1, 1))
    # the edge sits at across = -A sin(2 pi along / W + phase): fit its amplitude at wavelength W
    a, b = along[boundary], across[boundary]
    w = 0.3 * size
    design = np.stack([np.sin(2 * np.pi * a / w), np.cos(2 * np.pi * a / w), np.ones_like(a)], 1)
    coef = np.linalg.lstsq(design, b, rcond=None)[0]
    assert np.hypot(*coef[:2]) == pytest.approx(0.04 * size, rel=0.15)
