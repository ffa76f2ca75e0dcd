"""Training-step tokens/s of blueberry's LM against the transformers model a user would pick instead.

    python -m benchmarks.peers                      # CPU fp32, every case, <= 2048 tokens a step
    python -m benchmarks.peers --cases lm-tiny:mixtral,dense-cs336:llama --rounds 8
    python -m benchmarks.peers --profile            # also the top ops of one step of each side
    python -m benchmarks.peers --smoke              # tiny shapes, two rounds: that the code runs
    python -m benchmarks.peers --device cuda        # GPU: bf16 parameters and activations on both sides

Cases (blueberry's preset : the peer):
  <preset>:mixtral      transformers' MixtralForCausalLM (softmax top-k router, SwiGLU experts, its
                        load-balancing loss) against the preset as it is (MHA, softmax router).
  <preset>:deepseek_v3  transformers' DeepseekV3ForCausalLM (MLA, sigmoid router with its score-
                        correction bias, one shared expert, no dense layers, one expert group) against
                        the preset with --attention mla --router sigmoid --n_shared_experts 1.
  dense-cs336:llama     transformers' LlamaForCausalLM against the dense preset.

Both sides get the same dims, heads, experts, top-k, vocabulary, sequence, batch and dtype (fp32 on the
CPU, bf16 on a GPU), dropout 0, the embedding tied to the LM head, and the same step: the forward, cross
entropy (+ 0.01 x the load-balancing loss where the model has one), backward, torch.optim.AdamW (lr 1e-3,
weight decay 0.1) and zero_grad. blueberry's loss is its task's own (LMTask.train_loss). Parameter counts must agree to
the unit (checked and printed) or the case stops. Each side runs as its library runs by default
(blueberry: the per-expert loop on the CPU; transformers: its default experts implementation, SDPA).

Sides are timed in turns, the order flipped every round, so load from other processes hits both alike;
speedup_vs_<peer> is the median over rounds of that round's time(peer) / time(blueberry) (> 1: blueberry
is faster). This machine's 2 cores are shared: use --threads 1 for steadier figures.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, environment, pick_device, print_table, spread, timed, write_json
from benchmarks.train_step import vocab_size
from blueberry.config import LMConfig, resolve

CASES = ("lm-tiny:mixtral", "moe-exp3:mixtral", "moe-exp8:mixtral", "lm-tiny:deepseek_v3",
         "moe-exp3:deepseek_v3", "moe-exp8:deepseek_v3", "dense-cs336:llama")
PEER_CHANGES = {"mixtral": {}, "llama": {},
                "deepseek_v3": {"attention": "mla", "router": "sigmoid", "n_shared_experts": 1}}
SMOKE = {"d_model": 32, "n_layers": 1, "n_heads": 2, "expert_d_ff": 32, "d_ff": 48, "seq_len": 16,
         "mla_kv_rank": 16, "mla_rope_dim": 4}
LB_WEIGHT, LR, WEIGHT_DECAY = 0.01, 1e-3, 0.1
GOALS = {"cpu": 1.0, "cuda": 1.5}       # speedup_vs_<peer> wanted at every shape


def case_config(preset: str, peer: str, args) -> LMConfig:
    base = resolve(LMConfig, preset=preset)
    if args.smoke:
        batch = 2
    else:
        batch = args.batch or max(1, min(base.batch_size, args.max_tokens // (args.seq_len or base.seq_len)))
    values = {"batch_size": batch, "dropout": 0.0, "lb_weight": LB_WEIGHT if base.n_experts else 0.0,
              "z_loss_weight": 0.0, "bias_update_rate": 0.0, "router_renorm": True, **PEER_CHANGES[peer],
              **(SMOKE if args.smoke else {})}
    if args.seq_len:
        values["seq_len"] = args.seq_len
    return resolve(LMConfig, preset=preset, cli_values=values)


def peer_model(peer: str, cfg: LMConfig, vocab: int) -> torch.nn.Module:
    """The transformers model of the same shape as blueberry's Decoder(cfg, vocab)."""
    common = dict(vocab_size=vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, rms_norm_eps=1e-6,
                  rope_theta=cfg.rope_theta, max_position_embeddings=cfg.seq_len, attention_dropout=0.0,
                  tie_word_embeddings=True)
    if peer == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM
        return MixtralForCausalLM(MixtralConfig(
            **common, intermediate_size=cfg.expert_d_ff, num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.top_k, router_jitter_noise=0.0, output_router_logits=True,
            router_aux_loss_coef=LB_WEIGHT))
    if peer == "deepseek_v3":
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
        head_dim = cfg.d_model // cfg.n_heads
        return DeepseekV3ForCausalLM(DeepseekV3Config(
            **common, intermediate_size=cfg.expert_d_ff, moe_intermediate_size=cfg.expert_d_ff,
            n_routed_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k, n_shared_experts=cfg.n_shared_experts,
            first_k_dense_replace=0, n_group=1, topk_group=1, norm_topk_prob=cfg.router_renorm,
            routed_scaling_factor=1.0, kv_lora_rank=cfg.mla_kv_rank, q_lora_rank=cfg.mla_q_rank or None,
            qk_rope_head_dim=cfg.mla_rope_dim, qk_nope_head_dim=head_dim, v_head_dim=head_dim))
    if peer == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaForCausalLM(LlamaConfig(**common, intermediate_size=cfg.d_ff, hidden_act="silu",
                                            attention_bias=False, mlp_bias=False))
    raise SystemExit(f"peer {peer!r}: expected one of {', '.join(PEER_CHANGES)}")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())     # a tied weight counts once


