"""The checkpoint component part by part: the manifest check (every way a file can be wrong), the
atomic replacement of a folder of the same step, rotation, `best`, and the Checkpointer itself on
one process (synchronous and asynchronous saves, the same state back, a step saved once)."""

import json
import os
from pathlib import Path

import pytest

from blueberry import rundir
from blueberry.train.checkpoint import layout
from blueberry.train.checkpoint.manifest import MANIFEST, add_to_manifest, damage, write_manifest


def _folder(root: Path, step: int, files: dict[str, bytes]) -> Path:
    ckpt = layout.step_dir(root, step)
    for name, data in files.items():
        (ckpt / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / name).write_bytes(data)
    write_manifest(ckpt, step)
    return ckpt


FILES = {"model.safetensors": b"w" * 1000, "optimizer.bin": b"o" * 500, "random_states_0.pkl": b"r" * 10}


def test_the_manifest_finds_every_kind_of_damage(tmp_path):
    ckpt = _folder(tmp_path, 4, FILES)
    assert damage(ckpt) is None and damage(ckpt, model_only=True) is None
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest["step"] == 4 and set(manifest["files"]) == set(FILES)

    # Same size, one byte changed: only the SHA-256 can see it.
    (ckpt / "optimizer.bin").write_bytes(b"o" * 499 + b"x")
    assert damage(ckpt) == f"{ckpt / 'optimizer.bin'}: checksum differs from the one written with it (damaged)"
    assert damage(ckpt, model_only=True) is None            # evaluate reads only the weights
    (ckpt / "optimizer.bin").write_bytes(b"o" * 500)
    (ckpt / "model.safetensors").write_bytes(b"w" * 999)
    assert damage(ckpt) == f"{ckpt / 'model.safetensors'}: 999 bytes, 1000 were written (truncated or damaged)"
    assert damage(ckpt, model_only=True) is not None
    (ckpt / "model.safetensors").unlink()
    assert damage(ckpt) == f"{ckpt / 'model.safetensors'}: missing"
    (ckpt / "model.safetensors").write_bytes(b"w" * 1000)
    assert damage(ckpt) is None

    # Weights a reader would load that the manifest does not list (added later, never checked).
    (ckpt / "pytorch_model_fsdp_0").mkdir()
    (ckpt / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"s")
    assert damage(ckpt) == f"{ckpt / 'pytorch_model_fsdp_0' / '__0_0.distcp'}: not in {MANIFEST} (written after " \
                           "the checkpoint, and never checked)"
    add_to_manifest(ckpt, "pytorch_model_fsdp_0/__0_0.distcp", ckpt / "pytorch_model_fsdp_0" / "__0_0.distcp")
    assert damage(ckpt) is None
    (ckpt / "notes.txt").write_text("a user's note is not a weight")
    assert damage(ckpt) is None

    (ckpt / MANIFEST).write_text("{not json")
    assert damage(ckpt) == f"{ckpt / MANIFEST}: unreadable"
    (ckpt / MANIFEST).write_text('{"files": [1, 2]}')
    assert damage(ckpt) == f"{ckpt / MANIFEST}: unreadable"
    import shutil

    shutil.rmtree(ckpt / "pytorch_model_fsdp_0")
    (ckpt / MANIFEST).unlink()   # a checkpoint of a blueberry before manifests: its weights suffice
    assert damage(ckpt) is None
    (ckpt / "model.safetensors").unlink()
    assert damage(ckpt) == f"{ckpt}: no model weights and no {MANIFEST}"
    assert damage(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such checkpoint folder"


def test_a_consolidated_copy_is_listed_and_checked_but_optional(tmp_path):
    ckpt = _folder(tmp_path, 2, {"dcp/__0_0.distcp": b"d" * 300, "dcp/.metadata": b"m" * 20, "scheduler.bin": b"s"})
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(b"c" * 64)
    add_to_manifest(ckpt, layout.CONSOLIDATED, copy)   # listed before it is renamed into place
    assert damage(ckpt) is None                         # listed but not there yet: a sharded checkpoint needs none
    os.replace(copy, ckpt / layout.CONSOLIDATED)
    assert damage(ckpt) is None
    (ckpt / layout.CONSOLIDATED).write_bytes(b"c" * 63 + b"!")
    assert damage(ckpt, model_only=True) == f"{ckpt / layout.CONSOLIDATED}: checksum differs from the one " \
                                            "written with it (damaged)"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_publish_replaces_a_folder_of_the_same_step_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(layout, "_exchange", lambda a, b: False)
    old = _folder(tmp_path, 6, {"model.safetensors": b"damaged"})
    new = layout.incomplete_dir(tmp_path, 6)
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"fresh")
    layout.publish(new, old)
    assert (old / "model.safetensors").read_bytes() == b"fresh" and not new.exists()
    assert sorted(p.name for p in old.parent.iterdir()) == ["step-0000006"]   # nothing set aside is left
    # nothing there yet: a plain rename
    other = layout.incomplete_dir(tmp_path, 8)
    other.mkdir()
    layout.publish(other, layout.step_dir(tmp_path, 8))
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [6, 8]


