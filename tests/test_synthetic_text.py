"""The embedded corpus: deterministic, varied, correct arithmetic, little train/val overlap."""

import re

from blueberry.config import LMConfig
from blueberry.data.leakage import leak_fraction
from blueberry.data.synthetic_text import generate_documents
from blueberry.data.token_cache import build_text_data


def test_deterministic_per_seed_and_prefix_stable():
    docs = generate_documents(50, seed=3)
    assert docs == generate_documents(50, seed=3)
    assert generate_documents(10, seed=3) == docs[:10]
    other = generate_documents(50, seed=4)
    assert sum(a == b for a, b in zip(docs, other)) == 0


def test_documents_are_non_empty_distinct_and_reuse_their_characters():
    docs = generate_documents(300, seed=0)
    assert all(d.strip() for d in docs)
    assert len(set(docs)) == len(docs)
    for doc in docs:
        hero = doc.split()[0]  # every story opens with its hero's name
        assert doc.count(hero) >= 2, doc


def test_arithmetic_and_counting_are_correct():
    text = " ".join(generate_documents(400, seed=1))
    checks = {
        r"had (\d+) (\w+) and (?:found|got|picked up|was given|bought) (\d+) more, so \w+ had (\d+) \2":
            lambda a, _, b, c: int(a) + int(b) == int(c),
        r"had (\d+) \w+ and gave (\d+) to \w+, so \w+ had (\d+) left":
            lambda a, b, c: int(a) - int(b) == int(c),
        r"put (\d+) (\w+) in each of (\d+) \w+, so there were (\d+) \2 in all":
            lambda a, _, b, c: int(a) * int(b) == int(c),
        r"(\w+) had (\d+) \w+ and (\w+) had (\d+), so (\w+) had (\d+) more":
            lambda p, a, q, b, w, d: int(d) == abs(int(a) - int(b)) and w == (p if int(a) > int(b) else q),
        r"counted(?: by (\d+)s)? from (\d+) to (\d+): ([\d, ]+)\.":
            lambda step, a, b, seq: [int(x) for x in seq.split(", ")] ==
            list(range(int(a), int(b) + 1, int(step or 1))),
        r": ((?:[a-z]+ [a-z]+, )*[a-z]+ [a-z]+)\. There were (\d+)\.":
            lambda items, k: [i.split()[0] for i in items.split(", ")] ==
            "one two three four five".split()[:int(k)],
    }
    for pattern, correct in checks.items():
        found = re.findall(pattern, text)
        assert len(found) >= 20, pattern  # the pattern still matches what the generator writes
        assert all(correct(*m) for m in found), pattern


def test_default_corpus_barely_overlaps_between_train_and_val(tmp_path):
    cfg = LMConfig(cache_dir=str(tmp_path))  # the defaults: 4000 docs, bpe:2048, seq_len 128, n=32
    data = build_text_data(cfg)
    assert data.stats["leak_fraction"] < 0.01
    assert data.stats["leak_fraction"] == leak_fraction(data.train, data.val, cfg.seq_len, cfg.leak_ngram)
    # ~150 tokens per document, as the corpus is designed for
    per_doc = (len(data.train) + len(data.val)) / (data.stats["train_docs"] + data.stats["val_docs"])
    assert 100 < per_doc < 200
