"""`param=sp` is the model blueberry had before parametrizations existed, bit for bit.

tests/data/param_sp_golden.json holds `sp_fingerprint()` as computed by the code of commit c36a3f2
(the last one without models/param.py): for four model shapes under AdamW and Muon, the SHA-256 of
every initial tensor, the optimizer's parameter groups, the logits of one batch and the losses of
three optimizer steps. The test recomputes it with today's code. Regenerate the file only for a
change that is MEANT to alter the default model:
    PYTHONPATH=. python -c "import sys; sys.path.insert(0, 'tests'); import test_param_sp as t; t.write_golden()"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config

GOLDEN = Path(__file__).parent / "data" / "param_sp_golden.json"
VOCAB = 48
SHAPES = {
    "dense": dict(n_experts=0),
    "moe-softmax": dict(),
    "moe-sigmoid-shared": dict(router="sigmoid", n_shared_experts=1),
    "mla": dict(attention="mla", mla_q_rank=8),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(shape: str, optimizer: str):
    return dataclasses.replace(tiny_model_config(**SHAPES[shape]), optimizer=optimizer, lr=3e-3, muon_lr=0.02)


def _groups(model, opt) -> list[dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{k: (json.loads(json.dumps(v)) if k != "params" else [names[id(p)] for p in v])
             for k, v in sorted(g.items()) if k != "initial_lr"} for g in opt.param_groups]


def sp_fingerprint() -> dict:
    from blueberry.models.lm import Decoder
    from blueberry.optim.build import build_optimizer

    out = {}
    for shape in SHAPES:
        for optimizer in ("adamw", "muon"):
            cfg = _config(shape, optimizer)
            torch.manual_seed(0)
            model = Decoder(cfg, VOCAB)
            init = {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
                    for k, v in model.state_dict().items()}
            opt = build_optimizer(model, cfg)
            x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                logits = model(x)[0][0, :3, :6].tolist()
            losses = []
            for _ in range(3):
                out_logits, aux = model(x)
                loss = F.cross_entropy(out_logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()) + 0.01 * aux["lb_loss"]
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            out[f"{shape}/{optimizer}"] = {"init": init, "groups": _groups(model, opt), "logits": logits,
                                           "losses": losses}
    return out


def write_golden() -> None:
    GOLDEN.write_text(json.dumps(sp_fingerprint(), indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("key", [f"{s}/{o}" for s in SHAPES for o in ("adamw", "muon")])
def test_sp_is_the_model_before_parametrizations(key):
    golden = json.loads(GOLDEN.read_text())[key]
    now = sp_fingerprint()[key]
    assert now["init"] == golden["init"]            # every initial tensor, bit for bit
    assert now["groups"] == golden["groups"]        # the same groups, members and hyperparameters
    torch.testing.assert_close(torch.tensor(now["logits"]), torch.tensor(golden["logits"]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(now["losses"]), torch.tensor(golden["losses"]), rtol=1e-6, atol=1e-7)
