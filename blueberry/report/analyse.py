"""What a report says about a set of runs: the table, seed groups, a noise-aware ranking, health
warnings and an LR recommendation. Pure Python + numpy; figures live in plots.py.

Noise rule (NOISE_RULE, in noise.py): t-tests with their real degrees of freedom (paired over shared
seeds, else Welch's), the pooled within-config std lent to a config run once and the verdict marked
borrowed; bootstrap intervals of each config's mean.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from blueberry.config import TASK_CONFIGS, RunConfig
from blueberry.errors import UserError
from blueberry.optim.schedules import SCHEDULES, lr_factor
from blueberry.report.load import Run
from blueberry.report.noise import ALPHA, NOISE_RULE, Comparison, compare, mean_interval

# Fields that name or place a run but do not change what it learns.
IDENTITY_FIELDS = frozenset({"name", "out_dir", "resume", "stop_at_step", "cache_dir"})
LR_FIELDS = ("lr", "muon_lr")

# Health thresholds. Each one is a judgement call; they are here so a reader can see and change them.
RISE_TOL = 0.005          # a val metric is "worse than its best" beyond 0.5% of |best|
GAP_LOSS = 0.1            # val loss − train loss at the end, nats
GAP_ACCURACY = 0.10       # train accuracy − val accuracy at the end (scanline gap/*)
LR_END_TOL = 0.05         # |final LR / peak − configured end ratio| beyond this: schedule not completed
COLLAPSE_SHARE = 0.25     # moe/min_share (smallest expert's token share × E) below this: collapsed
DIVERGE_RATIO = 1.2       # train loss at the end above 1.2 × its first value: diverged


def is_identity(name: str) -> bool:
    return name in IDENTITY_FIELDS or name.startswith("wandb_")


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any) -> str:
    """Short, stable text for a config value or number (also used for group labels)."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


# --- the metric ----------------------------------------------------------------------------------

@dataclass
class MetricSpec:
    name: str        # as asked: the sweep's metric, --metric, or the runs' best metric (may be *_best)
    curve: str       # the per-evaluation metric behind it (val/loss for val/loss_best): the curves
    mode: str        # "min" | "max"
    rank_by: str     # "best" (best value over the run, as W&B's sweep controller judges it) | "final" (last value)
    source: str      # where the name came from

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b


def auto_mode(name: str) -> str:
    base = name[: -len("_best")] if name.endswith("_best") else name
    return "min" if base.endswith(("loss", "perplexity")) else "max"


def resolve_metric(runs: list[Run], metric: str | None = None, sweep_metric: str | None = None,
                   sweep_goal: str | None = None) -> MetricSpec:
    """The metric the report ranks by: --metric, else the sweep's, else the runs' summary best metric
    (the most common one), else the task's default."""
    if metric:
        name, source = metric, "--metric"
    elif sweep_metric:
        name, source = sweep_metric, "sweep.yaml metric.name"
    else:
        named = Counter((r.summary.get("best") or {}).get("metric") for r in runs)
        named.pop(None, None)
        if named:
            name, source = named.most_common(1)[0][0], "summary.json best.metric"
        else:
            tasks = Counter(r.task for r in runs)
            task = TASK_CONFIGS.get(tasks.most_common(1)[0][0] if tasks else "")
            name, source = task.default_best_metric if task else "val/loss", "task default"
    logged = {k for r in runs for row in r.rows for k in row}
    curve = name
    if name.endswith("_best") and name[: -len("_best")] in logged:
        curve = name[: -len("_best")]
    if curve not in logged and not any((r.summary.get("best") or {}).get("metric") == curve for r in runs):
        shown = sorted(k for k in logged if k.startswith(("val/", "train/", "gap/")) and "layer" not in k)
        raise UserError(f"metric={name!r}: no run logged it; logged metrics: {', '.join(shown) or 'none'}")
    if sweep_goal and name in (sweep_metric, f"{curve}_best", curve) and (not metric or metric == sweep_metric):
        mode = "max" if sweep_goal == "maximize" else "min"
    else:
        modes = Counter((r.summary.get("best") or {}).get("mode") for r in runs
                        if (r.summary.get("best") or {}).get("metric") == curve)
        modes.pop(None, None)
        mode = modes.most_common(1)[0][0] if modes else auto_mode(name)
    # A run's best value, whatever the name: W&B's controller judges a sweep's runs by the best of their
    # history (SweepRun.metric_extremum) and `sweep local` ranks its trials so; the table shows the final.
    return MetricSpec(name=name, curve=curve, mode=mode, rank_by="best", source=source)


