"""Forward+backward tokens/s of blueberry's MoE layer, side by side with the other ways to run it.

    python -m benchmarks.moe_layer                       # CPU fp32 (GPU: bf16), 4096 tokens
    python -m benchmarks.moe_layer --tokens 16384 --iters 50 --device cuda --dtype bf16

Contestants, all with the same weights and the same routing (softmax top-k, renormalised):
  blueberry      blueberry.models.moe.MoE on the device's default path (grouped_by_default): the
                 grouped GEMM on a GPU, the per-expert loop on the CPU.
  blueberry-grouped  forced onto the grouped path (Experts.grouped = True): router, assignments sorted
                 by expert, one grouped GEMM per projection (torch._grouped_mm), index_add back.
  blueberry-loop forced onto the loop (Experts.grouped = False): the sorted rows, one `.tolist()` of
                 the offsets, then each expert's three GEMMs back to back.
  mask-loop      blueberry-llm's dispatch, written here: per expert a boolean mask of its tokens, and
                 `if mask.any()` before running it on x[mask] (a host sync per expert on a GPU).
  hf-grouped_mm  transformers' MixtralSparseMoeBlock with its default experts implementation.
  hf-eager       the same block with experts_implementation="eager" (its per-expert loop).
  ideal          no routing at all: the tokens*k rows split equally over the experts, one batched
                 matmul (bmm) per projection: the same expert FLOPs with nothing around them.

Outputs and input gradients are checked equal in fp32 BEFORE anything is timed. Contestants are timed
in turns (one iteration each, round after round), so load from other processes hits them alike.
tokens/s come from median times; each ratio is the median over rounds of that round's time ratio
(paired, so a slow round slows both sides): time of X / time of blueberry (> 1: blueberry is faster),
and blueberry / ideal (the routing overhead). Goals from issue 8 are marked.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

from benchmarks.common import DTYPES, environment, pick_device, print_table, spread, timed, write_json
from blueberry.config import LMConfig, resolve
from blueberry.models.moe import MoE, SwiGLU

SHAPES = {"exp8": "moe-exp8", "exp3": "moe-exp3"}     # shape name -> the preset it is read from
GOALS = {"cpu": {"ideal_overhead_max": 1.10, "vs_loop_min": 1.0, "vs_transformers_min": 1.0},
         "cuda": {"vs_loop_min": 3.0}}


class MaskLoopMoE(nn.Module):
    """blueberry-llm's dispatch: a Python loop over experts, each picking its tokens with a boolean mask.

    `if chosen.any()` and the boolean indexing read the mask back to the host: on a GPU each expert
    waits for everything queued before it.
    """

    def __init__(self, moe: MoE):
        super().__init__()
        self.router = copy.deepcopy(moe.router)
        n_experts, d_ff, d_model = moe.experts.w_gate.shape
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_experts))
        with torch.no_grad():
            for e, expert in enumerate(self.experts):
                expert.gate.weight.copy_(moe.experts.w_gate[e])
                expert.up.weight.copy_(moe.experts.w_up[e])
                expert.down.weight.copy_(moe.experts.w_down[e])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        route = self.router(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            mask = route.idx == e                    # [N, k]: a token picks an expert at most once
            chosen = mask.any(dim=-1)
            if chosen.any():
                weight = (route.weights * mask).sum(-1)[chosen].unsqueeze(-1).to(x.dtype)
                out[chosen] += weight * expert(flat[chosen])
        return out.view(x.shape)


class IdealBMM(nn.Module):
    """The expert FLOPs of the layer and nothing else: input [E, N*k/E, D] straight into bmm."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.w_gate = nn.Parameter(moe.experts.w_gate.detach().clone())
        self.w_up = nn.Parameter(moe.experts.w_up.detach().clone())
        self.w_down = nn.Parameter(moe.experts.w_down.detach().clone())

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(torch.bmm(xs, self.w_gate.mT)) * torch.bmm(xs, self.w_up.mT)
        return torch.bmm(h, self.w_down.mT)


