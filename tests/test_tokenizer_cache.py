"""Tokenizers and the token cache: round trips, EOS layout, hits, keys and crash safety."""

import contextlib
import os

import numpy as np
import pytest

from blueberry.config import LMConfig
from blueberry.data import token_cache
from blueberry.data.sources import load_documents, split_documents
from blueberry.data.synthetic_text import generate_documents
from blueberry.data.token_cache import build_text_data, token_key
from blueberry.data.tokenizer import EOS, TextTokenizer, build_tokenizer, pretrained, train_bpe
from blueberry.errors import UserError

SMALL = dict(synthetic_docs=200, tokenizer="bpe:300", seq_len=32)


def small_cfg(tmp_path, **kw):
    return LMConfig(cache_dir=str(tmp_path / "cache"), **{**SMALL, **kw})


def test_bpe_has_the_asked_vocab_size_and_round_trips(tmp_path):
    tok = train_bpe(generate_documents(200, seed=0), 400)
    assert tok.vocab_size == 400  # exactly N when the corpus has enough merges (never more)
    assert tok.decode([tok.eos_id]) == EOS
    text = "Mia had 7 apples and found 5 more. Ünïcödé, tabs\tand emoji 🫐 survive!"
    ids = tok.encode_batch([text, "x"])
    assert tok.decode(ids[0]) == text and tok.decode(ids[1]) == "x"
    assert tok.eos_id not in ids[0]  # EOS is added by the cache, not by encoding
    tok.save(tmp_path / "tok")
    again = TextTokenizer.load(tmp_path / "tok")
    assert again.encode_batch([text]) == [ids[0]] and again.eos_id == tok.eos_id
    tiny = train_bpe(["ab ab"], 400)
    assert tiny.vocab_size < 400  # runs out of merges: at most N
    with pytest.raises(UserError, match="bpe:100"):
        build_tokenizer("bpe:100", ["text"])


def test_a_saved_tokenizer_folder_loads_as_a_pretrained_name(tmp_path):
    # exercises the pretrained path offline: AutoTokenizer reads a local folder
    tok = train_bpe(generate_documents(50, seed=0), 300)
    tok.save(tmp_path / "tok")
    loaded = pretrained(str(tmp_path / "tok"))
    assert loaded.eos_token == EOS and loaded.eos_id == tok.eos_id
    assert loaded.encode_batch(["Leo ran."]) == tok.encode_batch(["Leo ran."])


def test_train_bin_is_documents_separated_by_eos(tmp_path):
    cfg = small_cfg(tmp_path)
    data = build_text_data(cfg)
    train_docs, val_docs = (list(p["text"]) for p in
                            split_documents(load_documents(cfg), cfg.val_fraction, cfg.data_seed))
    for tokens, docs in ((data.train, train_docs), (data.val, val_docs)):
        assert tokens.dtype == np.uint16 and tokens[-1] == data.eos_id
        ends = np.flatnonzero(np.asarray(tokens) == data.eos_id)
        assert len(ends) == len(docs)
        pieces = np.split(np.asarray(tokens), ends + 1)[:-1]
        assert [data.tokenizer.decode(p[:-1]) for p in pieces] == docs
    assert data.stats["train_docs"] == len(train_docs) and data.stats["val_docs"] == len(val_docs)
    assert data.stats["unique_train_tokens"] == len(data.train)
    assert data.stats["val_tokens"] == len(data.val)
    assert data.vocab_size == 300 and data.eos_id == data.tokenizer.eos_id


def test_second_build_is_a_hit_without_loading_or_tokenizing(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path)
    first = build_text_data(cfg)
    assert first.stats["cache"] == "miss"

    def boom(*a, **k):
        raise AssertionError("a cache hit must not load, train or tokenize")

    monkeypatch.setattr(token_cache, "load_documents", boom)
    monkeypatch.setattr(token_cache, "build_tokenizer", boom)
    monkeypatch.setattr(TextTokenizer, "encode_batch", boom)
    entered = []

    @contextlib.contextmanager
    def main_first():
        entered.append(True)
        yield

    second = build_text_data(cfg, main_process_first=main_first)
    assert entered == [True]
    assert second.stats["cache"] == "hit" and second.stats["cache_path"] == first.stats["cache_path"]
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.stats["leak_fraction"] == first.stats["leak_fraction"]
    # the leak check for a new seq_len is computed from the cached tokens and remembered
    other = build_text_data(small_cfg(tmp_path, seq_len=16))
    assert other.stats["cache"] == "hit"
    meta = (tmp_path / "cache" / "tokens" / token_key(cfg) / "meta.json").read_text()
    assert "seq_len=16,n=32" in meta and "seq_len=32,n=32" in meta


