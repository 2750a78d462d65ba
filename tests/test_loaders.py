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
