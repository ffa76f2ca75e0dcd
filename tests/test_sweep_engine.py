"""Proposals with W&B's semantics (grid, random, bayes through Optuna) and W&B's hyperband stopping."""

import itertools
import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from blueberry.errors import UserError
from blueberry.sweep.engine import (BayesProposer, _still_running, canonical, grid_points, next_params, sample_random,
                                    sample_value, target_reached)
from blueberry.sweep.hyperband import hyperband_bands, runs_to_stop

GRID = {
    "lr": {"values": [0.001, 0.003, 0.01]},
    "n_layers": {"distribution": "int_uniform", "min": 1, "max": 2},
    "optimizer": {"value": "muon"},
    "reg": {"parameters": {"wd": {"values": [0.0, 0.1]}, "beta": {"value": 0.9}}},
    "d": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
}


def test_grid_is_the_full_product_once_in_wandb_order():
    points = grid_points(GRID)
    assert len(points) == 3 * 2 * 2 * 4
    assert len({canonical(p) for p in points}) == len(points)
    # W&B: parameters by sorted name (nested ones depth first), the first one varying slowest
    assert points[0] == {"d": 0.0, "lr": 0.001, "n_layers": 1, "optimizer": "muon", "reg": {"beta": 0.9, "wd": 0.0}}
    assert points[1]["reg"] == {"beta": 0.9, "wd": 0.1} and points[2]["n_layers"] == 2
    assert [p["d"] for p in points[::12]] == np.arange(0, 1, 0.25).tolist()   # max excluded, as W&B
    for lr, n, wd in itertools.product([0.001, 0.003, 0.01], [1, 2], [0.0, 0.1]):
        assert sum(p["lr"] == lr and p["n_layers"] == n and p["reg"]["wd"] == wd for p in points) == 4


def test_grid_q_uniform_matches_numpy_arange():
    for lo, hi, q in [(0.0, 1.0, 0.1), (0.1, 0.7, 0.2), (64, 256, 64), (1, 2, 0.3), (1.0, 1.0, 0.5)]:
        points = grid_points({"x": {"distribution": "q_uniform", "min": lo, "max": hi, "q": q}})
        assert [p["x"] for p in points] == np.arange(lo, hi, q).tolist()


def test_grid_counts_repeated_values_once():
    assert grid_points({"x": {"values": [1, 1.0, 2, 1]}}) == [{"x": 1}, {"x": 2}]


def test_next_params_walks_the_grid_without_repeats():
    config = {"method": "grid", "parameters": GRID}
    taken = []
    while (params := next_params(config, [], taken, seed=0)) is not None:
        # the runner's state goes through JSON (0.0 may come back as 0 from W&B): still the same point
        taken.append(json.loads(json.dumps(params).replace(": 0.0,", ": 0,")))
    assert len(taken) == 48 and len({canonical(t) for t in taken}) == 48
    # two runners reading the same state (running trials included in taken) propose the same next point,
    # and once it is recorded as taken neither proposes it again
    half = taken[:20]
    first = next_params(config, [], half, seed=0)
    assert first == next_params(config, [], half, seed=1) and canonical(first) not in {canonical(t) for t in half}
    assert canonical(next_params(config, [], [*half, first], seed=0)) != canonical(first)
    assert next_params({**config, "run_cap": 5}, [], taken[:5], seed=0) is None


