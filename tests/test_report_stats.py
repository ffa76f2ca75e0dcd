"""The report's numbers, one behaviour at a time: which metric it ranks by and why, each per-run
statistic and its fallbacks (summary.json vs metrics rows vs trial.json), seed groups, the ranking and
its pairs, the noise note, the JSON export and the table's columns and row order.

`Run` records are built in memory (no files), with numbers chosen so each expected value can be worked
out by hand from the rows and summary given here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blueberry.errors import UserError
from blueberry.report.analyse import (
    ALPHA, NOISE_RULE, HealthWarning, MetricSpec, SeedGroup, _last, analyse, auto_mode, clean, config_key,
    differing_fields, eval_points, fmt, interval, label, make_table, noise_note, pooled_dof, pooled_std,
    rank_groups, resolve_metric, run_stats, seed_groups, train_rows, verdict)
from blueberry.report.load import Run
from blueberry.report.noise import mean_interval


def mkrun(name="r", rows=(), summary=None, config=None, trial=None, path=None, url=None) -> Run:
    return Run(name=name, path=path, config=dict(config or {}), summary=dict(summary or {}),
               rows=[dict(r) for r in rows], trial=trial, url=url)


def spec(curve="val/loss", mode="min", rank_by="best", name=None) -> MetricSpec:
    return MetricSpec(name=name or curve, curve=curve, mode=mode, rank_by=rank_by, source="test")


def evals(values: dict[int, float], key="val/loss") -> list[dict]:
    return [{"step": s, key: v} for s, v in values.items()]


# --- small helpers ---------------------------------------------------------------------------------

def test_fmt_writes_bools_lowercase_floats_to_4_significant_digits_and_the_rest_as_str():
    assert fmt(True) == "true" and fmt(False) == "false"
    assert fmt(0.00123456) == "0.001235" and fmt(3.0) == "3"
    assert fmt(3) == "3" and fmt("adamw") == "adamw" and fmt(None) == "None"


def test_better_is_strict_in_both_modes():
    lo, hi = spec(mode="min"), spec(mode="max")
    assert lo.better(1.0, 2.0) and not lo.better(2.0, 2.0) and not lo.better(3.0, 2.0)
    assert hi.better(2.0, 1.0) and not hi.better(2.0, 2.0) and not hi.better(1.0, 2.0)


@pytest.mark.parametrize("name, mode", [
    ("val/loss", "min"), ("val/loss_best", "min"), ("val/perplexity", "min"), ("val/perplexity_best", "min"),
    ("loss", "min"), ("val/accuracy", "max"), ("val/accuracy_best", "max"), ("val/loss_ratio", "max")])
def test_auto_mode_minimises_losses_and_perplexities_with_or_without_best_suffix(name, mode):
    assert auto_mode(name) == mode


def test_eval_points_keep_numeric_rows_with_a_step_sorted_by_step_with_their_time():
    run = mkrun(rows=[
        {"step": 20, "val/loss": 3.0, "time": 2.5},
        {"step": 10, "val/loss": 4, "time": 1.5},          # an int counts, as a float
        {"val/loss": 9.0},                                  # no step: left out
        {"step": 15, "val/loss": True},                     # a bool is not a value
        {"step": 16, "val/loss": "nan"},                    # nor a string
        {"step": 17, "train/loss": 5.0},                    # another key
        {"step": 30, "val/loss": 2.5},                      # no time
    ])
    pts = eval_points(run, "val/loss")
    assert pts == [(10, 4.0, 1.5), (20, 3.0, 2.5), (30, 2.5, None)]
    assert all(isinstance(v, float) for _, v, _ in pts)


def test_eval_points_keep_logged_order_within_one_step():
    # a resumed run logs step 10 twice: the later row stays last (it is the run's final value)
    run = mkrun(rows=[{"step": 10, "val/loss": 5.0}, {"step": 10, "val/loss": 4.0}])
    assert [v for _, v, _ in eval_points(run, "val/loss")] == [5.0, 4.0]
    assert run_stats(run, spec()).final == 4.0


def test_train_rows_default_to_train_loss_as_step_value_pairs():
    run = mkrun(rows=[{"step": 2, "train/loss": 3.0, "lr": 0.1, "time": 1.0}, {"step": 1, "train/loss": 4.0}])
    assert train_rows(run) == [(1, 4.0), (2, 3.0)]
    assert train_rows(run, "lr") == [(2, 0.1)]


def test_last_is_the_last_logged_value_of_a_key_or_none():
    run = mkrun(rows=[{"step": 1, "epochs": 0.1}, {"step": 2}, {"step": 3, "epochs": 0.3}, {"step": 4}])
    assert _last(run, "epochs") == 0.3
    assert _last(run, "missing") is None


# --- resolve_metric --------------------------------------------------------------------------------

ROWS = [{"step": 10, "val/loss": 3.0, "val/score": 0.5, "val/accuracy": 0.4, "train/loss": 3.1, "gap/loss": 0.1,
         "moe/min_share": 1.0, "val/layer0/norm": 2.0, "time": 1.0}]


def test_metric_flag_wins_and_ranks_by_best():
    runs = [mkrun(rows=ROWS, summary={"best": {"metric": "val/loss", "mode": "min"}})]
    s = resolve_metric(runs, "val/accuracy", "val/loss", "minimize")
    assert (s.name, s.curve, s.source, s.rank_by) == ("val/accuracy", "val/accuracy", "--metric", "best")
    assert s.mode == "max"    # the sweep's goal is for the sweep's metric, not this one


def test_sweep_metric_is_used_next_with_its_goal():
    runs = [mkrun(rows=ROWS)]
    s = resolve_metric(runs, None, "val/score", "minimize")
    assert (s.name, s.source, s.mode, s.rank_by) == ("val/score", "sweep.yaml metric.name", "min", "best")
    assert resolve_metric(runs, None, "val/loss", "maximize").mode == "max"
    # --metric naming the sweep's own metric keeps the sweep's goal
    assert resolve_metric(runs, "val/score", "val/score", "minimize").mode == "min"


def test_sweep_metric_ending_in_best_ranks_by_best_on_its_curve():
    s = resolve_metric([mkrun(rows=ROWS)], None, "val/score_best", "minimize")
    assert (s.curve, s.mode, s.rank_by) == ("val/score", "min", "best")


def test_summary_best_metric_most_common_is_used_without_flag_or_sweep():
    runs = [mkrun("a", ROWS, {"best": {"metric": "val/score"}}), mkrun("b", ROWS, {"best": {"metric": "val/score"}}),
            mkrun("c", ROWS, {"best": {"metric": "val/loss"}}), mkrun("d", ROWS, {}),
            mkrun("e", ROWS, {"best": None})]
    s = resolve_metric(runs)
    assert (s.name, s.source, s.rank_by) == ("val/score", "summary.json best.metric", "best")


@pytest.mark.parametrize("tasks, expected", [
    (["scanline", "scanline", "lm"], "val/balanced_accuracy"),
    (["lm", "lm", "scanline"], "val/loss"),
    ([None, None], "val/loss")])            # no task known: val/loss
def test_task_default_when_no_run_names_a_best_metric(tasks, expected):
    rows = [{"step": 1, "val/loss": 1.0, "val/balanced_accuracy": 0.5}]
    runs = [mkrun(f"r{i}", rows, config={"task": t} if t else {}) for i, t in enumerate(tasks)]
    s = resolve_metric(runs)
    assert (s.name, s.source) == (expected, "task default")


def test_no_runs_is_a_user_error_not_a_crash():
    with pytest.raises(UserError):
        resolve_metric([])


def test_best_suffix_maps_to_the_logged_curve_only_when_that_curve_is_logged():
    logged = resolve_metric([mkrun(rows=ROWS)], "val/loss_best")
    assert logged.curve == "val/loss" and logged.mode == "min"
    only_best = [mkrun(rows=[{"step": 1, "val/acc_best": 0.7}])]
    assert resolve_metric(only_best, "val/acc_best").curve == "val/acc_best"
    # a name that does not end in _best is its own curve, whatever its prefix matches
    assert resolve_metric([mkrun(rows=[{"step": 1, "val/accuracy": 0.5, "val/acc": 0.1}])],
                          "val/accuracy").curve == "val/accuracy"


def test_summary_modes_of_runs_on_that_curve_decide_the_direction():
    # auto_mode("val/score") would be max; the runs' summaries on val/score say min. Runs whose best
    # metric is another curve do not vote, even when they are the majority.
    runs = [mkrun("a", ROWS, {"best": {"metric": "val/score", "mode": "min"}}),
            mkrun("b", ROWS, {"best": {"metric": "val/score", "mode": "min"}}),
            mkrun("c", ROWS, {"best": {"metric": "val/other", "mode": "max"}}),
            mkrun("d", ROWS, {"best": {"metric": "val/other", "mode": "max"}}),
            mkrun("e", ROWS, {"best": {"metric": "val/other", "mode": "max"}}),
            mkrun("f", ROWS, {})]
    assert resolve_metric(runs, "val/score").mode == "min"
    assert resolve_metric(runs, "val/score_best").mode == "min"
    # no summary mode at all: the name decides
    assert resolve_metric([mkrun(rows=ROWS)], "val/score").mode == "max"


def test_a_metric_only_in_the_summary_is_accepted():
    run = mkrun(rows=ROWS, summary={"best": {"metric": "val/bleu", "mode": "max", "value": 30.0}})
    s = resolve_metric([run], "val/bleu")
    assert (s.curve, s.mode) == ("val/bleu", "max")


def test_unknown_metric_lists_only_val_train_gap_keys_without_layers():
    with pytest.raises(UserError) as e:
        resolve_metric([mkrun(rows=ROWS)], "val/bleu")
    msg = str(e.value)
    assert "val/bleu" in msg
    listed = msg.rsplit(": ", 1)[1].split(", ")
    assert listed == ["gap/loss", "train/loss", "val/accuracy", "val/loss", "val/score"]
    with pytest.raises(UserError) as e:
        resolve_metric([mkrun(rows=[{"step": 1, "moe/min_share": 1.0}])], "val/bleu")
    assert str(e.value).rsplit(": ", 1)[1] == "none"


# --- run_stats -------------------------------------------------------------------------------------

def rows_only_run(**kw) -> Run:
    """A run whose summary.json is empty: every statistic comes from the metrics rows."""
    rows = [
        {"step": 1, "train/loss": 4.0, "train/tokens_per_s": 100.0, "tokens_seen": 128, "epochs": 0.1, "time": 1.0},
        {"step": 2, "train/loss": 3.5, "train/tokens_per_s": 300.0, "tokens_seen": 256, "epochs": 0.2, "time": 2.0},
        {"step": 2, "val/loss": 3.0, "time": 2.5},
        {"step": 3, "train/loss": 3.4, "train/tokens_per_s": 500.0, "tokens_seen": 384, "epochs": 0.3, "time": 3.0},
        {"step": 3, "val/loss": math.nan, "time": math.inf},        # a non-finite time is not a wall time
        {"step": 4, "train/loss": 3.3, "train/tokens_per_s": 200.0, "tokens_seen": 512, "epochs": 0.4, "time": 4.0},
        {"step": 4, "val/loss": 3.3, "time": 4.5},
        {"note": "a row without a step"},
    ]
    return mkrun("rows", rows, config={"task": "lm", "max_steps": 10}, **kw)


def test_run_stats_from_rows_alone():
    st = run_stats(rows_only_run(), spec())
    assert st.name == "rows"
    assert [(s, v) for s, v, _ in st.evals][::2] == [(2, 3.0), (4, 3.3)]
    assert (st.best, st.best_step, st.final, st.final_step) == (3.0, 2, 3.3, 4)
    assert st.degradation_pct == pytest.approx(100 * 0.3 / 3.0)
    assert st.steps == 4                          # the largest step logged
    assert st.max_steps == 10                     # from config.yaml
    assert st.seen == 512 and st.epochs == 0.4    # the last logged values
    assert st.wall_time_s == 4.5                  # the largest finite time
    assert st.throughput == 300.0                 # median of 300, 500, 200: the first rate (100) is start-up
    assert st.params_total is None and st.params_active is None and st.status is None
    assert st.value == 3.0


def test_summary_values_win_over_rows():
    summary = {"step": 7, "max_steps": 20, "tokens_seen": 999, "epochs": 1.5, "wall_time_s": 12.0,
               "params": {"total": 100, "active": 60}, "status": "finished",
               "best": {"metric": "val/loss", "value": 2.0, "step": 1},     # rows give the best: 3.0
               "final": {"val/loss": 9.0}}                                   # rows give the final: 3.3
    run = rows_only_run(summary=summary, trial={"status": "failed"})
    st = run_stats(run, spec())
    assert (st.best, st.best_step, st.final, st.final_step) == (3.0, 2, 3.3, 4)
    assert (st.steps, st.max_steps, st.seen, st.epochs, st.wall_time_s) == (7, 20, 999, 1.5, 12.0)
    assert (st.params_total, st.params_active, st.status) == (100, 60, "finished")


def test_best_and_final_fall_back_to_the_summary_when_no_row_has_the_curve():
    summary = {"step": 50, "best": {"metric": "val/loss", "value": 2.5, "step": 40}, "final": {"val/loss": 2.7}}
    st = run_stats(mkrun(rows=[{"step": 50, "train/loss": 2.0}], summary=summary), spec())
    assert (st.best, st.best_step, st.final, st.final_step) == (2.5, 40, 2.7, 50)
    assert st.degradation_pct == pytest.approx(100 * 0.2 / 2.5)
    assert st.steps == 50 and st.evals == []


def test_summary_best_of_another_metric_or_not_finite_is_not_used():
    other = {"best": {"metric": "val/accuracy", "value": 0.5, "step": 3}}
    assert run_stats(mkrun(summary=other), spec()).best is None
    for value in (None, math.nan, "2.0"):
        st = run_stats(mkrun(summary={"best": {"metric": "val/loss", "value": value, "step": 3},
                                      "final": {"val/loss": value}}), spec())
        assert st.best is None and st.best_step is None and st.final is None and st.value is None


def test_summary_best_without_a_final_has_no_degradation():
    st = run_stats(mkrun(summary={"best": {"metric": "val/loss", "value": 2.5, "step": 40}}), spec())
    assert (st.best, st.final, st.degradation_pct) == (2.5, None, None)


def test_first_of_equal_best_values_is_the_best_step():
    st = run_stats(mkrun(rows=evals({10: 3.0, 20: 3.0, 30: 3.5})), spec())
    assert (st.best, st.best_step) == (3.0, 10)
    st = run_stats(mkrun(rows=evals({10: 0.8, 20: 0.8, 30: 0.5}, "val/acc")), spec("val/acc", "max"))
    assert (st.best, st.best_step) == (0.8, 10)


def test_max_mode_best_is_the_largest_and_degradation_counts_a_fall():
    st = run_stats(mkrun(rows=evals({10: 0.5, 20: 0.8, 30: 0.6}, "val/acc")), spec("val/acc", "max"))
    assert (st.best, st.best_step, st.final, st.final_step) == (0.8, 20, 0.6, 30)
    assert st.degradation_pct == pytest.approx(100 * 0.2 / 0.8)     # > 0: the final is worse


def test_degradation_is_the_final_minus_best_in_percent_of_best_even_at_a_best_of_one():
    st = run_stats(mkrun(rows=evals({10: 2.0, 20: 2.5})), spec())
    assert st.degradation_pct == pytest.approx(25.0)          # 100 × 0.5 / 2.0
    st = run_stats(mkrun(rows=evals({10: 1.0, 20: 1.5})), spec())
    assert st.degradation_pct == pytest.approx(50.0)          # 100 × 0.5 / 1.0


def test_degradation_is_undefined_at_a_zero_best_and_infinite_at_a_non_finite_final():
    st = run_stats(mkrun(rows=evals({10: 0.0, 20: 0.5})), spec())
    assert (st.best, st.degradation_pct) == (0.0, None)
    st = run_stats(mkrun(rows=evals({10: 3.0, 20: math.nan})), spec())
    assert st.best == 3.0 and math.isnan(st.final) and st.final_step == 20 and st.degradation_pct == math.inf


def test_an_all_nan_curve_has_no_best_no_degradation_and_no_value():
    st = run_stats(mkrun(rows=evals({10: math.nan, 20: math.nan})), spec(rank_by="final"))
    assert st.best is None and st.best_step is None and math.isnan(st.final)
    assert st.degradation_pct is None and st.value is None


def test_value_follows_rank_by():
    run = mkrun(rows=evals({10: 2.0, 20: 2.5, 30: 2.4}))
    assert run_stats(run, spec(rank_by="best")).value == 2.0
    st = run_stats(run, spec(rank_by="final"))
    assert (st.value, st.final, st.final_step) == (2.4, 2.4, 30)


def test_sample_runs_read_samples_seen_and_samples_per_s():
    rows = [{"step": s, "train/samples_per_s": r, "samples_seen": 10 * s, "train/tokens_per_s": 1.0,
             "tokens_seen": 1} for s, r in [(1, 5.0), (2, 40.0), (3, 60.0)]]
    st = run_stats(mkrun(rows=rows, summary={"unit": "samples"}), spec())
    assert st.seen == 30 and st.throughput == 50.0


def test_one_rate_is_no_throughput_and_no_time_is_no_wall_time():
    st = run_stats(mkrun(rows=[{"step": 1, "train/tokens_per_s": 100.0}]), spec())
    assert st.throughput is None and st.wall_time_s is None and st.seen is None and st.epochs is None
    assert st.steps == 1


def test_status_falls_back_to_the_trial_and_max_steps_to_the_config():
    assert run_stats(mkrun(trial={"status": "failed"}), spec()).status == "failed"
    assert run_stats(mkrun(summary={"status": ""}, trial={"status": "running"}), spec()).status == "running"
    assert run_stats(mkrun(summary={"status": "stopped"}), spec()).status == "stopped"
    assert run_stats(mkrun(), spec()).status is None
    assert run_stats(mkrun(), spec()).steps is None
    assert run_stats(mkrun(config={"max_steps": 30}), spec()).max_steps == 30


# --- fields, keys, labels, seed groups -------------------------------------------------------------

def test_differing_fields_in_first_seen_order_without_identity_fields():
    a = mkrun("a", config={"name": "a", "lr": 1, "opt": {"x": 1, "y": 2}, "b": 2, "wandb_tags": "x", "seed": 0})
    b = mkrun("b", config={"b": 3, "c": 4, "lr": 1, "opt": {"y": 2, "x": 1}, "name": "b", "wandb_tags": "y",
                           "seed": 1, "out_dir": "/o"})
    assert differing_fields([a, b]) == ["b", "seed", "c"]


def test_config_key_ignores_seed_identity_fields_and_key_order():
    a = mkrun(config={"lr": 1, "opt": {"b": 1, "a": 2}, "seed": 0, "name": "a", "wandb_x": 1})
    b = mkrun(config={"opt": {"a": 2, "b": 1}, "lr": 1, "seed": 5, "name": "b", "wandb_x": 2})
    assert config_key(a) == config_key(b)
    assert json.loads(config_key(a)) == {"lr": 1, "opt": {"a": 2, "b": 1}}
    assert config_key(a, leave_out=()) != config_key(b, leave_out=())
    assert json.loads(config_key(a, leave_out=("lr",))) == {"opt": {"a": 2, "b": 1}, "seed": 0}


def test_config_key_accepts_values_json_cannot_write():
    # a config read from W&B or built in code may hold e.g. a Path: it is keyed by its text
    assert json.loads(config_key(mkrun(config={"data": Path("/d"), "seed": 1}))) == {"data": str(Path("/d"))}


def test_label_names_the_fields_in_order_or_all_runs():
    assert label({"lr": 0.001, "opt": "adamw", "flag": True}, ["opt", "lr", "flag"]) == "opt=adamw lr=0.001 flag=true"
    assert label({"lr": 0.001}, []) == "all runs"


def stats_of(runs, values):
    """Stand-ins for RunStats: seed_groups reads only each run's ranked value."""
    return {r.name: SimpleNamespace(value=values[r.name]) for r in runs}