def test_key_follows_everything_that_shapes_the_tokens(tmp_path):
    base = small_cfg(tmp_path)
    keys = {token_key(base)}
    for change in (dict(tokenizer="bpe:400"), dict(val_fraction=0.1), dict(data_seed=1),
                   dict(synthetic_docs=201), dict(max_docs=50)):
        keys.add(token_key(small_cfg(tmp_path, **change)))
    assert len(keys) == 6
    assert token_key(small_cfg(tmp_path, seq_len=64, seed=3)) == token_key(base)  # not token-shaping

    path = tmp_path / "docs.txt"
    path.write_text("one paragraph\n\nanother one\n")
    before = token_key(small_cfg(tmp_path, data=str(path)))
    path.write_text("one paragraph\n\nanother, changed\n")
    os.utime(path, ns=(1, 1))  # even with an old mtime, the size differs
    assert token_key(small_cfg(tmp_path, data=str(path))) != before


def test_a_local_file_edit_rebuilds(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"text": "story {i} of the cat"}}\n' for i in range(40)))
    cfg = small_cfg(tmp_path, data=str(path))
    a = build_text_data(cfg)
    assert build_text_data(cfg).stats["cache"] == "hit"
    path.write_text("".join(f'{{"text": "story {i} of the dog"}}\n' for i in range(40)))
    b = build_text_data(cfg)
    assert b.stats["cache"] == "miss" and b.stats["cache_path"] != a.stats["cache_path"]
    assert "dog" in b.tokenizer.decode(b.train[:20])
    # the datasets Arrow copy lived in the build folder and is gone with it
    assert sorted(os.listdir(b.stats["cache_path"])) == [
        "meta.json", "tokenizer.json", "tokenizer_config.json", "train.bin", "val.bin"]


def test_crashes_leave_nothing_that_is_read(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path)
    tokens = tmp_path / "cache" / "tokens"
    entry = tokens / token_key(cfg)
    # a build killed mid-way (SIGKILL: no cleanup) leaves a temporary folder that looks complete
    stale = tokens / f".tmp-{entry.name}-99999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text("{broken")
    (stale / "train.bin").write_bytes(b"\0\0")
    # a build that fails with an exception cleans up after itself
    real = token_cache._write_tokens

    def fail_on_val(tok, ds, path, dtype, split):
        if split == "val":
            raise RuntimeError("disk full")
        return real(tok, ds, path, dtype, split)

    monkeypatch.setattr(token_cache, "_write_tokens", fail_on_val)
    with pytest.raises(RuntimeError, match="disk full"):
        build_text_data(cfg)
    assert not entry.exists() and sorted(os.listdir(tokens)) == [stale.name]
    monkeypatch.undo()
    data = build_text_data(cfg)
    assert data.stats["cache"] == "miss" and len(data.val) > 0
    assert build_text_data(cfg).stats["cache"] == "hit"


def test_losing_a_build_race_keeps_the_winner(tmp_path):
    cfg = small_cfg(tmp_path)
    build_text_data(cfg)
    entry = tmp_path / "cache" / "tokens" / token_key(cfg)
    inode = (entry / "train.bin").stat().st_ino
    # a second process that started building before the first one published its entry
    token_cache._build(cfg, entry)
    assert (entry / "train.bin").stat().st_ino == inode  # the winner's copy stays
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # ours is discarded


def test_an_entry_without_meta_is_rebuilt(tmp_path):
    cfg = small_cfg(tmp_path)
    entry = tmp_path / "cache" / "tokens" / token_key(cfg)
    entry.mkdir(parents=True)
    (entry / "train.bin").write_bytes(b"junk")
    data = build_text_data(cfg)
    assert data.stats["cache"] == "miss" and len(data.train) > 100
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
