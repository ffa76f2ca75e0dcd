"""The report's analysis on hand-made run dirs whose answers are known: the onset of a val-loss rise,
seed noise, unfinished schedules, repeated data, leakage, expert collapse, NaN and divergence."""

import json

import pytest
from scipy import stats

from blueberry.errors import UserError
from blueberry.report.analyse import NOISE_RULE, analyse, differing_fields, resolve_metric
from blueberry.report.load import load_runs
from report_fixtures import cosine_lr, make_run, make_sweep, seed_study


def kinds(analysis, run=None):
    return {w.kind for w in analysis.warnings if run is None or w.run == run}


def only(analysis, run, kind):
    found = [w for w in analysis.warnings if w.run == run and w.kind == kind]
    assert len(found) == 1, analysis.warnings
    return found[0]


def test_val_rise_after_best_warns_with_its_onset_and_the_degradation(tmp_path):
    # best 3.0 at step 60; step 70 is worse by less than 0.5% (noise), step 80 is the onset.
    curve = dict(zip(range(0, 101, 10), [5, 4, 3.5, 3.2, 3.1, 3.05, 3.0, 3.01, 3.05, 3.1, 3.2]))
    make_run(tmp_path, "rises", val=curve)
    make_run(tmp_path, "wobbles", val={**curve, 70: 3.01, 80: 3.0, 90: 2.99, 100: 3.0})
    a = analyse(load_runs([tmp_path]).runs)
    st = a.stats["rises"]
    assert (st.best, st.best_step, st.final) == (3.0, 60, 3.2)
    assert st.degradation_pct == pytest.approx(100 * 0.2 / 3.0)
    w = only(a, "rises", "overfit")
    assert w.step == 80 and "step 60" in w.message and "best checkpoint" in w.message
    assert "overfit" not in kinds(a, "wobbles")     # ends within tolerance of its best
    row = next(r for r in a.table if r["name"] == "rises")
    assert row["best_step"] == 60 and row["degradation_%"] == pytest.approx(6.667, abs=1e-3)


def test_higher_is_better_metric_warns_when_it_falls_after_its_best(tmp_path):
    curve = {0: 0.3, 10: 0.6, 20: 0.8, 30: 0.7, 40: 0.65}
    make_run(tmp_path, "cls", task="scanline", val=curve, max_steps=40)
    a = analyse(load_runs([tmp_path]).runs)
    assert a.metric.curve == "val/balanced_accuracy" and a.metric.mode == "max"
    assert only(a, "cls", "overfit").step == 30
    assert a.stats["cls"].degradation_pct == pytest.approx(100 * 0.15 / 0.8)


def test_seed_noise_marks_close_configs_within_noise_and_distant_ones_apart(tmp_path):
    # lr 1e-3: mean 3.00, std 0.05; lr 2e-3: mean 3.02 on the same seeds (paired test, p = 0.76);
    # lr 4e-3: mean 3.50, clearly apart; lr 8e-3 ran once: it borrows the pooled std.
    seed_study(tmp_path, {1e-3: [3.00, 3.05, 2.95], 2e-3: [3.02, 2.97, 3.07], 4e-3: [3.50, 3.55, 3.45],
                          8e-3: [3.04]})
    a = analyse(load_runs([tmp_path]).runs)
    assert a.fields == ["seed", "lr"]            # the run names differ too, but name is an identity field
    by = {g.label: g for g in a.groups}
    assert [g.label for g in a.groups] == ["lr=0.001", "lr=0.002", "lr=0.008", "lr=0.004"]
    assert by["lr=0.001"].n == 3 and by["lr=0.001"].std == pytest.approx(0.05)
    assert a.pooled_std == pytest.approx(0.05)
    pairs = {(p.a, p.b): p for p in a.pairs}
    close = pairs[("lr=0.001", "lr=0.002")]
    assert close.within_noise is True and close.test == "paired"
    assert close.p_value == pytest.approx(stats.ttest_rel([3.02, 2.97, 3.07], [3.00, 3.05, 2.95]).pvalue)
    assert pairs[("lr=0.001", "lr=0.004")].within_noise is False and pairs[("lr=0.001", "lr=0.004")].p_value < 0.01
    assert by["lr=0.008"].within_noise_of_leader is True and by["lr=0.008"].test_vs_leader == "borrowed"
    assert "borrow the pooled std" in a.noise_note and "lr=0.008" in a.noise_note.split("Verdicts that borrow")[1]
    assert by["lr=0.001"].ci_low < 3.0 < by["lr=0.001"].ci_high and by["lr=0.008"].ci_low is None
    assert by["lr=0.004"].within_noise_of_leader is False
    assert "pooled std 0.05" in a.noise_note and "lr=0.002" in a.noise_note
    row = next(r for r in a.table if r["name"] == "lr0.002-s0")
    assert row["group"] == "lr=0.002" and row["within_noise_of_leader"] is True
    assert row["p_vs_leader"] == pytest.approx(close.p_value) and row["noise_test"] == "paired"
    # the LR recommendation: best 1e-3, and 2e-3 and 8e-3 cannot be told from it
    (rec,) = a.lr
    assert rec.param == "lr" and rec.best_lr == pytest.approx(1e-3)
    assert rec.within_noise == pytest.approx([1e-3, 2e-3, 8e-3]) and rec.range == pytest.approx((1e-3, 8e-3))
    assert any("smallest tried" in n for n in rec.notes)


