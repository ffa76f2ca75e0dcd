"""slurm/multinode.sbatch with PARALLEL=ep on the local one-node SLURM cluster: 2 expert-parallel ranks."""

from blueberry import rundir
from conftest import TINY
from test_slurm import slurm_env, submit, wait_for   # noqa: F401  (slurm_env is a fixture)


def test_multinode_sbatch_with_expert_parallel(slurm_env, tmp_path):
    env = {**slurm_env, "PARALLEL": "ep"}
    job = submit("multinode", *TINY, "--max_steps=2", "--eval_every=2", cwd=tmp_path, env=env,
                 options=["--nodes=1", "--procs=2", "--time=00:10:00"])
    wait_for(job, env)
    log = (tmp_path / "logs" / f"bb-multinode-{job}.out").read_text()
    # EP defaults to the processes of a node, so the token all-to-alls stay inside it
    assert "1 nodes x 2 processes, rendezvous at" in log and log.count("; ep --expert_parallel=2") == 1, log[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert rundir.read_summary(run)["status"] == "finished", log[-2000:]
    assert "expert_parallel: 2" in (run / rundir.CONFIG).read_text()
    # Expert parallel under DDP: the checkpoint is torch.distributed.checkpoint's dcp/ folder.
    assert (rundir.latest_checkpoint(run) / "dcp").is_dir(), log[-2000:]
