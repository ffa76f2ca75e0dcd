"""Per-rank training-state memory: one process (what every DDP rank holds) against two FSDP2 ranks.

    python -m benchmarks.memory                          # lm-tiny and moe-exp8
    python -m benchmarks.memory --presets lm-tiny

For each preset the real model and optimizer are built as the trainer builds them
(`trainer.build_training`), in one process and under `accelerate launch --config_file
launch/fsdp-cpu-2proc.yaml` (2 CPU ranks, FSDP2); after one optimizer step and one more backward,
each rank measures the bytes of its local parameter, gradient and optimizer-state tensors
(blueberry.memory.measure), beside blueberry.memory.estimate's figures. No data is built: the
vocabulary size is the tokenizer's (bpe:N -> N; the SmolLM tokenizer has 49,152 tokens) and the
batches are random tokens. Results: benchmarks/results/memory-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KNOWN_VOCABS = {"HuggingFaceTB/SmolLM-135M": 49152}


def vocab_size(tokenizer: str) -> int:
    if tokenizer.startswith("bpe:"):
        return int(tokenizer.split(":", 1)[1])
    return KNOWN_VOCABS[tokenizer]


def worker(preset: str, out: str) -> None:
    """One rank: build, step, measure; rank 0 writes every rank's figures to `out`."""
    import dataclasses
    from types import SimpleNamespace

    import torch
    from accelerate.utils import gather_object

    from blueberry import memory
    from blueberry.config import LMConfig, resolve
    from blueberry.tasks.lm import LMTask
    from blueberry.train import sharding, trainer

    cfg = resolve(LMConfig, cli_values={"preset": preset}, source="benchmark")
    cfg = dataclasses.replace(cfg, dropout=0.0, grad_accum=1)
    task = LMTask()
    accelerator = trainer.make_accelerator(cfg)
    vocab = vocab_size(cfg.tokenizer)
    model, optimizer, scheduler, _ = trainer.build_training(cfg, task, SimpleNamespace(payload={"vocab_size": vocab}),
                                                            accelerator)
    gen = torch.Generator().manual_seed(accelerator.process_index)

    def batch():
        tokens = torch.randint(0, vocab, (1, 33), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]

    trainer.optimizer_step(cfg, task, accelerator, model, optimizer, scheduler, iter(batch, None), {})
    loss, _ = task.train_loss(model, batch(), cfg)
    accelerator.backward(loss)
    world, sharded = accelerator.num_processes, sharding.is_sharded(accelerator)
    row = {"rank": accelerator.process_index, "world": world, "sharded": sharded,
           "measured": memory.measure(model, optimizer).as_dict(),
           "estimate": memory.estimate(model, cfg.optimizer, world, sharded).as_dict()}
    rows = gather_object([row]) if world > 1 else [row]
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({"preset": preset, "optimizer": cfg.optimizer, "ranks": rows}))
    accelerator.wait_for_everyone()
    if world > 1:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # gloo's teardown can abort at exit (NOTES.md)


def run(preset: str, ranks: int, tmp: Path) -> dict:
    out = tmp / f"{preset}-{ranks}.json"
    prefix = ([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "launch" / "fsdp-cpu-2proc.yaml"), "--main_process_port", "0"]
              if ranks > 1 else [sys.executable])
    subprocess.run([*prefix, "-m", "benchmarks.memory", "--worker", preset, "--out", str(out)], cwd=REPO,
                   check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["lm-tiny", "moe-exp8"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/memory-cpu.json)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out)
        return

    from benchmarks.common import write_json
    from blueberry.memory import StateBytes, format_table

    results, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            one, two = run(preset, 1, Path(tmp)), run(preset, 2, Path(tmp))
            results += [one, two]
            ddp = one["ranks"][0]["measured"]
            fsdp = max((r["measured"] for r in two["ranks"]), key=lambda m: m["total"])
            table += [(f"{preset} ({one['optimizer']}), 1 process = a DDP rank", StateBytes(**_parts(ddp))),
                      (f"{preset} ({one['optimizer']}), FSDP2 rank of 2", StateBytes(**_parts(fsdp)))]
            print(f"{preset}: FSDP2 / DDP per rank = {fsdp['total'] / ddp['total']:.3f}; "
                  f"estimates match measured: {all(r['estimate'] == r['measured'] for r in one['ranks'] + two['ranks'][:1])}")
    print(format_table(table))
    path = write_json({"results": results, "table": format_table(table)}, args.out, "memory", "cpu")
    print(f"wrote {path}")


def _parts(m: dict) -> dict:
    return {k: m[k] for k in ("params", "grads", "optimizer")}


if __name__ == "__main__":
    main()
