"""Run under torchrun/accelerate with 2 ranks: each rank pulls batches from the LM task's real data
path and the main rank writes every rank's token rows to argv[1]. Used by test_distributed."""

import json
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from blueberry.config import LMConfig, resolve
from blueberry.tasks.lm import LMTask

cfg = resolve(LMConfig, cli_values=dict(d_model=32, n_layers=1, n_heads=2, expert_d_ff=64, seq_len=32,
                                        batch_size=4, synthetic_docs=300, tokenizer="bpe:300"))
accelerator = Accelerator(cpu=True)
data = LMTask().build_data(cfg, accelerator)
seen = []
for _, (x, _) in zip(range(6), data.train_batches(0)):
    seen += x.tolist()   # windows are distinct token sequences, so rows identify them
everyone = gather_object([seen])
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump(everyone, f)
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)
