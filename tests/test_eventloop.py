"""The event loop a run gets: uvloop where installed (the default), asyncio's or trio's when
asked for, and a clear error when uvloop is asked for but missing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from llmrun.errors import LlmrunError
from llmrun.eventloop import run_sync, uvloop_installed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not exist on Windows")


async def which_loop() -> str:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no asyncio loop runs under trio
        return "trio"
    return type(loop).__module__.split(".")[0]


def test_the_default_loop_is_uvloop_where_it_is_installed() -> None:
    assert uvloop_installed()  # a dependency everywhere but Windows
    assert run_sync(which_loop) == "uvloop"
    assert run_sync(which_loop, "uvloop") == "uvloop"


def test_the_loop_asked_for_is_the_loop_run_on() -> None:
    assert run_sync(which_loop, "asyncio") == "asyncio"
    assert run_sync(which_loop, "trio") == "trio"


def test_without_uvloop_auto_runs_on_asyncio_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An import system entry of None is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert not uvloop_installed()
    assert run_sync(which_loop) == "asyncio"
    with pytest.raises(LlmrunError, match="uvloop is not installed"):
        run_sync(which_loop, "uvloop")


def test_a_uvloop_that_fails_to_import_leaves_auto_on_asyncio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found but broken (built for another Python, say): a run must not fail for its loop.
    broken = tmp_path / "uvloop"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise ImportError('built for another Python')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    assert not uvloop_installed()
    assert run_sync(which_loop) == "asyncio"


def test_an_unknown_loop_is_a_clear_error() -> None:
    with pytest.raises(LlmrunError, match="unknown event loop 'uv'"):
        run_sync(which_loop, "uv")  # type: ignore[arg-type]