def test_seed_groups_gather_runs_differing_only_in_seed_in_first_seen_order():
    runs = [mkrun("b0", config={"lr": 2, "seed": 0}), mkrun("a0", config={"lr": 1, "seed": 0}),
            mkrun("b1", config={"lr": 2, "seed": 1}), mkrun("a1", config={"lr": 1, "seed": 1}),
            mkrun("a2", config={"lr": 1, "seed": 2})]
    values = {"b0": 3.0, "b1": 3.2, "a0": 2.0, "a1": None, "a2": 2.4}
    groups = seed_groups(runs, stats_of(runs, values), ["lr", "seed"])
    b, a = groups
    assert (b.label, b.runs, b.seeds, b.values, b.value_seeds, b.n) == ("lr=2", ["b0", "b1"], [0, 1], [3.0, 3.2], [0, 1], 2)
    assert b.mean == pytest.approx(3.1) and b.std == pytest.approx(math.sqrt(0.02))   # two seeds are enough
    assert (b.ci_low, b.ci_high) == pytest.approx(mean_interval([3.0, 3.2]))
    # a1 has no value: it is a member but not a value
    assert (a.runs, a.seeds, a.values, a.value_seeds, a.n) == (["a0", "a1", "a2"], [0, 1, 2], [2.0, 2.4], [0, 2], 2)
    assert a.mean == pytest.approx(2.2) and a.std == pytest.approx(math.sqrt(0.08))