# --- per-run numbers -----------------------------------------------------------------------------

@dataclass
class RunStats:
    name: str
    evals: list[tuple[int, float, float | None]]    # (step, value, wall time) of the curve metric
    best: float | None
    best_step: int | None
    final: float | None
    final_step: int | None
    degradation_pct: float | None    # final vs best, % of |best|; > 0 = final is worse
    steps: int | None
    max_steps: int | None
    seen: float | None               # tokens or samples
    epochs: float | None
    wall_time_s: float | None
    throughput: float | None         # median train tokens/s or samples/s
    params_total: int | None
    params_active: int | None
    status: str | None
    value: float | None              # what the ranking uses: best or final, as MetricSpec.rank_by


def eval_points(run: Run, key: str) -> list[tuple[int, float, float | None]]:
    pts = [(int(r["step"]), float(r[key]), r.get("time")) for r in run.rows
           if key in r and "step" in r and isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]
    return sorted(pts, key=lambda p: p[0])


def train_rows(run: Run, key: str = "train/loss") -> list[tuple[int, float]]:
    return [(s, v) for s, v, _ in eval_points(run, key)]


def _last(run: Run, key: str) -> Any:
    value = None
    for r in run.rows:
        if key in r:
            value = r[key]
    return value


def run_stats(run: Run, spec: MetricSpec) -> RunStats:
    evals = eval_points(run, spec.curve)
    good = [(s, v) for s, v, _ in evals if math.isfinite(v)]
    best = best_step = None
    for s, v in good:
        if best is None or spec.better(v, best):
            best, best_step = v, s
    sb = run.summary.get("best") or {}
    if best is None and sb.get("metric") == spec.curve and finite(sb.get("value")):
        best, best_step = float(sb["value"]), sb.get("step")
    final, final_step = (evals[-1][1], evals[-1][0]) if evals else (None, None)
    if final is None and finite((run.summary.get("final") or {}).get(spec.curve)):
        final, final_step = float(run.summary["final"][spec.curve]), run.summary.get("step")
    degradation = None
    if finite(best) and best != 0 and final is not None:
        worse = (final - best) if spec.mode == "min" else (best - final)
        degradation = 100.0 * worse / abs(best) if math.isfinite(final) else math.inf
    unit = run.unit
    steps = run.summary.get("step")
    if steps is None:
        steps = max((r["step"] for r in run.rows if "step" in r), default=None)
    rates = [v for _, v in train_rows(run, f"train/{unit}_per_s")][1:]   # the first includes start-up
    times = [r["time"] for r in run.rows if finite(r.get("time"))]
    params = run.summary.get("params") or {}
    value = best if spec.rank_by == "best" else final
    return RunStats(
        name=run.name, evals=evals, best=best, best_step=best_step, final=final, final_step=final_step,
        degradation_pct=degradation, steps=steps,
        max_steps=run.summary.get("max_steps", run.config.get("max_steps")),
        seen=run.summary.get(f"{unit}_seen", _last(run, f"{unit}_seen")),
        epochs=run.summary.get("epochs", _last(run, "epochs")),
        wall_time_s=run.summary.get("wall_time_s", max(times) if times else None),
        throughput=float(np.median(rates)) if rates else None,
        params_total=params.get("total"), params_active=params.get("active"),
        status=run.summary.get("status") or (run.trial or {}).get("status"),
        value=value if finite(value) else None)


# --- which fields differ, seed groups --------------------------------------------------------------