def test_rotation_keeps_the_newest_complete_and_the_best(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _folder(tmp_path, step, {"model.safetensors": b"w"})
    layout.incomplete_dir(tmp_path, 6).mkdir()               # a save in flight is not a checkpoint yet
    layout.point_best(tmp_path, layout.step_dir(tmp_path, 2))
    removed = layout.rotate(tmp_path, keep_last=2)
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [2, 4, 5]
    assert sorted(p.name for p in removed) == ["step-0000001", "step-0000003"]
    assert layout.incomplete_dir(tmp_path, 6).is_dir()
    assert layout.best_checkpoint(tmp_path) == layout.step_dir(tmp_path, 2).resolve()
    layout.point_best(tmp_path, None)
    assert layout.best_checkpoint(tmp_path) is None
    layout.rotate(tmp_path, keep_last=1)
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [5]
    assert layout.remove_newer(tmp_path, 4) == [layout.step_dir(tmp_path, 5)] and not rundir.checkpoints(tmp_path)
    layout.remove_incomplete(tmp_path)
    assert not list((tmp_path / rundir.CHECKPOINTS).iterdir())


def test_a_kill_while_a_checkpoint_is_deleted_never_leaves_half_of_it_under_its_name(tmp_path, monkeypatch):
    """Rotation (and a resume's removal of newer checkpoints) renames the folder away before deleting it:
    a kill in the middle of the delete leaves no damaged step-N for a resume to trip over."""
    import shutil

    for step in (1, 2, 3):
        _folder(tmp_path, step, FILES)

    def killed_half_way(path, ignore_errors=False):
        next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
        raise KeyboardInterrupt

    from types import SimpleNamespace

    monkeypatch.setattr(layout, "shutil", SimpleNamespace(rmtree=killed_half_way))
    with pytest.raises(KeyboardInterrupt):
        layout.rotate(tmp_path, keep_last=2)
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [2, 3]          # step 1 is gone as a checkpoint
    assert all(damage(p) is None for _, p in rundir.checkpoints(tmp_path))
    monkeypatch.setattr(layout, "shutil", shutil)
    layout.remove_incomplete(tmp_path)                                      # the next run cleans the rest
    assert sorted(p.name for p in (tmp_path / rundir.CHECKPOINTS).iterdir()) == ["step-0000002", "step-0000003"]


# --- the Checkpointer on one process ---------------------------------------------------------------

def _training(tmp_path, async_save: bool, seed: int = 0):
    """A prepared tiny model, AdamW, a scheduler and a TrainerState, as the trainer registers them."""
    import torch
    from accelerate import Accelerator

    from blueberry.train.checkpoint import TrainerState
    from blueberry.train.checkpoint.manager import Checkpointer

    torch.manual_seed(seed)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model, optimizer = acc.prepare(model, optimizer)
    state = TrainerState()
    acc.register_for_checkpointing(scheduler, state)
    saved = []
    checkpoints = Checkpointer(acc, tmp_path, state, keep_last=2, async_save=async_save,
                               on_saved=lambda ckpt, step, best: saved.append((ckpt.name, step, best)))
    return acc, model, optimizer, scheduler, state, checkpoints, saved


def _step(model, optimizer, scheduler, state):
    import torch

    loss = model(torch.randn(4, 8)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    state.step += 1
    return loss.item()


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_checkpoint_brings_back_the_exact_state_and_a_step_is_saved_once(tmp_path, async_save):
    import torch

    acc, model, optimizer, scheduler, state, checkpoints, saved = _training(tmp_path, async_save)
    checkpoints.save(0, best=True)   # before any step: the optimizer state must stay untouched
    assert not optimizer.optimizer.state
    for _ in range(3):
        _step(model, optimizer, scheduler, state)
    state.best_step = 3
    checkpoints.save(3, best=True)
    checkpoints.save(3)              # the same step again (the end of a run after its last eval): nothing new
    reference = [_step(model, optimizer, scheduler, state) for _ in range(3)]
    checkpoints.close()
    ckpt = layout.step_dir(tmp_path, 3)
    assert damage(ckpt) is None and (ckpt / layout.DCP_DIR).is_dir() == async_save
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [0, 3]
    assert layout.best_checkpoint(tmp_path) == ckpt.resolve()
    assert saved == [("step-0000000", 0, True), ("step-0000003", 3, True)]   # the hook, once per complete save
    assert checkpoints.stats()["saves"] == 2 and checkpoints.stats()["async"] == async_save

    # A second "process": another seed's weights, loaded from step 3, continues exactly.
    acc2, model2, optimizer2, scheduler2, state2, checkpoints2, _ = _training(tmp_path, async_save=False, seed=1)
    checkpoints2.load(ckpt)
    assert state2.step == 3 and state2.best_step == 3
    # weights, AdamW moments, the schedule and the RNG (the batches drawn) all came back: bit for bit
    resumed = [_step(model2, optimizer2, scheduler2, state2) for _ in range(3)]
    checkpoints2.close()
    assert resumed == reference
    assert all(torch.equal(a, b) for a, b in zip(model2.parameters(), model.parameters()))


def test_load_makes_the_run_dir_true_to_the_resumed_timeline(tmp_path):
    acc, model, optimizer, scheduler, state, checkpoints, _ = _training(tmp_path, async_save=False)
    checkpoints.keep_last = 5
    for step in (2, 4, 6):
        while state.step < step:
            _step(model, optimizer, scheduler, state)
        state.best_step = min(step, 4)
        checkpoints.save(step, best=step <= 4)
    assert layout.best_checkpoint(tmp_path) == layout.step_dir(tmp_path, 4).resolve()
    (layout.step_dir(tmp_path, 4) / "model.safetensors").write_bytes(b"\0")   # the best is damaged
    layout.incomplete_dir(tmp_path, 8).mkdir()                                # a killed save's leftover
    state.step = 0
    checkpoints.load(layout.step_dir(tmp_path, 2))
    # step 6 belonged to the abandoned timeline; best (step 2's best_step is 2) points at step 2
    assert [s for s, _ in rundir.checkpoints(tmp_path)] == [2]
    assert layout.best_checkpoint(tmp_path) == layout.step_dir(tmp_path, 2).resolve()
    assert not layout.incomplete_dir(tmp_path, 8).exists()
    checkpoints.close()


# --- which checkpoint a command reads -----------------------------------------------------------

def test_pick_prefers_what_was_asked_and_falls_back_to_the_newest_intact(tmp_path, capsys):
    from blueberry.errors import UserError
    from blueberry.train.checkpoint.pick import find_resume_checkpoint, pick, pick_path, resolve_resume

    run = tmp_path / "r-20260101_000000"
    for step in (2, 4, 6):
        _folder(run, step, {"model.safetensors": b"w" * 10, "optimizer.bin": b"o" * 10})
    layout.point_best(run, layout.step_dir(run, 4))
    assert pick(run, "best") == layout.step_dir(run, 4).resolve()
    assert pick(run, "latest") == layout.step_dir(run, 6)
    assert resolve_resume(run) == (run.resolve(), layout.step_dir(run, 6).resolve())
    assert capsys.readouterr().err == ""

    (layout.step_dir(run, 6) / "optimizer.bin").write_bytes(b"x" * 10)   # damage outside the weights
    assert pick(run, "latest") == layout.step_dir(run, 6)                # evaluate reads weights only
    assert resolve_resume(run)[1] == layout.step_dir(run, 4).resolve()   # a resume needs everything
    assert "skipping a damaged checkpoint" in capsys.readouterr().err
    (layout.step_dir(run, 4) / "model.safetensors").write_bytes(b"x" * 10)
    assert pick(run, "best") == layout.step_dir(run, 6)
    err = capsys.readouterr().err
    assert f"best checkpoint is damaged: {layout.step_dir(run, 4).resolve() / 'model.safetensors'}" in err
    assert f"using the newest intact checkpoint instead: {layout.step_dir(run, 6)}" in err
    with pytest.raises(UserError, match="checksum differs"):
        pick(run, str(layout.step_dir(run, 4)))                          # named by the user: refused
    assert pick_path(layout.step_dir(run, 2)) == layout.step_dir(run, 2)
    with pytest.raises(UserError, match="checkpoint=oldest: use latest or best"):
        pick_path(run, "oldest")
    with pytest.raises(UserError, match="not a run dir"):
        pick_path(tmp_path)
    with pytest.raises(UserError, match=r"resume=.*step-0000004: .*checksum differs.*resume the run dir"):
        find_resume_checkpoint(str(layout.step_dir(run, 4)), str(tmp_path), "r")
    with pytest.raises(UserError, match=r"no checkpoint there \(no such folder\)"):
        find_resume_checkpoint(str(tmp_path / "nope"), str(tmp_path), "r")
    assert find_resume_checkpoint("auto", str(tmp_path), "r") == layout.step_dir(run, 2).resolve()
    capsys.readouterr()
    layout.point_best(run, layout.step_dir(run, 6))                      # the best is also the newest
    (layout.step_dir(run, 6) / "model.safetensors").write_bytes(b"x" * 10)
    assert pick(run, "best") == layout.step_dir(run, 2)
    assert capsys.readouterr().err.count("step-0000006/model.safetensors") == 1   # its damage said once


def test_resume_decisions_before_any_work(tmp_path, capsys):
    import dataclasses

    import yaml

    from blueberry.config import LMConfig
    from blueberry.errors import UserError
    from blueberry.train.resume import keep_global_batch, nothing_to_train

    run = tmp_path / "r"
    ckpt = _folder(run, 6, {"model.safetensors": b"w", "random_states_0.pkl": b"r", "random_states_1.pkl": b"r"})
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "lm", "batch_size": 4, "grad_accum": 2}))
    cfg = dataclasses.replace(LMConfig(), max_steps=6, batch_size=4, grad_accum=2)
    assert nothing_to_train(cfg, ckpt).startswith(f"nothing to train: {run} is at step 6 and max_steps=6;")
    assert "is at step 6 and stop_at_step=6;" in nothing_to_train(dataclasses.replace(cfg, max_steps=10, stop_at_step=6), ckpt)
    assert nothing_to_train(dataclasses.replace(cfg, epochs=0.5), ckpt) is None
    assert nothing_to_train(dataclasses.replace(cfg, max_steps=7), ckpt) is None
    assert nothing_to_train(dataclasses.replace(cfg, max_steps=5, epochs=2.0), ckpt) is None   # counted later
    with pytest.raises(UserError, match=r"max_steps=5: r is already at step 6 \(step-0000006\); give max_steps >= 6"):
        nothing_to_train(dataclasses.replace(cfg, max_steps=5), ckpt)

    # written by 2 processes with a global batch of 4 x 2 x 2 = 16
    assert keep_global_batch(cfg, ckpt, set(), world_size=2) is cfg
    one = keep_global_batch(cfg, ckpt, set(), world_size=1)
    assert one.grad_accum == 4 and "grad_accum 2 -> 4 keeps the global batch of 16" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"would train on 8: pass --grad_accum 4$"):
        keep_global_batch(cfg, ckpt, {"grad_accum"}, world_size=1)            # given, and it does not fit
    assert keep_global_batch(dataclasses.replace(cfg, grad_accum=4), ckpt, {"grad_accum"}, world_size=1).grad_accum == 4
    with pytest.raises(UserError, match=r"pass a batch_size and grad_accum with batch_size x grad_accum x 3 = 16"):
        keep_global_batch(cfg, ckpt, set(), world_size=3)
    assert keep_global_batch(dataclasses.replace(cfg, batch_size=2), ckpt, set(), world_size=4).grad_accum == 2


