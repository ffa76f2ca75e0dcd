"""`blueberry sweep validate|create|agent` through the CLI: the shipped YAMLs, clear errors, and the
W&B-server commands failing fast offline (tested up to the server line)."""

import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_sweep_validates(cli):
    files = sorted(str(p) for p in (REPO / "sweeps").glob("*.yaml"))
    assert len(files) >= 6
    res = cli("sweep", "validate", *files)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok") == len(files)


def test_a_bad_sweep_names_each_problem_with_its_yaml_path(cli):
    (cli.cwd / "bad.yaml").write_text(
        "method: grid\nmetric: {name: val/loss, goal: minimize}\n"
        "command: [blueberry, train, lm, '${args}']\n"
        "parameters:\n  lrr: {values: [0.1]}\n  optimizer: {values: [sgd]}\n"
        "  recipe: {values: [{optimzer: muon}]}\n  dropout: {distribution: uniform, min: 0, max: 0.5}\n")
    res = cli("sweep", "validate", "bad.yaml")
    assert res.returncode == 2
    assert "bad.yaml: parameters.lrr: not an option of 'blueberry train lm' (did you mean lr?)" in res.stderr
    assert "optimizer='sgd': must be one of adamw, muon" in res.stderr
    assert "parameters.recipe.values[0].optimzer" in res.stderr
    assert "parameters.dropout" in res.stderr          # grid cannot enumerate a continuous distribution
    local = cli("sweep", "local", "bad.yaml")
    assert local.returncode == 2 and len(local.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["create", "sweeps/quickstart.yaml"], ["agent", "me/proj/abc123"]])
def test_wandb_server_commands_fail_fast_without_a_key(cli, command):
    args = [str(REPO / command[1])] if command[0] == "create" else [command[1]]
    res = cli("sweep", command[0], *args, env={"WANDB_MODE": None}, timeout=20)   # a hang fails
    assert res.returncode == 2 and "no W&B API key" in res.stderr and "blueberry sweep local" in res.stderr


def test_wandb_server_commands_fail_fast_when_the_server_is_unreachable(cli):
    env = {"WANDB_MODE": None, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "3"}
    res = cli("sweep", "create", str(REPO / "sweeps" / "quickstart.yaml"), env=env)
    assert res.returncode == 2 and "cannot reach the W&B server (http://127.0.0.1:9)" in res.stderr


def test_sweep_agent_forwards_signals_to_the_agent_process_group(tmp_path):
    """A stand-in `wandb` on PATH plays the agent; a local HTTP server plays the W&B server."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    marker = tmp_path / "got-signal"
    (fake_bin / "wandb").write_text(
        "#!/usr/bin/env python3\nimport signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').write(' '.join(sys.argv[1:])), "
        "sys.exit(0)))\nprint('agent up', flush=True)\ntime.sleep(60)\n")
    (fake_bin / "wandb").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "WANDB_API_KEY": "x" * 40,
           "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_port}"}
    env.pop("WANDB_MODE")
    proc = subprocess.Popen([sys.executable, "-m", "blueberry.cli", "sweep", "agent", "me/proj/abc123", "--count", "2",
                             "--max-consecutive-failures", "3"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "agent up"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    server.shutdown()
    assert marker.read_text() == "agent --forward-signals --count 2 --max-consecutive-failed-runs 3 me/proj/abc123"
