"""Noise verdicts that hold with 2-5 seeds: t-tests with their real degrees of freedom, paired when
configs share seeds, a marked verdict when a config borrows another's spread, bootstrap intervals;
checked against scipy on fixed numbers, and on a study where the old fixed-factor rule was wrong."""

import json
import math

import pytest
from scipy import stats

from blueberry.report.analyse import analyse
from blueberry.report.build import build_report
from blueberry.report.load import load_runs
from blueberry.report.noise import ALPHA, compare, mean_interval
from report_fixtures import make_run, seed_study

A = [3.00, 3.10, 3.20, 3.05]
B = [3.12, 3.31, 3.18]


def test_welch_matches_scipy_with_its_degrees_of_freedom():
    c = compare(A, [0, 1, 2, 3], B, [7, 8, 9])           # no shared seeds: Welch
    ref = stats.ttest_ind(B, A, equal_var=False)
    assert c.test == "welch"
    assert c.p_value == pytest.approx(ref.pvalue) and c.dof == pytest.approx(ref.df)
    va, vb = stats.tvar(A) / len(A), stats.tvar(B) / len(B)     # Welch-Satterthwaite, by hand
    assert c.dof == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2))
    assert c.within_noise == (ref.pvalue >= ALPHA)


def test_paired_over_shared_seeds_matches_scipy_and_sees_what_welch_misses():
    x, y = [3.00, 3.10, 3.20], [3.02, 3.13, 3.225]      # seed effects dwarf a steady +0.025
    c = compare(x, [0, 1, 2], y, [0, 1, 2])
    assert c.test == "paired" and c.dof == 2
    assert c.p_value == pytest.approx(stats.ttest_rel(y, x).pvalue) and c.within_noise is False
    assert compare(x, [0, 1, 2], y, [5, 6, 7]).within_noise is True     # unpaired, the same numbers tie
    # only the seeds both ran count, each once
    c = compare([3.0, 3.1, 3.2, 9.0], [0, 1, 2, 3], [3.02, 3.13, 3.225], [0, 1, 2])
    assert c.test == "paired" and c.p_value == pytest.approx(stats.ttest_rel(y, x).pvalue)


def test_a_config_run_once_borrows_the_pooled_std_and_says_so():
    pooled, dof = 0.1, 2
    c = compare([3.0], [0], [3.2, 3.3, 3.4], [0, 1, 2], pooled=pooled, pooled_dof=dof)
    va, vb = pooled ** 2 / 1, stats.tvar([3.2, 3.3, 3.4]) / 3
    df = (va + vb) ** 2 / (va ** 2 / dof + vb ** 2 / 2)
    assert c.test == "borrowed" and c.dof == pytest.approx(df)
    assert c.p_value == pytest.approx(2 * stats.t.sf(0.3 / math.sqrt(va + vb), df))
    assert compare([3.0], [0], [3.3], [1]).test is None         # no spread anywhere: unknown


def test_bootstrap_interval_is_scipys_percentile_interval():
    low, high = mean_interval(A)
    ref = stats.bootstrap((A,), lambda x, axis=-1: x.mean(axis=axis), confidence_level=0.95, n_resamples=2000,
                          method="percentile", rng=0).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))
    assert min(A) <= low < sum(A) / len(A) < high <= max(A)
    assert mean_interval([3.0]) is None


def test_one_lucky_seed_is_not_apart_from_three(tmp_path):
    """The old rule (|Δ| ≥ 2·sqrt(s²/1 + s²/3), s lent by the other config) called this apart."""
    seed_study(tmp_path / "runs", {1e-3: [3.0], 2e-3: [3.2, 3.3, 3.4]})
    a = analyse(load_runs([tmp_path / "runs"]).runs)
    lucky, three = a.groups
    assert lucky.label == "lr=0.001" and three.mean == pytest.approx(3.3)
    old_threshold = 2 * math.sqrt(0.1 ** 2 / 1 + 0.1 ** 2 / 3)
    assert abs(three.delta_to_leader) >= old_threshold                 # old rule: "apart"
    assert three.within_noise_of_leader is True and three.test_vs_leader == "borrowed"
    assert 0.05 < three.p_vs_leader < 0.1
    assert "borrow the pooled std" in a.noise_note

    # the verdict, its p-value and the intervals reach the JSON, the table and the page
    out = tmp_path / "rep"
    result = build_report([tmp_path / "runs"], out, per_run_figures=False)
    summary = json.loads((out / "summary.json").read_text())
    ranked = {g["label"]: g for g in summary["ranking"]}
    assert ranked["lr=0.002"]["p_vs_leader"] == pytest.approx(three.p_vs_leader)
    assert ranked["lr=0.002"]["ci_low"] < 3.3 < ranked["lr=0.002"]["ci_high"]
    (pair,) = summary["pairs"]
    assert pair["test"] == "borrowed" and pair["within_noise"] is True and pair["dof"] > 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert {r["noise_test"] for r in rows if r["group"] == "lr=0.002"} == {"borrowed"}
    page = result.files["html"].read_text()
    assert f"within noise (p={three.p_vs_leader:.2g}, borrowed std)" in page and "95% CI" in page


def test_the_gap_warning_needs_a_repeated_epoch(tmp_path):
    """val − train loss > 0.1 below one epoch is a train/val mismatch, not overfitting."""
    gap = dict(val={0: 5.0, 50: 3.6, 100: 3.5}, train_loss=lambda s: 3.0)
    make_run(tmp_path, "early", epochs_total=0.5, **gap)
    make_run(tmp_path, "late", epochs_total=3.0, **gap)
    a = analyse(load_runs([tmp_path]).runs)
    by = {w.run: w for w in a.warnings if w.kind == "gap"}
    assert by["early"].severity == "note" and "not overfitting" in by["early"].message
    assert by["late"].severity == "warning" and "overfitting" in by["late"].message


def test_sweep_local_ranking_carries_the_noise_caveat():
    from types import SimpleNamespace

    from blueberry.sweep.display import noise_caveat

    once = [SimpleNamespace(params={"lr": lr, "seed": 0}, value=v) for lr, v in ((1e-3, 3.0), (3e-3, 3.1))]
    assert "no seed repeats: differences between trials cannot be told from noise" in noise_caveat(once)
    twice = once + [SimpleNamespace(params={"lr": 1e-3, "seed": 1}, value=3.05)]
    assert "differ only in seed are repeats" in noise_caveat(twice)
