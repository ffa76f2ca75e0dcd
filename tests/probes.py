"""The field register: every config field changes behaviour (DESIGN habit), and a test proves it.

A test that proves a field reaches the code declares it with `@probes("field", ...)`. A probe
runs the code path that CONSUMES the field with two values of it, changing one field at a time,
and asserts an observable difference that only that field explains (a cache key, a saved config
or a field merely being read does not count). `test_fields_reach_code.py::test_every_field_is_probed`
collects the declarations from every test module and fails, naming the fields, when one is missing.

    from probes import probes

    @probes("wandb_console")
    def test_console_off_keeps_output_out_of_the_run(...): ...

task: "lm" or "scanline" for a field of that task's config; fields every task shares (RunConfig)
may be probed through either task.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).parent


def probes(*fields: str, task: str = "lm") -> Callable:
    """Declare that the decorated test probes `fields` of `task`'s config (see the module docstring)."""
    def mark(test: Callable) -> Callable:
        test.probed_fields = (*getattr(test, "probed_fields", ()), *((task, f) for f in fields))
        return test
    return mark


def collect() -> dict[tuple[str, str], list[str]]:
    """(task, field) -> the tests that probe it, from every tests/test_*.py module."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        module = importlib.import_module(path.stem)
        for name, test in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(test):
                for key in getattr(test, "probed_fields", ()):
                    found.setdefault(key, []).append(f"{path.name}::{name}")
    return found