DISTRIBUTIONS = {
    "uniform": ({"min": -2.0, "max": 3.0}, -2.0, 3.0),
    "int_uniform": ({"min": 3, "max": 7}, 3, 7),
    "q_uniform": ({"min": 0.0, "max": 1.0, "q": 0.25}, 0.0, 1.0),
    "log_uniform": ({"min": math.log(1e-4), "max": math.log(1e-1)}, 1e-4, 1e-1),   # natural-log bounds
    "log_uniform_values": ({"min": 1e-4, "max": 1e-1}, 1e-4, 1e-1),                 # the values themselves
    "q_log_uniform": ({"min": math.log(2.0), "max": math.log(512.0), "q": 2}, 2, 512),
    "q_log_uniform_values": ({"min": 2.0, "max": 512.0, "q": 2}, 2, 512),
    "inv_log_uniform": ({"min": 1.0, "max": 5.0}, math.exp(-5.0), math.exp(-1.0)),
    "inv_log_uniform_values": ({"min": 0.01, "max": 0.5}, 0.01, 0.5),
    "normal": ({"mu": 1.0, "sigma": 0.5}, -math.inf, math.inf),
    "q_normal": ({"mu": 10.0, "sigma": 3.0, "q": 2}, -math.inf, math.inf),
    "log_normal": ({"mu": 0.0, "sigma": 1.0}, 0.0, math.inf),
    "q_log_normal": ({"mu": 2.0, "sigma": 0.5, "q": 0.5}, 0.0, math.inf),
    "beta": ({"a": 2.0, "b": 5.0}, 0.0, 1.0),
    "q_beta": ({"a": 2.0, "b": 2.0, "q": 0.1}, 0.0, 1.0),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_random_samples_fall_in_range(dist):
    spec, lo, hi = DISTRIBUTIONS[dist]
    spec = {"distribution": dist, **spec}
    rng = random.Random(0)
    xs = [sample_value(spec, dist, rng) for _ in range(2000)]
    assert all(lo <= x <= hi for x in xs)
    if "q" in spec:
        assert all(abs(x / spec["q"] - round(x / spec["q"])) < 1e-9 for x in xs)
        assert all(isinstance(x, int) for x in xs) == isinstance(spec["q"], int)
    if dist.startswith(("log_uniform", "inv_log_uniform")):   # spread evenly over the decades
        decades = np.histogram(np.log(xs), bins=3, range=(math.log(lo), math.log(hi)))[0]
        assert decades.min() > 500
    if dist == "int_uniform":
        assert set(xs) == {3, 4, 5, 6, 7}
    if dist == "normal":
        assert abs(np.mean(xs) - 1.0) < 0.05 and abs(np.std(xs) - 0.5) < 0.05


LAWS = {
    "uniform": ({"min": -2.0, "max": 3.0}, stats.uniform(-2.0, 5.0)),
    "log_uniform": ({"min": math.log(1e-4), "max": math.log(1e-1)}, stats.loguniform(1e-4, 1e-1)),
    "log_uniform_values": ({"min": 1e-4, "max": 1e-1}, stats.loguniform(1e-4, 1e-1)),
    "inv_log_uniform": ({"min": 1.0, "max": 5.0}, stats.loguniform(math.exp(-5.0), math.exp(-1.0))),
    "inv_log_uniform_values": ({"min": 0.01, "max": 0.5}, stats.loguniform(0.01, 0.5)),
    "normal": ({"mu": 1.0, "sigma": 1.0}, stats.norm(1.0, 1.0)),
    "log_normal": ({"mu": 0.5, "sigma": 0.8}, stats.lognorm(s=0.8, scale=math.exp(0.5))),
    "beta": ({"a": 2.0, "b": 5.0}, stats.beta(2.0, 5.0)),
}


@pytest.mark.parametrize("dist", sorted(LAWS))
def test_continuous_samples_follow_their_distribution(dist):
    """Not only the range: the draws follow the law (Kolmogorov-Smirnov against scipy's distribution), so
    swapped beta shapes or a log_normal without its exp fail."""
    spec, law = LAWS[dist]
    rng = random.Random(0)
    xs = [sample_value({"distribution": dist, **spec}, dist, rng) for _ in range(2000)]
    assert stats.kstest(xs, law.cdf).pvalue > 1e-3


def test_int_uniform_draws_every_value_equally_often():
    from scipy import stats as st

    rng = random.Random(0)
    xs = [sample_value({"distribution": "int_uniform", "min": 3, "max": 7}, "int_uniform", rng) for _ in range(5000)]
    assert st.chisquare(np.bincount(xs, minlength=8)[3:]).pvalue > 1e-3


def test_unknown_distributions_are_named_in_the_error():
    with pytest.raises(UserError, match="^unknown distribution 'bogus'$"):
        sample_value({}, "bogus", random.Random(0))
    with pytest.raises(UserError, match="^distribution 'normal' cannot be gridded: use values, value, int_uniform or q_uniform$"):
        grid_points({"x": {"distribution": "normal", "mu": 0, "sigma": 1}})


def test_a_normal_without_spread_is_its_mean_and_the_sweep_seed_matters():
    assert sample_value({"mu": 2.5, "sigma": 0.0}, "normal", random.Random(0)) == 2.5
    config = {"method": "random", "parameters": {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0}}}
    assert next_params(config, [], [], seed=0) != next_params(config, [], [], seed=1)


