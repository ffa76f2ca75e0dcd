"""Document sources (synthetic, local files, hub) and the document-level split."""

import json
import time
import urllib.request

import datasets
import pytest

from blueberry.config import LMConfig
from blueberry.data import hub
from blueberry.data.sources import load_documents, split_documents
from blueberry.data.tokenizer import pretrained
from blueberry.errors import UserError


def cfg_for(tmp_path, **kw):
    return LMConfig(cache_dir=str(tmp_path / "cache"), **kw)


def test_split_is_by_document_deterministic_and_sized(tmp_path):
    ds = load_documents(cfg_for(tmp_path, synthetic_docs=400))
    train, val = split_documents(ds, 0.1, seed=0)
    assert len(val) == 40 and len(train) == 360
    assert not set(train["text"]) & set(val["text"])
    assert sorted(list(train["text"]) + list(val["text"])) == sorted(ds["text"])
    again_train, again_val = split_documents(ds, 0.1, seed=0)
    assert list(again_val["text"]) == list(val["text"])
    assert list(split_documents(ds, 0.1, seed=1)[1]["text"]) != list(val["text"])


def test_split_needs_a_document_on_each_side(tmp_path):
    one = datasets.Dataset.from_dict({"text": ["only one"]})
    with pytest.raises(UserError, match="val_fraction"):
        split_documents(one, 0.5, seed=0)
    two = datasets.Dataset.from_dict({"text": ["a", "b"]})
    assert [len(p) for p in split_documents(two, 0.01, seed=0)] == [1, 1]
    with pytest.raises(UserError, match="val_fraction"):
        split_documents(two, 0.9, seed=0)


def test_synthetic_source_depends_on_data_seed_and_max_docs(tmp_path):
    a = load_documents(cfg_for(tmp_path, synthetic_docs=50, data_seed=1))
    assert a.column_names == ["text"] and len(a) == 50
    assert a["text"] != load_documents(cfg_for(tmp_path, synthetic_docs=50, data_seed=2))["text"]
    capped = load_documents(cfg_for(tmp_path, synthetic_docs=50, data_seed=1, max_docs=7))
    assert list(capped["text"]) == list(a["text"])[:7]


def test_jsonl_with_another_text_field_drops_empty_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"id": i, "body": f"document number {i}"} for i in range(10)] + [{"id": 10, "body": "  "}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_documents(cfg_for(tmp_path, data=str(path), text_field="body"))
    assert ds.column_names == ["text"] and list(ds["text"]) == [f"document number {i}" for i in range(10)]
    assert list(load_documents(cfg_for(tmp_path, data=str(path), text_field="body", max_docs=3))["text"]) \
        == ["document number 0", "document number 1", "document number 2"]
    with pytest.raises(UserError, match=r"text_field='text'.*columns: id, body"):
        load_documents(cfg_for(tmp_path, data=str(path)))


def test_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"text": [f"parquet doc {i}" for i in range(5)], "n": list(range(5))}) \
        .to_parquet(str(path))
    ds = load_documents(cfg_for(tmp_path, data=str(path)))
    assert list(ds["text"]) == [f"parquet doc {i}" for i in range(5)]
    with pytest.raises(UserError, match=r"text_field='content'.*columns: text, n"):
        load_documents(cfg_for(tmp_path, data=str(path), text_field="content"))


def test_txt_file_is_paragraphs_and_txt_folder_is_files(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph,\nstill first.\n\nSecond one.\n\n\n\nThird.\n")
    ds = load_documents(cfg_for(tmp_path, data=str(path)))
    assert list(ds["text"]) == ["First paragraph,\nstill first.", "Second one.", "Third."]
    folder = tmp_path / "plays"
    folder.mkdir()
    for name in ("b", "a", "c"):
        (folder / f"{name}.txt").write_text(f"Play {name}.\n\nAct two of {name}.\n")
    ds = load_documents(cfg_for(tmp_path, data=str(folder)))
    assert list(ds["text"]) == [f"Play {n}.\n\nAct two of {n}." for n in "abc"]
    assert len(load_documents(cfg_for(tmp_path, data=str(folder), max_docs=2))) == 2


def test_bad_local_paths_are_user_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=f"data={missing}: no such file"):
        load_documents(cfg_for(tmp_path, data=str(missing)))
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported file type '.csv'"):
        load_documents(cfg_for(tmp_path, data=str(tmp_path / "notes.csv")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match="could not read as json"):
        load_documents(cfg_for(tmp_path, data=str(bad)))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="could not read as parquet"):
        load_documents(cfg_for(tmp_path, data=str(tmp_path / "bad.parquet")))


# --- the hub: fail fast and clearly when it cannot be reached ----------------------------------

@pytest.fixture(params=["HF_HUB_OFFLINE=1", "no network"])
def no_hub(request, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if request.param == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        # A closed local port stands for "no network" on any machine, this one included (it has
        # none), and keeps the test from touching the real hub where there is one.
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return request.param


def test_hub_dataset_fails_fast_when_offline(tmp_path, no_hub):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"data=hf:org/some-data: cannot reach the Hugging Face hub.*"
                                        r"--data synthetic or a local file"):
        load_documents(cfg_for(tmp_path, data="hf:org/some-data", max_docs=10))
    assert time.monotonic() - start < 10  # a guard against the ~25 s retry loop, not a benchmark


def test_pretrained_tokenizer_fails_fast_when_offline(no_hub):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"tokenizer=blueberry-tests/no-such-tokenizer: cannot reach"):
        pretrained("blueberry-tests/no-such-tokenizer")
    assert time.monotonic() - start < 10


def test_hub_probe_is_bounded_even_when_the_network_hangs(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    def hang(*args, **kwargs):   # a network that neither answers nor refuses, then times out
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    start = time.monotonic()
    assert hub.hub_reachable(timeout=0.2) is False
    assert time.monotonic() - start < 2
