"""The built-in `jsonl` and `csv` loaders, on real files, taken from the registry as a recipe
would take them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrun.errors import RecipeError
from llmrun.plugins import load_registry
from llmrun.values import ComponentContext, SourceRecord


def loader(kind: str, folder: Path, **options: Any) -> Any:
    cls = load_registry(entry_points=False).get("loader", kind).cls
    return cls(options, ComponentContext(folder, "test"))


def summary(records: list[SourceRecord]) -> list[tuple[str, Any]]:
    """(where, data) of good records, (where, error) of bad ones."""
    return [(r.where, r.data if r.data is not None else r.error) for r in records]


# -- jsonl -------------------------------------------------------------------------------------


def test_jsonl_records_blank_lines_and_errors(tmp_path: Path):
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "text": "a"}\n'
        "\n"
        "   \n"
        '{"id": 2, "nested": {"x": [1, 2]}}\r\n'
        "{not json}\n"
        "[1, 2]\n"
        '"just a string"\n'
        '{"id": 3, "text": "é ✓"}',  # no newline at the end
        encoding="utf-8",
    )
    jsonl = loader("jsonl", tmp_path, path="in.jsonl")
    records = list(jsonl.records())
    assert [r.where for r in records] == [f"in.jsonl:{n}" for n in (1, 4, 5, 6, 7, 8)]
    assert records[0].data == {"id": 1, "text": "a"} and records[0].error is None
    assert records[1].data == {"id": 2, "nested": {"x": [1, 2]}}
    assert records[2].data is None
    assert records[2].error is not None
    assert records[2].error.startswith("in.jsonl:5: not valid JSON")
    assert records[3].error == "in.jsonl:6: expected a JSON object, got list"
    assert records[4].error == "in.jsonl:7: expected a JSON object, got str"
    assert records[5].data == {"id": 3, "text": "é ✓"}
    assert jsonl.count() == len(records) == 6  # blank lines are not records


def test_jsonl_where_names_the_file_not_the_folders(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl").write_text('{"a": 1}\n', encoding="utf-8")
    (record,) = loader("jsonl", tmp_path, path="sub/d.jsonl").records()
    assert record.where == "d.jsonl:1"


def test_jsonl_is_read_lazily(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n', encoding="utf-8")
    records = loader("jsonl", tmp_path, path="in.jsonl").records()
    first = next(records)
    with path.open("a", encoding="utf-8") as fh:  # appended after reading began
        fh.write('{"n": 3}\n')
    assert [first.data, *(r.data for r in records)] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_jsonl_count_of_empty_and_missing_files(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n", encoding="utf-8")
    assert loader("jsonl", tmp_path, path="empty.jsonl").count() == 0
    assert loader("jsonl", tmp_path, path="blank.jsonl").count() == 0
    assert list(loader("jsonl", tmp_path, path="blank.jsonl").records()) == []
    missing = loader("jsonl", tmp_path, path="missing.jsonl")
    assert missing.count() is None
    with pytest.raises(FileNotFoundError):
        list(missing.records())


def test_jsonl_with_a_byte_order_mark(tmp_path: Path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b"}\n')
    records = list(loader("jsonl", tmp_path, path="bom.jsonl").records())
    assert [r.data for r in records] == [{"id": "a"}, {"id": "b"}]


def test_jsonl_encoding_option(tmp_path: Path):
    (tmp_path / "latin.jsonl").write_bytes(
        json.dumps({"t": "café"}, ensure_ascii=False).encode("latin-1") + b"\n"
    )
    (record,) = loader("jsonl", tmp_path, path="latin.jsonl", encoding="latin-1").records()
    assert record.data == {"t": "café"}


def test_unknown_encoding_is_a_recipe_error(tmp_path: Path):
    with pytest.raises(RecipeError) as info:
        loader("jsonl", tmp_path, path="x.jsonl", encoding="utf-9")
    (problem,) = info.value.problems
    assert problem.path == "data.encoding" and "utf-9" in problem.message


# -- csv / tsv ----------------------------------------------------------------------------------


def test_csv_header_values_and_count(tmp_path: Path):
    (tmp_path / "in.csv").write_text('id,text,score\n1,hello,3\n2,"a, b",4\n', "utf-8")
    csv_loader = loader("csv", tmp_path, path="in.csv")
    assert summary(list(csv_loader.records())) == [
        ("in.csv:2", {"id": "1", "text": "hello", "score": "3"}),  # every value a string
        ("in.csv:3", {"id": "2", "text": "a, b", "score": "4"}),
    ]
    assert csv_loader.count() == 2  # the header is not a record


def test_tsv_uses_tabs_by_default_and_delimiter_overrides(tmp_path: Path):
    (tmp_path / "in.tsv").write_text("id\ttext\n1\ta,b\n", encoding="utf-8")
    (tmp_path / "in.csv").write_text("id;text\n1;a,b\n", encoding="utf-8")
    (tsv,) = loader("csv", tmp_path, path="in.tsv").records()
    (semi,) = loader("csv", tmp_path, path="in.csv", delimiter=";").records()
    assert tsv.data == semi.data == {"id": "1", "text": "a,b"}


def test_csv_ragged_rows_are_errors(tmp_path: Path):
    (tmp_path / "in.csv").write_text("id,text\n1,a\n2,b,extra\n3\n4,d\n", encoding="utf-8")
    csv_loader = loader("csv", tmp_path, path="in.csv")
    assert summary(list(csv_loader.records())) == [
        ("in.csv:2", {"id": "1", "text": "a"}),
        ("in.csv:3", "in.csv:3: 3 cells where the header has 2"),
        ("in.csv:4", "in.csv:4: 1 cells where the header has 2"),
        ("in.csv:5", {"id": "4", "text": "d"}),
    ]
    assert csv_loader.count() == 4  # error rows are records too: they become error rows


def test_csv_quoted_newlines_keep_line_numbers_right(tmp_path: Path):
    (tmp_path / "in.csv").write_text(
        'id,text\n1,"first\nsecond\nthird"\n2,plain\n\n3,"x\r\ny"\n4,a,b\n5,end\n',
        encoding="utf-8",
        newline="",
    )
    csv_loader = loader("csv", tmp_path, path="in.csv")
    records = list(csv_loader.records())
    assert summary(records) == [
        ("in.csv:2", {"id": "1", "text": "first\nsecond\nthird"}),
        ("in.csv:5", {"id": "2", "text": "plain"}),
        ("in.csv:7", {"id": "3", "text": "x\r\ny"}),
        ("in.csv:9", "in.csv:9: 3 cells where the header has 2"),
        ("in.csv:10", {"id": "5", "text": "end"}),
    ]
    assert csv_loader.count() == len(records) == 5


def test_csv_crlf_line_endings(tmp_path: Path):
    (tmp_path / "in.csv").write_bytes(b"id,text\r\n1,a\r\n2,b\r\n")
    records = list(loader("csv", tmp_path, path="in.csv").records())
    assert summary(records) == [
        ("in.csv:2", {"id": "1", "text": "a"}),
        ("in.csv:3", {"id": "2", "text": "b"}),
    ]


def test_csv_with_a_byte_order_mark_keeps_the_first_column_name(tmp_path: Path):
    (tmp_path / "excel.csv").write_bytes("id,text\n1,a\n".encode("utf-8-sig"))
    (record,) = loader("csv", tmp_path, path="excel.csv").records()
    assert record.data == {"id": "1", "text": "a"}


def test_csv_cells_larger_than_the_csv_module_default(tmp_path: Path):
    big = "w" * 300_000  # the csv module's default limit is 131072 characters per cell
    (tmp_path / "big.csv").write_text(f'id,text\n1,"{big}"\n2,b\n', encoding="utf-8")
    csv_loader = loader("csv", tmp_path, path="big.csv")
    records = list(csv_loader.records())
    assert summary(records) == [
        ("big.csv:2", {"id": "1", "text": big}),
        (
            "big.csv:3",
            {
                "id": "2",
                "text": "b",
            },
        ),
    ]
    assert csv_loader.count() == 2


def test_csv_empty_and_header_only(tmp_path: Path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text("id,text\n", encoding="utf-8")
    for name in ("empty.csv", "header.csv"):
        csv_loader = loader("csv", tmp_path, path=name)
        assert list(csv_loader.records()) == []
        assert csv_loader.count() == 0
    assert loader("csv", tmp_path, path="missing.csv").count() is None


# -- csv options -------------------------------------------------------------------------------


def test_csv_types_and_explicit_columns(tmp_path: Path):
    (tmp_path / "in.csv").write_text(
        '1,2.5,yes,"{""a"": 1}"\n2,,no,[]\n3,x,y,1\n4,1,maybe,1\n', encoding="utf-8"
    )
    csv_loader = loader(
        "csv",
        tmp_path,
        path="in.csv",
        columns=["n", "f", "b", "j"],
        types={"n": "int", "f": "float", "b": "bool", "j": "json"},
    )
    assert summary(list(csv_loader.records())) == [
        ("in.csv:1", {"n": 1, "f": 2.5, "b": True, "j": {"a": 1}}),  # no header: line 1 is data
        ("in.csv:2", {"n": 2, "f": None, "b": False, "j": []}),  # an empty typed cell is null
        ("in.csv:3", "in.csv:3: column 'f': could not convert string to float: 'x'"),
        ("in.csv:4", "in.csv:4: column 'b': not a boolean (true/false, yes/no, 1/0): 'maybe'"),
    ]
    assert csv_loader.count() == 4


def test_csv_columns_replace_a_header_and_dialect(tmp_path: Path):
    (tmp_path / "in.txt").write_text("A\tB\n1\tx y\n", encoding="utf-8")
    renamed = loader(
        "csv", tmp_path, path="in.txt", columns=["a", "b"], header=True, dialect="excel-tab"
    )
    assert summary(list(renamed.records())) == [("in.txt:2", {"a": "1", "b": "x y"})]
    assert renamed.count() == 1


def test_csv_types_naming_an_unknown_column_is_a_recipe_error(tmp_path: Path):
    with pytest.raises(RecipeError, match="unknown column"):
        loader("csv", tmp_path, path="x.csv", columns=["a"], types={"b": "int"})


# -- json ----------------------------------------------------------------------------------------


def test_json_array_under_a_key_streams_with_lines(tmp_path: Path):
    (tmp_path / "in.json").write_text(
        '{"meta": {"skip": [1, {"id": 0}]},\n'
        ' "data": {"count": 3, "items": [\n'
        '  {"id": 1},\n'
        '  {"id": 2, "text": "two\\nlines"}, 7,\n'
        '  {"id": 12345}\n'
        "]}}\n",
        encoding="utf-8",
    )
    json_loader = loader("json", tmp_path, path="in.json", key="data.items")
    assert summary(list(json_loader.records())) == [
        ("in.json:3", {"id": 1}),
        ("in.json:4", {"id": 2, "text": "two\nlines"}),
        ("in.json:4", "in.json:4: expected a JSON object, got int"),
        ("in.json:5", {"id": 12345}),
    ]
    assert json_loader.count() is None  # not cheap: the progress total stays unknown


def test_json_large_array_is_read_in_chunks(tmp_path: Path):
    # Well past the reader's 64 KiB chunks, with numbers and strings cut at chunk edges.
    rows = [{"id": i, "text": "é" * (i % 97), "n": 10**12 + i} for i in range(20_000)]
    (tmp_path / "big.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    records = list(loader("json", tmp_path, path="big.json").records())
    assert [r.data for r in records] == rows
    assert records[1].where == "big.json:7"  # indent=1: each object spans 5 lines after "["


def test_json_malformed_element_is_one_error_row_naming_the_line(tmp_path: Path):
    (tmp_path / "bad.json").write_text('[{"id": 1},\n{"id": 2},\n{oops},\n{"id": 4}]')
    records = list(loader("json", tmp_path, path="bad.json").records())
    assert summary(records)[:2] == [("bad.json:1", {"id": 1}), ("bad.json:2", {"id": 2})]
    assert len(records) == 3 and records[2].data is None
    assert records[2].where == "bad.json:3"
    assert records[2].error is not None and "reading stopped here" in records[2].error


def test_json_wrong_shapes(tmp_path: Path):
    (tmp_path / "obj.json").write_text('{"id": 1}', encoding="utf-8")
    (tmp_path / "empty.json").write_text("[ ]", encoding="utf-8")
    (tmp_path / "trunc.json").write_text('[{"id": 1}, {"id": 2', encoding="utf-8")
    (obj,) = loader("json", tmp_path, path="obj.json").records()
    assert obj.error is not None and "expected an array of records, found '{'" in obj.error
    (nokey,) = loader("json", tmp_path, path="obj.json", key="items").records()
    assert nokey.error is not None and "no key 'items'" in nokey.error
    assert list(loader("json", tmp_path, path="empty.json").records()) == []
    first, broken = loader("json", tmp_path, path="trunc.json").records()
    assert first.data == {"id": 1} and broken.data is None


# -- text ------------------------------------------------------------------------------------


def test_text_lines_numbers_and_blank_lines(tmp_path: Path):
    (tmp_path / "in.txt").write_bytes(b"one\r\n\ntwo has a \r inside\nsame\nsame")
    text = loader("text", tmp_path, path="in.txt", field="line", number="n")
    assert [r.data for r in text.records()] == [
        {"line": "one", "n": 1},
        {"line": "two has a \r inside", "n": 3},
        {"line": "same", "n": 4},
        {"line": "same", "n": 5},
    ]
    assert text.count() == 4
    keep = loader("text", tmp_path, path="in.txt", keep_blank=True)
    assert [r.data["text"] for r in keep.records()][:2] == ["one", ""]
    assert keep.count() == 5


# -- compression ---------------------------------------------------------------------------------


def test_gzip_and_zstd_are_read_transparently(tmp_path: Path):
    import gzip

    import zstandard

    lines = b'{"id": 1}\n\n{"id": 2}\nbroken\n'
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "in.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(b"id,text\n1,a\n"))
    for name in ("in.jsonl.gz", "in.jsonl.zst"):
        jsonl = loader("jsonl", tmp_path, path=name)
        records = list(jsonl.records())
        assert [r.data for r in records[:2]] == [{"id": 1}, {"id": 2}]
        assert records[2].where == f"{name}:4" and records[2].data is None
        assert jsonl.count() == 3
    (row,) = loader("csv", tmp_path, path="in.csv.gz").records()
    assert row.data == {"id": "1", "text": "a"}


def test_zstd_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    (tmp_path / "in.jsonl.zst").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"install the zstd extra \(pip install 'llmrun\[zstd\]'"):
        loader("jsonl", tmp_path, path="in.jsonl.zst")


# -- files and inline --------------------------------------------------------------------------


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_files_loader_folder_glob_and_read_modes(tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee", encoding="utf-8")
    (folder / "a.png").write_bytes(PNG)
    (folder / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (folder / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    flat = loader("files", tmp_path, path="docs")
    assert summary(list(flat.records())) == [
        ("docs/a.png", {"path": "docs/a.png", "name": "a.png", "image": "docs/a.png"}),
        ("docs/b.txt", {"path": "docs/b.txt", "name": "b.txt", "text": "bee"}),
        ("docs/bad.txt", "docs/bad.txt: cannot read as text (invalid start byte)"),
    ]
    assert flat.count() == 3
    deep = loader("files", tmp_path, path="docs", pattern="*.txt", recursive=True)
    assert [r.where for r in deep.records()] == ["docs/b.txt", "docs/bad.txt", "docs/sub/c.txt"]
    globbed = loader("files", tmp_path, path="docs/**/c.txt")
    assert [r.data for r in globbed.records()] == [
        {"path": "docs/sub/c.txt", "name": "c.txt", "text": "sea"}
    ]
    as_images = loader("files", tmp_path, path="docs/*.txt", read="image")
    assert [r.data["image"] for r in as_images.records()] == ["docs/b.txt", "docs/bad.txt"]


def test_inline_records(tmp_path: Path):
    from llmrun.recipe.model import freeze

    inline = loader("inline", tmp_path, records=freeze([{"id": 1, "tags": ["x"]}, {"id": 2}]))
    records = list(inline.records())
    assert summary(records) == [
        ("data.records[0]", {"id": 1, "tags": ["x"]}),
        ("data.records[1]", {"id": 2}),
    ]
    assert isinstance(records[0].data, dict) and isinstance(records[0].data["tags"], list)
    assert inline.count() == 2


# -- through the real CLI ------------------------------------------------------------------------


def test_stdin_through_the_cli(tmp_path: Path):
    import subprocess

    from .conftest import basic_recipe, llmrun_command, read_jsonl, write_recipe

    recipe = basic_recipe({"name": "mock"}, data={"loader": "jsonl", "path": "-", "id": "id"})
    path = write_recipe(tmp_path, recipe)
    lines = '{"id": "a", "text": "first"}\nnot json\n{"id": "b", "text": "second"}\n'
    result = subprocess.run(
        [*llmrun_command(), "run", str(path), "--quiet"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # finished with an error row
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"
    assert rows["b"]["text"] == "mock reply to: id=b second"  # the mock echoes the user message
    bad = rows["<stdin>:2"]
    assert bad["status"] == "error" and bad["error"]["type"] == "bad_input"
    assert bad["error"]["message"].startswith("<stdin>:2: not valid JSON")


def test_gzipped_json_runs_end_to_end(tmp_path: Path):
    import gzip

    from .conftest import basic_recipe, read_jsonl, run_cli, write_recipe

    (tmp_path / "data.json.gz").write_bytes(
        gzip.compress(json.dumps({"items": [{"id": "x", "text": "ex"}]}).encode())
    )
    recipe = basic_recipe(
        {"name": "mock"}, data={"path": "data.json.gz", "key": "items", "id": "id"}
    )
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), "--quiet")
    assert result.returncode == 0, result.stderr
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["id"] == "x" and row["text"] == "mock reply to: id=x ex"


def test_csv_types_naming_a_column_the_header_lacks_warns(tmp_path: Path):
    (tmp_path / "in.csv").write_text("id,score\n1,5\n", encoding="utf-8")
    warnings: list[str] = []
    cls = load_registry(entry_points=False).get("loader", "csv").cls
    csv_loader = cls(
        {"path": "in.csv", "types": {"score": "int", "scroe": "int"}},
        ComponentContext(tmp_path, "test", warnings.append),
    )
    assert [r.data for r in csv_loader.records()] == [{"id": "1", "score": 5}]
    assert warnings == ["data.types names column(s) in.csv lacks: scroe"]