def test_without_seed_repeats_the_ranking_says_differences_are_not_known_to_be_real(tmp_path):
    seed_study(tmp_path, {1e-3: [3.00], 2e-3: [3.02]})
    a = analyse(load_runs([tmp_path]).runs)
    assert a.pooled_std is None and "cannot be told from seed noise" in a.noise_note
    assert [p.within_noise for p in a.pairs] == [None]
    assert a.groups[1].within_noise_of_leader is None
    assert any("range within noise is unknown" in n for n in a.lr[0].notes)


def test_reruns_with_the_same_seed_are_not_seed_repeats(tmp_path):
    make_run(tmp_path, "a", val={0: 5.0, 100: 3.0})
    make_run(tmp_path, "b", val={0: 5.0, 100: 3.1})
    a = analyse(load_runs([tmp_path]).runs)
    assert len(a.groups) == 1 and a.groups[0].n == 2 and a.groups[0].std is None and a.pooled_std is None


def test_a_schedule_that_did_not_finish_is_flagged(tmp_path):
    make_run(tmp_path, "ok", lr=1e-3)                                              # ends at 0.1 × peak
    make_run(tmp_path, "flat", lr=1e-3, lr_at=lambda s: 1e-3)                      # final LR = peak
    # the micro-batch bug: the cosine ran over 4× the steps, so it covered a quarter of its length
    make_run(tmp_path, "slow", lr=1e-3, lr_at=lambda s: cosine_lr(s, 1e-3, 400, 5, 0.1))
    make_run(tmp_path, "const", lr=1e-3, schedule="constant", lr_at=lambda s: 1e-3)
    make_run(tmp_path, "stopped", lr=1e-3, last_step=50, status="stopped")
    a = analyse(load_runs([tmp_path]).runs)
    assert not kinds(a, "ok") and not kinds(a, "const")
    w = only(a, "flat", "schedule")
    assert w.step == 100 and "1× peak" in w.message and "0.1× peak" in w.message
    assert "schedule" in kinds(a, "slow")
    u = only(a, "stopped", "unfinished")
    assert u.step == 50 and "max_steps 100" in u.message and "resume" in u.message


def test_muon_lr_is_checked_against_its_own_peak(tmp_path):
    path = make_run(tmp_path, "muon", optimizer="muon", lr=1e-3, muon_lr=0.02)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "lr" in r:
            r["muon_lr"] = 0.02          # muon's schedule never decayed
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = only(analyse(load_runs([path]).runs), "muon", "schedule")
    assert w.message.startswith("muon_lr")
    # muon_lr decaying on its own peak 0.02 (not lr's 1e-3) ends where cosine should: no warning
    for r in rows:
        if "lr" in r:
            r["muon_lr"] = cosine_lr(r["step"], 0.02, 100, 5, 0.1)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "schedule" not in kinds(analyse(load_runs([path]).runs), "muon")


