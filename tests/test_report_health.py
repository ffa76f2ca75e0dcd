"""The report's health checks and LR recommendation, one rule at a time, on `Run` records built by
hand: each threshold is tested on both sides of its boundary (exactly at it: no warning), and each
warning's step, severity and the numbers its message carries are derived from the inputs here.

Covers check_rise, check_gap, check_schedule, check_epochs, check_leakage, check_near_duplicates,
check_collapse, check_divergence, health_warnings, lr_recommendations (and _recommend behind it).
tests/test_report_analyse.py covers the same checks end to end through run dirs.
"""

from __future__ import annotations

import datetime
import math
import re
import statistics
import warnings
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from blueberry.report.analyse import (
    COLLAPSE_SHARE,
    DIVERGE_RATIO,
    GAP_ACCURACY,
    GAP_LOSS,
    LR_END_TOL,
    RISE_TOL,
    MetricSpec,
    RunStats,
    check_collapse,
    check_divergence,
    check_epochs,
    check_gap,
    check_leakage,
    check_near_duplicates,
    check_rise,
    check_schedule,
    health_warnings,
    lr_recommendations,
    run_stats,
)
from blueberry.report.load import Run

LOSS = MetricSpec(name="val/loss", curve="val/loss", mode="min", rank_by="best", source="test")
BLEU = MetricSpec(name="val/bleu", curve="val/bleu", mode="max", rank_by="best", source="test")
ACC = MetricSpec(name="val/accuracy", curve="val/accuracy", mode="max", rank_by="best", source="test")


def make(name: str = "r", rows=(), config=None, summary=None, trial=None, path=None) -> Run:
    return Run(name=name, path=path, config=dict(config or {}), summary=dict(summary or {}), rows=list(rows),
               trial=trial)


def stats(**kw) -> RunStats:
    """A RunStats with every field None (evals empty) but those given."""
    base = {f: None for f in RunStats.__dataclass_fields__}
    base.update(name="r", evals=[])
    base.update(kw)
    return RunStats(**base)