def test_reruns_of_one_seed_and_single_values_have_no_spread():
    runs = [mkrun("x", config={"seed": 0}), mkrun("y", config={"seed": 0}),
            mkrun("p", config={"lr": 1, "seed": 0}), mkrun("q", config={"lr": 1, "seed": 1}),
            mkrun("n", config={"lr": 2, "seed": 0})]
    values = {"x": 3.0, "y": 3.1, "p": 2.0, "q": None, "n": None}
    same_seed, one_value, no_value = seed_groups(runs, stats_of(runs, values), ["lr"])
    assert same_seed.n == 2 and same_seed.std is None and same_seed.ci_low is None and same_seed.ci_high is None
    assert same_seed.label == "lr=None" and same_seed.mean == pytest.approx(3.05)
    assert one_value.n == 1 and one_value.std is None and one_value.ci_low is None
    assert no_value.n == 0 and no_value.mean is None and no_value.std is None and no_value.values == []


def group(label_, values, seeds=None, std=None, n=None, mean=None) -> SeedGroup:
    seeds = list(range(len(values))) if seeds is None else seeds
    return SeedGroup(label=label_, runs=[f"{label_}-{s}" for s in seeds], seeds=seeds, values=values,
                     n=len(values) if n is None else n, mean=(float(np.mean(values)) if values else None)
                     if mean is None else mean, std=std, value_seeds=seeds)


