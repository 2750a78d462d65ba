"""Files that outlive a crash: what the core and the writers share (public as ``llmrun.fsync_dir``
and ``llmrun.link_or_copy``), so that a writer's rewrite keeps the same guarantees as the core's
own files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (no directory fsync on Windows)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s content: a hard link, or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