def test_canonical_ignores_mapping_order():
    assert canonical({"a": 1, "b": {"c": 2.0, "d": 3}}) == canonical({"b": {"d": 3, "c": 2}, "a": 1})


def test_metric_target_ends_the_sweep_when_a_finished_trial_reaches_it():
    lower = {"method": "random", "parameters": {"x": {"values": [1, 2]}}, "metric": {"name": "loss", "target": 0.5}}
    higher = {**lower, "metric": {"name": "acc", "target": 0.5, "goal": "maximize"}}
    for config, reached, missed in [(lower, 0.5, 0.51), (higher, 0.5, 0.49)]:
        assert target_reached(config, [({"x": 1}, reached)]) and next_params(config, [({"x": 1}, reached)], [{"x": 1}], 0) is None
        assert not target_reached(config, [({"x": 1}, missed), ({"x": 2}, None), ({"x": 2}, math.nan)])
    assert not target_reached({"metric": {"name": "loss"}}, [({"x": 1}, -1e9)])


def test_next_params_refuses_what_the_local_engine_does_not_run():
    params = {"x": {"values": [1, 2]}}
    for config in ({"method": "hyperopt", "parameters": params},
                   {"method": "random", "parameters": params, "scheduler": {"engine": "custom"}}):
        with pytest.raises(UserError, match=r"^method: '\w+': the local engine runs grid, random and bayes "
                                            r"\(custom schedulers run under wandb sweep-scheduler\)$"):
            next_params(config, [], [], seed=0)
    assert next_params({"method": "random", "parameters": params, "scheduler": {"engine": "wandb"}}, [], [], 0)


def test_bayes_follows_the_goal_and_random_ignores_the_results():
    parameters = {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0}}
    done = [({"x": i / 20}, i / 20) for i in range(20)]           # the metric is x itself
    taken = [p for p, _ in done]
    for goal, better in (("minimize", lambda x: x < 0.5), ("maximize", lambda x: x > 0.5)):
        config = {"method": "bayes", "parameters": parameters, "metric": {"name": "m", "goal": goal}}
        xs = [next_params(config, done, taken, seed)["x"] for seed in range(5)]
        assert sum(map(better, xs)) >= 4, (goal, xs)
    lowest = {"method": "bayes", "parameters": parameters, "metric": {"name": "m"}}   # goal: minimize by default
    assert sum(next_params(lowest, done, taken, seed)["x"] < 0.5 for seed in range(5)) >= 4
    random_config = {"method": "random", "parameters": parameters, "metric": {"name": "m"}}
    flipped = [(p, -v) for p, v in done]
    assert next_params(random_config, done, taken, 3) == next_params(random_config, flipped, taken, 3)