def test_repeated_data_leakage_and_collapse(tmp_path):
    make_run(tmp_path, "repeats", epochs_total=2.5)
    make_run(tmp_path, "clean", epochs_total=0.9, leak_fraction=0.005, min_share={0: 0.1})   # collapse recovered
    make_run(tmp_path, "leaks", leak_fraction=0.3)
    make_run(tmp_path, "collapsed", min_share={s: 0.08 for s in range(50, 101, 10)})
    make_run(tmp_path, "cls", task="scanline", epochs_total=30)
    a = analyse(load_runs([tmp_path]).runs)
    assert not kinds(a, "clean")
    assert "2.50 times" in only(a, "repeats", "epochs").message and only(a, "repeats", "epochs").severity == "warning"
    assert only(a, "cls", "epochs").severity == "note"      # classifiers train for many epochs by design
    assert "30.0%" in only(a, "leaks", "leakage").message
    c = only(a, "collapsed", "collapse")
    assert c.step == 100 and "layer0/expert0" in c.message
    assert kinds(a) == {"epochs", "leakage", "collapse"}


def test_nan_and_divergence(tmp_path):
    make_run(tmp_path, "nan", train_loss=lambda s: float("nan") if s >= 30 else 5.0 - s / 100)
    make_run(tmp_path, "diverged", train_loss=lambda s: 5.0 + s / 10)
    make_run(tmp_path, "fine")
    a = analyse(load_runs([tmp_path]).runs)
    assert only(a, "nan", "nan").step == 30
    assert "divergence" in kinds(a, "diverged") and "×" in only(a, "diverged", "divergence").message
    assert not kinds(a, "fine")
    assert json.dumps(a.to_json(), allow_nan=False)      # NaN in the metrics never reaches the JSON


def test_train_val_gap_for_lm_and_for_scanline(tmp_path):
    make_run(tmp_path, "lm-gap", val=lambda s: 3.5, train_loss=lambda s: 3.0)
    make_run(tmp_path, "cls-gap", task="scanline", gap_accuracy=0.3)
    make_run(tmp_path, "cls-ok", task="scanline", gap_accuracy=0.02)
    a = analyse(load_runs([tmp_path]).runs, metric="val/loss")
    assert "= 0.5 > 0.1" in only(a, "lm-gap", "gap").message
    assert "balanced_accuracy 0.3" in only(a, "cls-gap", "gap").message
    assert "gap" not in kinds(a, "cls-ok")


def test_metric_resolution(tmp_path):
    sweep = make_sweep(tmp_path / "sw", metric="val/loss_best", goal="minimize",
                       trials=[{"params": {"lr": 1e-3}}, {"params": {"lr": 3e-3}}, {"params": {"lr": 1e-2}, "no_run": True}])
    loaded = load_runs([sweep])
    assert [r.name for r in loaded.runs] == ["t0000", "t0001"] and "t0002" in loaded.skipped[0]
    assert loaded.runs[0].params == {"lr": 1e-3}
    spec = resolve_metric(loaded.runs, None, loaded.sweep_metric, loaded.sweep_goal)
    assert (spec.name, spec.curve, spec.mode, spec.rank_by) == ("val/loss_best", "val/loss", "min", "best")
    acc = resolve_metric(loaded.runs, "val/accuracy", loaded.sweep_metric, loaded.sweep_goal)
    assert acc.mode == "max" and acc.source == "--metric"
    raw = resolve_metric(loaded.runs, None, "val/loss", "minimize")
    assert raw.rank_by == "best"   # a sweep on val/loss: W&B's controller judges each run by its best val/loss
    with pytest.raises(UserError, match=r"metric='val/bleu': no run logged it; logged metrics: .*val/loss"):
        resolve_metric(loaded.runs, "val/bleu")


def test_identity_fields_never_count_as_differences(tmp_path):
    make_run(tmp_path, "a", out_dir="x", wandb_project="p1", resume="", cache_dir="/c1", seed=0)
    make_run(tmp_path, "b", out_dir="y", wandb_project="p2", resume="auto", cache_dir="/c2", seed=1)
    runs = load_runs([tmp_path / "a", tmp_path / "b"]).runs
    assert differing_fields(runs) == ["seed"]
    a = analyse(runs)
    assert len(a.groups) == 1 and a.groups[0].n == 2 and a.groups[0].label == "all runs"
    assert NOISE_RULE.startswith("two configs differ when a two-sided t-test gives p < 0.05")


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run dir"):
        load_runs([tmp_path / "empty"])