def test_pooled_std_weights_each_configs_variance_by_its_dof():
    groups = [group("a", [1, 2, 3], std=0.1), group("b", [1, 2], std=0.3), group("c", [1], std=None)]
    assert pooled_dof(groups) == 3
    assert pooled_std(groups) == pytest.approx(math.sqrt((2 * 0.01 + 1 * 0.09) / 3))
    assert pooled_dof([group("c", [1])]) == 0 and pooled_std([group("c", [1])]) is None


# --- ranking ---------------------------------------------------------------------------------------

def test_rank_groups_min_mode_orders_means_up_with_valueless_groups_last():
    seeds = [0, 1, 2]
    g = {k: group(k, v, seeds, std=float(np.std(v, ddof=1))) for k, v in
         {"c": [3.0, 3.2, 3.1], "a": [1.0, 1.1, 0.9], "b": [2.0, 2.3, 1.9], "d": [2.5, 2.4, 2.9]}.items()}
    empty = group("none", [], std=None)
    ranked, pairs, pooled = rank_groups([empty, g["c"], g["a"], g["b"], g["d"]], spec())
    assert [x.label for x in ranked] == ["a", "b", "d", "c", "none"]
    assert [x.rank for x in ranked] == [1, 2, 3, 4, None]
    assert pooled == pytest.approx(pooled_std(list(g.values())))
    lead = ranked[0]
    assert lead.delta_to_leader == 0.0 and lead.within_noise_of_leader is True and lead.p_vs_leader is None
    assert g["c"].delta_to_leader == pytest.approx(g["c"].mean - g["a"].mean)
    # each vs the leader, and from the third on each vs the one above it
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "d"), ("b", "d"), ("a", "c"), ("d", "c")]
    bd = pairs[2]
    assert bd.delta == pytest.approx(g["d"].mean - g["b"].mean)
    assert bd.test == "paired" and bd.dof == 2.0     # three shared seeds: n − 1 dof
    ab = pairs[0]
    assert g["b"].p_vs_leader == ab.p_value and g["b"].test_vs_leader == "paired"
    assert g["b"].within_noise_of_leader is ab.within_noise is False


