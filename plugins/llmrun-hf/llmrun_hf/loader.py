"""The ``hf`` loader: records from Hugging Face ``datasets``, streamed.

Three sources, one option each:

- ``path: reviews.jsonl`` (or a glob, or a folder of data files): local data files, read with
  datasets' ``json``/``csv``/``parquet`` builders in streaming mode (nothing is copied to the
  cache); ``format`` is inferred from the extension unless given.
- ``path: saved/`` where the folder was written by ``Dataset.save_to_disk``: opened with
  ``load_from_disk`` (memory-mapped Arrow: rows are read as they are used).
- ``dataset: org/name`` (with ``config``, ``split``, ``revision``): the Hub, streamed. Offline
  (``HF_HUB_OFFLINE=1``) only what the local cache holds can load; anything else fails with a
  message that says so.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from llmrun import ComponentContext, Problem, RecipeError, SourceRecord

FORMAT_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class HfLoader:
    """Records of one split of a Hugging Face dataset (local files, saved, or from the Hub)."""

    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "anyOf": [{"required": ["path"]}, {"required": ["dataset"]}],
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "Local data file(s) (a file, glob or folder) or a folder written "
                "by save_to_disk, relative to the recipe.",
            },
            "format": {
                "enum": ["json", "csv", "parquet"],
                "description": "Format of the files at `path` (default: from the extension).",
            },
            "dataset": {
                "type": "string",
                "pattern": "^[^/\\s]+(/[^/\\s]+)?$",
                "description": "A dataset on the Hugging Face Hub, e.g. org/name.",
            },
            "config": {"type": "string", "description": "The Hub dataset's configuration."},
            "revision": {"type": "string", "description": "Branch, tag or commit on the Hub."},
            "split": {"type": "string", "default": "train"},
            "columns": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "uniqueItems": True,
                "description": "Keep only these columns (default: all).",
            },
        },
    }

    def __init__(self, options: Mapping[str, Any], context: ComponentContext) -> None:
        if "path" in options and "dataset" in options:
            raise RecipeError(
                [Problem("give `path` (local files) or `dataset` (the Hub), not both", "data")]
            )
        self.base_dir = context.base_dir
        self.given = str(options["path"]) if "path" in options else None
        self.dataset = str(options["dataset"]) if "dataset" in options else None
        self.format = str(options["format"]) if "format" in options else None
        self.config = options.get("config")
        self.revision = options.get("revision")
        self.split = str(options.get("split", "train"))
        self.columns = [str(c) for c in options["columns"]] if options.get("columns") else None
        self.label = f"{self.given or self.dataset}[{self.split}]"

    # -- opening ---------------------------------------------------------------------------

    def _local(self) -> Path:
        assert self.given is not None
        return (self.base_dir / self.given).resolve()

    def _saved(self) -> bool:
        """Whether ``path`` is a folder written by ``save_to_disk`` (a dataset or a dict)."""
        folder = self._local()
        return folder.is_dir() and any(
            (folder / name).is_file() for name in ("state.json", "dataset_dict.json")
        )

    def _data_files(self) -> tuple[str, list[str]]:
        """The builder and the files for ``path`` (a file, a glob, or a folder of files)."""
        assert self.given is not None
        if glob.has_magic(self.given):
            files = sorted(str(p) for p in self.base_dir.glob(self.given) if p.is_file())
        elif self._local().is_dir():
            files = sorted(str(p) for p in self._local().rglob("*") if _data_file(p))
        elif self._local().is_file():
            files = [str(self._local())]
        else:
            raise FileNotFoundError(f"no such file or folder: {self._local()}")
        if not files:
            raise FileNotFoundError(f"no data file matches {self.given!r} in {self.base_dir}")
        fmt = self.format or _format_of(files)
        return fmt, files

    def _open(self) -> Any:
        """A ``Dataset`` (saved) or an ``IterableDataset`` (files, Hub) for the split."""
        import datasets

        if self.given is not None and self._saved():
            loaded = datasets.load_from_disk(str(self._local()))
            if isinstance(loaded, datasets.DatasetDict):
                if self.split not in loaded:
                    raise KeyError(
                        f"{self.given} has no split {self.split!r}; splits: {', '.join(loaded)}"
                    )
                loaded = loaded[self.split]
            return self._select(loaded)
        if self.given is not None:
            fmt, files = self._data_files()
            extra = {"sep": "\t"} if fmt == "csv" and files[0].endswith(".tsv") else {}
            # All files form the one split asked for: a local file has no split of its own.
            stream = datasets.load_dataset(
                fmt, data_files={self.split: files}, split=self.split, streaming=True, **extra
            )
            return self._select(stream)
        return self._select(self._from_hub())

    def _from_hub(self) -> Any:
        import datasets

        try:
            return datasets.load_dataset(
                self.dataset,
                name=self.config,
                split=self.split,
                revision=self.revision,
                streaming=True,
            )
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
            offline = [v for v in OFFLINE_VARS if os.environ.get(v, "").lower() in {"1", "true"}]
            hint = (
                f"; offline ({'='.join(offline[:1])}=1), so only a dataset already in the "
                "local Hugging Face cache can load"
                if offline
                else ""
            )
            raise ConnectionError(
                f"cannot load dataset {self.dataset!r} (split {self.split!r}) from the Hugging "
                f"Face Hub: {type(exc).__name__}: {exc}{hint}"
            ) from exc

    def _select(self, ds: Any) -> Any:
        if self.columns is None:
            return ds
        names = list(ds.column_names or []) if ds.column_names is not None else None
        if names is not None:
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise KeyError(
                    f"{self.label} has no column {', '.join(map(repr, missing))}; "
                    f"its columns: {', '.join(names)}"
                )
        return ds.select_columns(self.columns)

    # -- the Loader protocol ---------------------------------------------------------------

    def records(self) -> Iterator[SourceRecord]:
        for number, row in enumerate(self._open(), 1):
            yield SourceRecord(dict(row), f"{self.label}:{number}")

    def count(self) -> int | None:
        """Known for saved datasets and Parquet files (from metadata), and for Hub datasets
        whose card states the split's size; else None."""
        try:
            if self.given is not None and self._saved():
                return len(self._open())
            if self.given is not None:
                fmt, files = self._data_files()
                if fmt != "parquet":
                    return None
                import pyarrow.parquet as pq

                return sum(int(pq.read_metadata(f).num_rows) for f in files)
            splits = self._from_hub().info.splits
            split = splits.get(self.split) if splits else None
            return int(split.num_examples) if split and split.num_examples else None
        except Exception:  # the count only feeds the progress bar: records() reports errors
            return None


def _data_file(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith((".", "_"))
        and ("".join(path.suffixes[-2:-1]) if path.suffix == ".gz" else path.suffix).lower()
        in FORMAT_BY_SUFFIX
    )


def _format_of(files: list[str]) -> str:
    suffixes = set()
    for name in files:
        path = Path(name)
        gz = path.suffix == ".gz" and len(path.suffixes) > 1
        suffix = path.suffixes[-2] if gz else path.suffix
        suffixes.add(FORMAT_BY_SUFFIX.get(suffix.lower(), suffix or "(none)"))
    formats = suffixes & set(FORMAT_BY_SUFFIX.values())
    if len(formats) != 1 or len(suffixes) != 1:
        raise ValueError(
            f"cannot tell the format of {files[0]}"
            + (f" and {len(files) - 1} more" if len(files) > 1 else "")
            + f" ({', '.join(sorted(suffixes))}); set `format: json|csv|parquet`"
        )
    return formats.pop()
