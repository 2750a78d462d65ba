"""Plugin hygiene: entry points imported only when needed, the declared plugin API version, and
the fixtures llmrun ships for plugin authors (llmrun/testing/pytest_plugin.py)."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

import llmrun
from llmrun.plugins import api_problem, load_registry

from .conftest import run_cli, write_jsonl, write_recipe

PLUGIN = """
import os
from pathlib import Path

import llmrun

LLMRUN_API = {api!r}
Path(os.environ["LLMRUN_MARKER"]).joinpath({name!r}).write_text("imported")


class Upper:
    options_schema = {{"type": "object", "additionalProperties": False}}

    def __init__(self, options, context):
        pass

    def __call__(self, result):
        result.text = (result.text or "").upper()


@llmrun.hookimpl
def register_postprocessors(register):
    register({component!r}, Upper)
"""


def make_dist(site: Path, name: str, api: str, component: str) -> None:
    """A distribution laid out as an installer would: package + dist-info with an entry point."""
    module = f"llmrun_hyg_{name}"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(
        PLUGIN.format(api=api, name=name, component=component), encoding="utf-8"
    )
    info = site / f"llmrun_hyg_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: llmrun-hyg-{name}\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[llmrun]\n{name} = {module}\n", encoding="utf-8")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hygiene-site")
    make_dist(folder, "lazy", ">=1", "upper")
    make_dist(folder, "future", ">=2", "from_the_future")
    make_dist(folder, "ranged", ">=1,<2", "ranged")
    make_dist(folder, "garbled", "one or two", "garbled")
    return folder


def env(site: Path, markers: Path, plugins: str | None = None) -> dict[str, str]:
    markers.mkdir(exist_ok=True)
    out = {"PYTHONPATH": str(site), "LLMRUN_MARKER": str(markers)}
    out["LLMRUN_PLUGINS"] = plugins if plugins is not None else "lazy,future,ranged,garbled"
    return out


def recipe(tmp_path: Path, **overrides: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": "x"}])
    return write_recipe(
        tmp_path,
        {
            "data": {"path": "data.jsonl", "id": "id"},
            "prompt": "{{ text }}",
            "provider": {"name": "mock"},
            "output": {"path": "out.jsonl"},
            **overrides,
        },
    )


def test_help_and_builtin_validate_import_no_plugin(site: Path, tmp_path: Path):
    markers = tmp_path / "markers"
    assert run_cli("--help", env=env(site, markers)).returncode == 0
    assert run_cli("run", "--help", env=env(site, markers)).returncode == 0
    result = run_cli("validate", str(recipe(tmp_path)), env=env(site, markers))
    assert result.returncode == 0, result.stderr
    assert list(markers.iterdir()) == []  # no entry point was imported
    plan = run_cli("plan", str(recipe(tmp_path)), env=env(site, markers))
    assert plan.returncode == 0, plan.stderr
    assert list(markers.iterdir()) == []
    # `plugins` lists everything, so it imports everything (that can be imported).
    assert run_cli("plugins", env=env(site, markers)).returncode == 0
    assert sorted(p.name for p in markers.iterdir()) == ["future", "garbled", "lazy", "ranged"]


def test_an_entry_point_named_like_the_component_is_imported_alone(site: Path, tmp_path: Path):
    markers = tmp_path / "markers"
    path = recipe(tmp_path, postprocess=["ranged"])  # entry point `ranged` registers `ranged`
    result = run_cli("validate", str(path), env=env(site, markers))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in markers.iterdir()] == ["ranged"]


def test_validate_imports_plugins_when_the_recipe_names_one(site: Path, tmp_path: Path):
    markers = tmp_path / "markers"
    path = recipe(tmp_path, postprocess=["upper", "ranged"])
    result = run_cli("validate", str(path), env=env(site, markers))
    assert result.returncode == 0, result.stderr
    assert "lazy" in {p.name for p in markers.iterdir()}


def test_a_plugin_needing_a_newer_api_is_reported_clearly(site: Path, tmp_path: Path):
    markers = tmp_path / "markers"
    listed = run_cli("plugins", "--json", env=env(site, markers))
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    failures = {f["plugin"]: f for f in data["failures"]}
    assert failures["future"]["package"] == "llmrun-hyg-future"
    assert failures["future"]["error"] == (
        f"needs llmrun plugin API >=2, but llmrun {llmrun.__version__} provides plugin API 1: "
        "upgrade llmrun (pip install -U llmrun)"
    )
    assert "is not understood" in failures["garbled"]["error"]
    names = {c["name"] for c in data["components"]}
    assert {"upper", "ranged"} <= names and "from_the_future" not in names
    # A recipe naming its component says why it is not there.
    path = recipe(tmp_path, postprocess=["from_the_future"])
    result = run_cli("validate", str(path), env=env(site, markers))
    assert result.returncode == 2
    assert "unknown postprocessor 'from_the_future'" in result.stderr
    assert "future (llmrun-hyg-future 1.0): needs llmrun plugin API >=2" in result.stderr


@pytest.mark.parametrize(
    ("wanted", "ok"),
    [(">=1", True), ("1", True), (">=1,<2", True), (">=2", False), ("<1", False), ("!=1", False)],
)
def test_api_conditions(wanted: str, ok: bool):
    problem = api_problem(types.SimpleNamespace(LLMRUN_API=wanted))
    assert (problem is None) == ok, problem
    if wanted == "<1":
        assert problem and "install an older llmrun" in problem


def test_plugins_given_by_name_are_checked_too():
    registry = load_registry(
        entry_points=False, plugins={"newer": types.SimpleNamespace(LLMRUN_API=">=99")}
    )
    assert [f.plugin for f in registry.failures] == ["newer"]
    assert "needs llmrun plugin API >=99" in registry.failures[0].error


def test_lazy_registry_loads_entry_points_on_first_miss(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.syspath_prepend(str(site))
    for key, value in env(site, tmp_path / "markers", "lazy").items():
        monkeypatch.setenv(key, value)
    registry = load_registry(lazy=True)
    assert [ep.name for ep in registry.pending] == ["lazy"]
    assert registry.get("loader", "jsonl").package == "llmrun"
    assert registry.pending and not list((tmp_path / "markers").iterdir())
    assert registry.get("postprocessor", "upper").package == "llmrun-hyg-lazy"
    assert registry.pending == []


def test_fixtures_for_plugin_authors(llmrun_run: Any, llmrun_fake_openai: Any):
    records = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]
    api = llmrun_run(
        {"provider": {"name": "openai", "base_url": llmrun_fake_openai.url, "model": "m"}},
        records,
    )
    assert api.exit_code == 0 and set(api.by_id()) == {"1", "2"}
    assert llmrun_fake_openai.count() == 2
    cli = llmrun_run({"provider": {"name": "mock", "replies": ["yes"]}}, records, cli=True)
    assert cli.exit_code == 0, cli.stderr
    assert [r["text"] for r in cli.rows] == ["yes", "yes"]
    assert cli.summary["ok"] == 2
    broken = llmrun_run({"prompt": "{{ missing }}"}, records)
    assert broken.exit_code == 1
    assert {r["status"] for r in broken.rows} == {"error"}
