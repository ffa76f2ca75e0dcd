"""`blueberry coords`: the coordinate check passes under muP and CompleteP at widths 16-128, fails under
sp (the logits outgrow the base width), and fails when one of muP's rules is left out."""

from __future__ import annotations

import json

import pytest

from blueberry.config import LMConfig, resolve
from blueberry.transfer.coords import BAND, DEFAULTS, run_check

WIDTHS = [16, 32, 64, 128]


def check(param: str, drop: frozenset[str] = frozenset(), **fields):
    cfg = resolve(LMConfig, file_values=DEFAULTS, cli_values={"param": param, **fields})
    return run_check(cfg, WIDTHS, 32, steps=5, seeds=3, drop=drop)


def test_mup_passes_and_sp_fails_through_the_cli(cli):
    """The real command: exit codes, the files, the named modules."""
    sp = cli("coords", "--out", "sp")
    assert sp.returncode == 1, sp.stderr
    data = json.loads((cli.cwd / "sp" / "coords.json").read_text())
    assert (cli.cwd / "sp" / "coords.png").read_bytes()[:4] == b"\x89PNG"
    assert data["passed"] is False and data["widths"] == WIDTHS and data["base_width"] == 32
    assert data["ratios"]["lm_head"]["128"] > 2                      # the check can fail: sp's logits grow
    assert "lm_head (x" in sp.stderr.strip().splitlines()[-1]
    assert {o["module"] for o in data["outside"]} >= {"lm_head", "blocks.0.attn"}
    mup = cli("coords", "--param", "mup", "--out", "mup")
    assert mup.returncode == 0, mup.stderr
    data = json.loads((cli.cwd / "mup" / "coords.json").read_text())
    assert data["passed"] is True and data["outside"] == [] and data["param"] == "mup"
    ratios = [r for by_width in data["ratios"].values() for r in by_width.values()]
    assert len(ratios) == 8 * 4 and all(BAND[0] <= r <= BAND[1] for r in ratios)
    # the per-step record: init plus one entry per step, for every module and width
    assert all(len(v) == 6 for by_width in data["mean_abs"].values() for v in by_width.values())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("param, fields", [("completep", {}), ("completep", {"n_layers": 4, "base_n_layers": 2}),
                                           ("mup", {"optimizer": "muon"}), ("mup", {"n_experts": 0})],
                         ids=["completep", "completep-deeper-than-base", "mup-muon", "mup-dense"])
def test_transferring_parametrizations_pass(param, fields):
    result = check(param, **fields)
    assert result.passed, result.outside()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("rule, module", [("lr", "blocks.0.attn"), ("logits", "lm_head")])
def test_leaving_out_a_mup_rule_fails_the_check(rule, module):
    """Without the 1/m hidden LR the blocks' outputs grow with width; without the 1/m logit
    multiplier the logits do."""
    result = check("mup", frozenset({rule}))
    assert not result.passed
    assert module in {m for m, w, r in result.outside() if w == 128 and r > BAND[1]}


def test_bad_setups_are_refused_before_training(cli):
    for args, message in [(["--widths", "16,64"], "--base-width 32: must be one of --widths (16,64)"),
                          (["--widths", "16,32,36"], "--widths 36: n_heads=4: head dim d_model/n_heads must be even"),
                          (["--widths", "a,b"], "--widths 'a,b': must be comma-separated integers"),
                          (["--drop", "everything"], "--drop everything: not a rule; rules: init, lr"),
                          (["--max_steps", "50"], "coords: --max_steps does not apply to the coordinate check (use --steps)"),
                          (["--d_model", "64"], "coords: --d_model does not apply to the coordinate check (use --widths)")]:
        res = cli("coords", *args)
        assert res.returncode == 2, args
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not (cli.cwd / "coords").exists()
