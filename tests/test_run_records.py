"""A run record is never silently lost or wrong, through the real CLI: a damaged newest checkpoint is
replaced (and `best` never points at damage), a resume with nothing to train writes nothing, every
file of a checkpoint is in its manifest, a changed split is named as the split, and an evaluation
metric that is not finite stops the run as diverged."""

import json
import math

from blueberry import rundir
from blueberry.train.checkpoint import damage, layout
from conftest import TINY, run_dirs, run_record
from probes import probes


def _steps(run):
    return [r["step"] for r in rundir.read_metrics(run) if "train/loss" in r]


def _corrupt_same_size(path):
    """Flip bytes in the middle: the size stays, only the SHA-256 can tell."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


def test_a_damaged_newest_checkpoint_is_replaced_and_best_never_points_at_damage(cli):
    res = cli("train", "lm", *TINY, "--max_steps=6", "--eval_every=2", "--save_every=2", "--keep_last=3",
              "--name=rep", "--wandb_mode=disabled")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    step6 = layout.step_dir(run, 6)
    assert layout.best_checkpoint(run) == step6.resolve()
    model = step6 / "model.safetensors"
    _corrupt_same_size(model)
    assert damage(step6) == f"{model}: checksum differs from the one written with it (damaged)"

    # The same budget again: it falls back to step 4, trains 5-6 and REPLACES the damaged step 6.
    res = cli("train", "lm", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    assert f"skipping a damaged checkpoint: {model}: checksum differs" in res.stderr
    assert f"removed step-0000006: newer than step-0000004" in res.stderr
    assert [s for s, _ in rundir.checkpoints(run)] == [2, 4, 6]
    assert all(damage(p) is None for _, p in rundir.checkpoints(run))
    best = layout.best_checkpoint(run)
    assert best is not None and damage(best) is None
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    summary = rundir.read_summary(run)
    assert summary["status"] == "finished" and summary["best"]["step"] == int(best.name.split("-")[1])
    assert not list((run / rundir.CHECKPOINTS).glob("*.incomplete"))


def test_a_resume_with_nothing_to_train_writes_nothing(cli):
    res = cli("train", "lm", *TINY, "--max_steps=3", "--eval_every=3", "--name=fin")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    before = run_record(run)
    wandb_parts = sorted((run / "wandb").glob("offline-run-*"))
    for extra in ([], ["--stop_at_step=2"], ["--max_steps=3", "--lr=0.5"]):
        res = cli("train", "lm", "--resume", str(run), *extra)
        assert res.returncode == 0, res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"blueberry: nothing to train: {run} is at step 3 and "), lines
        assert run_record(run) == before                       # config, summary, metrics, checkpoints untouched
        assert sorted((run / "wandb").glob("offline-run-*")) == wandb_parts   # no empty W&B part
    assert rundir.read_summary(run)["final"]                    # `final` kept its metrics
    # Below its step: refused, nothing written.
    res = cli("train", "lm", "--resume", str(run), "--max_steps=2")
    assert res.returncode == 2 and "max_steps=2: " in res.stderr and run_record(run) == before


@probes("async_save")
def test_every_file_of_a_checkpoint_is_in_its_manifest_consolidated_copy_included(cli):
    """Asynchronous saves write DCP shards (as FSDP2 does); `checkpoint consolidate` adds one
    model.safetensors, which the manifest then covers: damaged, it is named and skipped."""
    res = cli("train", "lm", *TINY, "--max_steps=4", "--eval_every=50", "--save_every=2", "--async_save=true",
              "--name=cons", "--wandb_mode=disabled")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    step4 = layout.step_dir(run, 4)
    assert (step4 / layout.DCP_DIR).is_dir() and not (step4 / layout.CONSOLIDATED).exists()
    res = cli("checkpoint", "consolidate", str(run))
    assert res.returncode == 0, res.stderr
    copy = step4 / layout.CONSOLIDATED
    assert res.stdout.strip() == f"wrote {copy}"
    listed = json.loads((step4 / "manifest.json").read_text())["files"]
    assert listed[layout.CONSOLIDATED]["size"] == copy.stat().st_size and damage(step4) is None

    _corrupt_same_size(copy)
    res = cli("evaluate", str(run), "--checkpoint", "latest")
    assert res.returncode == 0, res.stderr
    assert f"latest checkpoint is damaged: {copy}: checksum differs" in res.stderr
    assert json.loads((run / "eval-val.json").read_text())["checkpoint"] == "step-0000002"
    res = cli("train", "lm", "--resume", str(run), "--max_steps=6", "--async_save=false")
    assert res.returncode == 0, res.stderr
    assert f"skipping a damaged checkpoint: {copy}: checksum differs" in res.stderr
    assert _steps(run) == [1, 2, 3, 4, 5, 6]   # resumed at step 2: 3 and 4 re-run once
    step6 = layout.step_dir(run, 6)            # async_save=false: Accelerate's own layout again
    assert (step6 / layout.CONSOLIDATED).is_file() and not (step6 / layout.DCP_DIR).exists()


def test_a_new_split_is_named_as_the_split_and_can_be_allowed(cli):
    res = cli("train", "lm", *TINY, "--max_steps=4", "--eval_every=50", "--stop_at_step=2", "--name=split")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    before = run_record(run)
    # The split changes, and with it the bpe tokenizer trained on the train split: both are said, the
    # corpus (the data files) is not blamed.
    res = cli("train", "lm", "--resume", str(run), "--val_fraction=0.2", "--allow-changed", "val_fraction")
    assert res.returncode == 2
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "the tokenizer differs from what it trained on: the tokenizer's vocabulary differs" in line
    assert "(fingerprint tokenizer " in line and "the documents" not in line   # the corpus is not blamed
    assert line.endswith("pass --allow-changed val_fraction,tokenizer to continue on purpose")
    assert run_record(run) == before
    res = cli("train", "lm", "--resume", str(run), "--val_fraction=0.2", "--allow-changed", "val_fraction,tokenizer")
    assert res.returncode == 0, res.stderr
    assert "the split and tokenizer differ from what step-0000002 trained on (allowed)" in res.stderr
    (change,) = rundir.read_summary(run)["allowed_changes"]
    assert change["fields"]["val_fraction"] == [0.05, 0.2]


def test_a_corpus_edit_that_shrinks_the_vocabulary_is_a_changed_corpus(cli):
    corpus = cli.cwd / "corpus.txt"
    words = [f"w{i}x{i * 7 % 13}" for i in range(400)]
    corpus.write_text("\n\n".join(" ".join(words[(d * 37 + k) % 400] for k in range(80)) for d in range(200)))
    res = cli("train", "lm", *TINY, f"--data={corpus}", "--max_steps=4", "--eval_every=50", "--stop_at_step=2",
              "--dedup=off")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    corpus.write_text("\n\n".join("ab ba " * 40 for _ in range(200)))   # a BPE of fewer tokens: another vocab size
    res = cli("train", "lm", "--resume", str(run))
    assert res.returncode == 2
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "the corpus and tokenizer differ from what it trained on: the documents" in line
    assert "size mismatch" not in line and line.endswith("--allow-changed data,tokenizer to continue on purpose")


def test_a_non_finite_evaluation_stops_the_run_as_diverged(tmp_path, monkeypatch):
    """The model stays finite, only the evaluation says nan: the run must not go on as if it were fine."""
    from blueberry.config import LMConfig, resolve
    from blueberry.tasks.lm import LMTask
    from blueberry.train.trainer import train

    class NanAtStep2(LMTask):
        def evaluate(self, model, data, cfg, accelerator, split="val", in_training=False):
            metrics, figures = super().evaluate(model, data, cfg, accelerator, split, in_training)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                metrics["val/loss"] = math.nan
            return metrics, figures

    monkeypatch.chdir(tmp_path)
    args = dict(arg.removeprefix("--").split("=") for arg in TINY)
    cfg = resolve(LMConfig, cli_values={**args, "max_steps": 6, "eval_every": 2, "wandb_mode": "disabled",
                                        "out_dir": str(tmp_path / "runs")})
    run, code = train(cfg, NanAtStep2())
    summary = rundir.read_summary(run)
    assert code == 3 and summary["status"] == "diverged"
    assert summary["reason"] == "val/loss is nan at step 2" and summary["step"] == 2
    assert [s for s, _ in rundir.checkpoints(run)] == [0]   # the best of step 0, nothing after the nan
