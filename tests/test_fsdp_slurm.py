"""slurm/multinode.sbatch with PARALLEL=fsdp on the local one-node SLURM cluster: 2 FSDP2 ranks."""

from pathlib import Path

from blueberry import rundir
from conftest import TINY
from test_slurm import slurm_env, submit, wait_for   # noqa: F401  (slurm_env is a fixture)


def multinode_run(slurm_env: dict, tmp_path: Path, parallel: str, steps: int) -> tuple[str, Path]:
    """A finished `blueberry slurm submit multinode` job of 2 processes on one node under PARALLEL=parallel:
    (its log, its run dir)."""
    env = {**slurm_env, "PARALLEL": parallel}
    job = submit("multinode", *TINY, f"--max_steps={steps}", f"--eval_every={steps // 2}", cwd=tmp_path, env=env,
                 options=["--nodes=1", "--procs=2", "--time=00:10:00"])
    wait_for(job, env)
    log = (tmp_path / "logs" / f"bb-multinode-{job}.out").read_text()
    assert "1 nodes x 2 processes, rendezvous at" in log, log[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert rundir.read_summary(run)["status"] == "finished", log[-2000:]
    return log, run


def test_multinode_sbatch_with_fsdp(slurm_env, tmp_path):
    log, run = multinode_run(slurm_env, tmp_path, "fsdp", 4)
    assert log.count("; fsdp") == 1
    # Sharded: the checkpoint holds FSDP2's torch.distributed.checkpoint folders.
    assert (rundir.latest_checkpoint(run) / "pytorch_model_fsdp_0").is_dir(), log[-2000:]
