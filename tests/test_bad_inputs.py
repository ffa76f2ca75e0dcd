"""Bad input, through the real CLI: exit code 2 (or the code in the row), ONE error line naming the
field or file, no traceback, and nothing written: no new run dir, and a run dir named in the command
is byte-for-byte what it was (config.yaml, summary.json, metrics.jsonl, checkpoints).

To add a case, add a row to CASES: an id, the arguments after `blueberry`, the exit code, a
piece of the error line, and optionally the environment variables the command runs with. In both, {run} = a finished tiny lm run, {cwd} = the test's folder,
{file} = a plain file there, {repo} = this checkout. Files a case needs are made by SETUP
(name -> text) before any case runs.
"""

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, run_cli, run_dirs, run_record

CASES = [
    # (id, argv, exit code, substring of the one error line)
    ("alias-learning_rate", ["train", "lm", "--learning_rate", "3"], 2, "Did you mean '--lr'?"),
    ("alias-in-config", ["train", "lm", "--config", "{cwd}/alias.yaml"], 2, "unknown field 'num_layers' (blueberry calls it n_layers)"),
    ("yaml-line-column", ["train", "lm", "--config", "{cwd}/broken.yaml"], 2, "broken.yaml: not valid YAML (line 2, column 5"),
    ("config-missing", ["train", "lm", "--config", "{cwd}/nope.yaml"], 2, "nope.yaml: config file not found"),
    ("budget-both-explicit", ["train", "scanline", "--max_steps", "5", "--epochs", "2"], 2, "max_steps=5 and epochs=2.0 both set the budget"),
    ("recipe-not-mapping", ["train", "lm", "--recipe", "[1, 2"], 2, "recipe='[1, 2': must be a mapping"),
    ("out_dir-on-proc", ["train", "lm", *TINY, "--out_dir", "/proc/blueberry-runs"], 2, "out_dir=/proc/blueberry-runs: cannot write there"),
    ("out_dir-under-file", ["train", "lm", *TINY, "--out_dir", "{file}/runs"], 2, "cannot write there (a file is in the way"),
    ("cache_dir-on-proc", ["train", "lm", *TINY, "--max_steps", "1", "--cache_dir", "/proc/blueberry-cache"], 2, "cache_dir=/proc/blueberry-cache: cannot write there"),
    ("allow-changed-without-resume", ["train", "lm", "--allow-changed", "d_model"], 2, "--allow-changed: only applies with --resume"),
    ("resume-changes-model", ["train", "lm", "--resume", "{run}", "--d_model", "64"], 2, "d_model 32 -> 64 would change what"),
    ("resume-changes-split", ["train", "lm", "--resume", "{run}", "--val_fraction", "0.2", "--data_seed", "1"], 2, "val_fraction 0.05 -> 0.2, data_seed 0 -> 1"),
    ("resume-changes-tokenizer", ["train", "lm", "--resume", "{run}", "--tokenizer", "bpe:400"], 2, "tokenizer 'bpe:300' -> 'bpe:400'"),
    ("resume-allowed-but-cannot-load", ["train", "lm", "--resume", "{run}", "--d_model", "64", "--allow-changed", "d_model", "--max_steps", "6"], 2, "its model does not fit this config (size mismatch"),
    ("resume-allow-non-defining", ["train", "lm", "--resume", "{run}", "--allow-changed", "lr"], 2, "--allow-changed lr: not a field that defines the run"),
    ("resume-other-task", ["train", "scanline", "--resume", "{run}"], 2, "is a lm run, not scanline; resume it with: blueberry train lm --resume"),
    ("resume-missing-step-dir", ["train", "lm", "--resume", "{run}/checkpoints/step-0000099"], 2, "no checkpoint there (no such folder)"),
    ("resume-no-checkpoints", ["train", "lm", "--resume", "{cwd}"], 2, "no checkpoint there (no checkpoints/step-*)"),
    ("evaluate-split-lm-has-no-test", ["evaluate", "{run}", "--split", "test"], 2, "split=test: lm runs have val"),
    ("evaluate-not-a-checkpoint", ["evaluate", "{run}", "--checkpoint", "{cwd}"], 2, "no model.safetensors there"),
    ("evaluate-not-a-run-dir", ["evaluate", "{cwd}/nothing"], 2, "not a run dir"),
    ("slurm-typo-in-trainer-option", ["slurm", "submit", "train", "--dry-run", "--", "--lrr", "1"], 2, "No such option '--lrr'"),
    ("slurm-bad-trainer-value", ["slurm", "submit", "train", "--dry-run", "--", "--max_steps", "-5"], 2, "max_steps=-5: must be >= 1"),
    ("sweep-dir-unwritable", ["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--dir", "{file}/sweep"], 2, "--dir={file}: cannot write there (a file is in the way"),
    ("report-out-unwritable", ["report", "{run}", "--out", "/proc/blueberry-report"], 2, "--out=/proc/blueberry-report: cannot write there"),
    ("name-with-a-slash", ["train", "lm", *TINY, "--name", "a/b"], 2, "name='a/b': must be one folder name"),
    ("best-metric-misspelled", ["train", "lm", *TINY, "--best_metric", "val/los"], 2, "best_metric='val/los': not a metric `blueberry train lm` evaluates (did you mean val/loss?)"),
    ("best-metric-not-evaluated", ["train", "scanline", "--best_metric", "train/loss"], 2, "best_metric='train/loss': not a metric"),
    ("progress-interval-not-a-number", ["train", "lm", *TINY, "--max_steps", "1"], 2, "BLUEBERRY_PROGRESS_S='abc': must be a number of seconds >= 0", {"BLUEBERRY_PROGRESS_S": "abc"}),
    ("scanline-cache_dir-on-proc", ["train", "scanline", "--cache_dir", "/proc/blueberry-cache"], 2, "cache_dir=/proc/blueberry-cache: cannot write there"),
    ("slurm-time-not-a-time", ["slurm", "submit", "train", "--dry-run", "--time", "abc"], 2, "--time=abc: not a SLURM time"),
    ("slurm-sbatch-time-not-a-time", ["slurm", "submit", "train", "--dry-run", "--sbatch", "time=1:2:3:4"], 2, "--time=1:2:3:4: not a SLURM time"),
    ("sweep-validate-ends-with-its-error", ["sweep", "validate", "{cwd}/lr-alias-sweep.yaml"], 2, "parameters.learning_rate: not an option of 'blueberry train lm' (blueberry calls it lr)"),
    ("evaluate-refused-makes-no-out", ["evaluate", "{run}", "--split", "bogus", "--out", "{cwd}/new-eval"], 2, "split=bogus: lm runs have val"),
    ("report-transfer-refused-makes-no-out", ["report", "transfer", "{run}", "--out", "{cwd}/new-report"], 2, "report transfer: the runs do not vary lr or muon_lr"),
    # checked when the config is resolved, so a job is refused at submit, not in the queue
    ("slurm-scanline-class-weights-count", ["slurm", "submit", "train", "--dry-run", "--task", "scanline", "--", "--class_weights", "1,2"], 2, "class_weights='1,2': give 4 non-negative numbers"),
    ("slurm-scanline-class-shares-count", ["slurm", "submit", "train", "--dry-run", "--task", "scanline", "--", "--class_shares", "1,2"], 2, "class_shares='1,2': the synthetic data has 4 classes"),
    ("slurm-bpe-too-small", ["slurm", "submit", "train", "--dry-run", "--", "--tokenizer", "bpe:100"], 2, "tokenizer=bpe:100: needs at least 258 tokens"),
    ("slurm-bpe-zero", ["slurm", "submit", "train", "--dry-run", "--", "--tokenizer", "bpe:0"], 2, "tokenizer=bpe:0: needs at least 258 tokens"),
    ("resume-below-its-step", ["train", "lm", "--resume", "{run}", "--max_steps", "2"], 2, "max_steps=2: {run.name} is already at step 3 (step-0000003); give max_steps >= 3"),
    ("resume-in-more-processes-changes-the-batch", ["train", "lm", "--resume", "{run}", "--max_steps", "6"], 2, "step-0000003 was written by 1 process(es) with a global batch of 4 (batch_size 4 x grad_accum 1 x 1); 2 process(es) with batch_size 4 x grad_accum 1 would train on 8: pass a batch_size and grad_accum with batch_size x grad_accum x 2 = 4", {"WORLD_SIZE": "2"}),
]

