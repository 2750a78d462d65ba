"""The hf loader on real local files and saved datasets, and through a real llmrun run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import llmrun_hf
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from llmrun_hf import HfLoader

import llmrun
from llmrun import ComponentContext, RecipeError
from llmrun.plugins import load_registry

ROWS = [{"id": f"r{i}", "text": f"review {i}", "stars": i % 5} for i in range(12)]


def loader(folder: Path, **options: Any) -> HfLoader:
    return HfLoader(options, ComponentContext(folder, "test"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_file_streams_with_format_from_the_extension(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "reviews.jsonl", ROWS)
    hf = loader(tmp_path, path="reviews.jsonl")
    records = list(hf.records())
    assert [r.data for r in records] == ROWS
    assert records[0].where == "reviews.jsonl[train]:1"
    assert hf.count() is None  # not known without reading a JSON file through


def test_csv_and_tsv_with_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,text\n1,x\n2,y\n", encoding="utf-8")
    (tmp_path / "b.tsv").write_text("id\ttext\n3\tz, with a comma\n", encoding="utf-8")
    assert [r.data for r in loader(tmp_path, path="a.csv", columns=["text"]).records()] == [
        {"text": "x"},
        {"text": "y"},
    ]
    assert [r.data for r in loader(tmp_path, path="b.tsv").records()] == [
        {"id": 3, "text": "z, with a comma"}
    ]


def test_globs_folders_and_an_explicit_format(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    write_jsonl(tmp_path / "parts" / "1.jsonl", ROWS[:5])
    write_jsonl(tmp_path / "parts" / "2.jsonl", ROWS[5:])
    assert [r.data for r in loader(tmp_path, path="parts/*.jsonl").records()] == ROWS
    assert [r.data for r in loader(tmp_path, path="parts").records()] == ROWS
    write_jsonl(tmp_path / "reviews.txt", ROWS[:2])
    with pytest.raises(ValueError, match=re.escape("(.txt); set `format: json|csv|parquet`")):
        list(loader(tmp_path, path="reviews.txt").records())
    explicit = loader(tmp_path, path="reviews.txt", format="json")
    assert [r.data for r in explicit.records()] == ROWS[:2]


def test_parquet_files_are_counted_from_their_footers(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "reviews.parquet", row_group_size=5)
    hf = loader(tmp_path, path="reviews.parquet", split="all")
    assert hf.count() == 12
    assert [r.data for r in hf.records()] == ROWS
    assert next(iter(hf.records())).where == "reviews.parquet[all]:1"


def test_saved_datasets_and_dataset_dicts(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    saved = loader(tmp_path, path="saved", columns=["id"])
    assert saved.count() == 12
    assert [r.data for r in saved.records()] == [{"id": r["id"]} for r in ROWS]
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:8]),
            "test": datasets.Dataset.from_list(ROWS[8:]),
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    test = loader(tmp_path, path="dict", split="test")
    assert test.count() == 4 and [r.data for r in test.records()] == ROWS[8:]
    with pytest.raises(KeyError, match="has no split 'dev'; splits: train, test"):
        list(loader(tmp_path, path="dict", split="dev").records())
    with pytest.raises(KeyError, match="no column 'label'; its columns: id, text, stars"):
        list(loader(tmp_path, path="saved", columns=["label"]).records())


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(loader(tmp_path, path="nothing.jsonl").records())
    assert loader(tmp_path, path="nothing.jsonl").count() is None


def test_hub_dataset_offline_fails_with_a_clear_message(tmp_path: Path) -> None:
    hub = loader(tmp_path, dataset="someorg/reviews", config="en", split="test")
    assert hub.count() is None
    with pytest.raises(ConnectionError) as caught:
        list(hub.records())
    message = str(caught.value)
    assert (
        "cannot load dataset 'someorg/reviews' (split 'test') from the Hugging Face Hub" in message
    )
    assert "offline (HF_HUB_OFFLINE=1), so only a dataset already in the local" in message


def test_hub_options_reach_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for the Hub (unreachable here) at datasets' entry point, with a real
    # IterableDataset: what matters is what the loader asks for and how it reads the answer.
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def load_dataset(*args: Any, **kwargs: Any) -> datasets.IterableDataset:
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(ROWS[:3]).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = loader(tmp_path, dataset="org/name", config="en", revision="v1.0", split="validation")
    assert [r.data["id"] for r in hub.records()] == ["r0", "r1", "r2"]
    assert calls == [
        (
            ("org/name",),
            {"name": "en", "split": "validation", "revision": "v1.0", "streaming": True},
        )
    ]


RECIPE = """\
name: hf-run
data:
  loader: hf
  path: reviews.jsonl
  id: id
prompt: "Stars for: {{ text }}"
provider: {name: mock, replies: ["4"]}
output: {path: out.jsonl}
"""


def test_a_run_over_the_hf_loader(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "reviews.jsonl", ROWS)
    (tmp_path / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    registry = load_registry(entry_points=False, plugins={"hf": llmrun_hf})
    summary = llmrun.run_recipe_sync(tmp_path / "recipe.yaml", registry=registry)
    assert (summary.status, summary.stats.ok, summary.stats.error) == ("completed", 12, 0)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in ROWS)
    assert {r["text"] for r in out} == {"4"}


def test_path_and_dataset_together_are_located(tmp_path: Path) -> None:
    text = RECIPE.replace("  path: reviews.jsonl\n", "  path: reviews.jsonl\n  dataset: a/b\n")
    (tmp_path / "recipe.yaml").write_text(text, encoding="utf-8")
    registry = load_registry(entry_points=False, plugins={"hf": llmrun_hf})
    with pytest.raises(RecipeError, match=r"data: give `path` \(local files\) or `dataset`"):
        llmrun.run_recipe_sync(tmp_path / "recipe.yaml", registry=registry)
    neither = RECIPE.replace("  path: reviews.jsonl\n", "  split: test\n")
    (tmp_path / "recipe.yaml").write_text(neither, encoding="utf-8")
    with pytest.raises(RecipeError, match=r"recipe\.yaml:2:\d+: data: 'path' is required"):
        llmrun.load_recipe(tmp_path / "recipe.yaml", registry)


def test_gzipped_files_and_a_malformed_file(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "reviews.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    assert [r.data for r in loader(tmp_path, path="gz").records()] == ROWS[:3]
    (tmp_path / "bad.jsonl").write_text('{"id": "a"}\nnot json\n', encoding="utf-8")
    # datasets reads a file as a whole: the error stops the reading (the run says why).
    with pytest.raises(ValueError, match="JSON parse error"):
        list(loader(tmp_path, path="bad.jsonl").records())