def numbers(text: str) -> list[float]:
    """The numbers in a message, in order (the facts it carries, whatever the wording around them)."""
    return [float(x) for x in re.findall(r"(?<![\w/])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def one(found, kind=None):
    assert len(found) == 1, found
    if kind is not None:
        assert found[0].kind == kind
    return found[0]


# --- check_rise ------------------------------------------------------------------------------------

# 3.125 is one of the values where best ± RISE_TOL·best is exact in floating point, so "worse by
# exactly the tolerance" really is exactly at the boundary.
B = 3.125
TOL = RISE_TOL * B


def rise_stats(final: float, best: float = B, mode: str = "min") -> RunStats:
    worse = (final - best) if mode == "min" else (best - final)
    return stats(evals=[(10, best, None), (20, final, None)], best=best, best_step=10, final=final, final_step=20,
                 degradation_pct=100 * worse / abs(best))


def test_rise_exactly_at_the_tolerance_is_noise_and_just_beyond_it_warns():
    assert (B + TOL) - B == TOL and B - (B - TOL) == TOL      # the boundary is exact
    assert check_rise(make(), rise_stats(B + TOL), LOSS) == []
    w = one(check_rise(make(), rise_stats(B + 2 * TOL), LOSS), "overfit")
    assert w.step == 20 and "rose" in w.message.split() and "fell" not in w.message.split()


def test_a_higher_is_better_metric_warns_only_when_it_falls_beyond_the_tolerance():
    assert check_rise(make(), rise_stats(B, mode="max"), BLEU) == []                  # final == best
    assert check_rise(make(), rise_stats(B - TOL, mode="max"), BLEU) == []            # exactly at tolerance
    assert check_rise(make(), rise_stats(B + 1.0, mode="max"), BLEU) == []            # better than "best"
    w = one(check_rise(make(), rise_stats(B - 2 * TOL, mode="max"), BLEU), "overfit")
    assert w.step == 20 and "fell" in w.message.split() and "rose" not in w.message.split()


def test_rise_needs_a_best_its_step_and_a_finite_final():
    assert check_rise(make(), stats(best=None, best_step=10, final=5.0, final_step=20), LOSS) == []
    assert check_rise(make(), stats(best=3.0, best_step=None, final=5.0, final_step=20,
                                    degradation_pct=66.7), LOSS) == []
    assert check_rise(make(), stats(best=3.0, best_step=10, final=None), LOSS) == []
    assert check_rise(make(), stats(evals=[(10, 3.0, None), (20, math.inf, None)], best=3.0, best_step=10,
                                    final=math.inf, final_step=20, degradation_pct=math.inf), LOSS) == []


def test_rise_onset_is_the_final_step_when_no_eval_after_the_best_is_worse():
    # the final value came from summary.json, not from an eval row after the best
    st = stats(evals=[(10, 3.0, None)], best=3.0, best_step=10, final=3.5, final_step=100, degradation_pct=16.7)
    assert one(check_rise(make(), st, LOSS)).step == 100


def test_rise_onset_is_after_the_best_step_not_at_it():
    # a resumed run logged step 10 twice: the best 3.0, then 3.5 after the resume; the onset is step 20
    rows = [{"step": 0, "val/loss": 5.0}, {"step": 10, "val/loss": 3.0}, {"step": 10, "val/loss": 3.5},
            {"step": 20, "val/loss": 3.6}, {"step": 30, "val/loss": 3.7}]
    run = make(rows=rows)
    st = run_stats(run, LOSS)
    assert (st.best, st.best_step) == (3.0, 10)
    assert one(check_rise(run, st, LOSS)).step == 20


# --- check_gap: scanline (gap/* keys) --------------------------------------------------------------

def gap_row(step: int = 40, **gaps) -> dict:
    return {"step": step, **{f"gap/{k}": v for k, v in gaps.items()}}


def test_scanline_loss_gap_is_val_minus_train_and_warns_beyond_gap_loss():
    # gap/loss = train − val, so a val loss above train loss is a negative gap/loss
    w = one(check_gap(make("c", [gap_row(40, loss=-0.25, accuracy=0.0)])), "gap")
    assert (w.run, w.step, w.severity) == ("c", 40, "warning")
    assert "step 40" in w.message and 0.25 in numbers(w.message) and -0.25 not in numbers(w.message)
    assert check_gap(make(rows=[gap_row(40, loss=0.5)])) == []             # train loss above val: no gap
    assert -(-GAP_LOSS) == GAP_LOSS
    assert check_gap(make(rows=[gap_row(40, loss=-GAP_LOSS)])) == []       # exactly at the threshold
    assert one(check_gap(make(rows=[gap_row(40, loss=-(GAP_LOSS + 1e-4))])), "gap")


@pytest.mark.parametrize("key", ["accuracy", "balanced_accuracy"])
def test_scanline_accuracy_gaps_warn_beyond_gap_accuracy(key):
    assert check_gap(make(rows=[gap_row(30, **{key: GAP_ACCURACY})])) == []
    w = one(check_gap(make(rows=[gap_row(30, **{key: GAP_ACCURACY + 1e-4})])), "gap")
    assert w.step == 30 and key in w.message
    w = one(check_gap(make(rows=[gap_row(30, **{key: 0.25})])))
    assert 0.25 in numbers(w.message)


def test_scanline_gap_is_read_from_the_last_row_with_gap_keys():
    early_big = [gap_row(20, accuracy=0.5), gap_row(40, accuracy=0.05), {"step": 50, "train/loss": 1.0}]
    assert check_gap(make(rows=early_big)) == []
    late_big = [gap_row(20, accuracy=0.05), gap_row(40, accuracy=0.5), {"step": 50, "train/loss": 1.0}]
    assert one(check_gap(make(rows=late_big))).step == 40


def test_scanline_gap_lists_every_gap_found():
    w = one(check_gap(make(rows=[gap_row(40, loss=-0.3, accuracy=0.2, balanced_accuracy=0.4)])))
    for value in (0.3, 0.2, 0.4):
        assert value in numbers(w.message)
    assert "balanced_accuracy" in w.message


# --- check_gap: lm (val/loss vs train/loss) --------------------------------------------------------

def lm_rows(train: dict[int, float], val: dict[int, float]) -> list[dict]:
    rows = [{"step": s, "train/loss": v} for s, v in train.items()]
    rows += [{"step": s, "val/loss": v, "time": float(s)} for s, v in val.items()]
    return sorted(rows, key=lambda r: r["step"])


# train losses: 5.0 up to step 7, then 3.0 .. 3.4 at steps 8-12, then 1.0 after the last eval (12)
TRAIN = {**{s: 5.0 for s in range(1, 8)}, 8: 3.0, 9: 3.1, 10: 3.2, 11: 3.3, 12: 3.4, 13: 1.0, 14: 1.0}


def test_lm_gap_is_the_last_val_loss_minus_the_mean_of_the_last_five_train_losses_up_to_it():
    w = one(check_gap(make("lm", lm_rows(TRAIN, {0: 7.0, 6: 5.02, 12: 3.7}))), "gap")
    # step 12: val 3.7 − mean(3.0, 3.1, 3.2, 3.3, 3.4) = 3.7 − 3.2 = 0.5
    assert (w.run, w.step, w.severity) == ("lm", 12, "warning")
    assert numbers(w.message)[:4] == pytest.approx([12, 3.7, 3.2, 0.5])


def test_lm_gap_falls_back_to_the_last_five_train_losses_when_none_precede_the_eval():
    train = {1: 9.0, 2: 9.0, 3: 3.0, 4: 3.1, 5: 3.2, 6: 3.3, 7: 3.4}
    w = one(check_gap(make(rows=lm_rows(train, {0: 3.9}))))
    assert w.step == 0 and numbers(w.message)[:4] == pytest.approx([0, 3.9, 3.2, 0.7])


def test_lm_gap_exactly_at_gap_loss_is_no_warning_and_just_above_warns():
    train = {s: 0.0625 for s in range(1, 11)}
    assert 0.1625 - 0.0625 == GAP_LOSS        # exact in floating point
    assert check_gap(make(rows=lm_rows(train, {10: 0.1625}))) == []
    assert one(check_gap(make(rows=lm_rows(train, {10: 0.1626})))).step == 10


def test_lm_gap_needs_a_finite_last_val_loss_and_both_curves():
    train = {s: 1.0 for s in range(1, 31)}
    assert check_gap(make(rows=lm_rows(train, {10: 3.9, 20: 4.0, 30: math.nan}))) == []
    assert check_gap(make(rows=lm_rows(train, {}))) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no mean of an empty train curve is taken
        assert check_gap(make(rows=lm_rows({}, {10: 3.9}))) == []


def test_lm_gap_before_one_epoch_is_a_note_with_the_epochs_at_the_eval():
    rows = lm_rows(TRAIN, {0: 7.0, 6: 5.02, 12: 3.7})
    next(r for r in rows if "val/loss" in r and r["step"] == 12)["epochs"] = 0.6   # only the eval row has it
    rows.append({"step": 14, "epochs": 1.2})    # after the eval: not the epochs the gap was measured at
    rows.append({"epochs": 5.0})                # a row without a step (W&B history can hold one)
    w = one(check_gap(make(rows=rows, summary={"epochs": 9.0})))
    assert (w.step, w.severity) == (12, "note") and "0.60" in w.message


def test_lm_gap_takes_epochs_from_the_summary_when_no_row_has_them():
    rows = lm_rows(TRAIN, {0: 7.0, 6: 5.02, 12: 3.7})
    w = one(check_gap(make(rows=rows, summary={"epochs": 0.4})))
    assert (w.step, w.severity) == (12, "note") and "0.40" in w.message


@pytest.mark.parametrize("epochs", [1.0, 1.5])
def test_lm_gap_from_one_epoch_on_is_a_warning(epochs):
    w = one(check_gap(make("lm", lm_rows(TRAIN, {0: 7.0, 6: 5.02, 12: 3.7}), summary={"epochs": epochs})))
    assert (w.run, w.kind, w.step, w.severity) == ("lm", "gap", 12, "warning")


# --- check_schedule --------------------------------------------------------------------------------

def sched_run(lrs: dict[int, float] | None = None, muon: dict[int, float] | None = None, **config) -> Run:
    rows = {}
    for key, curve in (("lr", lrs or {}), ("muon_lr", muon or {})):
        for s, v in curve.items():
            rows.setdefault(s, {"step": s})[key] = v
    return make("s", [rows[s] for s in sorted(rows)], config={"schedule": "cosine", "warmup_steps": 0,
                                                               "min_lr_ratio": 0.1, **config})


@pytest.mark.parametrize("status, cause, resumable", [
    ("early_stopped", "early stopping", False),
    ("stopped", "stop_at_step", True),
    ("preempted", "preemption", True),
    ("interrupted", "interrupt", True),
    ("failed", "failure", False),
    ("running", "still running", True),
    ("exotic", "unknown cause", False),
    (None, "unknown cause", False),
])
def test_an_unfinished_run_names_its_cause_and_says_resume_only_when_it_can(status, cause, resumable):
    run = make("u", config={"max_steps": 100}, summary={"status": status} if status else {})
    w = one(check_schedule(run, stats(steps=50, max_steps=100)), "unfinished")
    assert (w.run, w.step) == ("u", 50)
    assert numbers(w.message)[:2] == [50, 100]
    assert f"status {status or 'unknown'}" in w.message and "None" not in w.message
    assert re.search(rf"\b{cause}\b", w.message)        # the cause as a word ("interrupt", not "interrupted")
    assert ("unknown cause" in w.message) == (cause == "unknown cause")
    assert ("resume" in w.message) == resumable


def test_unfinished_is_a_short_run_or_a_status_other_than_finished():
    assert one(check_schedule(make(summary={"status": "finished"}), stats(steps=60, max_steps=100))).step == 60
    assert one(check_schedule(make(summary={"status": "failed"}), stats(steps=100, max_steps=100)),
               "unfinished").step == 100
    # finished at max_steps, LR on its cosine: nothing to say
    run = sched_run({100: 1e-4}, lr=1e-3, max_steps=100)
    run.summary["status"] = "finished"
    assert check_schedule(run, stats(steps=100, max_steps=100)) == []


def test_plateau_and_unknown_schedules_are_not_checked():
    # plateau lowered the LR to 0.3× peak on its own; its end depends on the run
    assert check_schedule(sched_run({100: 3e-4}, lr=1e-3, schedule="plateau"), stats(steps=100, max_steps=100)) == []
    assert check_schedule(sched_run({100: 3e-4}, lr=1e-3, schedule="exotic"), stats(steps=100, max_steps=100)) == []
    assert check_schedule(sched_run({100: 3e-4}, lr=1e-3, schedule=None), stats(steps=100, max_steps=100)) == []


def test_warmup_as_long_as_the_run_warns_and_one_step_shorter_does_not():
    w = one(check_schedule(sched_run({100: 1e-3}, lr=1e-3, warmup_steps=100), stats(steps=100, max_steps=100)),
            "schedule")
    assert (w.run, w.step) == ("s", 100) and numbers(w.message)[:2] == [100, 100]
    # warmup 99 of 100: step 99 (0-based) is past warmup and the last one: it gets min_lr_ratio
    assert check_schedule(sched_run({100: 1e-4}, lr=1e-3, warmup_steps=99), stats(steps=100, max_steps=100)) == []


def test_no_warmup_in_a_one_step_run_is_not_all_warmup():
    # max_steps 1, warmup_steps 0: the single step is the last one and gets min_lr_ratio
    assert check_schedule(sched_run({1: 1e-4}, lr=1e-3, max_steps=1), stats(steps=1, max_steps=1)) == []


def test_the_expected_end_is_the_factor_of_the_last_step():
    # max_steps 3, no warmup: factors 1, 0.55, 0.1 for steps 0, 1, 2; the LR logged at step 3 is step 2's
    assert check_schedule(sched_run({3: 1e-4}, lr=1e-3), stats(steps=3, max_steps=3)) == []
    assert one(check_schedule(sched_run({3: 5.5e-4}, lr=1e-3), stats(steps=3, max_steps=3)), "schedule")


def test_the_run_s_max_steps_wins_over_the_config_s():
    # summary.json's max_steps 10 (the config lacks it): the cosine ends at 0.1× peak at step 10
    run = sched_run({10: 1e-4}, lr=1e-3)
    assert "max_steps" not in run.config
    assert check_schedule(run, stats(steps=10, max_steps=10)) == []


def test_a_flat_lr_warns_with_the_last_step_and_the_expected_end_lr():
    w = one(check_schedule(sched_run({50: 1e-3, 100: 1e-3}, lr=1e-3), stats(steps=100, max_steps=100)), "schedule")
    assert w.step == 100 and w.message.startswith("lr ")
    # last LR 1e-3 = 1× peak; cosine to min_lr_ratio 0.1 ends at 0.1× peak = 1e-4
    assert numbers(w.message)[:6] == pytest.approx([100, 1e-3, 1, 0.1, 1e-4])


def test_the_lr_end_tolerance_boundary():
    # linear to 0: the end is exactly 0, so the ratio is the distance from it
    run = sched_run({100: LR_END_TOL}, lr=1.0, schedule="linear", min_lr_ratio=0.0)
    assert check_schedule(run, stats(steps=100, max_steps=100)) == []
    run = sched_run({100: LR_END_TOL + 0.01}, lr=1.0, schedule="linear", min_lr_ratio=0.0)
    assert one(check_schedule(run, stats(steps=100, max_steps=100))).step == 100


def test_an_lr_whose_final_step_was_not_logged_is_not_judged():
    assert check_schedule(sched_run({50: 1e-3, 90: 1e-3}, lr=1e-3), stats(steps=100, max_steps=100)) == []


@pytest.mark.parametrize("peak", [0.0, "1e-3", None])
def test_a_peak_that_is_not_a_positive_number_is_skipped(peak):
    assert check_schedule(sched_run({100: 1e-3}, lr=peak), stats(steps=100, max_steps=100)) == []


def test_muon_lr_is_still_checked_when_lr_is_skipped():
    st = stats(steps=100, max_steps=100)
    # no lr logged at all; muon_lr never decayed
    w = one(check_schedule(sched_run(muon={100: 0.02}, lr=1e-3, optimizer="muon", muon_lr=0.02), st))
    assert w.message.startswith("muon_lr") and w.step == 100
    # lr logged only to step 50 (its end not logged), muon_lr to the end
    w = one(check_schedule(sched_run({50: 1e-3}, {100: 0.02}, lr=1e-3, optimizer="muon", muon_lr=0.02), st))
    assert w.message.startswith("muon_lr")
    # an adamw run's muon_lr (unused) is not checked
    assert check_schedule(sched_run({100: 1e-4}, {100: 0.02}, lr=1e-3, optimizer="adamw", muon_lr=0.02), st) == []


# --- check_epochs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("epochs", [1.0, 1.0 + 1e-9, 0.5, None, math.nan])
def test_one_epoch_or_less_is_not_repeated_data(epochs):
    assert check_epochs(make(config={"task": "lm"}), stats(epochs=epochs)) == []


def test_more_than_one_epoch_of_lm_data_warns_with_the_unique_tokens():
    run = make("lm", config={"task": "lm"}, summary={"data": {"unique_train_tokens": 123456}})
    w = one(check_epochs(run, stats(epochs=1.5)), "epochs")
    assert (w.run, w.severity) == ("lm", "warning") and "1.50" in w.message and 123456 in numbers(w.message)
    w = one(check_epochs(make(config={"task": "lm"}), stats(epochs=1.5)))
    assert "(?)" in w.message and "None" not in w.message


def test_repeated_data_of_a_classifier_is_a_note_without_unique_tokens():
    run = make("c", config={"task": "scanline"}, summary={"data": {"unique_train_tokens": 123456}})
    w = one(check_epochs(run, stats(epochs=30.0)), "epochs")
    assert w.severity == "note" and "30.00" in w.message and 123456 not in numbers(w.message)


# --- check_leakage ---------------------------------------------------------------------------------

def leak_run(frac, data=None, **config) -> Run:
    return make("l", config=config, summary={"data": {"leak_fraction": frac, **(data or {})}})


def test_leakage_default_limit_is_one_percent_exclusive():
    assert check_leakage(leak_run(0.01)) == []
    w = one(check_leakage(leak_run(0.0101)), "leakage")
    assert w.run == "l" and "1.0%" in w.message and "leak_warn 0.01" in w.message


def test_leakage_limit_comes_from_the_config():
    assert check_leakage(leak_run(0.1, leak_warn=0.2)) == []
    assert "leak_warn 0.05" in one(check_leakage(leak_run(0.1, leak_warn=0.05))).message


def test_leakage_needs_numbers():
    assert check_leakage(make(summary={})) == []
    assert check_leakage(leak_run(None)) == []
    assert check_leakage(leak_run(0.5, leak_warn=None)) == []


def test_leak_span_length_comes_from_the_data_pass_then_the_config():
    assert "16-token" in one(check_leakage(leak_run(0.3, {"leak_ngram": 16}, leak_ngram=32))).message
    assert "32-token" in one(check_leakage(leak_run(0.3, leak_ngram=32))).message
    w = one(check_leakage(leak_run(0.3)))
    assert "?-token" in w.message and "None" not in w.message


# --- check_near_duplicates -------------------------------------------------------------------------

def dup_run(rate, dedup=None, config=None, **data) -> Run:
    d = {"near_dup_rate": rate, **data}
    if dedup is not None:
        d["dedup"] = dedup
    return make("d", config=config, summary={"data": d})


def test_near_duplicates_default_limit_is_one_percent_exclusive():
    assert check_near_duplicates(dup_run(0.01)) == []
    w = one(check_near_duplicates(dup_run(0.0101)), "near-duplicates")
    assert w.run == "d" and "1.0%" in w.message and "dedup_warn 0.01" in w.message


def test_near_duplicates_limit_comes_from_the_config():
    assert check_near_duplicates(dup_run(0.1, config={"dedup_warn": 0.2})) == []
    assert "dedup_warn 0.05" in one(check_near_duplicates(dup_run(0.1, config={"dedup_warn": 0.05}))).message


def test_near_duplicates_need_numbers():
    assert check_near_duplicates(make(summary={})) == []
    assert check_near_duplicates(make(summary={"data": None})) == []
    assert check_near_duplicates(dup_run(None)) == []
    assert check_near_duplicates(dup_run(0.5, config={"dedup_warn": None})) == []


def test_near_duplicates_message_carries_the_counts():
    w = one(check_near_duplicates(dup_run(0.25, near_dup_clusters=12, near_dup_docs=30, docs_before_dedup=120)))
    assert numbers(w.message)[:4] == [12, 30, 25.0, 120]
    w = one(check_near_duplicates(dup_run(0.25)))
    assert w.message.count("?") == 3 and "None" not in w.message


def test_grouped_near_duplicates_warn_and_say_train_repeats_them():
    w = one(check_near_duplicates(dup_run(0.25, dedup="group", near_dup_redundant=7)))
    assert w.severity == "warning" and "split" in w.message and "dropped" not in w.message


def test_dropped_near_duplicates_are_a_note_with_the_copies_dropped():
    w = one(check_near_duplicates(dup_run(0.25, dedup="drop", near_dup_redundant=7)))
    assert w.severity == "note" and "7 copies dropped" in w.message and "split" not in w.message
    w = one(check_near_duplicates(dup_run(0.25, dedup="drop")))
    assert "? copies dropped" in w.message


def test_near_duplicates_without_dedup_are_a_note_without_an_action():
    w = one(check_near_duplicates(dup_run(0.25, dedup="off", near_dup_redundant=7)))
    assert w.severity == "note" and "split" not in w.message and "dropped" not in w.message
    assert ":" not in w.message                  # no action clause at all


# --- check_collapse --------------------------------------------------------------------------------

def moe_row(step, min_share, **experts) -> dict:
    return {"step": step, "moe/min_share": min_share, "val/loss": 3.0, "moe/aux_loss": 0.0001,
            "moe/layer0/drop_frac": 0.0, **{f"moe/layer0/{k}": v for k, v in experts.items()}}


def test_collapse_boundary_is_collapse_share_exclusive():
    assert check_collapse(make(rows=[moe_row(10, COLLAPSE_SHARE, expert0=0.0625)])) == []
    assert one(check_collapse(make(rows=[moe_row(10, COLLAPSE_SHARE - 0.001, expert0=0.0624)])), "collapse")


def test_collapse_names_the_smallest_expert_and_its_share():
    # expert2 is the smallest (not the first by name); other moe/* and layer keys are not experts
    rows = [moe_row(90, 0.5, expert0=0.3), moe_row(100, 0.08, expert0=0.3, expert1=0.3, expert2=0.02, expert3=0.38)]
    w = one(check_collapse(make("m", rows)), "collapse")
    assert (w.run, w.step) == ("m", 100)
    assert "step 100" in w.message and "layer0/expert2" in w.message and "2.0%" in w.message
    assert "expert0" not in w.message and "drop_frac" not in w.message


def test_collapse_without_per_expert_shares_still_warns():
    w = one(check_collapse(make(rows=[{"step": 50, "moe/min_share": 0.1}])))
    assert w.step == 50 and "gets" not in w.message


# --- check_divergence ------------------------------------------------------------------------------

def loss_rows(losses: list[float], start: int = 10, every: int = 10, key: str = "train/loss") -> list[dict]:
    return [{"step": start + i * every, key: v} for i, v in enumerate(losses)]


def test_the_first_non_finite_step_of_the_first_non_finite_key_is_reported():
    rows = loss_rows([3.0, 2.9, math.nan, 2.8, math.inf]) + [{"step": 20, "val/loss": math.nan}]
    w = one(check_divergence(make("n", rows), LOSS), "nan")
    assert (w.run, w.step) == ("n", 30) and w.message.startswith("train/loss")


def test_a_non_finite_val_loss_counts_whatever_metric_is_ranked():
    rows = loss_rows([3.0, 2.9, 2.8, 2.7]) + [{"step": 20, "val/accuracy": 0.3}, {"step": 40, "val/loss": math.inf}]
    w = one(check_divergence(make(rows=rows), ACC), "nan")
    assert w.step == 40 and w.message.startswith("val/loss")


def test_a_non_finite_ranked_metric_counts():
    rows = loss_rows([3.0, 2.9, 2.8, 2.7]) + [{"step": 30, "val/accuracy": math.nan}]
    w = one(check_divergence(make(rows=rows), ACC), "nan")
    assert w.step == 30 and w.message.startswith("val/accuracy")


def test_nan_is_reported_instead_of_divergence():
    # finite losses 2.0 → 4.0 would be a divergence, but the NaN after them says more
    w = one(check_divergence(make(rows=loss_rows([2.0, 2.5, 3.0, 4.0, math.nan])), LOSS))
    assert w.kind == "nan" and w.step == 50


def test_divergence_is_the_median_of_the_last_three_losses_over_the_first():
    w = one(check_divergence(make("d", loss_rows([2.0, 3.0, 3.5, 4.0, 5.0])), LOSS), "divergence")
    # end = median(3.5, 4.0, 5.0) = 4.0 = 2.00× the start 2.0; the step is the last loss's
    assert (w.run, w.step) == ("d", 50)
    assert numbers(w.message)[:3] == pytest.approx([4.0, 2.0, 2.0])


def test_divergence_boundary_is_diverge_ratio_exclusive():
    # start 2.5: 1.2 × 2.5 = 3.0 exactly; the second loss (2.0) is not the start
    assert DIVERGE_RATIO * 2.5 == 3.0
    assert check_divergence(make(rows=loss_rows([2.5, 2.0, 3.0, 3.0, 3.0])), LOSS) == []
    assert one(check_divergence(make(rows=loss_rows([2.5, 2.0, 3.01, 3.01, 3.01])), LOSS), "divergence")


def test_a_single_late_spike_is_not_divergence():
    assert check_divergence(make(rows=loss_rows([2.0, 2.0, 2.0, 2.0, 10.0, 2.0])), LOSS) == []


def test_divergence_needs_four_finite_losses():
    assert check_divergence(make(rows=loss_rows([2.0, 3.0, 4.0])), LOSS) == []
    assert one(check_divergence(make(rows=loss_rows([2.0, 3.0, 4.0, 5.0])), LOSS)).step == 40


def test_divergence_needs_a_positive_start():
    assert check_divergence(make(rows=loss_rows([0.0, 1.0, 2.0, 3.0])), LOSS) == []
    assert check_divergence(make(rows=loss_rows([-1.0, 1.0, 2.0, 3.0])), LOSS) == []
    # a start below 1 still counts: 0.5 → median(0.8, 1.0, 1.2) = 1.0 = 2× the start
    w = one(check_divergence(make(rows=loss_rows([0.5, 0.8, 1.0, 1.2])), LOSS), "divergence")
    assert numbers(w.message)[:3] == pytest.approx([1.0, 2.0, 0.5])


def test_a_failed_run_is_reported_from_its_summary_or_its_trial():
    w = one(check_divergence(make("f", summary={"status": "failed"}, path=Path("/x/t0001/runs/r1")), LOSS), "failed")
    assert w.run == "f" and "output.log" not in w.message      # not a sweep trial: no log to point at
    assert one(check_divergence(make(trial={"status": "failed"}), LOSS), "failed")
    assert check_divergence(make(summary={"status": "finished"}, trial={"status": "finished"}), LOSS) == []


def test_a_failed_trial_points_at_its_output_log():
    path = Path("/sweeps/s1/trials/t0003/runs/lm-tiny-1")
    w = one(check_divergence(make(summary={"status": "failed"}, trial={"status": "failed"}, path=path), LOSS))
    assert str(Path("/sweeps/s1/trials/t0003/output.log")) in w.message
    # a W&B run has no path: nothing to point at
    assert "output.log" not in one(check_divergence(make(trial={"status": "failed"}), LOSS)).message


# --- health_warnings -------------------------------------------------------------------------------

def test_health_warnings_runs_every_check_in_order():
    rows = (loss_rows([2.0, 2.5, 3.0, 4.0, 5.0])                                    # divergence
            + [{"step": 10, "val/loss": 3.0}, {"step": 30, "val/loss": 3.5},        # a rise after its best
               {"step": 50, "val/loss": 5.5, "moe/min_share": 0.1}])               # a gap; collapse
    run = make("all", rows, config={"task": "lm", "max_steps": 100},
               summary={"status": "failed", "step": 50, "epochs": 2.0,
                        "data": {"leak_fraction": 0.5, "near_dup_rate": 0.5}})
    st = run_stats(run, LOSS)
    found = [w.kind for w in health_warnings(run, st, LOSS)]
    assert found == ["divergence", "failed", "overfit", "gap", "unfinished", "epochs", "leakage",
                     "near-duplicates", "collapse"]


# --- lr_recommendations ----------------------------------------------------------------------------

def lr_run(name, lr, value, seed=0, **config):
    return make(name, config={"lr": lr, "seed": seed, **config}), value


def study(entries):
    """(runs, stats) from (name, lr, value, seed, extra config) entries; value None = no ranked value."""
    runs, st = [], {}
    for name, lr, value, seed, extra in entries:
        run, v = lr_run(name, lr, value, seed, **extra)
        runs.append(run)
        st[name] = stats(name=name, value=v)
    return runs, st


# lr 2e-3 is best; 4e-3 is within noise of it (paired over seeds 0-2), 1e-3 is apart
VALUES = {1e-3: [3.10, 3.20, 3.15], 2e-3: [3.00, 3.08, 3.04], 4e-3: [3.02, 3.12, 3.03]}


def seeded(values=VALUES, **extra):
    return study([(f"lr{lr:g}-s{seed}", lr, v, seed, extra) for lr, vs in values.items() for seed, v in enumerate(vs)])


def test_lr_recommendation_with_seed_repeats():
    runs, st = seeded()
    (rec,) = lr_recommendations(runs, st, ["seed", "lr"], LOSS, pooled=0.05, dof=6)
    assert (rec.param, rec.series, rec.best_lr) == ("lr", {}, 2e-3)
    assert rec.best_mean == pytest.approx(statistics.mean(VALUES[2e-3]))
    assert [p.lr for p in rec.points] == [1e-3, 2e-3, 4e-3]
    for p in rec.points:
        assert p.n == 3 and p.values == VALUES[p.lr] and p.seeds == [0, 1, 2]
        assert p.runs == [f"lr{p.lr:g}-s{s}" for s in range(3)]
        assert p.mean == pytest.approx(statistics.mean(VALUES[p.lr]))
        assert p.std == pytest.approx(statistics.stdev(VALUES[p.lr]))         # ddof 1
    by = {p.lr: p for p in rec.points}
    assert by[2e-3].p_vs_best is None and by[2e-3].test_vs_best is None
    for lr in (1e-3, 4e-3):
        assert by[lr].test_vs_best == "paired"
        assert by[lr].p_vs_best == pytest.approx(scipy_stats.ttest_rel(VALUES[lr], VALUES[2e-3]).pvalue)
    assert by[1e-3].p_vs_best < 0.05 <= by[4e-3].p_vs_best
    assert rec.within_noise == [2e-3, 4e-3] and rec.range == (2e-3, 4e-3)
    assert not any("largest" in n or "smallest" in n or "marginal" in n or "no seed repeats" in n for n in rec.notes)


def test_two_seeds_give_a_std():
    runs, st = seeded({1e-3: [3.0, 3.2], 2e-3: [3.5, 3.6]})
    (rec,) = lr_recommendations(runs, st, ["seed", "lr"], LOSS, pooled=None)
    assert rec.points[0].std == pytest.approx(0.2 / math.sqrt(2))
    assert not any("no seed repeats" in n for n in rec.notes)      # the spreads are known without a pooled std


def test_a_higher_is_better_metric_picks_the_largest_mean():
    runs, st = seeded({1e-3: [0.5], 2e-3: [0.7], 4e-3: [0.6]})
    (rec,) = lr_recommendations(runs, st, ["lr"], ACC, pooled=None)
    assert rec.best_lr == 2e-3 and rec.best_mean == 0.7


def test_the_best_at_an_edge_of_the_grid_says_to_extend_the_search():
    runs, st = seeded({1e-3: [3.5], 2e-3: [3.2], 4e-3: [3.0]})
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=None)
    assert rec.best_lr == 4e-3 and any("largest tried" in n and "lr" in n for n in rec.notes)
    assert not any("smallest" in n for n in rec.notes)
    runs, st = seeded({1e-3: [3.0], 2e-3: [3.2], 4e-3: [3.5]})
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=None)
    assert rec.best_lr == 1e-3 and any("smallest tried" in n for n in rec.notes)
    assert not any("largest" in n for n in rec.notes)


