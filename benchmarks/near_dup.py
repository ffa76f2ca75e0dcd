"""Seconds the near-duplicate pass takes over N documents of W words (issue 13's goal: 100k
documents of 1k words in under 60 s on 2 cores).

    python -m benchmarks.near_dup                    # 100k x 1k words
    python -m benchmarks.near_dup --docs 20000       # a quick check; the time scales linearly

Documents are drawn word by word from the word frequencies of a built-in vocabulary (Zipf's law, so
common words repeat as in real text) and a share of them (--dup-rate) are copies of an earlier one
with 5% of the words changed and the case folded: the pass must then find about that many. The
wall time and the process's CPU time are both printed: other processes share this machine's cores,
and CPU time is what the pass itself cost. Stages: shingling + signatures, then LSH and clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from blueberry.data import near_dup

RESULTS = Path(__file__).parent / "results"


def make_corpus(n_docs: int, n_words: int, dup_rate: float, seed: int = 0) -> tuple[list[str], int]:
    """(documents, number of planted near-duplicates)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    cdf = np.cumsum(p)
    docs: list[str] = []
    planted = 0
    for i in range(n_docs):
        if i and rng.random() < dup_rate:
            words = docs[int(rng.integers(i))].split()
            change = rng.random(len(words)) < 0.05
            words = [vocab[rng.integers(len(vocab))] if c else w.upper() for w, c in zip(words, change)]
            planted += 1
        else:
            words = vocab[np.searchsorted(cdf, rng.random(n_words)).clip(max=len(vocab) - 1)].tolist()
        docs.append(" ".join(words))
    return docs, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("--dup-rate", type=float, default=0.02)
    ap.add_argument("--threshold", type=float, default=0.3)
    args = ap.parse_args()

    t = time.perf_counter()
    docs, planted = make_corpus(args.docs, args.words, args.dup_rate)
    print(f"corpus: {len(docs)} docs x {args.words} words, {planted} planted near-duplicates "
          f"({time.perf_counter() - t:.1f} s to generate)")
    wall, cpu = time.perf_counter(), time.process_time()
    found = near_dup.find_near_duplicates(docs, args.threshold)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = found.stats()
    per_100k = 100_000 / args.docs
    record = {"docs": args.docs, "words": args.words, "threshold": args.threshold, "planted": planted,
              **stats, "wall_s": wall, "cpu_s": cpu, "wall_s_per_100k": wall * per_100k,
              "cpu_s_per_100k": cpu * per_100k, "goal_s_per_100k": 60,
              "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
              "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(record, indent=1))
    verdict = "meets" if wall * per_100k < 60 else "misses"
    print(f"{wall:.1f} s wall ({cpu:.1f} s CPU) for {args.docs} docs -> {wall * per_100k:.1f} s per 100k "
          f"docs of {args.words} words: {verdict} the 60 s goal; "
          f"{stats['near_dup_redundant']} redundant copies found of {planted} planted")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "near_dup-cpu.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