def differing_fields(runs: list[Run]) -> list[str]:
    """Config fields whose value is not the same in every run (identity fields left out), in config order."""
    order: list[str] = []
    for r in runs:
        order += [k for k in r.config if k not in order]
    return [k for k in order if not is_identity(k)
            and len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def config_key(run: Run, leave_out: tuple[str, ...] = ("seed",)) -> str:
    return json.dumps({k: v for k, v in sorted(run.config.items()) if not is_identity(k) and k not in leave_out},
                      sort_keys=True, default=str)


def label(config: dict[str, Any], fields: list[str]) -> str:
    return " ".join(f"{k}={fmt(config.get(k))}" for k in fields) or "all runs"


@dataclass
class SeedGroup:
    label: str                # the differing fields but seed, e.g. "lr=0.001 optimizer=adamw"
    runs: list[str]
    seeds: list[Any]
    values: list[float]       # the ranked value of each run that has one
    n: int
    mean: float | None
    std: float | None         # over seeds (ddof 1); None under 2 values or 2 distinct seeds
    ci_low: float | None = None    # bootstrap interval of the mean (noise.CONFIDENCE); None under 2 values
    ci_high: float | None = None
    rank: int | None = None
    delta_to_leader: float | None = None
    within_noise_of_leader: bool | None = None   # None: no noise estimate
    p_vs_leader: float | None = None
    test_vs_leader: str | None = None            # paired | welch | borrowed (another config's spread)
    value_seeds: list[Any] = field(default_factory=list)   # the seed of each entry of values


@dataclass
class Pair:
    a: str
    b: str
    delta: float              # mean(b) − mean(a), a ranked above b
    test: str | None          # paired | welch | borrowed (a side borrowed the pooled std); None: unknown
    p_value: float | None
    dof: float | None
    within_noise: bool | None


def seed_groups(runs: list[Run], stats: dict[str, RunStats], fields: list[str]) -> list[SeedGroup]:
    """Runs whose configs differ only in `seed` (and identity fields), in first-seen order."""
    shown = [f for f in fields if f != "seed"]
    by_key: dict[str, list[Run]] = {}
    for r in runs:
        by_key.setdefault(config_key(r), []).append(r)
    groups = []
    for members in by_key.values():
        valued = [r for r in members if stats[r.name].value is not None]
        values = [stats[r.name].value for r in valued]
        # Reruns with the same seed measure only nondeterminism, which understates seed noise.
        seeded = len({json.dumps(r.config.get("seed")) for r in members}) >= 2
        ci = mean_interval(values) if seeded else None
        groups.append(SeedGroup(
            label=label(members[0].config, shown), runs=[r.name for r in members],
            seeds=[r.config.get("seed") for r in members], values=values, n=len(values),
            mean=float(np.mean(values)) if values else None,
            std=float(np.std(values, ddof=1)) if len(values) >= 2 and seeded else None,
            ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
            value_seeds=[r.config.get("seed") for r in valued]))
    return groups


def pooled_dof(groups: list[SeedGroup]) -> int:
    """Degrees of freedom of the pooled std: Σ(n_i−1) over configs with their own spread."""
    return sum(g.n - 1 for g in groups if g.std is not None)


def pooled_std(groups: list[SeedGroup]) -> float | None:
    """sqrt(Σ(n_i−1)s_i² / Σ(n_i−1)) over configs run with ≥ 2 seeds: the seed noise of this setup."""
    dof = pooled_dof(groups)
    if not dof:
        return None
    return math.sqrt(sum((g.n - 1) * g.std ** 2 for g in groups if g.std is not None) / dof)


def rank_groups(groups: list[SeedGroup], spec: MetricSpec) -> tuple[list[SeedGroup], list[Pair], float | None]:
    """Groups best first (those without a value last), with each vs the leader and each vs the next."""
    valued = sorted((g for g in groups if g.mean is not None), key=lambda g: g.mean,
                    reverse=spec.mode == "max")
    pooled, dof = pooled_std(groups), pooled_dof(groups)
    pairs: list[Pair] = []

    def pair(a: SeedGroup, b: SeedGroup) -> Pair:
        c: Comparison = compare(a.values, a.value_seeds, b.values, b.value_seeds, pooled, dof)
        return Pair(a.label, b.label, b.mean - a.mean, c.test, c.p_value, c.dof, c.within_noise)

    for i, g in enumerate(valued):
        g.rank = i + 1
        if i == 0:
            g.delta_to_leader, g.within_noise_of_leader = 0.0, True
            continue
        p = pair(valued[0], g)
        g.delta_to_leader, g.within_noise_of_leader = p.delta, p.within_noise
        g.p_vs_leader, g.test_vs_leader = p.p_value, p.test
        pairs.append(p)
        if i >= 2:
            pairs.append(pair(valued[i - 1], g))
    return valued + [g for g in groups if g.mean is None], pairs, pooled


def verdict(within: bool | None, test: str | None, p: float | None) -> str:
    """'within noise' / 'apart' / 'unknown' with the p-value and the test, e.g. "apart (p=0.003,
    paired)"; a verdict on a borrowed spread says so."""
    if within is None:
        return "unknown (no repeats)"
    word = "within noise" if within else "apart"
    return f"{word} (p={p:.2g}, {'borrowed std' if test == 'borrowed' else test})" if p is not None else word


def interval(low: float | None, high: float | None) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""


def noise_note(groups: list[SeedGroup], pooled: float | None, spec: MetricSpec) -> str:
    valued = [g for g in groups if g.mean is not None]
    if len(valued) < 2 and all(g.n < 2 for g in valued):
        return "one config only: nothing to rank"
    if pooled is None:
        return ("no seed repeats (every config ran with one seed): differences between configs cannot be told "
                "from seed noise; rerun the top configs with 2-3 more seeds")
    repeated = [g for g in groups if g.std is not None]
    ties = [g.label for g in valued[1:] if g.within_noise_of_leader]
    text = (f"seed noise of {spec.name}: pooled std {pooled:.3g} over {len(repeated)} config(s) with repeats; "
            f"rule: {NOISE_RULE}")
    if ties:
        text += f". Within noise of the leader ({valued[0].label}): {', '.join(ties)}"
    borrowed = [g.label for g in valued if g.test_vs_leader == "borrowed"]
    if borrowed:
        text += (f". Verdicts that borrow the pooled std (a config without its own seed repeats): "
                 f"{', '.join(borrowed)}; rerun them with more seeds to be sure")
    return text


# --- health warnings -----------------------------------------------------------------------------

@dataclass
class HealthWarning:
    run: str
    kind: str                  # overfit | gap | schedule | unfinished | epochs | leakage | near-duplicates | collapse | nan | divergence | failed
    message: str
    step: int | None = None
    severity: str = "warning"  # warning | note


def check_rise(run: Run, st: RunStats, spec: MetricSpec) -> list[HealthWarning]:
    """The val metric got worse after its best: onset = first eval after the best worse by > RISE_TOL·|best|."""
    if st.best is None or st.best_step is None or st.final is None or not math.isfinite(st.final):
        return []
    tol = RISE_TOL * abs(st.best)

    def worse(v: float) -> bool:
        return (v - st.best > tol) if spec.mode == "min" else (st.best - v > tol)

    if not worse(st.final):
        return []
    onset = next((s for s, v, _ in st.evals if s > st.best_step and math.isfinite(v) and worse(v)), st.final_step)
    verb = "rose" if spec.mode == "min" else "fell"
    return [HealthWarning(run.name, "overfit", (
        f"{spec.curve} {verb} after its best {st.best:.4g} at step {st.best_step}: worse from step {onset} on, "
        f"final {st.final:.4g} ({st.degradation_pct:+.1f}%); use the best checkpoint, not the final one"),
        step=onset)]


def check_gap(run: Run) -> list[HealthWarning]:
    last = next((r for r in reversed(run.rows) if any(k.startswith("gap/") for k in r)), None)
    if last is not None:   # scanline: gap/<m> = train − val on un-augmented train windows
        found = []
        if finite(last.get("gap/loss")) and -last["gap/loss"] > GAP_LOSS:
            found.append(f"val loss − train loss {-last['gap/loss']:.3g} > {GAP_LOSS}")
        for k in ("gap/accuracy", "gap/balanced_accuracy"):
            if finite(last.get(k)) and last[k] > GAP_ACCURACY:
                found.append(f"train − val {k[4:]} {last[k]:.3g} > {GAP_ACCURACY}")
        if found:
            return [HealthWarning(run.name, "gap", f"train/val gap at step {last.get('step')}: {'; '.join(found)} "
                                  "(overfitting: more data or augmentation, more regularisation, or an earlier checkpoint)",
                                  step=last.get("step"))]
        return []
    vals = eval_points(run, "val/loss")
    trains = train_rows(run)
    if not vals or not trains or not math.isfinite(vals[-1][1]):
        return []
    step, val, _ = vals[-1]
    recent = [v for s, v in trains if s <= step][-5:] or [v for _, v in trains][-5:]
    train = float(np.mean(recent))
    if not math.isfinite(train) or val - train <= GAP_LOSS:
        return []
    text = f"val loss − train loss at step {step}: {val:.4g} − {train:.4g} = {val - train:.3g} > {GAP_LOSS}"
    epochs = next((r["epochs"] for r in reversed(run.rows) if r.get("step", math.inf) <= step and finite(r.get("epochs"))),
                  run.summary.get("epochs"))
    if finite(epochs) and epochs < 1.0:
        # every train batch so far was new to the model, so train loss is itself a held-out loss
        return [HealthWarning(run.name, "gap", f"{text} after {epochs:.2f} epochs: not overfitting (no train text "
                              "seen twice yet); val differs from train (another source or domain?)",
                              step=step, severity="note")]
    return [HealthWarning(run.name, "gap", f"{text} (overfitting or a train/val mismatch)", step=step)]


def check_schedule(run: Run, st: RunStats) -> list[HealthWarning]:
    """A run that stopped before max_steps, or a final logged LR far from the configured end LR.

    The expected end LR is the trainer's lr_factor at the last step (plateau is not checked).
    """
    cfg, max_steps, step, status = run.config, st.max_steps, st.steps, run.summary.get("status")
    out = []
    if max_steps and step is not None and (step < max_steps or (status and status != "finished")):
        why = {"early_stopped": "early stopping", "stopped": "stop_at_step", "preempted": "preemption",
               "interrupted": "an interrupt", "failed": "a failure", "running": "nothing recorded (still running, or killed)"}
        out.append(HealthWarning(run.name, "unfinished", (
            f"stopped at step {step} of max_steps {max_steps} (status {status or 'unknown'}: "
            f"{why.get(status, 'unknown cause')}): its LR schedule did not complete"
            + ("; resume it to finish" if status in ("stopped", "preempted", "interrupted", "running") else "")),
            step=step))
        return out
    schedule = cfg.get("schedule")
    if schedule not in SCHEDULES or schedule == "plateau" or not max_steps:   # plateau's end depends on the run
        return out
    warmup = int(cfg.get("warmup_steps") or 0)
    if warmup >= max_steps:
        return [HealthWarning(run.name, "schedule", f"warmup_steps {warmup} ≥ max_steps {max_steps}: "
                              "the run never left warmup", step=step)]
    # the trainer's own formula at the last step, with the run's fields over the defaults
    end = lr_factor(max_steps - 1, SimpleNamespace(**{**RunConfig().to_dict(), **cfg, "max_steps": max_steps}))
    peaks = {"lr": cfg.get("lr")}
    if cfg.get("optimizer") == "muon":
        peaks["muon_lr"] = cfg.get("muon_lr")
    for key, peak in peaks.items():
        logged = train_rows(run, key)
        if not finite(peak) or not peak or not logged:
            continue
        last_step, last_lr = logged[-1]
        if max_steps and last_step < max_steps:
            continue   # the final step was not logged; an earlier LR says little about the end
        ratio = last_lr / peak
        if abs(ratio - end) > LR_END_TOL:
            out.append(HealthWarning(run.name, "schedule", (
                f"{key} at the last step {last_step} is {last_lr:.3g} = {ratio:.3g}× peak, but a {schedule} "
                f"schedule ends at {end:.3g}× peak ({peak * end:.3g}): the schedule did not run its course "
                "(counted in the wrong unit, e.g. micro-batches or processes?)"), step=last_step))
    return out


def check_epochs(run: Run, st: RunStats) -> list[HealthWarning]:
    epochs = st.epochs
    if not finite(epochs) or epochs <= 1.0 + 1e-9:
        return []
    lm = run.task != "scanline"   # classifiers train for many epochs by design; an LM should not repeat text
    return [HealthWarning(run.name, "epochs", (
        f"saw its train data {epochs:.2f} times (epochs > 1): repeated data"
        + ("; val loss can keep falling while the model memorises, compare with unique tokens"
           f" ({(run.summary.get('data') or {}).get('unique_train_tokens', '?')})" if lm else "")),
        severity="warning" if lm else "note")]


def check_leakage(run: Run) -> list[HealthWarning]:
    data = run.summary.get("data") or {}
    frac, limit = data.get("leak_fraction"), run.config.get("leak_warn", 0.01)
    if not finite(frac) or not finite(limit) or frac <= limit:
        return []
    return [HealthWarning(run.name, "leakage", (
        f"{frac:.1%} of val windows share a {data.get('leak_ngram', run.config.get('leak_ngram', '?'))}-token span "
        f"with train (leak_warn {limit:g}): val metrics overstate generalisation; deduplicate the corpus"))]


def check_near_duplicates(run: Run) -> list[HealthWarning]:
    """Near-duplicate documents the data pass found (clusters, documents, rate) above dedup_warn."""
    data = run.summary.get("data") or {}
    rate, limit = data.get("near_dup_rate"), run.config.get("dedup_warn", 0.01)
    if not finite(rate) or not finite(limit) or rate <= limit:
        return []
    done = {"group": "kept on one side of the split; train repeats their text",
            "drop": f"{data.get('near_dup_redundant', '?')} copies dropped"}.get(data.get("dedup"), "")
    return [HealthWarning(run.name, "near-duplicates", (
        f"{data.get('near_dup_clusters', '?')} clusters of near-duplicate documents, {data.get('near_dup_docs', '?')} "
        f"documents ({rate:.1%} of {data.get('docs_before_dedup', '?')}; dedup_warn {limit:g})"
        + (f": {done}" if done else "")), severity="warning" if data.get("dedup") == "group" else "note")]


def check_collapse(run: Run) -> list[HealthWarning]:
    last = next((r for r in reversed(run.rows) if finite(r.get("moe/min_share"))), None)
    if last is None or last["moe/min_share"] >= COLLAPSE_SHARE:
        return []
    shares = {k: v for k, v in last.items() if k.startswith("moe/layer") and "/expert" in k and finite(v)}
    worst = min(shares, key=shares.get) if shares else None
    return [HealthWarning(run.name, "collapse", (
        f"moe/min_share {last['moe/min_share']:.3g} at step {last.get('step')} (smallest expert's token share × "
        f"experts; < {COLLAPSE_SHARE} = collapsed)" + (f": {worst[4:]} gets {shares[worst]:.1%} of tokens" if worst else "")
        + "; raise lb_weight or try bias_update_rate"), step=last.get("step"))]


def check_divergence(run: Run, spec: MetricSpec) -> list[HealthWarning]:
    out = []
    for key in dict.fromkeys(("train/loss", "val/loss", spec.curve)):
        bad = next((r["step"] for r in run.rows if key in r and isinstance(r[key], float) and not math.isfinite(r[key])),
                   None)
        if bad is not None:
            out.append(HealthWarning(run.name, "nan", f"{key} is not finite (NaN/inf) from step {bad}: the run diverged",
                                     step=bad))
            break
    losses = [(s, v) for s, v in train_rows(run) if math.isfinite(v)]
    if not out and len(losses) >= 4 and losses[0][1] > 0:
        end = float(np.median([v for _, v in losses[-3:]]))
        if end > DIVERGE_RATIO * losses[0][1]:
            out.append(HealthWarning(run.name, "divergence", (
                f"train/loss at the end {end:.4g} is {end / losses[0][1]:.2f}× its start {losses[0][1]:.4g}: "
                "diverged (lower the LR, longer warmup, check grad_clip)"), step=losses[-1][0]))
    if run.summary.get("status") == "failed" or (run.trial or {}).get("status") == "failed":
        out.append(HealthWarning(run.name, "failed", "the run failed"
                                 + (f" (see {run.path.parent.parent / 'output.log'})" if run.trial and run.path else "")))
    return out


def health_warnings(run: Run, st: RunStats, spec: MetricSpec) -> list[HealthWarning]:
    return (check_divergence(run, spec) + check_rise(run, st, spec) + check_gap(run) + check_schedule(run, st)
            + check_epochs(run, st) + check_leakage(run) + check_near_duplicates(run) + check_collapse(run))


# --- LR recommendation ---------------------------------------------------------------------------

@dataclass
class LRPoint:
    lr: float
    n: int
    mean: float
    std: float | None
    runs: list[str]
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    p_vs_best: float | None = None
    test_vs_best: str | None = None


@dataclass
class LRRecommendation:
    param: str                         # lr | muon_lr
    series: dict[str, Any]             # the other differing fields, fixed along this curve
    best_lr: float
    best_mean: float
    within_noise: list[float]          # LRs whose mean is within noise of the best (the best included)
    range: tuple[float, float]
    points: list[LRPoint]
    notes: list[str] = field(default_factory=list)


def lr_recommendations(runs: list[Run], stats: dict[str, RunStats], fields: list[str], spec: MetricSpec,
                       pooled: float | None, dof: int = 0) -> list[LRRecommendation]:
    """Per LR field that differs, and per setting of the other differing fields: the best LR and the
    LRs within noise of it. When no such series has two LRs (a random search), one marginal curve."""
    out = []
    for key in (k for k in LR_FIELDS if k in fields):
        usable = [r for r in runs if finite(r.config.get(key)) and stats[r.name].value is not None
                  and (key != "muon_lr" or r.config.get("optimizer") == "muon")]
        others = [f for f in fields if f not in ("seed", key) and not is_identity(f)]
        series: dict[str, list[Run]] = {}
        for r in usable:
            series.setdefault(json.dumps({f: r.config.get(f) for f in others}, sort_keys=True, default=str), []).append(r)
        found = [(json.loads(k), rs) for k, rs in series.items() if len({r.config[key] for r in rs}) >= 2]
        marginal = False
        if not found and len({r.config[key] for r in usable}) >= 2:
            found, marginal = [({}, usable)], True
        for fixed, rs in found:
            rec = _recommend(key, fixed, rs, stats, spec, pooled, dof)
            if marginal:
                rec.notes.append(f"other fields vary too ({', '.join(others)}): this is the marginal over them")
            out.append(rec)
    return out


def _recommend(key: str, fixed: dict, runs: list[Run], stats: dict[str, RunStats], spec: MetricSpec,
               pooled: float | None, dof: int) -> LRRecommendation:
    by_lr: dict[float, list[Run]] = {}
    for r in runs:
        by_lr.setdefault(float(r.config[key]), []).append(r)
    points = []
    for lr in sorted(by_lr):
        vals = [stats[r.name].value for r in by_lr[lr]]
        points.append(LRPoint(lr, len(vals), float(np.mean(vals)),
                              float(np.std(vals, ddof=1)) if len(vals) >= 2 else None, [r.name for r in by_lr[lr]],
                              vals, [r.config.get("seed") for r in by_lr[lr]]))
    best = min(points, key=lambda p: p.mean if spec.mode == "min" else -p.mean)
    notes, within = [], []
    for p in points:
        if p is not best:
            c = compare(best.values, best.seeds, p.values, p.seeds, pooled, dof)
            p.p_vs_best, p.test_vs_best = c.p_value, c.test
        if p is best or c.within_noise:
            within.append(p.lr)
    if pooled is None and all(p.std is None for p in points):
        notes.append("no seed repeats: the range within noise is unknown (only the best LR is given)")
    if best.lr == points[-1].lr:
        notes.append(f"the best {key} is the largest tried: extend the search upward")
    elif best.lr == points[0].lr:
        notes.append(f"the best {key} is the smallest tried: extend the search downward")
    return LRRecommendation(param=key, series=fixed, best_lr=best.lr, best_mean=best.mean, within_noise=within,
                            range=(min(within), max(within)), points=points, notes=notes)


# --- everything ----------------------------------------------------------------------------------

@dataclass
class Analysis:
    metric: MetricSpec
    fields: list[str]                    # config fields that differ between the runs
    stats: dict[str, RunStats]           # by run name
    columns: list[str]
    table: list[dict[str, Any]]          # one row per run, ranked (best first)
    groups: list[SeedGroup]              # ranked
    pairs: list[Pair]
    pooled_std: float | None
    noise_note: str
    warnings: list[HealthWarning]
    lr: list[LRRecommendation]

    @property
    def has_seed_repeats(self) -> bool:
        return self.pooled_std is not None

    def to_json(self) -> dict[str, Any]:
        """Everything but the per-eval curves, JSON-safe (NaN/inf become null)."""
        return clean({
            "metric": asdict(self.metric), "fields": self.fields, "noise_rule": NOISE_RULE, "alpha": ALPHA,
            "noise": self.noise_note, "pooled_std": self.pooled_std,
            "ranking": [asdict(g) for g in self.groups], "pairs": [asdict(p) for p in self.pairs],
            "warnings": [asdict(w) for w in self.warnings],
            "lr_recommendation": [asdict(r) for r in self.lr], "columns": self.columns, "table": self.table})


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats → None, tuples → lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return clean(obj.item())
    return obj


def analyse(runs: list[Run], metric: str | None = None, sweep_metric: str | None = None,
            sweep_goal: str | None = None) -> Analysis:
    spec = resolve_metric(runs, metric, sweep_metric, sweep_goal)
    stats = {r.name: run_stats(r, spec) for r in runs}
    fields = differing_fields(runs)
    groups, pairs, pooled = rank_groups(seed_groups(runs, stats, fields), spec)
    warnings = [w for r in runs for w in health_warnings(r, stats[r.name], spec)]
    columns, table = make_table(runs, stats, fields, groups, warnings, spec)
    return Analysis(metric=spec, fields=fields, stats=stats, columns=columns, table=table, groups=groups,
                    pairs=pairs, pooled_std=pooled, noise_note=noise_note(groups, pooled, spec), warnings=warnings,
                    lr=lr_recommendations(runs, stats, fields, spec, pooled, pooled_dof(groups)))


def make_table(runs: list[Run], stats: dict[str, RunStats], fields: list[str], groups: list[SeedGroup],
               warnings: list[HealthWarning], spec: MetricSpec) -> tuple[list[str], list[dict[str, Any]]]:
    units = {r.unit for r in runs}
    unit = units.pop() if len(units) == 1 else "items"
    group_of = {name: g for g in groups for name in g.runs}
    n_warn = Counter(w.run for w in warnings if w.severity == "warning")
    columns = ["name", *fields, "best", "final", "best_step", "degradation_%", "steps", "max_steps",
               f"{unit}_seen", "epochs", "wall_time_s", f"{unit}_per_s", "params_total", "params_active",
               "status", "group", "group_rank", "group_mean", "ci95_low", "ci95_high", "within_noise_of_leader",
               "p_vs_leader", "noise_test", "warnings", "metric", "path"]
    rows = []
    for r in runs:
        st, g = stats[r.name], group_of.get(r.name)
        row = {"name": r.name, **{f: r.config.get(f) for f in fields}, "best": st.best, "final": st.final,
               "best_step": st.best_step, "degradation_%": st.degradation_pct, "steps": st.steps,
               "max_steps": st.max_steps, f"{unit}_seen": st.seen, "epochs": st.epochs,
               "wall_time_s": st.wall_time_s, f"{unit}_per_s": st.throughput, "params_total": st.params_total,
               "params_active": st.params_active, "status": st.status, "group": g.label if g else None,
               "group_rank": g.rank if g else None, "group_mean": g.mean if g else None,
               "ci95_low": g.ci_low if g else None, "ci95_high": g.ci_high if g else None,
               "within_noise_of_leader": g.within_noise_of_leader if g else None,
               "p_vs_leader": g.p_vs_leader if g else None, "noise_test": g.test_vs_leader if g else None,
               "warnings": n_warn.get(r.name, 0), "metric": spec.name,
               "path": str(r.path) if r.path else (r.url or "")}
        rows.append(row)

    def order(row):
        v = stats[row["name"]].value
        return (v is None, 0.0 if v is None else (v if spec.mode == "min" else -v))

    return columns, sorted(rows, key=order)
