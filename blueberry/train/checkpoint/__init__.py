"""Checkpoints: one component (DESIGN: train/ owns ONE checkpoint component).

- state.py      TrainerState, the non-tensor state a resume needs
- layout.py     folders and names in RUN_DIR/checkpoints, publishing, best, rotation (no torch)
- manifest.py   manifest.json written and checked (no torch)
- pick.py       which checkpoint resume / evaluate / consolidate read (no torch)
- formats.py    the tensors in each layout, written and read in any world size; consolidate
- async_writer.py  torch.distributed.checkpoint.async_save in a background process
- manager.py    Checkpointer: what the trainer calls (load, save, close)

This package's top level imports no torch, so the CLI can pick and check checkpoints at once;
`from blueberry.train.checkpoint.manager import Checkpointer` brings torch.
"""

from blueberry.train.checkpoint.layout import (BEST, CONSOLIDATED, best_checkpoint, checkpoint_step, is_sharded,
                                               step_dir)
from blueberry.train.checkpoint.manifest import MANIFEST, damage
from blueberry.train.checkpoint.pick import find_resume_checkpoint, newest_intact, pick, pick_intact, resolve_resume
from blueberry.train.checkpoint.state import TrainerState

__all__ = ["BEST", "CONSOLIDATED", "MANIFEST", "TrainerState", "best_checkpoint", "checkpoint_step", "damage",
           "find_resume_checkpoint", "is_sharded", "newest_intact", "pick", "pick_intact", "resolve_resume",
           "step_dir"]
