"""Counts a user would publish: parameters and optimizer memory before training, the split sizes of a
tiny corpus, and the vocabulary BPE really learned."""

import dataclasses
import re

import pytest
import torch
import yaml

from blueberry.config import LMConfig
from blueberry.data.checks import data_warnings
from blueberry.data.tokenizer import train_bpe
from blueberry.models.lm import Decoder
from blueberry.optim.build import build_optimizer
from conftest import TINY


def number(text: str, label: str) -> int:
    return int(re.search(rf"{label} ([\d,]+)", text).group(1).replace(",", ""))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_print_config_shows_the_parameters_and_optimizer_state_of_the_real_model(cli, optimizer, one_thread):
    res = cli("train", "lm", *TINY, "--tokenizer=bpe:512", f"--optimizer={optimizer}", "--n_experts=4",
              "--top_k=1", "--print-config")
    assert res.returncode == 0, res.stderr
    cfg = LMConfig(**{k: v for k, v in yaml.safe_load(res.stdout).items() if k != "task"})
    model = Decoder(cfg, 512)                     # the real thing, on the CPU
    counts = model.param_counts()
    assert number(res.stdout, "total") == counts["total"] == sum(p.numel() for p in model.parameters())
    assert number(res.stdout, "active per token") == counts["active"] < counts["total"]   # top-1 of 4 experts
    assert number(res.stdout, "active without embeddings") == counts["active"] - model.embed.weight.numel()
    opt = build_optimizer(model, cfg)             # one real step fills the state
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.ndim > 0)
    assert number(res.stdout, rf"optimizer state \({optimizer}\):") == state


def test_a_tiny_corpus_split_far_from_val_fraction_is_reported_with_its_sizes():
    cfg = LMConfig(val_fraction=0.05)
    (message,) = data_warnings(cfg, {"train_docs": 1, "val_docs": 1})
    assert "val holds 1 of 2 documents (50%; train 1)" in message
    assert data_warnings(cfg, {"train_docs": 95, "val_docs": 5}) == []


def test_bpe_that_runs_out_of_merges_is_reported_with_the_real_vocab():
    tok = train_bpe(["the cat sat on the mat"] * 3, 8192)
    assert tok.vocab_size < 8192
    cfg = dataclasses.replace(LMConfig(), tokenizer="bpe:8192")
    (message,) = data_warnings(cfg, {"vocab_size": tok.vocab_size})
    assert f"stopped at {tok.vocab_size} tokens" in message
    assert data_warnings(cfg, {"vocab_size": 8192}) == []


def test_leakage_is_measured_on_the_val_windows_evaluation_reads(tmp_path, one_thread):
    """lm evaluates the first eval_batches x batch_size x processes val windows: leakage counts those."""
    import numpy as np
    from accelerate import Accelerator

    from blueberry.data.leakage import leak_fraction
    from blueberry.data.token_cache import build_text_data
    from blueberry.tasks.lm import LMTask

    cfg = LMConfig(synthetic_docs=300, tokenizer="bpe:300", seq_len=32, batch_size=4, eval_batches=2, leak_ngram=12,
                   cache_dir=str(tmp_path / "cache"))
    data = LMTask().build_data(cfg, Accelerator(cpu=True))
    text = build_text_data(cfg)
    evaluated = leak_fraction(text.train, text.val, 32, 12, windows=np.arange(2 * 4))
    spread = leak_fraction(text.train, text.val, 32, 12)       # the old measure: windows over the whole split
    assert data.stats["leak_fraction"] == evaluated != spread
