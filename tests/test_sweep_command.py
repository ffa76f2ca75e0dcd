"""A trial's argv equals the argv `wandb agent` runs: each test drives W&B's own Agent._command_run
(with its process launch captured) or W&B's own create_sweep_command_args."""

import json

import pytest

from blueberry.errors import UserError
from blueberry.sweep.command import apply_overrides, arg_formats, args_json, as_delivered, build_command

# booleans, floats (one small, one integer-valued), ints, strings, lists and a nested dict
PARAMS = {"lr": 0.001, "max_steps": 200, "save_best": False, "router_renorm": True, "optimizer": "muon",
          "dims": [64, 128.0], "reg": {"wd": 0.1, "beta1": 0.9, "on": True}, "warmup_init_ratio": 1e-05,
          "d_model": 128.0, "name": "a b"}


@pytest.fixture
def wandb_agent_argv(tmp_path, monkeypatch):
    """run(command, args) -> (argv the agent starts, its args JSON file); args as the server sends them."""
    import wandb.wandb_agent as wandb_agent

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):   # the agent sets these: unset them after
        monkeypatch.setenv(var, "")   # (delenv alone records nothing when the variable is absent)
        monkeypatch.delenv(var)
    started = []

    class CapturedProcess:
        def __init__(self, command=None, **kwargs):
            started.append(command)

    monkeypatch.setattr(wandb_agent, "AgentProcess", CapturedProcess)

    def run(command, args, program="train.py"):
        agent = wandb_agent.Agent(api=None, queue=None, sweep_id="sw1")
        if command:   # Agent.run: a non-empty command list replaces the default
            agent._sweep_command = list(command)
        agent._command_run({"args": {k: {"value": v} for k, v in args.items()}, "program": program, "run_id": "r1"})
        return started[-1], tmp_path / "wandb" / "sweep-sw1" / "config-r1.json"
    return run


@pytest.mark.parametrize("macro", ["${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
                                   "${args_no_equals}", "${args_append_hydra}", "${args_override_hydra}",
                                   "${args_dict}"])
def test_every_args_macro_renders_as_wandb_agent(wandb_agent_argv, macro):
    command = ["${env}", "${interpreter}", "${program}", "train", macro, "--fixed=1"]
    agent_argv, _ = wandb_agent_argv(command, as_delivered(PARAMS))
    ours = build_command({"command": command, "program": "train.py"}, PARAMS)
    assert ours == agent_argv
    assert ours[:4] == ["/usr/bin/env", "python", "train.py", "train"]


def test_args_renders_types_as_wandb():
    argv = build_command({"command": ["blueberry", "train", "lm", "${args}"]}, PARAMS)
    assert argv[3:] == ["--d_model=128", "--dims=[64, 128]", "--lr=0.001", "--max_steps=200", "--name=a b",
                        "--optimizer=muon", "--reg={'beta1': 0.9, 'on': True, 'wd': 0.1}", "--router_renorm=True",
                        "--save_best=False", "--warmup_init_ratio=1e-05"]
    flags = build_command({"command": ["x", "${args_no_boolean_flags}"]}, PARAMS)
    assert "--router_renorm" in flags and not any(f.startswith("--save_best") for f in flags)
    assert json.loads(build_command({"command": ["x", "${args_json}"]}, PARAMS)[1]) == json.loads(json.dumps(
        as_delivered(PARAMS)))


def test_arg_formats_equal_wandb_sdk():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    delivered = as_delivered(PARAMS)
    assert arg_formats(PARAMS) == create_sweep_command_args({"args": {k: {"value": v} for k, v in delivered.items()}})


def test_args_json_file_is_the_agents_file(wandb_agent_argv):
    command = ["blueberry", "train", "lm", "--args_file", "${args_json_file}"]
    agent_argv, json_file = wandb_agent_argv(command, as_delivered(PARAMS))
    assert build_command({"command": command}, PARAMS, args_json_file=str(json_file)) == agent_argv
    assert json_file.read_text() == args_json(PARAMS)   # what the caller must write there
    with pytest.raises(UserError, match="args_json_file"):
        build_command({"command": command}, PARAMS)


def test_envvars_unknown_macros_and_non_strings_as_wandb_agent(wandb_agent_argv, monkeypatch):
    monkeypatch.setenv("BB_DATA", "/data/set")
    monkeypatch.delenv("BB_UNSET", raising=False)
    command = ["blueberry", "train", "lm", "--data=${envvar:BB_DATA}/x", "${envvar:BB_UNSET}", "${envvar:lower}",
               "${nope}", 7, "${args}"]
    agent_argv, _ = wandb_agent_argv(command, as_delivered({"lr": 0.5}))
    ours = build_command({"command": command}, {"lr": 0.5})
    assert ours == agent_argv == ["blueberry", "train", "lm", "--data=/data/set/x", "BB_UNSET", "7", "--lr=0.5"]
    assert build_command({"command": command}, {"lr": 0.5}, env={"BB_DATA": "/other"})[3] == "--data=/other/x"


def test_default_command_and_interpreter(wandb_agent_argv):
    agent_argv, _ = wandb_agent_argv(None, {"lr": 0.001})
    ours = build_command({"program": "train.py"}, {"lr": 0.001})
    assert ours == agent_argv == ["/usr/bin/env", "python", "train.py", "--lr=0.001"]
    assert build_command({"program": "train.py"}, {"lr": 0.001}, interpreter="/venv/bin/python")[1] == "/venv/bin/python"
    with pytest.raises(UserError, match="program"):
        build_command({}, {"lr": 0.001})


def test_as_delivered_is_the_servers_json():
    delivered = as_delivered(PARAMS)
    assert list(delivered) == sorted(PARAMS)
    assert delivered["d_model"] == 128 and isinstance(delivered["d_model"], int)
    assert delivered["dims"] == [64, 128] and isinstance(delivered["dims"][1], int)
    assert list(delivered["reg"]) == ["beta1", "on", "wd"] and delivered["reg"]["on"] is True
    assert delivered["lr"] == 0.001 and delivered["save_best"] is False
    assert json.loads(json.dumps(delivered)) == delivered


def test_overrides_win_over_swept_values(cli):
    import yaml

    argv = build_command({"command": ["blueberry", "train", "lm", "${args}"]}, {"lr": 0.001, "max_steps": 200})
    argv = apply_overrides(argv, ["max_steps=3", "data=a=b.txt"])
    assert argv[-2:] == ["--max_steps=3", "--data=a=b.txt"]
    res = cli(*argv[1:], "--print-config")          # the real trainer's options read them
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load(res.stdout)
    assert (config["lr"], config["max_steps"], config["data"]) == (0.001, 3, "a=b.txt")
    for bad in ("max_steps", "=3", "--lr=1", "2lr=1"):
        with pytest.raises(UserError, match="key=value"):
            apply_overrides(argv, [bad])