def test_without_any_spread_only_the_best_lr_is_within_noise():
    runs, st = seeded({1e-3: [3.0], 2e-3: [3.01], 4e-3: [3.5]})
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=None)
    assert rec.within_noise == [1e-3] and rec.range == (1e-3, 1e-3)
    assert any("no seed repeats" in n for n in rec.notes)
    assert all(p.p_vs_best is None for p in rec.points)


def test_a_pooled_std_without_its_degrees_of_freedom_gives_no_verdict():
    # the default dof is 0: a pooled std cannot be lent without its degrees of freedom
    runs, st = seeded({1e-3: [3.0], 2e-3: [3.01]})
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=0.05)
    assert rec.points[1].p_vs_best is None and rec.within_noise == [1e-3]
    assert not any("no seed repeats" in n for n in rec.notes)     # a pooled std exists
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=0.05, dof=4)
    assert rec.points[1].test_vs_best == "borrowed" and rec.within_noise == [1e-3, 2e-3]


def test_runs_without_a_value_or_a_numeric_lr_are_left_out():
    runs, st = study([("a", 1e-3, 3.0, 0, {}), ("b", 2e-3, 3.2, 0, {}), ("c", 4e-3, None, 0, {}),
                      ("d", None, 2.0, 0, {})])
    (rec,) = lr_recommendations(runs, st, ["lr"], LOSS, pooled=None)
    assert [p.lr for p in rec.points] == [1e-3, 2e-3] and rec.best_lr == 1e-3


