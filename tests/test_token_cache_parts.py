"""The token cache's parts, one rule per test: what the key holds, what meta.json records, how
near-duplicates and groups reach the split, how tokens and unique tokens are counted, the leak
check's windows and memory, and the atomic writes. Complements tests/test_tokenizer_cache.py.

Corpora are small jsonl files whose documents are strings of random made-up words, so distinct
documents share no word 5-gram (never near-duplicates) and a repeated document is an exact copy.
"""

import json
import os
import random
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from blueberry.config import LMConfig
from blueberry.data import near_dup, synthetic_text, token_cache
from blueberry.data.token_cache import FORMAT_VERSION, TextData, build_text_data, token_key, token_key_info

N_TEXTS = 24   # distinct texts; the duplicated corpus holds each twice


def _texts(n, seed=0):
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ru", "te", "so", "na", "vi", "pe", "du", "fa", "go", "zu"]
    words = sorted({rng.choice(syllables) + rng.choice(syllables) + rng.choice(syllables)
                    for _ in range(600)})
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]


TEXTS = _texts(N_TEXTS)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dup_rows():
    """Each text twice. Work of the first copy of text i: w{i//2} (texts 2k and 2k+1 share it);
    of the second copy: x{i}, its own. With dedup=group and group_field=work, both copies of a
    text AND both texts of a work must land on one side."""
    return ([{"text": t, "work": f"w{i // 2}"} for i, t in enumerate(TEXTS)]
            + [{"text": t, "work": f"x{i}"} for i, t in enumerate(TEXTS)])


def _cfg(root, **kw):
    return LMConfig(cache_dir=str(root / "cache"), **{"tokenizer": "bpe:300", "seq_len": 32,
                                                       "val_fraction": 0.25, **kw})


