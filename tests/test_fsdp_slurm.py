"""slurm/multinode.sbatch with PARALLEL=fsdp on the local one-node SLURM cluster: 2 FSDP2 ranks."""

from blueberry import rundir
from conftest import TINY
from test_slurm import slurm_env, submit, wait_for   # noqa: F401  (slurm_env is a fixture)


def test_multinode_sbatch_with_fsdp(slurm_env, tmp_path):
    env = {**slurm_env, "PARALLEL": "fsdp"}
    job = submit("multinode", *TINY, "--max_steps=4", "--eval_every=2", cwd=tmp_path, env=env,
                 options=["--nodes=1", "--procs=2", "--time=00:10:00"])
    wait_for(job, env)
    log = (tmp_path / "logs" / f"bb-multinode-{job}.out").read_text()
    assert "1 nodes x 2 processes, rendezvous at" in log and log.count("; fsdp") == 1
    (run,) = (tmp_path / "runs").iterdir()
    assert rundir.read_summary(run)["status"] == "finished", log[-2000:]
    # Sharded: the checkpoint holds FSDP2's torch.distributed.checkpoint folders.
    assert (rundir.latest_checkpoint(run) / "pytorch_model_fsdp_0").is_dir(), log[-2000:]
