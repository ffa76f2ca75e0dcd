"""Near-duplicate documents on real text: editions of one passage cluster, distinct passages of one
author do not, and the train/val split keeps every cluster (and every user group) on one side.

The corpus is tests/data/shakespeare (excerpts of four public-domain works); the near-duplicates are
made from it by the transformations that fool an exact-span check: modernised spelling, re-wrapped
lines, punctuation and case changes, exact copies and partial copies.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blueberry.config import LMConfig
from blueberry.data import near_dup
from blueberry.data.checks import data_warnings
from blueberry.data.token_cache import build_text_data, token_key
from blueberry.report.analyse import analyse
from blueberry.report.load import load_runs
from conftest import TINY, run_cli, run_dirs, wandb_offline_run
from probes import probes

WORKS = Path(__file__).parent / "data" / "shakespeare"
CHUNK_WORDS = 900

MODERN = {"thou": "you", "thee": "you", "thy": "your", "thine": "yours", "hath": "has", "doth": "does",
          "'tis": "it is", "o'er": "over", "ne'er": "never", "honour": "honor", "art": "are"}


def modernised(text: str) -> str:
    """A modern-spelling edition: elisions spelt out, archaic pronouns and verbs replaced."""
    text = re.sub(r"(\w)'d\b", r"\1ed", text)
    return re.sub(r"[A-Za-z']+", lambda m: MODERN.get(m.group().lower(), m.group()), text)


def rewrapped(text: str) -> str:
    return "\n".join(textwrap.wrap(" ".join(text.split()), width=57))


def repunctuated(text: str) -> str:
    """Punctuation removed or swapped and the case changed, as another transcription would."""
    return re.sub(r"[,;:]", "", text.replace(".", "!").replace("?", ".")).upper()


def base_documents() -> list[tuple[str, str]]:
    """(work, passage) pairs: each work cut into passages of CHUNK_WORDS words, lines kept."""
    out = []
    for path in sorted(WORKS.glob("*.txt")):
        lines, count = [], 0
        for line in path.read_text().splitlines():
            lines.append(line)
            count += len(line.split())
            if count >= CHUNK_WORDS:
                out.append((path.stem, "\n".join(lines)))
                lines, count = [], 0
    return out


def corpus() -> tuple[list[str], list[int]]:
    """Documents and the index of the base passage each one is an edition of."""
    bases = base_documents()
    texts = [t for _, t in bases]
    origin = list(range(len(bases)))
    first = {}
    for i, (work, _) in enumerate(bases):
        first.setdefault(work, []).append(i)
    hamlet, macbeth, tempest, sonnets = (first[w] for w in ("hamlet", "macbeth", "tempest", "sonnets"))
    editions = [
        (hamlet[0], modernised), (hamlet[1], rewrapped), (macbeth[0], repunctuated),
        (macbeth[1], lambda t: t),                                   # exact copy
        (tempest[0], lambda t: " ".join(t.split()[: int(len(t.split()) * 0.7)])),   # partial copy
        (sonnets[0], modernised), (sonnets[0], lambda t: rewrapped(modernised(t))), (sonnets[0], repunctuated),
    ]
    for i, make in editions:
        texts.append(make(bases[i][1]))
        origin.append(i)
    return texts, origin


def test_editions_cluster_and_distinct_passages_do_not(one_thread):
    texts, origin = corpus()
    found = near_dup.find_near_duplicates(texts, threshold=0.3)
    labels = found.labels
    for i, j in [(i, j) for i in range(len(texts)) for j in range(i)]:
        assert (labels[i] == labels[j]) == (origin[i] == origin[j]), \
            f"documents {j} and {i} (editions of {origin[j]} and {origin[i]})"
    stats = found.stats()
    n_clusters = len(set(origin[len(base_documents()):]))
    assert stats["near_dup_clusters"] == n_clusters == 6
    assert stats["near_dup_docs"] == 6 + 8 and stats["near_dup_redundant"] == 8
    assert stats["near_dup_rate"] == pytest.approx(14 / len(texts))
    # the repunctuated edition fools an exact comparison: no raw word 8-gram in common, yet clustered
    raw = [set(zip(*[t.split()[k:] for k in range(8)])) for t in (texts[origin[-6]], texts[-6])]
    assert not raw[0] & raw[1] and labels[-6] == labels[origin[-6]]


def test_folding_removes_case_punctuation_wrapping_and_elisions():
    passage = base_documents()[0][1]
    assert near_dup.normalised_words(rewrapped(passage)) == near_dup.normalised_words(passage)
    assert near_dup.normalised_words("Lov'd, VNTO thee -- O'er!") == ["loued", "unto", "thee", "oer"]
    assert near_dup.normalised_words("loved unto") == ["loued", "unto"]


def test_split_keeps_every_cluster_and_user_group_on_one_side(one_thread):
    texts, origin = corpus()
    labels = near_dup.find_near_duplicates(texts, threshold=0.3).labels
    user = [f"g{i % 5}" if i < 10 else f"solo{i}" for i in range(len(texts))]   # 10 docs in 5 groups
    groups = near_dup.consistent_groups(labels, user, len(texts))
    for seed in range(20):
        train, val = near_dup.group_split(groups, 0.25, seed)
        assert sorted([*train, *val]) == list(range(len(texts)))
        side = {int(i): "val" for i in val} | {int(i): "train" for i in train}
        for i in range(len(texts)):
            for j in range(i):
                if origin[i] == origin[j] or user[i] == user[j]:
                    assert side[i] == side[j], (seed, i, j)
        assert len(val) >= 0.25 * len(texts)
    # without the clusters a plain document split separates editions for most seeds
    apart = sum(any(origin[i] == origin[j] and ((i in v) != (j in v)) for i in range(len(texts)) for j in range(i))
                for v in (set(near_dup.group_split(np.arange(len(texts)), 0.25, s)[1].tolist()) for s in range(20)))
    assert apart >= 10


def test_lsh_bands_fit_the_signature_and_track_the_threshold():
    copies = ["to be or not to be that is the question"] * 2 + ["whether tis nobler in the mind to suffer"]
    for threshold in (0.2, 0.3, 0.5, 0.8, 0.95):
        bands, rows = near_dup.lsh_bands(threshold)
        assert bands * rows == near_dup.NUM_PERM
        assert near_dup.find_near_duplicates(copies, threshold).stats()["near_dup_docs"] == 2
        # a pair at the threshold becomes a candidate with high probability
        assert 1 - (1 - threshold ** rows) ** bands > 0.9
    assert near_dup.lsh_bands(0.8)[1] > near_dup.lsh_bands(0.3)[1]


def write_corpus(path: Path, texts: list[str], groups: list[str]) -> Path:
    path.write_text("".join(json.dumps({"body": t, "source": g}) + "\n" for t, g in zip(texts, groups)))
    return path


def cfg_for(tmp_path, data, **kw) -> LMConfig:
    kw = {"val_fraction": 0.3, **kw}
    return LMConfig(data=str(data), text_field="body", cache_dir=str(tmp_path / "cache"), tokenizer="bpe:300",
                    seq_len=16, **kw)


@probes("dedup", "dedup_threshold", "dedup_warn", "group_field")
def test_token_cache_groups_drops_and_reports_near_duplicates(tmp_path, one_thread):
    """The fields dedup, dedup_threshold, dedup_warn and group_field, through the token cache."""
    texts, origin = corpus()
    data = write_corpus(tmp_path / "plays.jsonl", texts, [f"w{o % 3}" for o in origin])
    grouped = build_text_data(cfg_for(tmp_path, data))
    st = grouped.stats
    assert (st["near_dup_clusters"], st["near_dup_docs"], st["docs_before_dedup"]) == (6, 14, len(texts))
    assert st["train_docs"] + st["val_docs"] == len(texts)
    # unique_train_tokens counts each cluster's text once: fewer than the train tokens when a
    # cluster has two editions in train (all clusters are on one side, so most are)
    assert st["unique_train_tokens"] < st["train_tokens"] == len(grouped.train)
    val_text = grouped.tokenizer.decode(grouped.val)
    train_text = grouped.tokenizer.decode(grouped.train)
    for i, t in enumerate(texts):   # every edition sits on the side of its original
        head = " ".join(t.split()[:12])
        base_head = " ".join(texts[origin[i]].split()[:12])
        if head in val_text or head in train_text:
            assert (head in val_text) == (base_head in val_text)

    dropped = build_text_data(cfg_for(tmp_path, data, dedup="drop"))
    assert dropped.stats["near_dup_redundant"] == 8
    assert dropped.stats["train_docs"] + dropped.stats["val_docs"] == len(texts) - 8
    assert dropped.stats["unique_train_tokens"] == dropped.stats["train_tokens"]

    off = build_text_data(cfg_for(tmp_path, data, dedup="off"))
    assert "near_dup_clusters" not in off.stats
    strict = build_text_data(cfg_for(tmp_path, data, dedup_threshold=0.95))
    assert strict.stats["near_dup_docs"] < st["near_dup_docs"]   # only the exact and re-wrapped copies
    assert len({token_key(cfg_for(tmp_path, data, **kw)) for kw in
                ({}, {"dedup": "drop"}, {"dedup_threshold": 0.9}, {"group_field": "source"})}) == 4

    # group_field: documents sharing "source" (w0/w1/w2) end up on one side, with the clusters
    by_source = build_text_data(cfg_for(tmp_path, data, group_field="source", val_fraction=0.2))
    counts = {by_source.stats["train_docs"], by_source.stats["val_docs"]}
    sizes = [sum(1 for o in origin if o % 3 == g) for g in range(3)]
    assert by_source.stats["val_docs"] in {sizes[0], sizes[1], sizes[2], sizes[0] + sizes[1],
                                          sizes[0] + sizes[2], sizes[1] + sizes[2]}, counts

    cfg = cfg_for(tmp_path, data)
    assert any("near-duplicate" in m for m in data_warnings(cfg, st))          # 14 of 25 documents > dedup_warn 0.01
    assert not any("near-duplicate" in m for m in data_warnings(cfg_for(tmp_path, data, dedup_warn=0.6), st))


def test_a_training_run_reports_near_duplicates_split_sizes_and_the_real_vocab(tmp_path):
    """Through the real CLI: the warnings a user sees, and the data stats in summary.json and W&B."""
    texts, origin = corpus()
    data = write_corpus(tmp_path / "plays.jsonl", texts, [f"w{o % 3}" for o in origin])
    out = tmp_path / "runs"
    res = run_cli("train", "lm", *TINY, f"--data={data}", "--text_field=body", "--group_field=source",
                  "--val_fraction=0.1", "--tokenizer=bpe:60000", "--max_steps=2", "--eval_every=2",
                  "--wandb_mode=offline", f"--out_dir={out}", f"--cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    said = res.stdout + res.stderr
    assert "documents have a near-duplicate (6 clusters" in said
    assert "val_fraction=0.1 but val holds" in said                  # whole source groups: far above 10%
    (run_dir,) = run_dirs(out)
    st = json.loads((run_dir / "summary.json").read_text())["data"]
    assert re.search(rf"tokenizer=bpe:60000 stopped at {st['vocab_size']} tokens", said) and st["vocab_size"] < 60000
    assert (st["near_dup_clusters"], st["near_dup_docs"], st["dedup"]) == (6, 14, "group")
    assert st["val_docs"] / (st["train_docs"] + st["val_docs"]) > 0.2
    summary, _ = wandb_offline_run(run_dir)
    assert summary["summary"]["data/near_dup_rate"] == pytest.approx(st["near_dup_rate"])
    assert summary["summary"]["data/vocab_size"] == st["vocab_size"]
    # ... and the report's health section names them
    (warning,) = [w for w in analyse(load_runs([run_dir]).runs).warnings if w.kind == "near-duplicates"]
    assert "6 clusters of near-duplicate documents, 14 documents" in warning.message


def test_lsh_candidates_below_the_threshold_are_checked_and_left_apart():
    """The LSH screen is tuned for recall: at dedup_threshold 0.3 a pair sharing 17% of its 5-grams
    becomes a candidate 85% of the time (64 bands of 2 rows). The signature check must drop it; at a
    threshold under its similarity the same pairs cluster."""
    import random
    import string

    rng = random.Random(0)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(5000)]
    texts = []
    for _ in range(30):
        a = [rng.choice(vocab) for _ in range(300)]
        texts += [" ".join(a), " ".join(a[:90] + [rng.choice(vocab) for _ in range(210)])]   # Jaccard 86/506
    apart = near_dup.find_near_duplicates(texts, 0.3)
    assert apart.sizes.max() == 1
    together = near_dup.find_near_duplicates(texts, 0.1)
    assert sum(together.labels[i] == together.labels[i + 1] for i in range(0, 60, 2)) >= 27