def test_rank_groups_max_mode_orders_means_down():
    groups = [group("lo", [1.0]), group("hi", [3.0]), group("mid", [2.0])]
    ranked, pairs, pooled = rank_groups(groups, spec(mode="max"))
    assert [x.label for x in ranked] == ["hi", "mid", "lo"] and pooled is None
    assert pairs[0].delta == pytest.approx(-1.0)          # mean(mid) − mean(hi)
    assert pairs[0].within_noise is None and ranked[1].within_noise_of_leader is None


def test_verdict_and_interval_texts_carry_the_p_value_and_the_test():
    assert verdict(None, None, None).startswith("unknown")
    v = verdict(True, "paired", 0.5)
    assert v.startswith("within noise") and "p=0.5" in v and "paired" in v
    v = verdict(False, "borrowed", 0.003)
    assert v.startswith("apart") and "p=0.003" in v and "borrowed std" in v
    assert verdict(False, "welch", None) == "apart" and verdict(True, "welch", None) == "within noise"
    assert interval(0.1, 0.25) == "[0.1, 0.25]"
    assert interval(None, 0.2) == "" and interval(0.1, None) == ""


def test_noise_note_with_one_config_or_no_repeats():
    assert "nothing to rank" in noise_note([], None, spec())
    assert "nothing to rank" in noise_note([group("a", [3.0]), group("b", [], mean=None)], None, spec())
    note = noise_note([group("a", [3.0]), group("b", [3.1])], None, spec())
    assert "no seed repeats" in note and "nothing to rank" not in note
    # one config with two seeds is not "nothing to rank": its seed noise is still reported
    one = noise_note([group("a", [3.0, 3.2], std=0.14)], 0.14, spec())
    assert "nothing to rank" not in one and "pooled std 0.14" in one