def step_fns(cfg: LMConfig, peer: str, vocab: int, device: torch.device, dtype: torch.dtype,
             batches: list) -> tuple[dict, dict]:
    """name -> one training step; name -> parameter count. Same seed, same batches on both sides."""
    from blueberry.models.lm import Decoder
    from blueberry.tasks.lm import LMTask

    task = LMTask()
    torch.manual_seed(0)
    ours = Decoder(cfg, vocab).to(device=device, dtype=dtype).train()
    torch.manual_seed(0)
    theirs = peer_model(peer, cfg, vocab).to(device=device, dtype=dtype).train()
    counts = {"blueberry": n_params(ours), peer: n_params(theirs)}
    if counts["blueberry"] != counts[peer]:
        raise SystemExit(f"parameter counts differ: blueberry {counts['blueberry']:,}, {peer} {counts[peer]:,}")

    def ours_loss(x, y):
        return task.train_loss(ours, (x, y), cfg)[0]

    def theirs_loss(x, y):
        out = theirs(input_ids=x)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())
        aux = getattr(out, "aux_loss", None)
        return loss + LB_WEIGHT * aux if aux is not None else loss

    steps = {}
    for name, model, loss_fn in (("blueberry", ours, ours_loss), (peer, theirs, theirs_loss)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        state = {"i": 0}

        def step(model=model, loss_fn=loss_fn, optimizer=optimizer, state=state):
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
            loss_fn(x, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        steps[name] = step
    return steps, counts


def top_ops(step, n: int) -> list[list]:
    """The n ops of one step with the most self CPU time: [name, self ms, calls]."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [[e.key, e.self_cpu_time_total / 1e3, e.count] for e in events]


def bench_case(case: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    preset, peer = case.split(":")
    cfg = case_config(preset, peer, args)
    vocab = 256 if args.smoke else vocab_size(cfg, None)
    gen = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len + 1), generator=gen) for _ in range(2)]
    batches = [(w[:, :-1].to(device), w[:, 1:].to(device)) for w in windows]
    steps, counts = step_fns(cfg, peer, vocab, device, dtype, batches)
    names = list(steps)
    for _ in range(args.warmup):
        for name in names:
            timed(steps[name], device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):    # in turns, order flipped each round
            seconds[name].append(timed(steps[name], device))
    tokens = cfg.batch_size * cfg.seq_len
    out = {"preset": preset, "peer": peer, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "vocab": vocab,
           "tokens_per_step": tokens, "params": counts, "attention": cfg.attention, "router": cfg.router,
           "n_shared_experts": cfg.n_shared_experts, "results": {}}
    for name, s in seconds.items():
        out["results"][name] = {**spread(s), "tokens_per_s": tokens / statistics.median(s)}
    out[f"speedup_vs_{peer}"] = statistics.median(p / b for p, b in zip(seconds[peer], seconds["blueberry"]))
    if args.profile:
        out["top_ops"] = {name: top_ops(steps[name], args.profile) for name in names}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated preset:peer pairs")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="parameter and activation dtype (default: bf16 on "
                        "GPU, fp32 on CPU)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the preset's, capped by --max-tokens)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="cap on tokens per step when --batch is not "
                        "given (default 2048: moe-exp8 at 4 x 512)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds, one step per side each (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (default 1)")
    parser.add_argument("--profile", type=int, nargs="?", const=12, default=0, metavar="N",
                        help="also profile one step per side and print its N top ops by self CPU time (default 12)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 rounds: checks that the code runs")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/peers-<device>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.warmup = min(args.rounds, 2), min(args.warmup, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    record = {"benchmark": "peers", **environment(device), "dtype": str(dtype).removeprefix("torch."),
              "rounds": args.rounds,
              "warmup": args.warmup, "smoke": args.smoke, "cases": {}}
    import transformers
    record["transformers"] = transformers.__version__
    goal = GOALS.get(device.type)
    rows = []
    for case in args.cases.split(","):
        out = bench_case(case, args, device, dtype)
        record["cases"][case] = out
        ratio = out[f"speedup_vs_{out['peer']}"]
        ours, theirs = out["results"]["blueberry"], out["results"][out["peer"]]
        rows.append([out["preset"], out["peer"], f"{out['batch_size']}x{out['seq_len']}", f"{out['params']['blueberry']:,}",
                     ours["tokens_per_s"], theirs["tokens_per_s"], f"{ratio:.2f}x",
                     "" if goal is None or args.smoke else ("met" if ratio >= goal else "MISSED")])
        print(f"{case}: {out['params']['blueberry']:,} parameters on both sides; blueberry "
              f"{ours['tokens_per_s']:,.0f} tokens/s, {out['peer']} {theirs['tokens_per_s']:,.0f}; {ratio:.2f}x",
              flush=True)
        for name, ops in out.get("top_ops", {}).items():
            print(f"  top ops, one step of {name}:")
            for op, ms, calls in ops:
                print(f"    {op[:48]:48s} {ms:9.1f} ms  x{calls}")
    print()
    print_table(["preset", "peer", "batch", "params (both)", "blueberry tok/s", "peer tok/s",
                 "speedup (paired)", f"goal >= {goal}x"], rows)
    path = write_json(record, args.out, "peers" + ("-smoke" if args.smoke else ""), record["device"])
    print(f"\nwrote {path}")
    return record


if __name__ == "__main__":
    main()
