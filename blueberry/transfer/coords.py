"""The coordinate check: train a few steps at several widths and watch each module's activation size.

Tensor Programs V (Yang et al. 2022, §D.1 "coord check") and the `mup` package: under a
parametrization that lets hyperparameters transfer across width (muP, CompleteP), the typical size
of every activation coordinate stays the same as the model widens, at init and after each update;
under sp it grows with width once the optimizer has taken a few steps (an AdamW update moves each
logit by ~ lr x width). A parametrization that is wrong somewhere shows it here in seconds, before
any sweep is spent on it.

For each width, each seed trains `steps` AdamW or Muon steps (the configured lr, no warmup or
schedule, no clipping) on the same windows of the embedded synthetic corpus read as bytes (no
tokenizer to train), recording every module's mean |output| at each forward. The verdict: at the
last step, each module's size at each width over its size at the base width (both averaged over
the seeds) must lie in BAND.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueberry.errors import UserError

BAND = (0.5, 2.0)
# The check's own defaults, under a preset and over any --config file or option.
DEFAULTS = {"n_layers": 2, "seq_len": 32, "batch_size": 2}
# The fields the check reads (the model, the optimizer, the parametrization, the batch); an option
# for any other field (budget, schedule, data, logging) is refused rather than silently ignored.
FIELDS = ("preset", "seed", "data_seed", "batch_size", "seq_len", "dropout", "optimizer", "lr", "muon_lr",
          "muon_momentum", "weight_decay", "beta1", "beta2", "n_layers", "n_heads", "d_ff", "rope_theta", "attention",
          "mla_kv_rank", "mla_q_rank", "mla_rope_dim", "n_experts", "top_k", "expert_d_ff", "n_shared_experts",
          "router", "router_renorm", "param", "base_n_layers", "mup_attn_1_over_d", "mup_zero_readout", "lb_weight",
          "z_loss_weight")
DEFAULT_WIDTHS = (16, 32, 64, 128)
DEFAULT_BASE = 32
VOCAB = 256   # bytes
COORDS_JSON = "coords.json"
COORDS_PNG = "coords.png"


@dataclass
class CoordCheck:
    param: str
    optimizer: str
    lr: float
    widths: list[int]
    base_width: int
    steps: int
    seeds: list[int]
    drop: list[str]
    # module -> width -> mean |output| at each forward (index = updates taken before it), mean over seeds
    sizes: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    def ratios(self, step: int | None = None) -> dict[str, dict[int, float]]:
        """module -> width -> size / size at the base width, at `step` (default: the last)."""
        step = self.steps if step is None else step
        return {module: {w: by_width[w][step] / by_width[self.base_width][step] for w in self.widths}
                for module, by_width in self.sizes.items()}

    def outside(self) -> list[tuple[str, int, float]]:
        """(module, width, ratio) of every ratio at the last step outside BAND (or not finite)."""
        low, high = BAND
        return [(module, w, r) for module, by_width in self.ratios().items() for w, r in by_width.items()
                if not (low <= r <= high)]

    @property
    def passed(self) -> bool:
        return not self.outside()

    def to_json(self) -> dict[str, Any]:
        return {"param": self.param, "optimizer": self.optimizer, "lr": self.lr, "widths": self.widths,
                "base_width": self.base_width, "steps": self.steps, "seeds": self.seeds, "drop": self.drop,
                "band": list(BAND), "passed": self.passed,
                "mean_abs": {m: {str(w): v for w, v in by.items()} for m, by in self.sizes.items()},
                "ratios": {m: {str(w): _finite(r) for w, r in by.items()} for m, by in self.ratios().items()},
                "outside": [{"module": m, "width": w, "ratio": _finite(r)} for m, w, r in self.outside()]}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--widths {text!r}: must be comma-separated integers, e.g. 16,32,64,128") from None
    if len(set(widths)) < 2 or min(widths) < 1:
        raise UserError(f"--widths {text!r}: give at least two different positive widths, e.g. 16,32,64,128")
    return sorted(set(widths))


def width_config(cfg: Any, width: int, base_width: int) -> Any:
    """cfg at d_model = width, d_ff and expert_d_ff scaled with it (cfg's ratios to d_model), the
    base widths those of `base_width`."""
    def scaled(value: int, w: int) -> int:
        return max(1, round(value * w / cfg.d_model))

    return dataclasses.replace(cfg, d_model=width, d_ff=scaled(cfg.d_ff, width),
                               expert_d_ff=scaled(cfg.expert_d_ff, width), base_d_model=base_width,
                               base_d_ff=scaled(cfg.d_ff, base_width),
                               base_expert_d_ff=scaled(cfg.expert_d_ff, base_width))


def check_options(given: list[str]) -> None:
    """Refuse options for fields the check does not read (FIELDS), naming the first."""
    unused = [name for name in given if name not in FIELDS]
    if unused:
        hint = {"d_model": "--widths", "base_d_model": "--base-width", "max_steps": "--steps"}.get(unused[0])
        raise UserError(f"coords: --{unused[0]} does not apply to the coordinate check"
                        + (f" (use {hint})" if hint else "") + f"; it reads {', '.join(FIELDS)}")


def check_setup(cfg: Any, widths: list[int], base_width: int, steps: int, seeds: int) -> list[Any]:
    """Every width's config, validated; UserError (one line) on a setup that cannot run."""
    if base_width not in widths:
        raise UserError(f"--base-width {base_width}: must be one of --widths ({','.join(map(str, widths))}): "
                        "ratios are taken to the base width's activations")
    if steps < 1 or seeds < 1:
        raise UserError(f"--steps {steps} --seeds {seeds}: both must be >= 1")
    configs = []
    for w in widths:
        wc = width_config(cfg, w, base_width)
        try:
            wc.validate()
        except UserError as e:
            raise UserError(f"--widths {w}: {e}") from None
        configs.append(wc)
    return configs


def corpus_bytes(data_seed: int):
    """The embedded synthetic corpus as one byte-token stream (torch.long)."""
    import torch

    from blueberry.data.synthetic_text import generate_documents

    text = "\n".join(generate_documents(200, data_seed)).encode("utf-8")
    return torch.tensor(list(text), dtype=torch.long)


def run_check(cfg: Any, widths: list[int], base_width: int, steps: int, seeds: int,
              drop: frozenset[str] = frozenset()) -> CoordCheck:
    """Train and record (module docstring); `cfg` is the resolved LMConfig (its d_model only sets
    the ratios of d_ff and expert_d_ff to the width)."""
    configs = check_setup(cfg, widths, base_width, steps, seeds)
    tokens = corpus_bytes(cfg.data_seed)
    check = CoordCheck(param=cfg.param, optimizer=cfg.optimizer, lr=cfg.muon_lr if cfg.optimizer == "muon" else cfg.lr,
                       widths=widths, base_width=base_width, steps=steps, seeds=list(range(cfg.seed, cfg.seed + seeds)),
                       drop=sorted(drop))
    for w, wc in zip(widths, configs):
        per_seed = [_train_and_record(wc, tokens, seed, steps, drop) for seed in check.seeds]
        for module in per_seed[0]:
            sizes = [sum(run[module][t] for run in per_seed) / len(per_seed) for t in range(steps + 1)]
            check.sizes.setdefault(module, {})[w] = sizes
    return check


def _train_and_record(cfg: Any, tokens, seed: int, steps: int, drop: frozenset[str]) -> dict[str, list[float]]:
    import torch

    from blueberry.models.lm import Decoder
    from blueberry.models.moe import MoE
    from blueberry.optim.build import build_optimizer
    from blueberry.tasks.lm import LMTask

    torch.manual_seed(seed)
    model = Decoder(cfg, VOCAB, drop_rules=drop).train()
    optimizer = build_optimizer(model, cfg)
    sizes: dict[str, list[float]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output   # MoE, Block, Decoder: (tensor, aux)
            sizes.setdefault(name, []).append(out.detach().abs().mean().item())
        return hook

    model.embed.register_forward_hook(record("embed"))
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(record(f"blocks.{i}.attn"))
        block.ffn.register_forward_hook(record(f"blocks.{i}.{'moe' if isinstance(block.ffn, MoE) else 'ffn'}"))
        block.register_forward_hook(record(f"blocks.{i}.out"))
    model.register_forward_hook(record("lm_head"))
    # The same windows for every width: one generator per seed.
    gen = torch.Generator().manual_seed(seed)
    task = LMTask()
    for step in range(steps + 1):
        starts = torch.randint(0, len(tokens) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        window = torch.stack([tokens[s:s + cfg.seq_len + 1] for s in starts.tolist()])
        loss, _ = task.train_loss(model, (window[:, :-1], window[:, 1:]), cfg)
        if step == steps:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sizes


# --- output ----------------------------------------------------------------------------------------

def write_outputs(check: CoordCheck, out_dir: Path) -> dict[str, Path]:
    """coords.json and coords.png in out_dir (each written whole or not at all)."""
    from blueberry import rundir

    out_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(out_dir / COORDS_JSON, json.dumps(check.to_json(), indent=2) + "\n")
    png = out_dir / COORDS_PNG
    tmp = png.with_name(png.name + ".tmp")
    coords_figure(check).savefig(tmp, format="png")
    tmp.replace(png)
    return {"json": out_dir / COORDS_JSON, "png": png}


def coords_figure(check: CoordCheck):
    """One panel per recorded step (at most 6, the last always): mean |activation| against width,
    one line per module, log-log; the base width marked."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    steps = sorted({round(i * check.steps / 5) for i in range(6)}) if check.steps > 5 else list(range(check.steps + 1))
    fig = Figure(figsize=(3.2 * len(steps), 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(steps), squeeze=False)[0]
    cmap = colormaps["tab10" if len(check.sizes) <= 10 else "tab20"]
    for ax, step in zip(axes, steps):
        for i, (module, by_width) in enumerate(check.sizes.items()):
            ax.plot(check.widths, [by_width[w][step] for w in check.widths], marker="o", ms=3,
                    color=cmap(i % cmap.N), label=module)
        ax.axvline(check.base_width, color="0.7", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"after {step} step{'s' if step != 1 else ''}" if step else "at init", fontsize=9)
    axes[0].set_ylabel("mean |activation|")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    verdict = "passed" if check.passed else f"{len(check.outside())} ratio(s) outside {BAND[0]}-{BAND[1]}"
    fig.suptitle(f"coordinate check: param={check.param}, {check.optimizer} lr={check.lr:g}, base width "
                 f"{check.base_width}" + (f", without {', '.join(check.drop)}" if check.drop else "") + f" — {verdict}",
                 fontsize=10)
    return fig


def ratio_table(check: CoordCheck):
    """A rich Table: each module's size ratio to the base width at the last step, outside BAND in red."""
    from rich.table import Table

    low, high = BAND
    table = Table(title=f"mean |activation| / at width {check.base_width}, after {check.steps} steps "
                        f"(param={check.param}; inside {low:g}-{high:g} passes)")
    table.add_column("module")
    for w in check.widths:
        table.add_column(str(w), justify="right")
    for module, by_width in check.ratios().items():
        cells = [f"{r:.2f}" if low <= r <= high else f"[red]{r:.2f}[/red]" for r in by_width.values()]
        table.add_row(module, *cells)
    return table


def failure_line(check: CoordCheck) -> str:
    """One line naming the modules outside BAND, with their worst ratio and its width."""
    worst: dict[str, tuple[int, float]] = {}
    for module, w, r in check.outside():
        if module not in worst or abs(math.log(r or 1e-30)) > abs(math.log(worst[module][1] or 1e-30)):
            worst[module] = (w, r)
    names = ", ".join(f"{m} (x{r:.2g} at width {w})" for m, (w, r) in worst.items())
    return (f"coords: {len(worst)} module(s) leave {BAND[0]:g}-{BAND[1]:g} x their size at width "
            f"{check.base_width} under param={check.param}: {names}")
