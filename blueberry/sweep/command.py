"""The argv of one sweep trial, built exactly as `wandb agent` builds it.

Reference (wandb 0.31): `Agent._command_run` in wandb/wandb_agent.py and `create_sweep_command`,
`create_sweep_command_args` in wandb/sdk/launch/sweeps/utils.py. The same YAML then runs the same
argv under `wandb agent`, the local engine and SLURM agent arrays.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping
from typing import Any

from blueberry.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
# W&B's own pattern: lower-case names are not substituted (and the agent then drops the item).
ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
ARG_MACROS = ("args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json",
              "args_dict", "args_append_hydra", "args_override_hydra")
MACROS = (*ARG_MACROS, "interpreter", "program", "args_json_file", "env")


def sweep_command(config: Mapping[str, Any]) -> list[Any]:
    """The command template the agent uses: the YAML's `command` when it is a non-empty list."""
    command = config.get("command")
    return list(command) if isinstance(command, list) and command else list(DEFAULT_COMMAND)


def as_delivered(value: Any) -> Any:
    """A value as the agent receives it from the W&B backend.

    The backend passes run configs through Go's JSON (wandb/sweeps grid_search.yaml_hash: "3e6 ...
    becomes an int when it becomes part of the run config in AgentHeartbeat"): mapping keys come
    back sorted and integer-valued floats come back as ints, so `q_uniform` on an int option
    renders `--n_layers=3`, not `--n_layers=3.0`.
    """
    if isinstance(value, Mapping):
        return {str(k): as_delivered(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [as_delivered(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)   # Go prints floats below 1e21 without an exponent
    return value


def arg_formats(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every `${args...}` rendering of the parameters, as `create_sweep_command_args` makes them."""
    flags, no_hyphens, no_booleans, no_equals, append_hydra, override_hydra = [], [], [], [], [], []
    as_dict: dict[str, Any] = {}
    for key, value in as_delivered(params).items():
        flag = f"{key}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{key}", str(value)]
        append_hydra.append("+" + flag)
        override_hydra.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + key)
        else:
            no_booleans.append("--" + flag)
        as_dict[key] = value
    return {"args": flags, "args_no_equals": no_equals, "args_no_hyphens": no_hyphens,
            "args_no_boolean_flags": no_booleans, "args_json": [json.dumps(as_dict)], "args_dict": as_dict,
            "args_append_hydra": append_hydra, "args_override_hydra": override_hydra}


def args_json(params: Mapping[str, Any]) -> str:
    """The content of the `${args_json_file}` file (the agent writes it; so must the caller)."""
    return arg_formats(params)["args_json"][0]


def build_command(config: Mapping[str, Any], params: Mapping[str, Any], *, interpreter: str | None = None,
                  env: Mapping[str, str] | None = None, args_json_file: str | None = None) -> list[str]:
    """The argv `wandb agent` runs for a trial with these parameter values.

    `interpreter` defaults to "python" (the agent's: whatever `python` is first on PATH); `env`
    (default os.environ) resolves `${envvar:NAME}`; `args_json_file` is the path of the file the
    caller wrote with `args_json(params)`.
    """
    env = os.environ if env is None else env
    template = [_substitute_envvars(c, env) for c in sweep_command(config)]
    macros: dict[str, Any] = arg_formats(params)
    macros["interpreter"] = [interpreter or "python"]
    macros["program"] = [config.get("program")]
    macros["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in template:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            name = chunk[2:-1]
            if name == "program" and not isinstance(config.get("program"), str):
                raise UserError("program: the sweep command runs ${program}, but the sweep has no program:")
            if name == "args_json_file" and args_json_file is None:
                raise UserError("command: ${args_json_file} needs the path of the JSON args file")
            # The agent's own rule: an unknown macro expands to nothing; args_dict adds its keys.
            argv += macros.get(name) or []
        else:
            argv.append(chunk)
    return argv


def _substitute_envvars(chunk: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(chunk, str):
        return chunk
    # An unset variable becomes its bare name, as in the agent.
    return ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), chunk)


_OVERRIDE = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)


def apply_overrides(argv: list[str], overrides: list[str]) -> list[str]:
    """argv with `--key=value` appended for each `key=value`; click keeps an option's last value."""
    extra = []
    for item in overrides:
        match = _OVERRIDE.fullmatch(item)
        if not match:
            raise UserError(f"override {item!r}: write key=value, e.g. max_steps=50")
        extra.append(f"--{match.group(1)}={match.group(2)}")
    return [*argv, *extra]