def mixtral_block(moe: MoE, cfg: LMConfig, experts_implementation: str) -> nn.Module:
    """transformers' Mixtral MoE block holding `moe`'s weights: its router is softmax -> top-k -> renormalise."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    if cfg.router != "softmax" or not cfg.router_renorm or cfg.n_shared_experts:
        raise SystemExit("the Mixtral block routes softmax top-k with renormalisation and has no shared experts")
    block = MixtralSparseMoeBlock(MixtralConfig(
        hidden_size=cfg.d_model, intermediate_size=cfg.expert_d_ff, num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k, hidden_act="silu", router_jitter_noise=0.0,
        experts_implementation=experts_implementation))
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([moe.experts.w_gate, moe.experts.w_up], dim=1))
        block.experts.down_proj.copy_(moe.experts.w_down)
    return block


def contestants(cfg: LMConfig, n_tokens: int) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """name -> (module returning one tensor, its fp32 CPU input); same weights everywhere."""
    torch.manual_seed(0)
    moe = MoE(cfg)
    x = torch.randn(1, n_tokens, cfg.d_model)
    rows = n_tokens * cfg.top_k
    if rows % cfg.n_experts:
        raise SystemExit(f"--tokens: tokens*top_k ({rows}) must split evenly over {cfg.n_experts} experts")
    xs = torch.randn(cfg.n_experts, rows // cfg.n_experts, cfg.d_model)

    class Ours(nn.Module):   # the MoE's aux losses are computed as in training, but only y is backpropagated
        def __init__(self, moe: MoE, grouped: bool | None = None):
            super().__init__()
            self.moe = moe
            self.moe.experts.grouped = grouped

        def forward(self, x):
            return self.moe(x)[0]

    out = {"blueberry": (Ours(moe), x), "blueberry-grouped": (Ours(copy.deepcopy(moe), grouped=True), x),
           "blueberry-loop": (Ours(copy.deepcopy(moe), grouped=False), x), "mask-loop": (MaskLoopMoE(moe), x)}
    try:
        out["hf-grouped_mm"] = (mixtral_block(moe, cfg, "grouped_mm"), x)
        out["hf-eager"] = (mixtral_block(moe, cfg, "eager"), x)
    except ImportError:
        print("transformers is not installed: its rows are left out")
    out["ideal"] = (IdealBMM(moe), xs)
    return out


def check_equal(entries: dict[str, tuple[nn.Module, torch.Tensor]]) -> dict[str, float]:
    """fp32 on the CPU: every routed contestant gives blueberry's output and input gradient."""
    ref_y = ref_g = None
    errors = {}
    for name, (module, x) in entries.items():
        if name == "ideal":
            continue
        x = x.clone().requires_grad_(True)
        y = module(x)
        y.backward(torch.ones_like(y))
        if ref_y is None:
            ref_y, ref_g = y.detach(), x.grad
            continue
        torch.testing.assert_close(y.detach(), ref_y, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} output: {m}")
        torch.testing.assert_close(x.grad, ref_g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} input grad: {m}")
        errors[name] = float((y.detach() - ref_y).abs().max())
        module.zero_grad(set_to_none=True)
    for module, _ in entries.values():
        module.zero_grad(set_to_none=True)
    return errors


def bench_shape(cfg: LMConfig, args, device: torch.device, dtype: torch.dtype) -> dict:
    entries = contestants(cfg, args.tokens)
    max_abs_err = check_equal(entries)
    steps = {}
    for name, (module, x) in entries.items():
        module = module.to(device=device, dtype=dtype).train()
        x = x.to(device=device, dtype=dtype).requires_grad_(True)
        grad = torch.randn_like(x[..., :cfg.d_model] if name != "ideal" else x)

        def step(module=module, x=x, grad=grad):
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(grad)
        steps[name] = step
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():   # in turns: load from other processes hits all alike
            t = timed(step, device)
            if i >= args.warmup:
                seconds[name].append(t)
    results = {name: {**spread(s), "tokens_per_s": args.tokens / spread(s)["median_s"]} for name, s in seconds.items()}

    def paired(a: str, b: str) -> float:   # median over rounds of time(a) / time(b)
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))

    for name in results:
        results[name]["time_over_blueberry"] = paired(name, "blueberry")
    ratios = {"ours_over_ideal_time": paired("blueberry", "ideal"),
              "speedup_vs_mask_loop": paired("mask-loop", "blueberry"),
              "speedup_vs_blueberry_loop": paired("blueberry-loop", "blueberry"),
              "speedup_vs_blueberry_grouped": paired("blueberry-grouped", "blueberry")}
    for name in ("hf-grouped_mm", "hf-eager"):
        if name in results:
            ratios[f"speedup_vs_{name}"] = paired(name, "blueberry")
    return {"shape": {"d_model": cfg.d_model, "expert_d_ff": cfg.expert_d_ff, "n_experts": cfg.n_experts,
                      "top_k": cfg.top_k, "tokens": args.tokens},
            "max_abs_err_vs_blueberry_fp32": max_abs_err, "results": results, "ratios": ratios}