@pytest.mark.parametrize("dist", sorted(set(DISTRIBUTIONS) - {"beta", "q_beta"}))
def test_bayes_maps_every_sampled_value_into_its_space_and_back(dist):
    """A finished trial's value must be told to Optuna as the point that decodes to it again."""
    from blueberry.sweep.engine import _Codec

    spec = {"distribution": dist, **DISTRIBUTIONS[dist][0]}
    codec, rng = _Codec(spec, dist), random.Random(1)
    for v in (sample_value(spec, dist, rng) for _ in range(50)):
        x = codec.encode(v)
        assert codec.distribution._contains(codec.distribution.to_internal_repr(x)), (v, x)
        assert codec.decode(x) == pytest.approx(v, rel=1e-6, abs=1e-9), (v, x)
    with pytest.raises(UserError, match="^distribution 'beta' has no Optuna mapping in the local bayes engine; "
                                        "use method random for it$"):
        _Codec({"a": 1, "b": 1}, "beta")


def test_bayes_sees_taken_but_unfinished_trials_as_running():
    a, b = {"x": 1}, {"x": 2}
    assert _still_running([a, a, b, a], [(a, 0.3), ({"x": 1.0}, 0.2)]) == [b, a]   # two of the three a's ended
    assert _still_running([a], []) == [a] and _still_running([a], [(a, None)]) == []


def test_random_categorical_honours_probabilities_and_nesting():
    params = {"opt": {"values": ["a", "b", "c"], "probabilities": [0.7, 0.0, 0.3]},
              "reg": {"parameters": {"wd": {"values": [0.0, 0.1]}, "k": {"value": 1}}}}
    draws = [sample_random(params, random.Random(i)) for i in range(1000)]
    share = sum(d["opt"] == "a" for d in draws) / len(draws)
    assert 0.65 < share < 0.75 and not any(d["opt"] == "b" for d in draws)
    assert {d["reg"]["wd"] for d in draws} == {0.0, 0.1} and all(d["reg"]["k"] == 1 for d in draws)
    assert sample_random(params, random.Random(5)) == sample_random(params, random.Random(5))


def test_next_params_random_is_deterministic_and_capped():
    config = {"method": "random", "run_cap": 3, "parameters": {"lr": {"distribution": "uniform", "min": 0.0, "max": 1.0}}}
    a = next_params(config, [], [], seed=7)
    assert a == next_params(config, [], [], seed=7) and a != next_params(config, [], [a], seed=7)
    assert next_params(config, [], [a, a, a], seed=7) is None


QUAD = {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0}, "k": {"value": 3}}


def _loss(params):
    return (params["x"] - 0.3) ** 2


def test_bayes_uses_the_told_values_and_beats_random():
    proposer = BayesProposer(QUAD, "minimize", seed=0, n_startup_trials=5)
    xs = []
    for _ in range(30):
        key, params = proposer.suggest()
        assert 0.0 <= params["x"] <= 1.0 and params["k"] == 3
        proposer.tell(key, _loss(params))
        xs.append(params["x"])
    rng = random.Random(0)
    random_xs = [rng.random() for _ in range(30)]
    assert np.mean([abs(x - 0.3) for x in xs[-10:]]) < 0.5 * np.mean([abs(x - 0.3) for x in random_xs[-10:]])
    # maximize the same loss: TPE must move to the far end instead
    proposer = BayesProposer(QUAD, "maximize", seed=0, n_startup_trials=5)
    for _ in range(30):
        key, params = proposer.suggest()
        proposer.tell(key, _loss(params))
    assert proposer.study.best_value > 0.4   # x near 1.0


