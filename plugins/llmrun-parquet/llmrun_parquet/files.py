"""Which files of a folder make up a Parquet dataset."""

from __future__ import annotations

from pathlib import Path


def parquet_files(folder: Path) -> list[Path]:
    """The ``.parquet`` files under ``folder`` in name order, leaving out names starting with
    ``_`` or ``.`` (metadata, journals and temporary files, as Spark and pyarrow do)."""
    found = []
    for path in folder.rglob("*.parquet"):
        parts = path.relative_to(folder).parts
        if path.is_file() and not any(p.startswith(("_", ".")) for p in parts):
            found.append(path)
    return sorted(found)
