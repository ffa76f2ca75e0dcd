"""Mutation testing of the modules that read config fields, against their fast tests (mutmut 3).

Not a test and not run in CI (each module takes minutes on 2 cores). mutmut changes one thing at a
time in a module (an operator, a constant, a condition, a dropped call) and runs the tests that
cover the changed function; a mutant no test notices "survives". Survivors are either gaps in the
tests (write the test that kills them) or equivalent mutants (the change cannot alter behaviour);
each run writes them, with their diffs, to benchmarks/results/mutation-<module>.txt, and prints
the mutation score (killed / mutants) per module for docs/development.md.

    pip install -e '.[dev]'
    python benchmarks/mutation.py                          # every module in MODULE_TESTS
    python benchmarks/mutation.py sweep/engine.py config.py   # some of them
    python benchmarks/mutation.py --max-children 2 optim/schedules.py

Each module runs in a temporary copy of the project (mutmut writes its mutants/ folder there), so
the working tree is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# module (under blueberry/) -> the fast tests that claim its behaviour. Keep each list to tests
# that run in seconds: mutmut runs only the tests that reach a mutated function, once per mutant.
MODULE_TESTS = {
    "config.py": ["tests/test_config.py", "tests/test_config_edges.py",
                  "tests/test_scanline_fields.py::test_scanline_field_relations_are_checked"],
    "sweep/engine.py": ["tests/test_sweep_engine.py"],
    "sweep/hyperband.py": ["tests/test_sweep_engine.py"],
    "optim/schedules.py": ["tests/test_schedules.py", "tests/test_schedule_edges.py"],
    "optim/build.py": ["tests/test_optim.py"],
    "data/packing.py": ["tests/test_packing.py", "tests/test_packing_edges.py"],
    "data/leakage.py": ["tests/test_packing.py", "tests/test_tokenizer_cache.py", "tests/test_leakage.py"],
    "data/stm_synthetic.py": ["tests/test_stm_synthetic.py", "tests/test_stm_synthetic_parts.py"],
    "models/moe.py": ["tests/test_moe.py", "tests/test_moe_parts.py"],
    "models/attention.py": ["tests/test_attention.py", "tests/test_attention_parts.py"],
    "report/analyse.py": ["tests/test_report_analyse.py", "tests/test_report_stats.py",
                          "tests/test_report_health.py", "tests/test_noise_verdicts.py"],
    "train/trainer.py": ["tests/test_trainer_units.py",
                         "tests/test_run_records.py::test_a_non_finite_evaluation_stops_the_run_as_diverged"],
    "models/lm.py": ["tests/test_lm_model.py", "tests/test_attention.py", "tests/test_model_parts.py"],
    "models/scanline.py": ["tests/test_scanline_models.py", "tests/test_model_parts.py"],
    "data/token_cache.py": ["tests/test_tokenizer_cache.py", "tests/test_token_cache_parts.py"],
    "data/sources.py": ["tests/test_text_sources.py", "tests/test_sources_parts.py"],
    # every save path: folders and publishing, the manifest, the choice of checkpoint, the formats,
    # the Checkpointer (sync and async), and what a resume decides before any work
    "train/checkpoint/layout.py": ["tests/test_checkpoint_parts.py"],
    "train/checkpoint/manifest.py": ["tests/test_checkpoint_parts.py"],
    "train/checkpoint/pick.py": ["tests/test_checkpoint_parts.py"],
    "train/checkpoint/formats.py": ["tests/test_checkpoint_parts.py"],
    "train/checkpoint/manager.py": ["tests/test_checkpoint_parts.py"],
    "train/resume.py": ["tests/test_checkpoint_parts.py"],
    # refusals made before any work: a folder probed, not made; sbatch's time formats
    "rundir.py": ["tests/test_writable_and_time_parts.py"],
    "slurm.py": ["tests/test_writable_and_time_parts.py"],
}


# A survivor whose only change is inside a string literal holding a space (mutmut's "XX…XX" or
# upper-casing of a message) changes the wording of a message, not what the code decides; it is
# counted apart, so the logic score is not drowned by prose. Keys and modes ("step", "min") have no
# space and stay logic mutants.

def is_wording(diff: str) -> bool:
    minus = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    if len(minus) != 1 or len(plus) != 1:
        return False
    old, new = minus[0], plus[0]
    changed = [a for a, b in zip(re.findall(r'"[^"]*"|\'[^\']*\'', old), re.findall(r'"[^"]*"|\'[^\']*\'', new)) if a != b]
    if len(changed) != 1 or " " not in changed[0]:
        return False
    return old.lower() == new.lower() or "XX" in new

# Modules too slow to mutate whole against tests that train: only these functions (mutmut name globs).
FUNCTIONS = {
    "train/trainer.py": ["blueberry.train.trainer.x_budget_in_steps*", "blueberry.train.trainer.xǁBestMetricǁ*",
                         "blueberry.train.trainer.x__check_fingerprint*", "blueberry.train.trainer.x_optimizer_step*",
                         "blueberry.train.trainer.xǁ_Loopǁ_evaluate*"],
}


# `mutmut show NAME` for many names in one interpreter (one process per name costs seconds each)
SHOW = """
import sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
for name in sys.argv[1:]:
    print(f"# {name}: survived")
    print(get_diff_for_mutant(name, path=find_mutant(name).path))