def test_noise_note_names_the_leader_the_ties_the_borrowers_and_the_repeated_count():
    lead, tie, apart, once = (group("A", [1.0, 1.1], std=0.07), group("B", [1.05, 1.1], std=0.04),
                              group("C", [2.0, 2.1], std=0.07), group("D", [1.02]))
    tie.within_noise_of_leader, apart.within_noise_of_leader, once.within_noise_of_leader = True, False, True
    once.test_vs_leader, tie.test_vs_leader = "borrowed", "paired"
    note = noise_note([lead, tie, once, apart], 0.06, spec(name="val/loss_best"))
    assert "val/loss_best" in note and "pooled std 0.06" in note and "3 config(s)" in note
    assert NOISE_RULE in note
    within = note.split("Within noise of the leader")[1].split(".")[0]
    assert "(A)" in within and "B" in within and "D" in within and "C" not in within
    borrowed = note.split("Verdicts that borrow")[1]
    assert "D" in borrowed and "B" not in borrowed
    plain = noise_note([lead, apart], 0.07, spec())
    assert "of the leader" not in plain and "Verdicts that borrow" not in plain


# --- clean, to_json, analyse -----------------------------------------------------------------------

def test_clean_makes_json_safe_copies():
    got = clean({1: (1.5, math.nan), "x": [math.inf, -math.inf, {"y": np.float32(2.5)}], "n": np.int64(3),
                 "s": "t", "b": True, "none": None})
    assert got == {"1": [1.5, None], "x": [None, None, {"y": 2.5}], "n": 3, "s": "t", "b": True, "none": None}
    assert type(got["n"]) is int and type(got["x"][2]["y"]) is float
    assert clean(np.float32(math.nan)) is None and clean(np.float64(math.inf)) is None


