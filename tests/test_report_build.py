"""`build_report` end to end: on a real two-trial sweep of tiny runs (made once per session by the
CLI, W&B offline) and on hand-made run dirs; the files it writes, the terminal output, and that a
report never imports torch or the trainer."""

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from blueberry import rundir
from blueberry.errors import UserError
from blueberry.report.analyse import fmt
from blueberry.report.build import build_report, default_out_dir, print_report
from blueberry.report.load import load_wandb, run_from_wandb
from conftest import TINY, run_cli
from report_fixtures import make_run, seed_study

PNG = b"\x89PNG\r\n\x1a\n"
SWEEP = """name: report-test
method: grid
metric: {name: val/loss_best, goal: minimize}
parameters:
  lr: {values: [0.001, 0.003]}
command: ["${env}", "${interpreter}", "-m", "blueberry.cli", "train", "lm", "${args}"]
"""


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory):
    """Two real tiny runs (lr 1e-3 and 3e-3, 8 steps) through `blueberry sweep local --workers 2`."""
    root = tmp_path_factory.mktemp("report-sweep")
    (root / "sweep.yaml").write_text(SWEEP)
    overrides = [a for t in TINY + ["--max_steps=8", "--eval_every=4"] for a in ("--override", t[2:])]
    res = run_cli("sweep", "local", "sweep.yaml", "--dir", "sw", "--workers", "2", *overrides, cwd=root, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    (root / "sweep-local.out").write_text(res.stdout)
    return root / "sw"


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_report_of_a_real_sweep_dir(real_sweep, tmp_path):
    result = build_report([real_sweep], tmp_path / "rep")
    a = result.analysis
    assert (a.metric.name, a.metric.curve, a.metric.mode) == ("val/loss_best", "val/loss", "min")
    assert a.fields == ["lr"]
    rows = read_csv(tmp_path / "rep" / "table.csv")
    assert [r["name"] for r in rows] and {r["name"] for r in rows} == {"t0000", "t0001"}
    for row, run in ((r, next(x for x in result.runs if x.name == r["name"])) for r in rows):
        val = [m["val/loss"] for m in rundir.read_metrics(run.path) if "val/loss" in m]
        summary = json.loads((run.path / "summary.json").read_text())
        assert float(row["best"]) == pytest.approx(min(val)) == pytest.approx(summary["best"]["value"])
        assert float(row["final"]) == pytest.approx(val[-1])
        assert int(row["best_step"]) == summary["best"]["step"] and int(row["steps"]) == 8
        assert int(row["tokens_seen"]) == summary["tokens_seen"] and int(row["params_total"]) == summary["params"]["total"]
        assert float(row["lr"]) == run.config["lr"] and float(row["tokens_per_s"]) > 0
    assert float(rows[0]["best"]) <= float(rows[1]["best"])           # ranked, best first
    # a real run finishes its cosine and never repeats data: no false alarms
    assert not {w.kind for w in a.warnings} & {"schedule", "unfinished", "nan", "divergence", "epochs", "leakage"}
    rec = json.loads((tmp_path / "rep" / "lr_recommendation.json").read_text())["recommendations"]
    assert len(rec) == 1 and rec[0]["best_lr"] == float(rows[0]["lr"])
    files = result.files
    for key in ("figure:curves", "figure:best_final", "figure:accuracy", "figure:lr", "run:t0000", "run:t0001"):
        assert files[key].read_bytes().startswith(PNG), key
    page = files["html"].read_text()
    assert page.count("data:image/png;base64,") == 6 and "t0001" in page and "no seed repeats" in page
    assert "<script" not in page and "src=\"http" not in page           # self-contained
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["metric"]["name"] == "val/loss_best" and summary["pooled_std"] is None
    assert summary["files"]["html"] == str(files["html"])
    console = Console(record=True, width=200, file=io.StringIO())
    print_report(result, console)
    text = console.export_text()
    assert "val/loss_best" in text and "t0000" in text and "no seed repeats" in text and "lr: best" in text


def test_report_of_run_dirs_given_directly(real_sweep, tmp_path):
    runs = sorted(real_sweep.glob("trials/*/runs/*"))
    assert len(runs) == 2
    result = build_report(runs, tmp_path / "rep", per_run_figures=False, html=False)
    assert result.analysis.metric.name == "val/loss"                   # the runs' own best metric
    names = [r.name for r in result.runs]
    assert len(set(names)) == 2 and all(n.startswith("lm-tiny-") for n in names)
    assert "html" not in result.files and not (tmp_path / "rep" / "plots" / "runs").exists()
    assert default_out_dir([real_sweep]) == real_sweep / "report" and default_out_dir(runs) == Path("report")


def test_report_files_of_a_hand_made_seed_study(tmp_path):
    seed_study(tmp_path / "runs", {1e-3: [3.00, 3.05, 2.95], 2e-3: [3.02, 2.97, 3.07], 4e-3: [3.50, 3.55, 3.45]})
    make_run(tmp_path / "runs", "leaky", lr=8e-3, leak_fraction=0.2, val={0: 5.0, 50: 3.3, 100: 3.6},
             train_loss=lambda s: 3.55)
    out = tmp_path / "rep"
    result = build_report([tmp_path / "runs"], out, per_run_figures=False)
    table = json.loads((out / "table.json").read_text())
    assert table["metric"]["name"] == "val/loss" and "lr" in table["columns"]
    assert [r["name"] for r in table["rows"]][:1] == ["lr0.001-s2"]     # 2.95, the best single run
    by_name = {r["name"]: r for r in table["rows"]}
    assert by_name["leaky"]["best_step"] == 50 and by_name["leaky"]["warnings"] == 2    # overfit + leakage
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooled_std"] == pytest.approx(0.05)
    verdicts = {(p["a"], p["b"]): p["within_noise"] for p in summary["pairs"]}
    assert verdicts[("lr=0.001", "lr=0.002")] is True and verdicts[("lr=0.001", "lr=0.004")] is False
    assert {w["kind"] for w in summary["warnings"] if w["run"] == "leaky"} == {"overfit", "leakage"}
    lr = json.loads((out / "lr_recommendation.json").read_text())["recommendations"][0]
    assert lr["best_lr"] == pytest.approx(1e-3) and lr["within_noise"] == pytest.approx([1e-3, 2e-3])
    page = result.files["html"].read_text()
    assert "within noise" in page and "val windows share a 32-token span" in page
    assert page.count("data:image/png;base64,") == 4          # curves, best/final, accuracy, lr
    csv_rows = read_csv(out / "table.csv")
    assert len(csv_rows) == 10 and csv_rows[0]["group"] == "lr=0.001"


def test_report_errors_are_one_line_user_errors(tmp_path):
    make_run(tmp_path, "a")
    with pytest.raises(UserError, match="val/nope"):
        build_report([tmp_path / "a"], tmp_path / "rep", metric="val/nope")
    with pytest.raises(UserError, match="no such file"):
        build_report([tmp_path / "nope"], tmp_path / "rep")


def test_a_report_imports_neither_torch_nor_the_trainer(tmp_path):
    make_run(tmp_path, "a")
    code = f"""
import sys
import blueberry.report.build, blueberry.report.load, blueberry.report.analyse, blueberry.report.wandb_report
assert "matplotlib" not in sys.modules, "matplotlib imported at module level"
from blueberry.report.build import build_report
build_report([{str(tmp_path / 'a')!r}], {str(tmp_path / 'rep')!r})
bad = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "blueberry.train"))]
assert not bad, bad
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_load_wandb_fails_fast_offline_and_converts_api_runs():
    with pytest.raises(UserError, match="WANDB_MODE=offline"):   # decided before any network call
        load_wandb("me/proj", sweep="abc123")
    api_run = SimpleNamespace(
        id="r1", name="lm-tiny-x", state="finished", url="https://wandb.ai/me/proj/runs/r1", sweep=None,
        config={"task": "lm", "lr": 1e-3, "max_steps": 10, "_wandb": {}},
        summary={"val/loss_best": 3.1, "best_step": 5, "status": "finished", "params/total": 100, "data/leak_fraction": 0.0})
    history = [{"_step": 0, "val/loss": 4.0, "time": 1.0}, {"_step": 5, "val/loss": 3.1, "time": 2.0},
               {"_step": 10, "train/loss": 3.0, "lr": 1e-4, "tokens_seen": 640, "epochs": 0.1, "time": 3.0},
               {"_step": 10, "val/loss": 3.3, "time": 3.1}]
    run = run_from_wandb(api_run, history)
    assert run.config == {"task": "lm", "lr": 1e-3, "max_steps": 10} and run.path is None
    assert run.summary["best"] == {"metric": "val/loss", "value": 3.1, "step": 5}
    assert run.summary["params"] == {"total": 100} and run.summary["tokens_seen"] == 640
    assert [r["step"] for r in run.rows] == [0, 5, 10, 10] and run.summary["step"] == 10
    assert run.summary["wall_time_s"] == 3.1
    # a run that logged no `time` rows: the wall time is W&B's own _runtime
    api_run.summary["_runtime"] = 42.0
    untimed = run_from_wandb(api_run, [{k: v for k, v in h.items() if k != "time"} for h in history])
    assert untimed.summary["wall_time_s"] == 42.0


# --- the commands: `blueberry report`, `report wandb-report`, and the report `sweep local` writes ---

def data_sources(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)


def test_sweep_local_ends_with_a_self_contained_html_report(real_sweep):
    import base64

    report = real_sweep / "report"
    said = (real_sweep.parent / "sweep-local.out").read_text()
    assert f"report written to {Path('sw') / 'report' / 'report.html'}" in said
    page = (report / "report.html").read_text()
    sources = data_sources(page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)   # 4 comparison + 2 runs
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in sources)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert {r["name"] for r in read_csv(report / "table.csv")} == {"t0000", "t0001"}
    assert json.loads((report / "summary.json").read_text())["metric"]["name"] == "val/loss_best"
    assert json.loads((report / "lr_recommendation.json").read_text())["recommendations"][0]["param"] == "lr"


def test_report_command_on_a_real_sweep(real_sweep, tmp_path):
    res = run_cli("report", str(real_sweep), "--out", "rep", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(tmp_path / "rep" / "table.csv")
    lines = res.stdout.splitlines()
    shown = [next(i for i, line in enumerate(lines) if f"│{r['name']} " in line) for r in rows]
    assert shown == sorted(shown)                                    # printed in the CSV's order, best first
    for r, i in zip(rows, shown):
        cells = [c.strip() for c in lines[i].split("│")]
        assert fmt(float(r["lr"])) in cells and fmt(float(r["best"])) in cells and fmt(float(r["final"])) in cells
    assert "val/loss_best" in res.stdout and "no seed repeats" in res.stdout and "lr: best" in res.stdout
    assert f"report written to {Path('rep') / 'report.html'}" in res.stdout
    for name in ("table.json", "summary.json", "lr_recommendation.json"):
        assert json.loads((tmp_path / "rep" / name).read_text())
    assert (tmp_path / "rep" / "plots" / "runs" / "t0001.png").read_bytes().startswith(PNG)
    assert data_sources((tmp_path / "rep" / "report.html").read_text())


def test_report_command_bad_input_is_one_line_and_exit_2(real_sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    for args, said in ((["nope"], "nope: no such file or directory"),
                       (["empty"], "empty: holds no run dir"),
                       ([str(real_sweep), "--metric", "val/nope", "--out", "rep"], "metric='val/nope': no run logged it"),
                       ([str(real_sweep), "--sweep", "abc"], "use them with --wandb"),
                       (["--wandb", "me/proj"], "WANDB_MODE=offline"),
                       ([], "give run dirs")):
        res = run_cli("report", *args, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and said in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = run_cli("report", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "[PATH]..." in res.stdout and "--no-per-run-figures" in res.stdout
    assert "wandb-report" in res.stdout


def walk(obj):
    if isinstance(obj, dict):
        yield obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for x in obj:
            yield from walk(x)


def test_wandb_report_offline_writes_a_spec_with_its_four_kinds_of_panel(tmp_path):
    res = run_cli("report", "wandb-report", "--project", "proj", "--sweep", "abc123", "--param", "lr",
                  "--param", "optimizer", "--out", "spec.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "W&B report not saved" in res.stdout and "spec.json" in res.stdout
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert (spec["project"], spec["sweep"], spec["metric"], spec["params"]) == ("proj", "abc123", "val/loss",
                                                                                ["lr", "optimizer"])
    panels: dict[str, list[dict]] = {}
    for d in walk(spec["report"]):
        if "viewType" in d:
            panels.setdefault(d["viewType"], []).append(d["config"])
    assert set(panels) == {"Run History Line Plot", "Parallel Coordinates Plot", "Parameter Importance", "Run Comparer"}
    assert {(tuple(c["metrics"]), c["xAxis"]) for c in panels["Run History Line Plot"]} >= \
        {(("val/loss",), "_step"), (("val/loss",), "_absolute_runtime")}
    (parallel,) = panels["Parallel Coordinates Plot"]
    assert [c["accessor"] for c in parallel["columns"]] == ["config:lr.value", "config:optimizer.value",
                                                            "summary:val/loss"]
    assert [c["targetKey"] for c in panels["Parameter Importance"]] == ["val/loss"]
    assert len(panels["Run Comparer"]) == 1
    assert any(d.get("value") == "abc123" for d in walk(spec["report"]))     # the run sets keep the sweep's runs
    res = run_cli("report", "wandb-report", "--project", "me/proj", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "entity separately" in res.stderr


NO_RUN_DIR_SWEEP = """method: grid
metric: {name: val/loss, goal: minimize}
parameters:
  x: {values: [1]}
command: ["${env}", "${interpreter}", "-c", "pass", "${args}"]
"""


def test_a_failed_sweep_report_is_a_warning_not_the_sweeps_exit_code(tmp_path):
    (tmp_path / "s.yaml").write_text(NO_RUN_DIR_SWEEP)     # the trial succeeds but writes no run dir
    res = run_cli("sweep", "local", "s.yaml", "--dir", "sw", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    said = [line for line in res.stderr.splitlines() if "report" in line]
    assert len(said) == 1 and said[0].startswith("warning: sweep report not written (") and "no run dir" in said[0]
    assert "blueberry report sw" in said[0] and not (tmp_path / "sw" / "report").exists()


def test_the_sweep_report_is_left_to_the_runner_that_ends_last(tmp_path, capsys):
    from blueberry.cli import report_sweep
    from blueberry.sweep.state import SweepDir

    state = SweepDir.open(tmp_path / "sw", yaml.safe_load(NO_RUN_DIR_SWEEP), name="sw", overrides=[], seed=0)
    assert state.claim() is not None          # another runner's trial, its heartbeat fresh
    report_sweep(state)
    assert "1 trial(s) still running in another runner" in capsys.readouterr().err
    assert not (tmp_path / "sw" / "report").exists()


def test_sweeps_with_different_metrics_need_metric_to_be_reported_together(real_sweep, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(real_sweep, other, ignore=shutil.ignore_patterns("report"))
    (other / "sweep.yaml").write_text((other / "sweep.yaml").read_text().replace("val/loss_best", "val/loss"))
    with pytest.raises(UserError, match="optimise different metrics"):
        build_report([real_sweep, other], tmp_path / "a")
    result = build_report([real_sweep, other], tmp_path / "b", metric="val/loss")
    assert result.analysis.metric.name == "val/loss" and len(result.runs) == 4
    assert {r.name.split("/")[0] for r in result.runs} == {real_sweep.name, "other"}