def test_one_curve_per_setting_of_the_other_differing_fields():
    runs, st = study([("a", 1e-3, 3.0, 0, {"batch_size": 32}), ("b", 2e-3, 3.2, 0, {"batch_size": 32}),
                      ("c", 1e-3, 3.4, 0, {"batch_size": 64}), ("d", 2e-3, 3.1, 0, {"batch_size": 64})])
    recs = lr_recommendations(runs, st, ["lr", "batch_size"], LOSS, pooled=None)
    assert [(r.series, r.best_lr) for r in recs] == [({"batch_size": 32}, 1e-3), ({"batch_size": 64}, 2e-3)]
    assert not any("marginal" in n for r in recs for n in r.notes)


def test_seeds_and_identity_fields_do_not_split_the_curves():
    runs, st = study([("a", 1e-3, 3.0, 0, {"out_dir": "x/a"}), ("b", 2e-3, 3.2, 0, {"out_dir": "x/b"}),
                      ("c", 1e-3, 3.1, 1, {"out_dir": "x/c"}), ("d", 2e-3, 3.4, 1, {"out_dir": "x/d"})])
    (rec,) = lr_recommendations(runs, st, ["seed", "lr", "out_dir"], LOSS, pooled=None)
    assert rec.series == {} and [p.n for p in rec.points] == [2, 2]
    assert not any("marginal" in n for n in rec.notes)