def test_bayes_rebuilds_from_history():
    history = [({"x": x, "k": 3}, _loss({"x": x})) for x in np.linspace(0.0, 1.0, 12)] + [({"x": 0.5, "k": 3}, None)]
    a = BayesProposer(QUAD, "minimize", seed=3, history=history)
    b = BayesProposer(QUAD, "minimize", seed=3, history=history)
    assert len(a.study.trials) == 13 and a.study.best_value == min(v for _, v in history[:-1])
    assert a.suggest()[1] == b.suggest()[1]
    # the same points told opposite values: the suggestion follows the values
    flipped = BayesProposer(QUAD, "minimize", seed=3, history=[(p, -v) for p, v in history[:-1]])
    near = [BayesProposer(QUAD, "minimize", seed=s, history=history).suggest()[1]["x"] for s in range(5)]
    far = [BayesProposer(QUAD, "minimize", seed=s, history=[(p, -v) for p, v in history[:-1]]).suggest()[1]["x"]
           for s in range(5)]
    assert np.mean([abs(x - 0.3) for x in near]) < np.mean([abs(x - 0.3) for x in far])
    assert flipped.skipped == 0 and BayesProposer(QUAD, history=[({"x": 7.0, "k": 3}, 1.0)]).skipped == 1


def test_bayes_maps_every_distribution_into_range():
    mapped = {name: d for name, d in DISTRIBUTIONS.items() if not name.endswith("beta")}   # no Optuna mapping
    params = {name: {"distribution": name, **spec} for name, (spec, _, _) in mapped.items()}
    params["opt"] = {"values": [[1, 2], {"a": 1}, "x"]}
    history = [(sample_random(params, random.Random(i)), float(i)) for i in range(12)]
    proposer = BayesProposer(params, "minimize", seed=0, history=history)
    assert proposer.skipped == 0
    for _ in range(5):
        key, got = proposer.suggest()
        for name, (spec, lo, hi) in mapped.items():
            assert lo <= got[name] <= hi
            if "q" in spec:
                assert abs(got[name] / spec["q"] - round(got[name] / spec["q"])) < 1e-9
        assert got["opt"] in params["opt"]["values"]
        proposer.tell(key, 1.0)


def test_next_params_bayes_stops_at_target_and_varies_with_state():
    config = {"method": "bayes", "metric": {"name": "loss", "goal": "minimize", "target": 0.01}, "parameters": QUAD}
    first = next_params(config, [], [], seed=0)
    second = next_params(config, [], [first], seed=0)   # first still running
    assert first != second and first == next_params(config, [], [], seed=0)
    assert next_params(config, [(first, 0.5), (second, 0.001)], [first, second], seed=0) is None


# --- hyperband ------------------------------------------------------------------------------------