def goal_marks(ratios: dict, device: torch.device) -> dict[str, bool]:
    goals = GOALS.get(device.type, {})
    marks = {}
    if "ideal_overhead_max" in goals:
        marks[f"ours/ideal <= {goals['ideal_overhead_max']}"] = ratios["ours_over_ideal_time"] <= goals["ideal_overhead_max"]
    if "vs_loop_min" in goals:
        marks[f"vs loop >= {goals['vs_loop_min']}"] = ratios["speedup_vs_mask_loop"] >= goals["vs_loop_min"]
    if "vs_transformers_min" in goals and "speedup_vs_hf-grouped_mm" in ratios:
        marks[f"vs transformers >= {goals['vs_transformers_min']}"] = \
            min(ratios["speedup_vs_hf-grouped_mm"], ratios["speedup_vs_hf-eager"]) >= goals["vs_transformers_min"]
    return marks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.moe_layer", description=__doc__.split("\n")[0])
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="parameter and activation dtype (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per forward (default 4096)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per contestant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/moe_layer-<device>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    record = {"benchmark": "moe_layer", **environment(device), "dtype": str(dtype).removeprefix("torch."),
              "iters": args.iters, "warmup": args.warmup, "shapes": {}}
    try:
        import transformers
        record["transformers"] = transformers.__version__
    except ImportError:
        pass
    for shape in args.shapes.split(","):
        cfg = resolve(LMConfig, preset=SHAPES[shape])
        print(f"\n{shape} ({SHAPES[shape]}): d_model {cfg.d_model}, expert_d_ff {cfg.expert_d_ff}, {cfg.n_experts} "
              f"experts, top-{cfg.top_k}; {args.tokens} tokens, {record['dtype']} on {record['device']}, "
              f"fwd+bwd, median of {args.iters}")
        out = bench_shape(cfg, args, device, dtype)
        out["goals"] = goal_marks(out["ratios"], device)
        record["shapes"][shape] = out
        print_table(["contestant", "tokens/s", "median ms", "p25-p75 ms", "time / blueberry (paired)"],
                    [[name, r["tokens_per_s"], r["median_s"] * 1e3,
                      f"{r['p25_s'] * 1e3:.0f}-{r['p75_s'] * 1e3:.0f}", r["time_over_blueberry"]]
                     for name, r in out["results"].items()])
        ratios = out["ratios"]
        line = f"blueberry/ideal time {ratios['ours_over_ideal_time']:.3f}; blueberry vs mask-loop " \
               f"{ratios['speedup_vs_mask_loop']:.2f}x, vs its forced grouped path " \
               f"{ratios['speedup_vs_blueberry_grouped']:.2f}x, loop {ratios['speedup_vs_blueberry_loop']:.2f}x"
        if "speedup_vs_hf-grouped_mm" in ratios:
            line += f", vs hf-grouped_mm {ratios['speedup_vs_hf-grouped_mm']:.2f}x, vs hf-eager " \
                    f"{ratios['speedup_vs_hf-eager']:.2f}x"
        print(line)
        if out["goals"]:
            print("goals: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in out["goals"].items()))
    print(f"\nwrote {write_json(record, args.out, 'moe_layer', record['device'])}")


if __name__ == "__main__":
    main()