def test_consolidate_writes_one_file_of_the_dcp_weights_and_lists_it(tmp_path):
    import torch
    from safetensors.torch import load_file

    from blueberry.train.checkpoint.formats import consolidate, load_model_weights

    acc, model, optimizer, scheduler, state, checkpoints, _ = _training(tmp_path, async_save=True)
    _step(model, optimizer, scheduler, state)
    checkpoints.save(1)
    checkpoints.close()
    ckpt = layout.step_dir(tmp_path, 1)
    out = consolidate(ckpt)
    weights = load_file(str(out))
    assert set(weights) == set(model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert damage(ckpt) is None and layout.CONSOLIDATED in json.loads((ckpt / MANIFEST).read_text())["files"]
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    load_model_weights(fresh, ckpt)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("from a")
    (b / "x").write_text("from b")
    assert layout._exchange(a, b)                       # this kernel and libc have renameat2
    assert (a / "x").read_text() == "from b" and (b / "x").read_text() == "from a"
    assert not layout._exchange(a, tmp_path / "missing")   # the call fails: publish falls back
    assert layout.checkpoint_step(layout.step_dir(tmp_path, 12)) == 12
    assert layout.checkpoint_step(tmp_path / "best") is None and layout.checkpoint_step(a) is None


def test_every_way_pick_can_refuse_or_fall_back(tmp_path, capsys):
    from blueberry.errors import UserError
    from blueberry.train.checkpoint.pick import (find_resume_checkpoint, newest_intact, pick, pick_path,
                                                 resolve_resume)

    run = tmp_path / "r-20260101_000000"
    (run / rundir.CHECKPOINTS).mkdir(parents=True)
    with pytest.raises(UserError) as e:
        pick(run, "latest")
    assert str(e.value) == f"checkpoint=latest: {run} has no intact checkpoint"
    with pytest.raises(FileNotFoundError):
        resolve_resume(run)
    with pytest.raises(UserError) as e:
        find_resume_checkpoint(str(run), str(tmp_path), "r")
    assert str(e.value) == (f"resume={run}: no checkpoint there (no checkpoints/step-*); give a run dir with "
                            "checkpoints/step-*, a checkpoint dir, or auto")
    for step in (1, 2, 3):
        _folder(run, step, {"model.safetensors": b"w" * 10, "optimizer.bin": b"o" * 10})
    # no best (save_best=false): said, and the newest intact is used
    assert pick(run, "best") == layout.step_dir(run, 3)
    assert f"{run} has no best checkpoint (save_best=false?); using the newest intact one" in capsys.readouterr().err
    assert pick(run, "latest") == layout.step_dir(run, 3) and capsys.readouterr().err == ""
    # the newest two damaged: newest_intact skips each, saying why, in order
    for step in (2, 3):
        (layout.step_dir(run, step) / "model.safetensors").write_bytes(b"x" * 10)
    found, problems = newest_intact(run)
    assert found == layout.step_dir(run, 1) and len(problems) == 2
    assert problems[0].startswith(str(layout.step_dir(run, 3))) and problems[1].startswith(str(layout.step_dir(run, 2)))
    found, problems = newest_intact(run, skip=layout.step_dir(run, 3))
    assert found == layout.step_dir(run, 1) and len(problems) == 1      # the skipped one is not judged
    assert pick_path(run, "best") == layout.step_dir(run, 1)
    capsys.readouterr()
    (layout.step_dir(run, 1) / "model.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(UserError) as e:
        pick(run, "latest")
    assert str(e.value) == f"checkpoint=latest: {run} has no intact checkpoint (see above)"
    with pytest.raises(UserError) as e:
        find_resume_checkpoint(str(run), str(tmp_path), "r")
    assert "no checkpoint there (none is intact, see above)" in str(e.value)
    with pytest.raises(UserError) as e:
        find_resume_checkpoint("auto", str(tmp_path), "r")
    assert str(e.value).startswith(f"resume=auto: {run} has no intact checkpoint (see above); start a new run")
    with pytest.raises(UserError) as e:
        find_resume_checkpoint(str(tmp_path / "nope"), str(tmp_path), "r")
    assert "no checkpoint there (no such folder)" in str(e.value)
    # a folder named by the user: must hold weights; only its weights are checked for evaluate
    with pytest.raises(UserError) as e:
        pick(run, str(tmp_path))
    assert str(e.value) == f"checkpoint={tmp_path}: no model.safetensors there; use best, latest or a checkpoint dir"
    sharded = _folder(tmp_path / "s", 5, {"dcp/__0_0.distcp": b"d", "optimizer.bin": b"o"})
    (sharded / "optimizer.bin").write_bytes(b"x")
    assert pick(tmp_path / "s", str(sharded)) == sharded                # damage outside the weights: fine here
    with pytest.raises(UserError, match="resume the run dir"):           # ...but not for a resume
        find_resume_checkpoint(str(sharded), str(tmp_path), "s")
    assert pick_path(sharded) == sharded
    # a run dir resumed by name finds its newest intact checkpoint; a checkpoint dir named is itself
    assert resolve_resume(sharded)[1] == sharded.resolve()
    assert find_resume_checkpoint("auto", str(tmp_path), "nobody") is None


def test_a_save_replaces_a_folder_of_its_step_that_another_process_left(tmp_path):
    """E.g. a damaged step-N from a crashed process that resume could not remove: the new save takes its
    place whole, and `best` then points at an intact checkpoint."""
    acc, model, optimizer, scheduler, state, checkpoints, saved = _training(tmp_path, async_save=False)
    left = _folder(tmp_path, 1, {"model.safetensors": b"damaged" * 3})
    (left / "model.safetensors").write_bytes(b"x")
    layout.point_best(tmp_path, left)
    _step(model, optimizer, scheduler, state)
    checkpoints.save(1, best=True)
    checkpoints.close()
    assert damage(left) is None and (left / "optimizer.bin").is_file()     # the new checkpoint, whole
    assert layout.best_checkpoint(tmp_path) == left.resolve() and damage(layout.best_checkpoint(tmp_path)) is None
    assert saved == [("step-0000001", 1, True)]


def _sharded_head(mesh):
    """A layer whose weight is a DTensor that no FSDP manages, as expert-parallel experts under DDP are."""
    import torch
    from torch.distributed.tensor import DTensor, Shard

    class ShardedHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            full = torch.randn(4, 16)
            self.weight = torch.nn.Parameter(DTensor.from_local(full, mesh, [Shard(0)], run_check=False))

        def forward(self, x):
            return x @ self.weight.to_local().T

    return ShardedHead()


def test_dtensor_parameters_outside_fsdp_are_saved_in_the_dcp_layout_and_come_back_exactly(tmp_path):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from blueberry.train.checkpoint.formats import has_unmanaged_dtensors

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))

        def run(seed):
            acc, model, optimizer, scheduler, state, checkpoints, _ = _training(tmp_path, async_save=False, seed=seed)
            model[2] = _sharded_head(mesh)   # and the optimizer steps the new layer's weight
            optimizer.optimizer.param_groups[0]["params"] = list(model.parameters())
            return acc, model, optimizer, scheduler, state, checkpoints

        acc, model, optimizer, scheduler, state, checkpoints = run(0)
        assert has_unmanaged_dtensors(acc)
        for _ in range(2):
            _step(model, optimizer, scheduler, state)
        checkpoints.save(2)
        reference = [_step(model, optimizer, scheduler, state) for _ in range(2)]
        checkpoints.close()
        ckpt = layout.step_dir(tmp_path, 2)
        assert damage(ckpt) is None and (ckpt / layout.DCP_DIR / ".metadata").is_file()
        assert not (ckpt / "model.safetensors").exists()   # no unsharded weights: those are in dcp/
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "custom_checkpoint_1.pkl").is_file()

        acc2, model2, optimizer2, scheduler2, state2, checkpoints2 = run(1)
        checkpoints2.load(ckpt)
        assert state2.step == 2 and optimizer2.optimizer.state   # the AdamW moments came back
        assert [_step(model2, optimizer2, scheduler2, state2) for _ in range(2)] == reference
        checkpoints2.close()
        local = [getattr(p, "_local_tensor", p) for p in (*model.parameters(), *model2.parameters())]
        assert all(torch.equal(a, b) for a, b in zip(local[:3], local[3:]))
    finally:
        dist.destroy_process_group()