def test_bands():
    assert hyperband_bands({"type": "hyperband", "min_iter": 2, "eta": 3})[:4] == [2, 6, 18, 54]
    assert hyperband_bands({"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}) == [3, 9]
    assert hyperband_bands({"type": "hyperband", "max_iter": 5, "s": 2, "eta": 2}) == [1, 2]


def test_hyperband_defaults_eta_3_and_edges_of_the_bands():
    """W&B's schema fills eta=3; a band of exactly 1 iteration counts, below 1 the list ends; min_iter
    gives 100 bands (k = 0..99)."""
    assert hyperband_bands({"type": "hyperband", "max_iter": 9, "s": 3}) == [1, 3]
    assert hyperband_bands({"type": "hyperband", "min_iter": 1}) == [3 ** k for k in range(100)]
    histories = {f"r{v}": [float(v)] for v in range(1, 7)}   # six runs at band 1; threshold index int(6 / eta)
    for eta, stopped in [(None, ["r4", "r5", "r6"]), (3, ["r4", "r5", "r6"]), (4, ["r3", "r4", "r5", "r6"])]:
        et = {"type": "hyperband", "min_iter": 1, **({"eta": eta} if eta else {})}
        assert runs_to_stop({"metric": {"name": "loss"}, "early_terminate": et}, histories, set(histories)) == stopped


def test_hyperband_wandb_docstring_example():
    # wandb/sweeps hyperband_stop_runs' own example: only b is stopped
    config = {"metric": {"name": "loss", "goal": "minimize"},
              "early_terminate": {"type": "hyperband", "max_iter": 5, "eta": 2, "s": 2}}
    histories = {"a": [10, 9], "b": [10, 10], "c": [10, 8, 8], "d": [10, 7, 7], "e": [10, 6, 6]}
    assert runs_to_stop(config, histories, running={"b", "c", "d"}) == ["b"]


def test_hyperband_keeps_the_top_third_at_a_band():
    config = {"metric": {"name": "val/loss"}, "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3}}
    histories = {f"r{v}": [9.0, 9.0, float(v)] for v in range(1, 10)}   # 9 runs reached band 3
    stopped = runs_to_stop(config, histories, running=set(histories))
    # W&B's threshold is the value at index int(9/3) = 3: the best 3 (and the 4th) pass
    assert stopped == ["r5", "r6", "r7", "r8", "r9"]
    # strict (W&B's default) judges the value at the band, not the best value since
    late = {**histories, "late": [9.0, 9.0, 8.0, 1.0]}
    assert "late" in runs_to_stop(config, late, running={"late"})
    assert runs_to_stop({**config, "early_terminate": {**config["early_terminate"], "strict": False}}, late,
                        running={"late"}) == []
    # before min_iter nothing is judged, however bad
    early = {**histories, "new": [100.0, 100.0]}
    assert "new" not in runs_to_stop(config, early, running=set(early))


def test_hyperband_strict_and_maximize():
    histories = [[0.5, 0.1], [0.5, 0.6], [0.5, 0.7], [0.5, 0.8]]   # accuracy, maximize
    late_bloomer = [0.5, 0.2, 0.9]
    runs = {"late": late_bloomer, **{f"r{i}": h for i, h in enumerate(histories)}}

    def stops(run, strict):
        et = {"type": "hyperband", "min_iter": 2, "eta": 2, "strict": strict}
        return run in runs_to_stop({"metric": {"name": "acc", "goal": "maximize"}, "early_terminate": et},
                                   runs, running={run})
    assert stops("late", strict=True)            # at band 2: 0.2
    assert not stops("late", strict=False)       # best so far: 0.9
    assert not stops("r3", strict=True)          # 0.8 at band 2
    config = {"metric": {"name": "acc", "goal": "maximize"},
              "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2, "strict": False}}
    all_runs = {i: h for i, h in enumerate([*histories, late_bloomer])}
    assert runs_to_stop(config, all_runs, running={0, 4}) == [0]
    assert runs_to_stop({"metric": {"name": "acc"}}, all_runs, running={0}) == []


@pytest.mark.parametrize("dist, low, high", [("log_uniform_values", 1e-5, 1e-1), ("log_uniform", math.log(1e-5), math.log(1e-1)),
                                             ("inv_log_uniform_values", 1e-5, 1e-1)])
def test_bayes_searches_log_ranges_in_log_space(dist, low, high):
    """A learning-rate range over four decades: bayes proposals (Optuna's random startup) must spread
    evenly over the decades, as W&B's do, not crowd the top one as a linear range would."""
    proposer = BayesProposer({"lr": {"distribution": dist, "min": low, "max": high}}, "minimize", seed=0)
    values = np.array([proposer.suggest()[1]["lr"] for _ in range(400)])
    assert values.min() >= 1e-5 * (1 - 1e-9) and values.max() <= 1e-1 * (1 + 1e-9)
    decades = np.histogram(np.log10(values), bins=[-5, -4, -3, -2, -1])[0] / len(values)
    assert decades.min() > 0.15, decades   # linear sampling puts ~90% in the top decade, ~0.1% in the lowest


def test_next_params_tells_bayes_which_taken_trials_are_still_running():
    """Trials started but not ended are told to TPE as running (its constant liar), so two runners on
    one sweep do not propose the same point: the proposal is the one a proposer told about them makes."""
    from blueberry.sweep.engine import _derived_seed

    config = {"method": "bayes", "metric": {"name": "loss", "goal": "minimize"}, "parameters": QUAD}
    finished = [({"x": float(x), "k": 3}, _loss({"x": x})) for x in np.linspace(0.0, 1.0, 12)]
    running = [{"x": 0.3, "k": 3}] * 3
    taken = [p for p, _ in finished] + running
    seed = _derived_seed(7, len(taken))
    told = BayesProposer(QUAD, "minimize", seed, finished, running).suggest()[1]
    untold = BayesProposer(QUAD, "minimize", seed, finished).suggest()[1]
    assert told != untold
    assert next_params(config, finished, taken, 7) == told


def test_bayes_keeps_q_uniform_proposals_inside_a_range_that_does_not_start_at_zero():
    params = {"x": {"distribution": "q_uniform", "min": 0.5, "max": 2.0, "q": 0.25}}
    xs = [BayesProposer(params, seed=s).suggest()[1]["x"] for s in range(40)]
    assert all(0.5 <= x <= 2.0 for x in xs) and len(set(xs)) > 3


def test_bayes_takes_a_categorical_with_probabilities():
    params = {"opt": {"values": ["adamw", "muon"], "probabilities": [0.5, 0.5]}}
    proposer = BayesProposer(params, history=[({"opt": "muon"}, 1.0)])
    assert proposer.skipped == 0 and proposer.suggest()[1]["opt"] in ("adamw", "muon")


def test_bayes_history_at_the_edges_of_each_space_is_told_not_skipped():
    # a q_log value quantized just below its continuous range (2.5 -> 2) is a value the sweep made
    q_log = {"x": {"distribution": "q_log_uniform_values", "min": 2.5, "max": 100.0, "q": 2}}
    assert BayesProposer(q_log, history=[({"x": 2}, 1.0)]).skipped == 0
    # ... but an unquantized log range has no such values: one outside it is from another space
    log = {"x": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}
    assert BayesProposer(log, history=[({"x": 1e-6}, 1.0)]).skipped == 1
    # q_log_normal rounds small draws to 0; a normal value far in the tail has cdf 1.0
    q_log_normal = {"x": {"distribution": "q_log_normal", "mu": 0.0, "sigma": 1.0, "q": 0.5}}
    assert BayesProposer(q_log_normal, history=[({"x": 0.0}, 1.0)]).skipped == 0
    normal = {"x": {"distribution": "normal", "mu": 0.0, "sigma": 1.0}}
    tail = BayesProposer(normal, history=[({"x": 40.0}, 1.0), ({"x": -40.0}, 2.0)])
    assert tail.skipped == 0 and len(tail.study.trials) == 2
    # sigma 0: every value is mu
    point = {"x": {"distribution": "normal", "mu": 1.5, "sigma": 0.0}}
    fixed = BayesProposer(point, history=[({"x": 1.5}, 1.0)])
    assert fixed.skipped == 0 and fixed.suggest()[1]["x"] == 1.5


def test_bayes_normal_proposals_follow_the_normal():
    params = {"x": {"distribution": "normal", "mu": 0.0, "sigma": 1.0}}
    xs = np.array([BayesProposer(params, seed=s).suggest()[1]["x"] for s in range(200)])
    assert abs(xs.mean()) < 0.3 and 0.7 < xs.std() < 1.3 and np.abs(xs).max() < 5.0


def test_bayes_counts_every_history_entry_outside_the_space_and_records_told_failures():
    outside = [({"x": 7.0, "k": 3}, 1.0), ({"x": -1.0, "k": 3}, 2.0), ({"k": 3}, 3.0)]
    proposer = BayesProposer(QUAD, history=[*outside, ({"x": 0.5, "k": 3}, 0.1)])
    assert proposer.skipped == 3 and len(proposer.study.trials) == 1
    states = []
    for value in (None, math.nan, 0.25):
        key, _ = proposer.suggest()
        proposer.tell(key, value)
        states.append(proposer.study.trials[key].state.name)
    assert states == ["FAIL", "FAIL", "COMPLETE"] and proposer.study.best_value == 0.1