def study() -> list[Run]:
    """lr 1e-3 (seeds 0, 1) and lr 2e-3 (seeds 0, 1): val/loss and val/accuracy curves; one run failed."""
    runs = []
    for lr, finals in {1e-3: [3.0, 3.2], 2e-3: [3.5, 3.7]}.items():
        for seed, v in enumerate(finals):
            rows = [{"step": 10, "val/loss": v + 1, "val/accuracy": 0.3},
                    {"step": 20, "val/loss": v, "val/accuracy": 0.5 - v / 10}]
            runs.append(mkrun(f"lr{lr:g}-s{seed}", rows, config={"task": "lm", "lr": lr, "seed": seed},
                              summary={"status": "failed" if (lr, seed) == (2e-3, 1) else "finished"}))
    return runs


def test_analyse_passes_metric_sweep_metric_and_goal_through():
    runs = study()
    assert analyse(runs, metric="val/accuracy").metric.name == "val/accuracy"
    a = analyse(runs, sweep_metric="val/accuracy", sweep_goal="minimize")
    assert (a.metric.name, a.metric.mode, a.metric.rank_by) == ("val/accuracy", "min", "best")
    assert a.fields == ["lr", "seed"]                        # in config order
    assert a.columns[:4] == ["name", "lr", "seed", "best"]


def test_to_json_holds_everything_json_safe():
    a = analyse(study(), metric="val/loss")
    j = a.to_json()
    json.dumps(j, allow_nan=False)
    assert j["metric"] == {"name": "val/loss", "curve": "val/loss", "mode": "min", "rank_by": "best",
                           "source": "--metric"}
    assert j["fields"] == a.fields and j["noise_rule"] == NOISE_RULE and j["alpha"] == ALPHA
    assert j["noise"] == a.noise_note and j["pooled_std"] == pytest.approx(math.sqrt(0.02))
    assert [g["label"] for g in j["ranking"]] == ["lr=0.001", "lr=0.002"]
    assert [(p["a"], p["b"]) for p in j["pairs"]] == [("lr=0.001", "lr=0.002")]
    assert j["pairs"][0]["delta"] == pytest.approx(0.5)
    assert [(w["run"], w["kind"]) for w in j["warnings"]] == [("lr0.002-s1", "failed")]
    assert [r["param"] for r in j["lr_recommendation"]] == ["lr"]
    assert j["lr_recommendation"][0]["best_lr"] == pytest.approx(1e-3)
    assert j["columns"] == a.columns and j["table"] == clean(a.table)
    assert "evals" not in json.dumps(j)


def test_to_json_turns_a_nan_degradation_into_null():
    a = analyse([mkrun("x", evals({10: 3.0, 20: math.nan}), config={"task": "lm"})], metric="val/loss")
    assert a.table[0]["degradation_%"] == math.inf
    assert a.to_json()["table"][0]["degradation_%"] is None


# --- make_table ------------------------------------------------------------------------------------

COLUMNS_AFTER_FIELDS = ["best", "final", "best_step", "degradation_%", "steps", "max_steps", "{u}_seen", "epochs",
                        "wall_time_s", "{u}_per_s", "params_total", "params_active", "status", "group",
                        "group_rank", "group_mean", "ci95_low", "ci95_high", "within_noise_of_leader",
                        "p_vs_leader", "noise_test", "warnings", "metric", "path"]


def table_runs():
    def rows(vals, rate):
        return [*evals(vals), *({"step": s, "train/tokens_per_s": rate * s, "tokens_seen": 64 * s, "epochs": s / 100,
                                 "time": float(s)} for s in (1, 2, 3))]
    summary = {"unit": "tokens", "max_steps": 50, "params": {"total": 1000, "active": 700}}
    return [
        mkrun("a", rows({10: 3.5, 20: 3.0, 30: 3.2}, 10.0), {**summary, "status": "finished"},
              {"lr": 0.001, "seed": 0}, path=Path("/runs/a")),
        mkrun("b", rows({10: 2.5}, 20.0), {**summary, "status": "stopped"}, {"lr": 0.002, "seed": 0},
              url="https://wandb.ai/e/p/runs/b"),
        mkrun("c", rows({10: 2.8}, 30.0), summary, {"lr": 0.003, "seed": 0}, trial={"status": "failed"}),
        mkrun("d", rows({}, 40.0), summary, {"lr": 0.004, "seed": 0}),
    ]