def _docs(data, tokens):
    """The documents of a token array: the pieces between EOS tokens, decoded."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == data.eos_id)
    return [data.tokenizer.decode(p[:-1]) for p in np.split(tokens, ends + 1)[:-1]]


def _meta(data):
    return json.loads((Path(data.stats["cache_path"]) / "meta.json").read_text())


@pytest.fixture(scope="module")
def dup_file(tmp_path_factory):
    return _jsonl(tmp_path_factory.mktemp("dup") / "dup.jsonl", _dup_rows())


@pytest.fixture
def grouped(tmp_path, dup_file):
    """dedup=group with group_field=work on the duplicated corpus. Built per test, not per module:
    mutmut runs only the tests that call a mutated function, and a module-scoped build would be
    charged to the first test alone."""
    cfg = _cfg(tmp_path, data=str(dup_file), dedup="group", group_field="work", leak_ngram=8)
    return cfg, build_text_data(cfg, eval_windows=2)


# --- the key --------------------------------------------------------------------------------------

def test_key_info_of_synthetic_data_lists_every_token_shaping_field(tmp_path):
    cfg = _cfg(tmp_path, data_subset="sub", data_split="validation", text_field="body", max_docs=7,
               data_seed=3, val_fraction=0.2, dedup="group", dedup_threshold=0.5, group_field="",
               synthetic_docs=99)
    assert token_key_info(cfg) == {
        "format": FORMAT_VERSION, "data": "synthetic", "data_subset": "sub", "data_split": "validation",
        "text_field": "body", "max_docs": 7, "data_seed": 3, "val_fraction": 0.2, "tokenizer": "bpe:300",
        "dedup": "group", "group_field": "", "dedup_threshold": 0.5,
        "near_dup": [near_dup.SHINGLE_WORDS, near_dup.NUM_PERM],
        "synthetic_docs": 99, "synthetic_version": synthetic_text.VERSION}


def test_key_info_of_a_local_file_names_its_resolved_path_size_and_mtime(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "docs.jsonl", [{"text": "a b c"}])
    os.utime(path, ns=(5_000_000_000, 7_000_000_000))
    monkeypatch.chdir(tmp_path)
    info = token_key_info(_cfg(tmp_path, data="docs.jsonl", dedup="off"))   # a relative path
    resolved = str(path.resolve())
    assert info["data"] == resolved
    assert info["files"] == [[resolved, len('{"text": "a b c"}\n'), 7_000_000_000]]
    # dedup off: no threshold or near-duplicate parameters; local: no synthetic fields
    assert not {"dedup_threshold", "near_dup", "synthetic_docs", "synthetic_version"} & set(info)


def test_dedup_threshold_shapes_the_key_only_when_dedup_runs(tmp_path):
    def key(**kw):
        return token_key(_cfg(tmp_path, **kw))
    assert key(dedup="off", dedup_threshold=0.3) == key(dedup="off", dedup_threshold=0.6)
    assert key(dedup="group", dedup_threshold=0.3) != key(dedup="group", dedup_threshold=0.6)
    assert key(dedup="drop", dedup_threshold=0.3) != key(dedup="drop", dedup_threshold=0.6)


def test_key_follows_the_hub_and_column_fields(tmp_path):
    base = _cfg(tmp_path)
    keys = {token_key(base)}
    for change in (dict(data_subset="s"), dict(data_split="test"), dict(text_field="body"),
                   dict(group_field="work"), dict(dedup="off"), dict(dedup="drop")):
        keys.add(token_key(_cfg(tmp_path, **change)))
    assert len(keys) == 7


def test_key_is_20_hex_digits_and_ignores_field_order(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    key = token_key(cfg)
    assert len(key) == 20 and int(key, 16) >= 0
    info = token_key_info(cfg)
    monkeypatch.setattr(token_cache, "token_key_info", lambda c: dict(reversed(list(info.items()))))
    assert token_key(cfg) == key


# --- near-duplicates, groups and the split --------------------------------------------------------

def test_group_dedup_keeps_copies_and_works_on_one_side(grouped):
    cfg, data = grouped
    train, val = _docs(data, data.train), _docs(data, data.val)
    assert len(train) + len(val) == 2 * N_TEXTS   # nothing dropped
    assert not set(train) & set(val)              # no text on both sides
    work = {}
    for i, t in enumerate(TEXTS):
        work.setdefault(f"w{i // 2}", set()).add(t)
    for texts in work.values():                   # the two texts of a work stay together
        assert texts <= set(train) or texts <= set(val)
    stats = data.stats
    assert stats["dedup"] == "group" and stats["docs_before_dedup"] == 2 * N_TEXTS
    assert stats["near_dup_clusters"] == N_TEXTS and stats["near_dup_redundant"] == N_TEXTS


def test_unique_train_tokens_count_each_cluster_once(grouped):
    cfg, data = grouped
    pieces = np.split(np.asarray(data.train), np.flatnonzero(np.asarray(data.train) == data.eos_id) + 1)[:-1]
    distinct = {tuple(p) for p in pieces}
    assert len(pieces) == 2 * len(distinct)       # every train text is there twice
    assert data.stats["unique_train_tokens"] == sum(len(p) for p in distinct)
    assert data.stats["train_tokens"] == len(data.train) == 2 * data.stats["unique_train_tokens"]


def test_val_tokens_count_every_token_written(grouped):
    cfg, data = grouped
    entry = Path(data.stats["cache_path"])
    itemsize = np.dtype(_meta(data)["dtype"]).itemsize
    assert data.stats["val_tokens"] == (entry / "val.bin").stat().st_size // itemsize == len(data.val)
    assert data.stats["train_tokens"] == (entry / "train.bin").stat().st_size // itemsize
    assert data.stats["vocab_size"] == data.vocab_size == 300


def test_meta_json_records_key_sizes_dedup_and_leak(grouped):
    cfg, data = grouped
    meta = _meta(data)
    assert set(meta) == {"key", "vocab_size", "eos_id", "dtype", "train_docs", "val_docs", "train_tokens",
                         "unique_train_tokens", "val_tokens", "near_dup", "leak", "fingerprint"}
    assert meta["key"] == token_key_info(cfg)
    assert meta["fingerprint"] == data.fingerprint and set(data.fingerprint) == {"corpus", "split"}
    assert meta["dtype"] == "uint16" and meta["train_docs"] + meta["val_docs"] == 2 * N_TEXTS
    # build_text_data(eval_windows=2) measured leakage on those 2 windows, with leak_ngram=8
    assert set(meta["leak"]) == {"seq_len=32,n=8,eval=2"}
    assert data.stats["leak_ngram"] == 8 and data.stats["leak_fraction"] == meta["leak"]["seq_len=32,n=8,eval=2"]


def test_the_corpus_and_the_split_are_fingerprinted_apart(tmp_path, dup_file):
    """A new split keeps the corpus digest and changes the split's; edited documents change the corpus's.
    The corpus digest is of the documents as read, before near-duplicates are dropped."""
    from blueberry.data.fingerprint import texts_digest

    base = build_text_data(_cfg(tmp_path, data=str(dup_file), dedup="drop")).fingerprint
    texts = [json.loads(line)["text"] for line in dup_file.read_text().splitlines()]
    assert base["corpus"] == texts_digest(texts)
    other_split = build_text_data(_cfg(tmp_path, data=str(dup_file), dedup="drop", val_fraction=0.5)).fingerprint
    assert other_split["corpus"] == base["corpus"] and other_split["split"] != base["split"]
    other_seed = build_text_data(_cfg(tmp_path, data=str(dup_file), dedup="drop", data_seed=3)).fingerprint
    assert other_seed["corpus"] == base["corpus"] and other_seed["split"] != base["split"]
    edited = _jsonl(tmp_path / "edited.jsonl", [{"text": t + " x"} for t in texts])
    changed = build_text_data(_cfg(tmp_path, data=str(edited), dedup="drop")).fingerprint
    assert changed["corpus"] != base["corpus"]


def test_token_arrays_are_read_only(grouped):
    cfg, data = grouped
    assert not data.train.flags.writeable and not data.val.flags.writeable


def test_drop_keeps_one_document_per_cluster(tmp_path, dup_file):
    data = build_text_data(_cfg(tmp_path, data=str(dup_file), dedup="drop"))
    docs = _docs(data, data.train) + _docs(data, data.val)
    assert sorted(docs) == sorted(TEXTS)
    assert data.stats["dedup"] == "drop" and data.stats["docs_before_dedup"] == 2 * N_TEXTS
    assert data.stats["train_docs"] + data.stats["val_docs"] == N_TEXTS
    assert data.stats["unique_train_tokens"] == len(data.train)


def test_dedup_off_keeps_duplicates_and_counts_every_token(tmp_path, dup_file):
    data = build_text_data(_cfg(tmp_path, data=str(dup_file), dedup="off"))
    assert sorted(_docs(data, data.train) + _docs(data, data.val)) == sorted(TEXTS * 2)
    assert data.stats["dedup"] == "off" and "docs_before_dedup" not in data.stats
    assert data.stats["unique_train_tokens"] == len(data.train)


def test_user_groups_stay_on_one_side(tmp_path):
    # 12 works of 3 distinct texts; no near-duplicates, so only group_field keeps works together
    texts = _texts(36, seed=1)
    path = _jsonl(tmp_path / "works.jsonl", [{"text": t, "work": i % 12} for i, t in enumerate(texts)])
    data = build_text_data(_cfg(tmp_path, data=str(path), group_field="work", dedup="group"))
    val = set(_docs(data, data.val))
    assert 0 < len(val) < 36
    for w in range(12):
        members = {t for i, t in enumerate(texts) if i % 12 == w}
        assert members <= val or not members & val


# --- build details --------------------------------------------------------------------------------

def test_the_datasets_copy_of_local_files_lives_only_in_the_build_folder(tmp_path):
    path = _jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    build_text_data(_cfg(tmp_path, data=str(path), dedup="off"))
    assert sorted(os.listdir(tmp_path / "cache")) == ["tokens"]


@pytest.mark.parametrize("vocab, dtype", [(65535, np.uint16), (70000, np.uint32)])
def test_token_dtype_follows_the_vocabulary_size(tmp_path, monkeypatch, vocab, dtype):
    # ids run to vocab - 1: up to 65535 tokens fit uint16, more need uint32
    monkeypatch.setattr(token_cache.TextTokenizer, "vocab_size", property(lambda self: vocab))
    data = build_text_data(_cfg(tmp_path, synthetic_docs=40, dedup="off"))
    assert data.train.dtype == dtype and data.val.dtype == dtype and data.vocab_size == vocab
    assert _docs(data, data.val)[0]   # the wider tokens still decode


def test_tokenizing_quickly_shows_no_progress_bar(tmp_path, capfd):
    build_text_data(_cfg(tmp_path, synthetic_docs=40, dedup="off"))
    assert "tokenize" not in capfd.readouterr().err


def test_a_failed_build_raises_its_own_error_even_when_the_temp_folder_is_gone(tmp_path, monkeypatch):
    def vanish_then_fail(cfg, cache_dir):
        shutil.rmtree(cache_dir.parent)   # the temporary build folder, removed by someone else
        raise RuntimeError("source went away")

    monkeypatch.setattr(token_cache, "load_documents", vanish_then_fail)
    with pytest.raises(RuntimeError, match="source went away"):
        build_text_data(_cfg(tmp_path))


def test_losing_the_race_never_raises(tmp_path):
    entry = tmp_path / "tokens" / "key"
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text("{}")
    token_cache._publish(tmp_path / "tokens" / ".tmp-gone", entry)   # our copy already cleaned up
    assert os.listdir(entry) == ["meta.json"]


# --- tokens and unique tokens ---------------------------------------------------------------------

class _CharTokenizer:
    """Token ids = character codes; EOS = 0."""
    eos_id = 0

    def encode_batch(self, texts):
        return [[ord(c) for c in t] for t in texts]


def test_write_tokens_appends_each_batch_with_eos(tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "_BATCH_DOCS", 2)   # 5 documents: 3 batches
    ds = datasets.Dataset.from_dict({"text": ["ab", "cde", "ab", "f", "gh"]})
    total, unique = token_cache._write_tokens(_CharTokenizer(), ds, tmp_path / "t.bin", np.uint16, "train")
    expected = [97, 98, 0, 99, 100, 101, 0, 97, 98, 0, 102, 0, 103, 104, 0]
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == expected
    assert total == unique == len(expected)   # without clusters every document is unique


def test_write_tokens_counts_a_cluster_once_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "_BATCH_DOCS", 2)
    ds = datasets.Dataset.from_dict({"text": ["ab", "cde", "ab", "f", "cdx"], "_cluster": [0, 1, 0, 2, 1]})
    total, unique = token_cache._write_tokens(_CharTokenizer(), ds, tmp_path / "t.bin", np.uint32, "train")
    assert total == 3 + 4 + 3 + 2 + 4
    assert unique == 3 + 4 + 2        # clusters 0, 1, 2 by their first documents "ab", "cde", "f"
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint32).tolist()[-4:] == [99, 100, 120, 0]


# --- the leak check -------------------------------------------------------------------------------

def _leak_setup(tmp_path, meta=None):
    """val: 17 distinct tokens = 4 windows of seq_len 4 (window i = val[4i:4i+5]); train holds
    windows 0 and 3 whole, so with n=4 exactly windows 0 and 3 leak."""
    val = np.arange(100, 117, dtype=np.uint16)
    train = np.concatenate([val[0:5], [0], val[12:17]]).astype(np.uint16)
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "meta.json").write_text(json.dumps(meta if meta is not None else {"leak": {}}))
    return entry, TextData(train, val, 200, 0, None)


def test_leak_is_measured_on_the_eval_windows_and_remembered_by_name(tmp_path):
    entry, data = _leak_setup(tmp_path, meta={})   # an entry written before "leak" existed
    assert token_cache._leak(entry, data, 4, 4, None) == 0.5     # all 4 windows: 0 and 3 leak
    assert token_cache._leak(entry, data, 4, 4, 3) == pytest.approx(1 / 3)   # windows 0-2
    assert token_cache._leak(entry, data, 4, 4, 10) == 0.5       # capped at the 4 windows there are
    assert token_cache._leak(entry, data, 4, 4, 1) == 1.0        # window 0 only
    leak = json.loads((entry / "meta.json").read_text())["leak"]
    assert leak == {"seq_len=4,n=4": 0.5, "seq_len=4,n=4,eval=3": pytest.approx(1 / 3),
                    "seq_len=4,n=4,eval=10": 0.5, "seq_len=4,n=4,eval=1": 1.0}


def test_a_remembered_leak_is_not_measured_again(tmp_path, monkeypatch):
    entry, data = _leak_setup(tmp_path)
    first = token_cache._leak(entry, data, 4, 4, 3)

    def boom(*a, **k):
        raise AssertionError("measured twice")

    monkeypatch.setattr(token_cache, "leak_fraction", boom)
    assert token_cache._leak(entry, data, 4, 4, 3) == first


def test_a_read_only_cache_still_reports_the_leak(tmp_path, monkeypatch):
    entry, data = _leak_setup(tmp_path)

    def read_only(path, value):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(token_cache, "_write_json", read_only)
    assert token_cache._leak(entry, data, 4, 4, None) == 0.5
    assert json.loads((entry / "meta.json").read_text()) == {"leak": {}}


# --- atomic json ----------------------------------------------------------------------------------

def test_write_json_replaces_the_file_whole_with_sorted_indented_json(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("old")
    token_cache._write_json(path, {"b": 1, "a": {"d": 2, "c": 3}})
    text = path.read_text()
    assert json.loads(text) == {"b": 1, "a": {"d": 2, "c": 3}} and text.endswith("}\n")
    keys = [line.strip().split(":")[0] for line in text.splitlines() if ":" in line]
    assert keys == ['"a"', '"c"', '"d"', '"b"']   # sorted, one key per line
    assert os.listdir(tmp_path) == ["meta.json"]  # no temporary file left beside it
