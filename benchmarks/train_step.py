"""Training-step tokens/s of the presets with compile off and on; on a GPU also MFU on active parameters.

    python -m benchmarks.train_step                    # CPU: lm-tiny, moe-exp3, moe-exp8 at <= 2048 tokens/step
    python -m benchmarks.train_step --device cuda      # GPU: the presets' own batch and seq_len, bf16
    python -m benchmarks.train_step --presets moe-exp8 --batch 24 --seq-len 512 --steps 20

A step is the trainer's own (blueberry.train.trainer.optimizer_step) on the model, optimizer and
Accelerate wrapping the trainer builds (build_training: --compile, autocast), with grad_accum 1,
fed random tokens already on the device, so the data path is left out. The uncompiled and the
compiled model are built side by side and stepped in turns after their warm-up (the compiled
model's first step pays the compile, reported apart), so load from other processes hits both alike.

MFU = tokens/s x FLOPs per token / peak FLOP/s, FLOPs per token = 6 x active parameters +
12 x n_layers x d_model x seq_len (PaLM, arXiv 2204.02311, appendix B: matmuls forward and backward,
attention scores counted in full). Active parameters leave out the routed experts a token skips; the
embedding counts once, as the tied LM head's matmul.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from benchmarks.common import environment, pick_device, print_table, spread, timed, write_json
from blueberry.config import LMConfig, resolve

PRESETS = ("lm-tiny", "moe-exp3", "moe-exp8")
# Vocabulary sizes of the pretrained tokenizers the presets name (no download here).
TOKENIZER_VOCAB = {"HuggingFaceTB/SmolLM-135M": 49152}
H100_BF16_TFLOPS = 989.0     # H100 SXM dense bf16 peak
GPU_GOAL = {"preset": "moe-exp8", "seq_len": 512, "tokens_per_s": 400_000}


def vocab_size(cfg: LMConfig, override: int | None) -> int:
    if override:
        return override
    if cfg.tokenizer.startswith("bpe:"):
        return int(cfg.tokenizer[4:])
    if cfg.tokenizer in TOKENIZER_VOCAB:
        return TOKENIZER_VOCAB[cfg.tokenizer]
    raise SystemExit(f"tokenizer={cfg.tokenizer}: give its vocabulary size with --vocab")


def flops_per_token(cfg: LMConfig, active_params: int) -> float:
    return 6.0 * active_params + 12.0 * cfg.n_layers * cfg.d_model * cfg.seq_len


def preset_config(preset: str, args, device: torch.device) -> LMConfig:
    base = resolve(LMConfig, preset=preset)
    batch, seq_len = args.batch or base.batch_size, args.seq_len or base.seq_len
    cap = args.max_tokens if args.max_tokens is not None else (2048 if device.type == "cpu" else 0)
    if cap and not args.batch and batch * seq_len > cap:
        batch = max(1, cap // seq_len)      # CPU: keep the preset's seq_len, fewer sequences
    mixed = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    values = {"batch_size": batch, "seq_len": seq_len, "grad_accum": 1, "mixed_precision": mixed,
              "wandb_mode": "disabled"}
    values.update(dict(item.split("=", 1) for item in args.set))
    return resolve(LMConfig, preset=preset, cli_values=values)


def bench_preset(preset: str, args, device: torch.device, modes: list[bool]) -> dict:
    import dataclasses

    from accelerate.state import AcceleratorState, GradientState

    from blueberry.tasks.base import TaskData
    from blueberry.tasks.lm import LMTask
    from blueberry.train.trainer import build_training, make_accelerator, optimizer_step

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch._dynamo.reset()
    cfg = preset_config(preset, args, device)
    vocab = vocab_size(cfg, args.vocab)
    tokens = cfg.batch_size * cfg.seq_len
    accelerator = make_accelerator(cfg)
    task = LMTask()
    data = TaskData(train_batches=None, items_per_batch=tokens, unit="tokens", epochs_at=None,
                    payload={"vocab_size": vocab})
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len + 1), generator=gen) for _ in range(4)]
    pool = [(w[:, :-1].to(accelerator.device), w[:, 1:].to(accelerator.device)) for w in pool]

    runs, first_step = {}, {}
    for compiled in modes:
        mode_cfg = dataclasses.replace(cfg, compile=compiled)
        torch.manual_seed(cfg.seed)
        model, optimizer, scheduler, params = build_training(mode_cfg, task, data, accelerator)
        batches = itertools.cycle(pool)
        parts: dict = {}

        def step(mode_cfg=mode_cfg, model=model, optimizer=optimizer, scheduler=scheduler, batches=batches,
                 parts=parts):
            optimizer_step(mode_cfg, task, accelerator, model, optimizer, scheduler, batches, parts)
        name = "compile" if compiled else "eager"
        first_step[name] = timed(step, device)          # the compiled model compiles here
        for _ in range(args.warmup - 1):
            timed(step, device)
        runs[name] = step
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, step in runs.items():             # in turns
            seconds[name].append(timed(step, device))

    out = {"batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "tokens_per_step": tokens, "vocab": vocab,
           "optimizer": cfg.optimizer, "mixed_precision": cfg.mixed_precision, "params": params,
           "flops_per_token": flops_per_token(cfg, params["active"]), "first_step_s": first_step, "modes": {}}
    for name, s in seconds.items():
        row = {**spread(s), "tokens_per_s": tokens / statistics.median(s)}
        if args.peak_tflops and (device.type == "cuda" or args.peak_given):
            row["mfu"] = row["tokens_per_s"] * out["flops_per_token"] / (args.peak_tflops * 1e12)
        out["modes"][name] = row
    if len(seconds) == 2:
        out["compile_speedup"] = statistics.median(e / c for e, c in zip(seconds["eager"], seconds["compile"]))
    if device.type == "cuda" and preset == GPU_GOAL["preset"] and cfg.seq_len == GPU_GOAL["seq_len"] \
            and cfg.mixed_precision == "bf16" and "compile" in out["modes"]:
        out["goal_400k_tokens_per_s"] = out["modes"]["compile"]["tokens_per_s"] >= GPU_GOAL["tokens_per_s"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the preset's, capped by --max-tokens)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    parser.add_argument("--max-tokens", type=int,
                        help="cap tokens per step by lowering the batch when --batch is not given "
                             "(default 2048 on CPU, where moe-exp8 at full size takes ~22 s a step; none on GPU)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="default: bf16 on GPU, no on CPU")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, compile included (default 2)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: from the preset's tokenizer)")
    parser.add_argument("--peak-tflops", type=float, help=f"peak FLOP/s for MFU, in TFLOP/s (default "
                        f"{H100_BF16_TFLOPS:g}, H100 SXM dense bf16; MFU is reported on GPUs, or on CPU when given)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other run-config field, e.g. --set optimizer=adamw (repeatable)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/train_step-<device>.json)")
    args = parser.parse_args(argv)
    args.peak_given = args.peak_tflops is not None
    args.peak_tflops = args.peak_tflops or H100_BF16_TFLOPS
    args.warmup = max(1, args.warmup)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    record = {"benchmark": "train_step", **environment(device), "steps": args.steps, "warmup": args.warmup,
              "peak_tflops": args.peak_tflops, "presets": {}}
    rows = []
    for preset in args.presets.split(","):
        out = bench_preset(preset, args, device, modes)
        record["presets"][preset] = out
        for name, r in out["modes"].items():
            rows.append([preset, f"{out['batch_size']}x{out['seq_len']}", name, r["tokens_per_s"],
                         r["median_s"] * 1e3, f"{r['p25_s'] * 1e3:.0f}-{r['p75_s'] * 1e3:.0f}",
                         out["first_step_s"][name], f"{r['mfu']:.1%}" if "mfu" in r else "-",
                         f"{out['compile_speedup']:.2f}x" if name == "compile" and "compile_speedup" in out else ""])
        print(f"{preset}: {out['params']['active']:,} active of {out['params']['total']:,} params, "
              f"{out['optimizer']}, mixed_precision {out['mixed_precision']}", flush=True)
    print()
    print_table(["preset", "batch", "mode", "tokens/s", "median ms", "p25-p75 ms", "first step s", "MFU",
                 "compile speed-up (paired)"], rows)
    for preset, out in record["presets"].items():
        if "goal_400k_tokens_per_s" in out:
            print(f"goal: {preset} compiled >= 400k tokens/s "
                  f"{'met' if out['goal_400k_tokens_per_s'] else 'MISSED'}")
    print(f"\nwrote {write_json(record, args.out, 'train_step', record['device'])}")


if __name__ == "__main__":
    main()