def table_groups():
    ga = SeedGroup(label="lr=0.001", runs=["a"], seeds=[0], values=[3.0], n=1, mean=3.01, std=None, ci_low=2.9,
                   ci_high=3.1, rank=2, delta_to_leader=0.5, within_noise_of_leader=False, p_vs_leader=0.01,
                   test_vs_leader="welch")
    gb = SeedGroup(label="lr=0.002", runs=["b"], seeds=[0], values=[2.5], n=1, mean=2.51, std=None, ci_low=2.4,
                   ci_high=2.6, rank=1, delta_to_leader=0.0, within_noise_of_leader=True)
    return [gb, ga]


def test_table_columns_and_every_value_of_a_row():
    runs, sp = table_runs(), spec()
    stats = {r.name: run_stats(r, sp) for r in runs}
    warnings = [HealthWarning("a", "overfit", "m"), HealthWarning("a", "gap", "m"),
                HealthWarning("a", "epochs", "m", severity="note"), HealthWarning("b", "nan", "m")]
    columns, table = make_table(runs, stats, ["lr"], table_groups(), warnings, sp)
    assert columns == ["name", "lr", *(c.format(u="tokens") for c in COLUMNS_AFTER_FIELDS)]
    rows = {r["name"]: r for r in table}
    assert all(list(r) == columns for r in table)
    a = rows["a"]
    assert (a["lr"], a["best"], a["final"], a["best_step"], a["steps"], a["max_steps"]) == (0.001, 3.0, 3.2, 20, 30, 50)
    assert a["degradation_%"] == pytest.approx(100 * 0.2 / 3.0)
    assert (a["tokens_seen"], a["epochs"], a["wall_time_s"], a["tokens_per_s"]) == (192, 0.03, 3.0, 25.0)
    assert (a["params_total"], a["params_active"], a["status"]) == (1000, 700, "finished")
    assert (a["group"], a["group_rank"], a["group_mean"], a["ci95_low"], a["ci95_high"]) == ("lr=0.001", 2, 3.01, 2.9, 3.1)
    assert (a["within_noise_of_leader"], a["p_vs_leader"], a["noise_test"]) == (False, 0.01, "welch")
    assert (a["warnings"], a["metric"], a["path"]) == (2, "val/loss", str(Path("/runs/a")))
    b = rows["b"]
    assert (b["status"], b["warnings"], b["path"], b["within_noise_of_leader"]) == ("stopped", 1, "https://wandb.ai/e/p/runs/b", True)
    assert (b["group"], b["group_rank"], b["group_mean"], b["p_vs_leader"], b["noise_test"]) == ("lr=0.002", 1, 2.51, None, None)
    c = rows["c"]     # in no group, no path, no url, no warning
    assert (c["status"], c["warnings"], c["path"]) == ("failed", 0, "")
    assert all(c[k] is None for k in ("group", "group_rank", "group_mean", "ci95_low", "ci95_high",
                                      "within_noise_of_leader", "p_vs_leader", "noise_test"))


def test_table_rows_best_first_in_both_modes_with_valueless_runs_last():
    runs = table_runs()
    runs.insert(0, mkrun("e", [], {"unit": "tokens"}, {"lr": 0.005, "seed": 0}))   # no value either
    lo = {r.name: run_stats(r, spec()) for r in runs}
    assert [r["name"] for r in make_table(runs, lo, [], [], [], spec())[1]] == ["b", "c", "a", "e", "d"]
    hi = {r.name: run_stats(r, spec(mode="max")) for r in runs}
    assert [v.value for v in hi.values()] == [None, 3.5, 2.5, 2.8, None]
    assert [r["name"] for r in make_table(runs, hi, [], [], [], spec(mode="max"))[1]] == ["a", "c", "b", "e", "d"]


def test_table_unit_is_samples_for_scanline_and_items_when_mixed():
    lm = mkrun("lm", [{"step": 1, "tokens_seen": 64}], {"tokens_seen": 64}, {"task": "lm"})
    cls = mkrun("cls", [{"step": 1, "samples_seen": 8}], {"samples_seen": 8}, {"task": "scanline"})
    cols, rows = make_table([cls], {"cls": run_stats(cls, spec())}, [], [], [], spec())
    assert "samples_seen" in cols and "samples_per_s" in cols and rows[0]["samples_seen"] == 8
    both = {r.name: run_stats(r, spec()) for r in (lm, cls)}
    cols, rows = make_table([lm, cls], both, [], [], [], spec())
    assert "items_seen" in cols and "items_per_s" in cols and "tokens_seen" not in cols
    assert {r["name"]: r["items_seen"] for r in rows} == {"lm": 64, "cls": 8}
