"""Per-rank training-state memory: one process (what every DDP rank holds) against two ranks under
FSDP2, expert parallelism (EP=2, DDP for the rest) and both (EP=2 + FSDP2).

    python -m benchmarks.memory                          # lm-tiny and moe-exp8
    python -m benchmarks.memory --presets lm-tiny

For each preset the real model and optimizer are built as the trainer builds them
(`trainer.build_training`), in one process and under `accelerate launch --config_file
launch/cpu-2proc.yaml` or `launch/fsdp-cpu-2proc.yaml` (2 CPU ranks, gloo), with expert_parallel=2
for the EP kinds; after one optimizer step and one more backward, each rank measures the bytes of
its local parameter, gradient and optimizer-state tensors (blueberry.memory.measure), beside
blueberry.memory.estimate's figures. EP ranks also count the bytes their token all-to-alls send to
the other rank in one optimizer step (forward and backward). No data is built: the vocabulary size
is the tokenizer's (bpe:N -> N; the SmolLM tokenizer has 49,152 tokens) and the batches are random
tokens (--tokens per micro-batch). Results: benchmarks/results/memory-cpu.json.
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


# name -> (launch config or None for one process, expert_parallel)
KINDS = {"1 process = a DDP rank": (None, 1), "FSDP2 rank of 2": ("fsdp-cpu-2proc.yaml", 1),
         "EP=2 + DDP rank of 2": ("cpu-2proc.yaml", 2), "EP=2 + FSDP2 rank of 2": ("fsdp-cpu-2proc.yaml", 2)}


def all_to_all_bytes(step) -> int:
    """Bytes this rank's token all-to-alls send to other ranks while `step()` runs (forward and backward),
    read from the collectives' own split sizes."""
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    sent = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops._c10d_functional.all_to_all_single.default:
                rows, _, splits, group_name = args
                own = splits[dist.get_rank(dist.distributed_c10d._resolve_process_group(group_name))]
                sent[0] += (sum(splits) - own) * (rows.numel() // max(rows.shape[0], 1)) * rows.element_size()
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return sent[0]


def worker(preset: str, out: str, expert_parallel: int, tokens: int) -> None:
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
    cfg = dataclasses.replace(cfg, dropout=0.0, grad_accum=1, expert_parallel=expert_parallel)
    task = LMTask()
    accelerator = trainer.make_accelerator(cfg)
    vocab = vocab_size(cfg.tokenizer)
    model, optimizer, scheduler, _ = trainer.build_training(cfg, task, SimpleNamespace(payload={"vocab_size": vocab}),
                                                            accelerator)
    gen = torch.Generator().manual_seed(accelerator.process_index)

    def batch():
        window = torch.randint(0, vocab, (1, tokens + 1), generator=gen)
        return window[:, :-1], window[:, 1:]

    sent = all_to_all_bytes(lambda: trainer.optimizer_step(cfg, task, accelerator, model, optimizer, scheduler,
                                                           iter(batch, None), {}))
    loss, _ = task.train_loss(model, batch(), cfg)
    accelerator.backward(loss)
    world, sharded = accelerator.num_processes, sharding.is_sharded(accelerator)
    row = {"rank": accelerator.process_index, "world": world, "sharded": sharded, "expert_parallel": expert_parallel,
           "measured": memory.measure(model, optimizer).as_dict(),
           "estimate": memory.estimate(model, cfg.optimizer, world, sharded, expert_parallel).as_dict(),
           "all_to_all_bytes_per_step": sent, "tokens_per_step": tokens}
    rows = gather_object([row]) if world > 1 else [row]
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({"preset": preset, "optimizer": cfg.optimizer, "ranks": rows}))
    accelerator.wait_for_everyone()
    if world > 1:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # gloo's teardown can abort at exit (NOTES.md)


def run(preset: str, kind: str, tmp: Path, tokens: int) -> dict:
    config, expert_parallel = KINDS[kind]
    out = tmp / f"{preset}-{config}-{expert_parallel}.json"
    prefix = ([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "launch" / config), "--main_process_port", "0"] if config else [sys.executable])
    subprocess.run([*prefix, "-m", "benchmarks.memory", "--worker", preset, "--out", str(out),
                    "--expert-parallel", str(expert_parallel), "--tokens", str(tokens)], cwd=REPO,
                   check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["lm-tiny", "moe-exp8"])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per micro-batch per rank (default 32)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--expert-parallel", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/memory-cpu.json)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.expert_parallel, args.tokens)
        return

    from benchmarks.common import write_json
    from blueberry.memory import StateBytes, format_table

    results, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            measured = {kind: run(preset, kind, Path(tmp), args.tokens) for kind in KINDS}
            results += list(measured.values())
            ddp = measured["1 process = a DDP rank"]["ranks"][0]["measured"]
            for kind, result in measured.items():
                # the rank that holds most (rank 0 of an uneven FSDP2 split)
                rank = max(result["ranks"], key=lambda r: r["measured"]["total"])
                table.append((f"{preset} ({result['optimizer']}), {kind}", StateBytes(**_parts(rank["measured"]))))
                sent = max(r["all_to_all_bytes_per_step"] for r in result["ranks"])
                print(f"{preset}, {kind}: / DDP per rank = {rank['measured']['total'] / ddp['total']:.3f}; "
                      f"estimates match measured: {all(r['estimate'] == r['measured'] for r in result['ranks'])}"
                      + (f"; all-to-all {sent / 2**20:.2f} MiB sent per step of {args.tokens} tokens a rank "
                         f"({sent / args.tokens / 1024:.1f} KiB a token)" if sent else ""))
    print(format_table(table))
    path = write_json({"results": results, "table": format_table(table)}, args.out, "memory", "cpu")
    print(f"wrote {path}")


def _parts(m: dict) -> dict:
    return {k: m[k] for k in ("params", "grads", "optimizer")}


if __name__ == "__main__":
    main()