SETUP = {
    "alias.yaml": "num_layers: 2\n",
    "broken.yaml": "lr: 0.1\n bad: [\n",
    "a-file": "not a folder\n",
    # no project: a warning line too, which must come before the error
    "lr-alias-sweep.yaml": "method: grid\nmetric: {name: val/loss, goal: minimize}\nparameters:\n  learning_rate: "
                           "{values: [0.1]}\ncommand: [blueberry, train, lm, '${args}']\n",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bad-inputs")
    res = run_cli("train", "lm", *TINY, "--max_steps=3", "--eval_every=3", "--name=done", cwd=cwd)
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cwd / "runs")
    for name, text in SETUP.items():
        (cwd / name).write_text(text)
    return cwd, run


@pytest.mark.parametrize("argv, code, message, env", [(*c[1:4], c[4] if len(c) > 4 else {}) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(finished, argv, code, message, env):
    cwd, run = finished
    before = run_record(run)
    entries = sorted(p.name for p in cwd.iterdir())
    where = dict(run=run, cwd=cwd, file=cwd / "a-file", repo=Path(__file__).resolve().parents[1])
    args = [a.format(**where) for a in argv]
    message = message.format(**where)
    res = run_cli(*args, cwd=cwd, env=env)

    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]   # the error ends the output
    assert run_record(run) == before                        # the run record is untouched
    assert sorted(p.name for p in cwd.iterdir()) == entries   # no new run dir, report or file
    assert run_dirs(cwd / "runs") == [run]


def test_report_skips_a_damaged_run_and_bad_rows_and_reports_the_rest(finished, tmp_path):
    _, run = finished
    good, bad_rows, bad_yaml = (tmp_path / "runs" / n for n in ("good", "rows", "yaml"))
    for dst in (good, bad_rows, bad_yaml):
        shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    (bad_yaml / "config.yaml").write_text("lr: [1,\n")
    with open(bad_rows / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n{"step": "x"}\n{"step": 2, "train/loss": 1.0}\n')
    res = run_cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--no-per-run-figures",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    skipped = json.loads((tmp_path / "report" / "summary.json").read_text())["skipped"]
    assert len(skipped) == 2, skipped
    assert skipped[0].startswith(f"{bad_rows / 'metrics.jsonl'}: 2 malformed row(s) left out (line 6, 7")
    assert skipped[1].startswith(f"{bad_yaml}: run left out") and "not valid YAML (line 2, column 1" in skipped[1]
    rows = json.loads((tmp_path / "report" / "table.json").read_text())["rows"]
    assert sorted(r["name"] for r in rows) == ["good", "rows"]
    # the good rows of the damaged metrics file still count: step 2's row is there, the bad ones not
    assert next(r for r in rows if r["name"] == "rows")["steps"] == 3


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    """Refused after the out_dir check (the data path is checked with the data): out_dir was only
    probed, not created, so the working folder stays empty."""
    res = run_cli("train", "lm", *TINY, "--data", "/nonexistent/data.txt", "--out_dir", "runs/deeper", cwd=tmp_path)
    assert res.returncode == 2 and "data=/nonexistent/data.txt: no such file or folder" in res.stderr
    assert list(tmp_path.iterdir()) == []
