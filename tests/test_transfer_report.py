"""The transfer report (report/transfer.py): the fit against known answers, its interval's coverage on
synthetic sweeps, and `blueberry report transfer` / `blueberry report` / the W&B report on hand-made
sweep dirs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from blueberry.report.transfer import fit_transfer
from report_fixtures import make_sweep

LRS = [0.001 * 2 ** i for i in range(7)]
REPO = Path(__file__).resolve().parents[1]


def curve_points(widths, b, lr32=0.008, seeds=(0, 1), k=0.3, noise=0.0, rng=None, lrs=LRS):
    """(width, lr, seed, loss): loss = L0(w) + k (log2 lr - log2 lr*(w))^2 + seed offset + noise,
    lr*(w) = lr32 (w / 32)^b."""
    out = []
    for w in widths:
        opt = math.log2(lr32) + b * math.log2(w / 32)
        for s in seeds:
            offset = 0.01 * s
            for lr in lrs:
                e = rng.normal(0, noise) if rng is not None else 0.0
                out.append((w, lr, s, 3.0 - 0.2 * math.log2(w / 32) + k * (math.log2(lr) - opt) ** 2 + offset + e))
    return out


# --- the fit --------------------------------------------------------------------------------------

def test_a_noise_free_quadratic_gives_the_exact_optimum_and_slope():
    fit = fit_transfer(curve_points([32, 64, 128], b=-1.0, lr32=0.011), target=256)
    assert [w.lr_star for w in fit.widths] == pytest.approx([0.011, 0.0055, 0.00275], rel=1e-6)
    assert fit.b == pytest.approx(-1.0, abs=1e-6) and fit.prediction.lr == pytest.approx(0.011 / 8, rel=1e-6)
    assert [w.best_lr for w in fit.widths] == [0.008, 0.004, 0.002]
    assert fit.widths[0].window == LRS[1:6]                        # the best grid LR and two each side


def test_b_interval_and_verdicts_follow_the_slope():
    rng = np.random.default_rng(5)
    for b, verdict in [(0.0, "shift-free"), (-1.0, "SP-like")]:
        fit = fit_transfer(curve_points([32, 64, 128], b=b, noise=0.01, rng=rng), target=256)
        assert fit.b_low < b < fit.b_high and fit.b_high - fit.b_low < 0.5
        assert fit.verdict == verdict
        p = fit.prediction
        assert p.low < 0.008 * 8 ** b < p.high
        for w in fit.widths:
            assert w.lr_low < 0.008 * (w.width / 32) ** b < w.lr_high


def test_a_maximised_metric_fits_the_maximum():
    pts = [(w, lr, s, -v) for w, lr, s, v in curve_points([32, 64], b=-0.5)]
    fit = fit_transfer(pts, mode="max")
    assert fit.b == pytest.approx(-0.5, abs=1e-6) and fit.widths[0].best_loss == pytest.approx(-3.005)   # mean over the seed offsets 0, 0.01


def test_an_optimum_at_the_grid_edge_and_failed_runs_make_the_verdict_unclear():
    pts = curve_points([32, 64, 128], b=-1.0, lr32=0.1)          # above the grid at width 32 and 64
    pts.append((128, LRS[-1], 2, math.nan))                       # a diverged run: left out
    fit = fit_transfer(pts)
    assert fit.widths[0].best_lr == LRS[-1] and "largest LR tried is the best" in fit.widths[0].notes[0]
    assert fit.verdict.startswith("unclear (the best LR is at the edge of the grid at width 32, 64")
    assert fit.widths[2].n_runs == 15 and fit.widths[2].means[-1] is not None


def test_one_width_has_an_optimum_but_no_slope():
    fit = fit_transfer(curve_points([256], b=0.0, lr32=0.011), target=512)
    assert fit.widths[0].lr_star == pytest.approx(0.011) and fit.b is None and fit.prediction is None
    assert fit.verdict.startswith("unclear (one width")


def _synthetic_sweep(b: float, rng: np.random.Generator) -> list[tuple]:
    """A sweep as the benchmark's look: 3 widths x 7 LRs a factor 2 apart x 2 seeds; loss curves
    quadratic in log LR, half of them with flanks of different steepness (the quadratic fit is then
    wrong, as on real sweeps), a curvature that changes a little with width, a per-seed offset and
    per-run noise, and now and then a diverged run at the largest LR."""
    k_low, k_high = rng.uniform(0.1, 1.0, 2)
    if rng.random() < 0.5:
        k_high = k_low
    opt32 = rng.uniform(-0.5, 0.5)                                # log2 of lr* at width 32, grid units
    noise = rng.choice([0.005, 0.01, 0.02])
    grid = np.arange(7) - 3 + b                                   # keeps every width's optimum inside
    out = []
    for w in (32, 64, 128):
        opt, k = opt32 + b * math.log2(w / 32), 1 + rng.uniform(-0.2, 0.2)
        offsets = rng.normal(0, 0.03, 2)
        for s in (0, 1):
            for x in grid:
                d = x - opt
                loss = 3.0 - 0.3 * math.log2(w / 32) + k * (k_low if d < 0 else k_high) * d * d + offsets[s]
                loss += rng.normal(0, noise)
                out.append((w, 0.01 * 2.0 ** x, s, math.nan if x == grid[-1] and rng.random() < 0.1 else loss))
    return out


def test_the_95_percent_interval_of_b_covers_the_true_slope_in_200_synthetic_sweeps():
    rng = np.random.default_rng(2026)
    covered, widths, verdicts = {}, [], {}
    for i in range(200):
        b = (0.0, -0.5, -1.0)[i % 3]
        fit = fit_transfer(_synthetic_sweep(b, rng), bootstrap=1000, seed=i)
        covered.setdefault(b, []).append(fit.b_low <= b <= fit.b_high)
        widths.append(fit.b_high - fit.b_low)
        verdicts.setdefault(b, []).append(fit.verdict)
    overall = sum(sum(v) for v in covered.values()) / 200
    assert overall >= 0.90, covered
    assert all(sum(v) / len(v) >= 0.85 for v in covered.values()), {b: sum(v) / len(v) for b, v in covered.items()}
    assert np.median(widths) < 0.3                                 # informative, not covering by being huge
    assert verdicts[0.0].count("shift-free") / len(verdicts[0.0]) >= 0.9
    assert verdicts[-1.0].count("SP-like") / len(verdicts[-1.0]) >= 0.9


# --- from run dirs ----------------------------------------------------------------------------------

def transfer_sweep(root, b: float, lr_field: str = "lr", widths=(32, 64, 128), worse: float = 0.0, **fields):
    """A `sweep local` dir whose runs end at the losses of curve_points (best = last value), `worse`
    added to every loss."""
    trials = []
    for w, lr, s, loss in curve_points(widths, b=b, k=0.3, noise=0.004, rng=np.random.default_rng(0)):
        loss += worse
        params = {"d_model": w, "expert_d_ff": 2 * w, lr_field: lr, "seed": s, **fields}
        if lr_field == "muon_lr":
            params["optimizer"] = "muon"
        trials.append({"params": params, "val": {0: 6.0, 50: loss + 0.5, 100: loss}})
    return make_sweep(root, trials=trials)


def test_report_transfer_command_writes_the_fit_the_figure_and_a_page(cli):
    sweep = transfer_sweep(cli.cwd / "sweep", b=-1.0)
    res = cli("report", "transfer", str(sweep), "--target", "256")
    assert res.returncode == 0, res.stderr
    out = sweep / "report"
    (data,) = json.loads((out / "transfer.json").read_text())
    assert data["lr_field"] == "lr" and data["width_field"] == "d_model" and data["metric"] == "val/loss_best"
    assert data["b_low"] < -1.0 < data["b_high"] and data["verdict"] == "SP-like"
    assert data["prediction"]["low"] < 0.001 < data["prediction"]["high"]
    assert [w["width"] for w in data["widths"]] == [32, 64, 128]
    assert all(w["best_lr"] in w["band"] and len(w["band"]) >= 1 for w in data["widths"])
    assert data["widths"][2]["best_loss"] < data["widths"][0]["best_loss"]       # each width's best loss, shown
    assert (out / "plots" / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "transfer.html").read_text()
    assert "Learning rate across width" in page and "SP-like" in page and "data:image/png;base64," in page
    assert "SP-like" in res.stdout and "predicted lr* at d_model=256" in res.stdout


def test_the_sweep_report_has_a_transfer_section_and_table_json_key(cli):
    sweep = transfer_sweep(cli.cwd / "sweep", b=0.0, lr_field="muon_lr")
    res = cli("report", str(sweep), "--no-per-run-figures")
    assert res.returncode == 0, res.stderr
    table = json.loads((sweep / "report" / "table.json").read_text())
    (fit,) = table["transfer"]
    assert fit["lr_field"] == "muon_lr" and fit["verdict"] == "shift-free" and fit["series"] == {}
    assert json.loads((sweep / "report" / "summary.json").read_text())["transfer"][0]["b"] == fit["b"]
    assert "Learning rate across width" in (sweep / "report" / "report.html").read_text()
    plain = make_sweep(cli.cwd / "plain", trials=[{"params": {"lr": lr, "seed": 0}} for lr in LRS[:3]])
    assert cli("report", str(plain), "--no-per-run-figures").returncode == 0
    assert "transfer" not in json.loads((plain / "report" / "table.json").read_text())


def test_two_sweeps_are_fitted_apart_and_their_best_losses_shown_side_by_side(cli):
    """sp's optimum falls with width, mup's stays, and mup reaches a worse loss at every width: the
    report must show both (muP can transfer the LR and still lose to sp)."""
    sp = transfer_sweep(cli.cwd / "sp", b=-1.0, param="sp")
    mup = transfer_sweep(cli.cwd / "mup", b=0.0, param="mup", base_d_model=32, worse=0.05)
    res = cli("report", "transfer", str(sp), str(mup), "--out", "both", "--target", "256")
    assert res.returncode == 0, res.stderr
    fits = {f["label"]: f for f in json.loads((cli.cwd / "both" / "transfer.json").read_text())}
    assert set(fits) == {"param=sp", "param=mup"}                       # base_d_model follows param: no extra split
    sp_fit, mup_fit = fits["param=sp"], fits["param=mup"]
    assert (sp_fit["verdict"], mup_fit["verdict"]) == ("SP-like", "shift-free")
    assert [w["n_runs"] for w in sp_fit["widths"]] == [14, 14, 14]          # expert_d_ff follows the width: no split
    assert all(m["best_loss"] > s["best_loss"] for s, m in zip(sp_fit["widths"], mup_fit["widths"]))
    assert "best val/loss_best per d_model" in res.stdout
    page = (cli.cwd / "both" / "transfer.html").read_text()
    assert page.count("<h3>") == 3 and "param=mup" in page
    assert sorted(p.name for p in (cli.cwd / "both" / "plots").iterdir()) == ["transfer-param_mup.png",
                                                                               "transfer-param_sp.png"]


def test_report_transfer_refuses_runs_without_an_lr_sweep(cli):
    sweep = make_sweep(cli.cwd / "s", trials=[{"params": {"d_model": w, "seed": 0}} for w in (32, 64)])
    res = cli("report", "transfer", str(sweep))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: report transfer: the runs do not vary lr or muon_lr; a transfer study sweeps an LR at several "
        "widths (sweeps/lr-transfer.yaml)"]


def test_wandb_report_of_a_transfer_sweep_has_the_lr_by_width_panel(cli):
    from conftest import run_cli
    from test_report_build import walk

    res = run_cli("report", "wandb-report", "--project", "proj", "--sweep-file", "sweeps/lr-transfer-mup.yaml",
                  "--offline", "--out", str(cli.cwd / "spec.json"), cwd=REPO)
    assert res.returncode == 0, res.stderr
    spec = json.loads((cli.cwd / "spec.json").read_text())
    assert spec["params"] == ["d_model", "expert_d_ff", "lr", "seed"]
    scatter = [d["config"] for d in walk(spec["report"]) if d.get("viewType") == "Scatter Plot"]
    assert len(scatter) == 1
    assert (scatter[0]["xAxis"], scatter[0]["yAxis"], scatter[0]["zAxis"]) == (
        "config:lr.value", "summary:val/loss", "config:d_model.value")
    res = run_cli("report", "wandb-report", "--project", "proj", "--sweep-file", "sweeps/quickstart.yaml",
                  "--offline", "--out", str(cli.cwd / "plain.json"), cwd=REPO)
    plain = json.loads((cli.cwd / "plain.json").read_text())
    assert not [d for d in walk(plain["report"]) if d.get("viewType") == "Scatter Plot"]

