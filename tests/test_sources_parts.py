"""Document sources, one rule per test: where the cache lives, which files a folder reads, how
group_field and text_field columns come through, what a read error reports, the hub stream (a fake
stream: no network) and the split's error. Complements tests/test_text_sources.py."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blueberry.config import LMConfig
from blueberry.data import sources
from blueberry.data.sources import cache_root, load_documents, local_files, split_documents
from blueberry.errors import UserError


def cfg_for(tmp_path, **kw):
    return LMConfig(cache_dir=str(tmp_path / "cache"), **kw)


def plain_cfg(**kw):
    """A config object with only the fields sources.py needs, and no group_field attribute
    (other configs than LMConfig reach load_documents without one)."""
    return SimpleNamespace(**{"data": "synthetic", "cache_dir": "", "text_field": "text", "max_docs": 0,
                              "synthetic_docs": 10, "data_seed": 0, "data_subset": "",
                              "data_split": "train", **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_only_synthetic_and_hf_names_are_not_local_paths():
    assert not sources.is_local("synthetic") and not sources.is_local("hf:org/corpus")
    assert sources.is_local("corpus/") and sources.is_local("./synthetic") and sources.is_local("hf.jsonl")


# --- the cache folder -----------------------------------------------------------------------------

def test_cache_root_prefers_cache_dir_then_the_env_var_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BLUEBERRY_CACHE", str(tmp_path / "env"))
    assert cache_root(plain_cfg(cache_dir="~/mine")) == tmp_path / "home" / "mine"
    assert cache_root(plain_cfg(cache_dir="")) == tmp_path / "env"
    monkeypatch.delenv("BLUEBERRY_CACHE")
    assert cache_root(plain_cfg(cache_dir="")) == tmp_path / "home" / ".cache" / "blueberry"


def test_the_datasets_copy_goes_to_cache_dir_or_the_cache_roots_datasets_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}])
    assert list(load_documents(cfg_for(tmp_path, data=str(path)), cache_dir=tmp_path / "arrow")["text"]) \
        == ["one", "two"]
    assert any((tmp_path / "arrow").iterdir()) and not (tmp_path / "cache").exists()
    load_documents(cfg_for(tmp_path, data=str(path)))
    assert any((tmp_path / "cache" / "datasets").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrow", "cache", "d.jsonl"]


# --- which files a folder reads -------------------------------------------------------------------

def test_a_folder_reads_its_data_files_recursively_skipping_hidden_ones(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "old.jsonl").mkdir()          # a folder with a data suffix is not a file
    for rel in ("b.jsonl", "sub/a.JSONL", "old.jsonl/c.jsonl", ".git/x.jsonl", ".hidden.jsonl"):
        (folder / rel).write_text('{"text": "t"}\n')
    (folder / "README.md").write_text("about the corpus")
    assert local_files(str(folder)) == sorted((folder / rel).resolve()
                                              for rel in ("b.jsonl", "sub/a.JSONL", "old.jsonl/c.jsonl"))


def test_json_and_jsonl_share_a_folder_but_txt_and_jsonl_do_not(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    write_jsonl(ok / "a.jsonl", [{"text": "from jsonl"}])
    write_jsonl(ok / "b.json", [{"text": "from json"}])
    assert len(local_files(str(ok))) == 2
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.JSONL", [{"text": "x"}])
    (mixed / "b.txt").write_text("y\n")
    with pytest.raises(UserError) as e:
        local_files(str(mixed))
    assert f"data={mixed}" in str(e.value) and ".jsonl, .txt" in str(e.value)


def test_a_folder_without_data_files_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "notes.md").write_text("no data here")
    with pytest.raises(UserError, match=f"data={tmp_path}:"):
        local_files(str(tmp_path))


# --- group_field -----------------------------------------------------------------------------------

def test_group_field_needs_data_with_columns(tmp_path):
    with pytest.raises(UserError, match="group_field='work'"):
        load_documents(cfg_for(tmp_path, group_field="work"))                    # synthetic
    book = tmp_path / "book.txt"
    book.write_text("One.\n\nTwo.\n")
    with pytest.raises(UserError, match="group_field='work'"):
        load_documents(cfg_for(tmp_path, data=str(book), group_field="work"))    # plain text
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.TXT").write_text("A.\n")
    with pytest.raises(UserError, match="group_field='work'"):
        load_documents(cfg_for(tmp_path, data=str(folder), group_field="work"))  # a folder of text


def test_group_column_comes_through_as_strings_named_group(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": f"doc {i}", "work": i // 2, "other": "x"}
                                              for i in range(5)])
    ds = load_documents(cfg_for(tmp_path, data=str(path), text_field="body", group_field="work"))
    assert sorted(ds.column_names) == ["group", "text"]
    assert list(ds["text"]) == [f"doc {i}" for i in range(5)]
    assert list(ds["group"]) == ["0", "0", "1", "1", "2"]


def test_a_group_field_called_group_works_too(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}", "group": 10 + i % 2} for i in range(4)])
    ds = load_documents(cfg_for(tmp_path, data=str(path), group_field="group"))
    assert sorted(ds.column_names) == ["group", "text"]
    # (datasets keeps an existing column's int type here, unlike for other names; the split
    # compares groups as strings either way, so only the values are pinned)
    assert [str(g) for g in ds["group"]] == ["10", "11", "10", "11"]


def test_a_missing_group_column_is_a_user_error_listing_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "doc", "work": 1}])
    with pytest.raises(UserError, match=r"group_field='author'.*columns: text, work") as e:
        load_documents(cfg_for(tmp_path, data=str(path), group_field="author"))
    assert str(path) in str(e.value)


def test_configs_without_group_field_load_without_groups(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "doc one"}, {"text": "doc two"}])
    ds = load_documents(plain_cfg(data=str(path)), cache_dir=tmp_path / "arrow")
    assert ds.column_names == ["text"] and len(ds) == 2
    assert len(load_documents(plain_cfg(synthetic_docs=6))) == 6


def test_text_column_alone_keeps_only_the_text(tmp_path):
    ds = datasets.Dataset.from_dict({"body": ["a", "b"], "group": ["g", "h"]})
    out = sources._text_column(ds, "body", "d.jsonl")
    assert out.column_names == ["text"] and list(out["text"]) == ["a", "b"]


# --- text_field ------------------------------------------------------------------------------------

def test_a_large_string_column_is_text(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(["big one", "big two"], pa.large_string())}), path)
    assert list(load_documents(cfg_for(tmp_path, data=str(path)))["text"]) == ["big one", "big two"]


@pytest.mark.parametrize("rows", [[{"text": {"nested": 1}}], [{"text": 5}]], ids=["struct", "int"])
def test_a_text_field_that_is_not_text_is_a_user_error(tmp_path, rows):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match="text_field='text'") as e:
        load_documents(cfg_for(tmp_path, data=str(path)))
    assert str(path) in str(e.value)


# --- read errors ------------------------------------------------------------------------------------

def test_a_malformed_file_reports_the_underlying_parser_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match="could not read as json") as e:
        load_documents(cfg_for(tmp_path, data=str(bad)))
    assert "JSON parse error" in str(e.value)   # the cause's message, not the generic wrapper's


def test_read_error_reasons_are_first_lines_cut_at_200_or_the_error_type(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])

    def raising(error):
        def load_dataset(*a, **k):
            raise error
        return load_dataset

    monkeypatch.setattr(datasets, "load_dataset", raising(ValueError("")))
    with pytest.raises(UserError, match=r"could not read as json \(ValueError\)"):
        load_documents(cfg_for(tmp_path, data=str(path)))
    monkeypatch.setattr(datasets, "load_dataset", raising(ValueError("y" * 300 + "\nsecond line")))
    with pytest.raises(UserError) as e:
        load_documents(cfg_for(tmp_path, data=str(path)))
    assert "y" * 200 + ")" in str(e.value) and "y" * 201 not in str(e.value)


# --- the hub, with a fake stream ---------------------------------------------------------------------

@pytest.fixture
def fake_hub(monkeypatch):
    """load_dataset answers with `rows` (set by the test) and records how it was called."""
    calls, state = [], {"rows": [], "error": None}

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if state["error"]:
            raise state["error"]
        return iter(state["rows"])

    monkeypatch.setattr(sources, "require_hub", lambda what: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, state


def test_hub_stream_asks_for_the_named_subset_and_split(tmp_path, fake_hub):
    calls, state = fake_hub
    state["rows"] = [{"text": "a"}]
    load_documents(cfg_for(tmp_path, data="hf:org/corpus", data_subset="web", data_split="validation",
                           max_docs=1))
    load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=1))
    assert calls == [(("org/corpus", "web"), {"split": "validation", "streaming": True}),
                     (("org/corpus", None), {"split": "train", "streaming": True})]


def test_hub_stream_keeps_max_docs_non_empty_texts(tmp_path, fake_hub):
    calls, state = fake_hub
    state["rows"] = [{"text": "one"}, {"text": "  "}, {"text": None}, {"text": 7}, {"text": "two"},
                     {"text": "three"}, {"text": "four"}]
    ds = load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=3))
    assert ds.column_names == ["text"] and list(ds["text"]) == ["one", "two", "three"]
    assert list(load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=50))["text"]) \
        == ["one", "two", "three", "four"]   # a short stream: all it has


def test_hub_stream_stops_reading_at_max_docs(tmp_path, fake_hub):
    calls, state = fake_hub
    read = []

    def rows():
        for i in range(100):
            read.append(i)
            yield {"text": f"doc {i}"}

    state["rows"] = rows()
    assert len(load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=4))) == 4
    assert read == [0, 1, 2, 3]


def test_hub_stream_carries_the_group_column_as_strings(tmp_path, fake_hub):
    calls, state = fake_hub
    state["rows"] = [{"content": f"doc {i}", "src": i % 2} for i in range(4)]
    ds = load_documents(cfg_for(tmp_path, data="hf:org/corpus", text_field="content", group_field="src",
                                max_docs=4))
    assert ds.column_names == ["text", "group"] and list(ds["group"]) == ["0", "1", "0", "1"]
    with pytest.raises(UserError, match=r"group_field='author'.*columns: content, src"):
        load_documents(cfg_for(tmp_path, data="hf:org/corpus", text_field="content", group_field="author",
                               max_docs=4))
    with pytest.raises(UserError, match=r"text_field='text'.*columns: content, src"):
        load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=4))


def test_hub_stream_without_group_field_ignores_extra_columns(tmp_path, fake_hub):
    calls, state = fake_hub
    state["rows"] = [{"text": "a", "src": 1}, {"text": "b", "src": 2}]
    ds = load_documents(plain_cfg(data="hf:org/corpus", max_docs=5))
    assert ds.column_names == ["text"] and list(ds["text"]) == ["a", "b"]


def test_hub_stream_shows_no_progress_bar_when_quick(tmp_path, fake_hub, capfd):
    calls, state = fake_hub
    state["rows"] = [{"text": "a"}]
    load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=1))
    assert "stream" not in capfd.readouterr().err


@pytest.mark.parametrize("error, reason", [
    (ValueError("Unknown split 'tset'. Should be one of ['train'].\ndetails"), "Unknown split 'tset'"),
    (FileNotFoundError(), "FileNotFoundError"),
])
def test_hub_load_errors_report_their_first_line(tmp_path, fake_hub, error, reason):
    calls, state = fake_hub
    state["error"] = error
    with pytest.raises(UserError) as e:
        load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=3))
    assert str(e.value).startswith("data=hf:org/corpus") and reason in str(e.value)
    assert "details" not in str(e.value)


def test_hub_load_error_reasons_are_cut_at_300(tmp_path, fake_hub):
    calls, state = fake_hub
    state["error"] = ValueError("z" * 400)
    with pytest.raises(UserError) as e:
        load_documents(cfg_for(tmp_path, data="hf:org/corpus", max_docs=3))
    assert str(e.value).endswith("z" * 300) and "z" * 301 not in str(e.value)


def test_hub_data_needs_a_name_and_max_docs(fake_hub):
    calls, state = fake_hub
    with pytest.raises(UserError, match="data=hf:"):
        load_documents(plain_cfg(data="hf:", max_docs=3))
    with pytest.raises(UserError, match="max_docs"):
        load_documents(plain_cfg(data="hf:org/corpus", max_docs=0))
    assert calls == []


# --- the split's error --------------------------------------------------------------------------------

def test_split_keeps_given_groups_on_one_side():
    ds = datasets.Dataset.from_dict({"text": [f"d{i}" for i in range(20)]})
    groups = np.arange(20) // 4                   # 5 groups of 4 documents
    train, val = split_documents(ds, 0.2, seed=0, groups=groups)
    assert len(val) == 4                          # ceil(0.2 * 20) = 4: exactly one group
    val_groups = {int(t[1:]) // 4 for t in val["text"]}
    assert len(val_groups) == 1
    assert not val_groups & {int(t[1:]) // 4 for t in train["text"]}


def test_an_unsplittable_grouped_corpus_names_its_group_count():
    two = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(UserError, match=r"2 document\(s\) in 1 group\(s\)"):
        split_documents(two, 0.5, seed=0, groups=np.array([7, 7]))
    with pytest.raises(UserError) as e:
        split_documents(two, 0.9, seed=0)         # no groups: no group count
    assert "2 document(s)" in str(e.value) and "group" not in str(e.value)
    with pytest.raises(UserError) as e:
        split_documents(two.select([0]), 0.5, seed=0, groups=np.array([7]))
    assert "1 document(s)" in str(e.value) and "group" not in str(e.value)
