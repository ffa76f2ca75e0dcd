"""slurm/multinode.sbatch with PARALLEL=ep on the local one-node SLURM cluster: 2 expert-parallel ranks."""

from blueberry import rundir
from test_fsdp_slurm import multinode_run
from test_slurm import slurm_env   # noqa: F401  (a fixture)


def test_multinode_sbatch_with_expert_parallel(slurm_env, tmp_path):
    log, run = multinode_run(slurm_env, tmp_path, "ep", 2)
    # EP defaults to the processes of a node, so the token all-to-alls stay inside it
    assert log.count("; ep --expert_parallel=2") == 1, log[-2000:]
    assert "expert_parallel: 2" in (run / rundir.CONFIG).read_text()
    # Expert parallel under DDP: the checkpoint is torch.distributed.checkpoint's dcp/ folder.
    assert (rundir.latest_checkpoint(run) / "dcp").is_dir(), log[-2000:]