def test_curves_split_on_config_values_json_cannot_encode():
    # YAML reads an unquoted 2024-01-01 as a date: such values still tell the curves apart
    d1, d2 = datetime.date(2024, 1, 1), datetime.date(2024, 6, 1)
    runs, st = study([("a", 1e-3, 3.0, 0, {"snapshot": d1}), ("b", 2e-3, 3.2, 0, {"snapshot": d1}),
                      ("c", 1e-3, 3.4, 0, {"snapshot": d2}), ("d", 2e-3, 3.1, 0, {"snapshot": d2})])
    recs = lr_recommendations(runs, st, ["lr", "snapshot"], LOSS, pooled=None)
    assert [(r.series, r.best_lr) for r in recs] == [({"snapshot": str(d1)}, 1e-3), ({"snapshot": str(d2)}, 2e-3)]


def test_a_random_search_gets_one_marginal_curve_naming_what_else_varied():
    # every batch_size/warmup setting ran one lr: no series has two, so the marginal over them
    runs, st = study([("a", 1e-3, 3.0, 0, {"batch_size": 32, "warmup_steps": 5}),
                      ("b", 2e-3, 3.2, 0, {"batch_size": 64, "warmup_steps": 10})])
    (rec,) = lr_recommendations(runs, st, ["lr", "batch_size", "warmup_steps"], LOSS, pooled=None)
    assert rec.series == {} and [p.lr for p in rec.points] == [1e-3, 2e-3]
    (note,) = [n for n in rec.notes if "marginal" in n]
    assert "batch_size" in note and "warmup_steps" in note


def test_a_single_lr_gets_no_recommendation():
    runs, st = study([("a", 1e-3, 3.0, 0, {"batch_size": 32}), ("b", 1e-3, 3.2, 0, {"batch_size": 64})])
    assert lr_recommendations(runs, st, ["lr", "batch_size"], LOSS, pooled=None) == []


def test_muon_lr_is_recommended_over_muon_runs_only():
    entries = [("m1", 1e-3, 3.0, 0, {"optimizer": "muon", "muon_lr": 0.01}),
               ("m2", 1e-3, 3.2, 0, {"optimizer": "muon", "muon_lr": 0.02}),
               ("a1", 1e-3, 2.0, 0, {"optimizer": "adamw", "muon_lr": 0.04})]     # adamw never used its muon_lr
    runs, st = study(entries)
    (rec,) = lr_recommendations(runs, st, ["muon_lr", "optimizer"], LOSS, pooled=None)
    assert rec.param == "muon_lr" and [p.lr for p in rec.points] == [0.01, 0.02] and rec.best_lr == 0.01
    runs, st = study([(n, lr, v, s, {**e, "optimizer": "adamw"}) for n, lr, v, s, e in entries])
    assert lr_recommendations(runs, st, ["muon_lr"], LOSS, pooled=None) == []