"""


def mutmut_config(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table for one module (mutmut 3 reads it from pyproject.toml)."""
    quoted = ", ".join(json.dumps(t) for t in tests)
    return (f'\n[tool.mutmut]\nsource_paths = ["blueberry"]\nonly_mutate = ["blueberry/{module}"]\n'
            f'pytest_add_cli_args_test_selection = [{quoted}]\n'
            f'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-o", "addopts="]\n'
            f'use_git_change_detection = false\n')


def project_copy(module: str, tests: list[str], into: Path) -> Path:
    """A copy of the package, tests and pyproject.toml with mutmut's config for `module`."""
    work = into / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "blueberry", work / "blueberry", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject)   # ours replaces any existing one
    (work / "pyproject.toml").write_text(pyproject + mutmut_config(module, tests))
    return work


def mutate(module: str, max_children: int, tests: list[str] | None = None, results: Path = RESULTS,
           functions: list[str] = ()) -> dict:
    """Run mutmut on one module (only the functions matching `functions`, mutmut's name globs such as
    `blueberry.train.trainer.x_budget_in_steps*`, when given); returns its counts and writes the
    survivors' diffs."""
    tests = tests or MODULE_TESTS[module]
    with tempfile.TemporaryDirectory(prefix="blueberry-mutation-") as tmp:
        work = project_copy(module, tests, Path(tmp))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.time()
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *functions],
                             cwd=work, env=env, capture_output=True, text=True)
        seconds = time.time() - start
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"mutmut failed on {module}:\n" + "\n".join(tail))
        subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=work, env=env,
                       capture_output=True, check=True)
        stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
        if functions:   # the mutants not selected are counted as not checked: leave them out
            stats["total"] = sum(stats[k] for k in ("killed", "survived", "no_tests", "timeout"))
        listed = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=work, env=env,
                                capture_output=True, text=True, check=True).stdout
        survivors = [line.split(":")[0].strip() for line in listed.splitlines() if line.strip().endswith(": survived")]
        diffs = subprocess.run([sys.executable, "-c", SHOW, *survivors], cwd=work, env=env,
                               capture_output=True, text=True, check=True).stdout if survivors else ""
    blocks = re.split(r"^# (\S+): survived\n", diffs, flags=re.M)[1:]
    wording = [name for name, diff in zip(blocks[::2], blocks[1::2]) if is_wording(diff)]
    scored = stats["killed"] + stats["survived"] + stats["timeout"]   # mutants some test ran against
    logic = scored - len(wording)
    caught = stats["killed"] + stats["timeout"]   # a test run that never ends fails too (as Stryker counts it)
    stats.update(module=module, tests=tests, seconds=round(seconds), wording=len(wording),
                 score=round(caught / scored, 3) if scored else None,
                 logic_score=round(caught / logic, 3) if logic else None)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"mutation-{module.replace('/', '-').removesuffix('.py')}.txt"
    keys = ("killed", "survived", "wording", "no_tests", "timeout", "total", "score", "logic_score", "seconds")
    ordered = sorted(zip(blocks[::2], blocks[1::2]), key=lambda b: b[0] in wording)   # logic survivors first
    header = (f"# mutmut on blueberry/{module} against {' '.join(tests)}\n"
              f"# {json.dumps({k: stats[k] for k in keys})}\n"
              f"# {len(survivors)} surviving mutants follow, {len(survivors) - len(wording)} logic then "
              f"{len(wording)} wording (each: a missing test, or an equivalent mutant)\n\n")
    out.write_text(header + "".join(f"# {name}: survived{' (wording)' if name in wording else ''}\n{diff}"
                                    for name, diff in ordered))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules under blueberry/ (default: all of {', '.join(MODULE_TESTS)})")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tests", nargs="+", help="run these tests instead of the module's MODULE_TESTS list")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for mutation-<module>.txt")
    parser.add_argument("--functions", nargs="+", default=[],
                        help="mutate only these functions (mutmut names, globs allowed: "
                             "'blueberry.train.trainer.x_budget_in_steps*'); default: the whole module")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULE_TESTS]
    if unknown:
        parser.error(f"no test map for {', '.join(unknown)}; add it to MODULE_TESTS ({', '.join(MODULE_TESTS)})")
    print("| module | mutants | killed | timeout | survived (wording) | no tests | score | logic score | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = []
    for module in args.modules or MODULE_TESTS:
        try:
            s = mutate(module, args.max_children, args.tests, args.results, args.functions or FUNCTIONS.get(module, []))
        except RuntimeError as e:   # e.g. a mapped test that fails unmutated: say so, go on with the rest
            print(e, file=sys.stderr)
            failed.append(module)
            continue
        pct = {k: f"{s[k]:.0%}" if s[k] is not None else "-" for k in ("score", "logic_score")}
        print(f"| {module} | {s['total']} | {s['killed']} | {s['timeout']} | {s['survived']} ({s['wording']}) | {s['no_tests']} | "
              f"{pct['score']} | {pct['logic_score']} | {s['seconds']} |", flush=True)
    if failed:
        raise SystemExit(f"mutmut failed on {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
