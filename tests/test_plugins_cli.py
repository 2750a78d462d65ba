"""`llmrun plugins`, `llmrun schema`, and plugin isolation, with real third-party distributions.

A distribution is built in tmp_path the way an installer lays one out: the package directory
and a ``*.dist-info`` folder (METADATA, entry_points.txt in group ``llmrun``). The folder is put
on PYTHONPATH for the `llmrun` subprocess only; LLMRUN_PLUGINS names the entry points to load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import llmrun
from llmrun.errors import RecipeError
from llmrun.plugins import load_registry
from llmrun.recipe.load import load_recipe

from .conftest import basic_recipe, llmrun_command, make_records, run_cli, write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"
BUILTINS = {
    ("loader", "jsonl"),
    ("loader", "csv"),
    ("provider", "openai"),
    ("provider", "mock"),
    ("postprocessor", "strip"),
    ("writer", "jsonl"),
}
# entry-point name -> (distribution name, version, module in plugin_fixtures/)
DISTS = {
    "good": ("llmrun-fixture-good", "1.2.3", "llmrun_fixture_good"),
    "broken": ("llmrun-fixture-broken", "0.0.1", "llmrun_fixture_broken"),
    "clash": ("llmrun-fixture-clash", "2.0", "llmrun_fixture_clash"),
    "halfway": ("llmrun-fixture-halfway", "0.5", "llmrun_fixture_halfway"),
}


def install(site: Path, entry_point: str) -> None:
    """Lay out one fixture distribution in ``site`` as pip would."""
    dist, version, module = DISTS[entry_point]
    package = site / module
    package.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{module}.py", package / "__init__.py")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[llmrun]\n{entry_point} = {module}\n", encoding="utf-8"
    )
    (info / "RECORD").write_text("", encoding="utf-8")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    for name in DISTS:
        install(folder, name)
    return folder


def env_for(site: Path, plugins: str) -> dict[str, str]:
    return {"PYTHONPATH": str(site), "LLMRUN_PLUGINS": plugins}


def plugins_json(env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def components(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["name"]): c for c in data["components"]}


def failures(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["plugin"]: f for f in data["failures"]}


def recipe_in(tmp_path: Path, **overrides: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "text": "x"}])
    recipe: dict[str, Any] = {
        "data": {"path": "data.jsonl", "id": "id"},
        "prompt": "{{ text }}",
        "provider": {"name": "mock"},
        "output": {"path": "out.jsonl"},
        **overrides,
    }
    return write_recipe(tmp_path, recipe)


# -- built-ins ------------------------------------------------------------------------------


def test_plugins_json_lists_every_builtin_with_package_and_version():
    data = plugins_json()
    found = components(data)
    assert set(found) >= BUILTINS  # more built-ins may come; these must be there
    for component in found.values():
        assert component["package"] == "llmrun"
        assert component["version"] == llmrun.__version__
        assert component["plugin"].startswith("llmrun.builtins.")
    assert data["failures"] == []


def test_plugins_table_lists_every_builtin():
    result = run_cli("plugins", env={"COLUMNS": "200"})  # one table row per component
    assert result.returncode == 0, result.stderr
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    cells = {(r[1].strip(), r[2].strip()): (r[3].strip(), r[4].strip()) for r in rows}
    for key in BUILTINS:
        assert cells[key] == ("llmrun", llmrun.__version__), key
    assert result.stderr == ""


# -- a working third-party plugin ------------------------------------------------------------


def test_third_party_components_are_listed_with_their_package(site: Path):
    data = plugins_json(env_for(site, "good"))
    found = components(data)
    assert set(found) >= BUILTINS | {("loader", "numbers"), ("postprocessor", "shout")}
    assert {c["package"] for c in found.values()} == {"llmrun", "llmrun-fixture-good"}
    for key in (("loader", "numbers"), ("postprocessor", "shout")):
        assert found[key]["package"] == "llmrun-fixture-good"
        assert found[key]["version"] == "1.2.3"
        assert found[key]["plugin"] == "good"
    assert data["failures"] == []
    # Wide enough that no name is folded over two lines, however many built-ins there are.
    table = run_cli("plugins", env={**env_for(site, "good"), "COLUMNS": "200"})
    assert "llmrun-fixture-good" in table.stdout and "numbers" in table.stdout


def test_recipe_uses_a_third_party_plugin(site: Path, tmp_path: Path):
    recipe = recipe_in(
        tmp_path,
        data={"loader": "numbers", "count": 4, "id": "n"},
        prompt="Spell {{ word }}",
        postprocess=["strip", {"shout": {"suffix": "!"}}],
    )
    result = run_cli("validate", str(recipe), env=env_for(site, "good"))
    assert result.returncode == 0, result.stderr
    assert "ok (loader numbers, provider mock, 4 record(s) checked)" in result.stderr
    # Without the plugin loaded, the same recipe names what is missing.
    without = run_cli("validate", str(recipe), env=env_for(site, ""))
    assert without.returncode == 2
    assert "unknown loader 'numbers'" in without.stderr
    assert "unknown postprocessor 'shout'" in without.stderr


def test_a_third_party_loader_that_raises_is_a_clear_error(site: Path, tmp_path: Path):
    recipe = recipe_in(
        tmp_path, data={"loader": "numbers", "count": 4, "fail_at": 2}, prompt="{{ word }}"
    )
    result = run_cli("validate", str(recipe), env=env_for(site, "good"))
    assert result.returncode == 2
    assert (
        "data: loader 'numbers' (llmrun-fixture-good 1.2.3) failed: "
        "RuntimeError: numbers broke at 2" in result.stderr
    )


def test_third_party_option_schema_points_at_the_line(site: Path, tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  loader: numbers\n  count: -1\nprompt: '{{ word }}'\n"
        "provider: {name: mock}\noutput: {path: out.jsonl}\n",
        encoding="utf-8",
    )
    result = run_cli("validate", str(recipe), env=env_for(site, "good"))
    assert result.returncode == 2
    assert f"{recipe}:3:3: data.count: -1 is less than the minimum of 0" in result.stderr


def test_plugin_options_are_in_the_schema(site: Path):
    result = run_cli("schema", env=env_for(site, "good"))
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "numbers" in schema["properties"]["data"]["properties"]["loader"]["enum"]
    posts = schema["properties"]["postprocess"]["items"]["oneOf"]
    assert "shout" in posts[0]["enum"] and "shout" in posts[1]["properties"]


# -- broken plugins ------------------------------------------------------------------------------


def test_plugin_that_fails_to_import_is_reported_not_fatal(site: Path):
    env = env_for(site, "good,broken")
    data = plugins_json(env)
    assert ("postprocessor", "shout") in components(data)  # the others still load
    assert set(components(data)) >= BUILTINS
    (failure,) = data["failures"]
    assert failure["plugin"] == "broken"
    assert failure["package"] == "llmrun-fixture-broken" and failure["version"] == "0.0.1"
    assert failure["error"].startswith("ImportError: llmrun_fixture_broken needs libteleport")

    table = run_cli("plugins", env=env)
    assert table.returncode == 0
    assert "plugin broken (llmrun-fixture-broken 0.0.1) failed: ImportError" in table.stderr

    schema = run_cli("schema", env=env)
    assert schema.returncode == 0, schema.stderr
    jsonschema.Draft202012Validator.check_schema(json.loads(schema.stdout))


def test_broken_plugin_is_an_error_only_for_a_recipe_that_uses_it(site: Path, tmp_path: Path):
    env = env_for(site, "broken")
    fine = run_cli("validate", str(recipe_in(tmp_path)), env=env)
    assert fine.returncode == 0, fine.stderr

    uses_it = recipe_in(tmp_path, provider={"name": "teleport"})
    result = run_cli("validate", str(uses_it), env=env)
    assert result.returncode == 2
    assert "provider.name: unknown provider 'teleport'" in result.stderr
    assert "plugins that failed to load: broken (llmrun-fixture-broken 0.0.1): ImportError" in (
        result.stderr
    )
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_duplicate_name_is_reported_and_the_first_kept(site: Path, tmp_path: Path):
    data = plugins_json(env_for(site, "clash"))
    found = components(data)
    assert found[("postprocessor", "strip")]["package"] == "llmrun"  # the built-in stays
    assert found[("postprocessor", "echo_back")]["package"] == "llmrun-fixture-clash"
    (failure,) = data["failures"]
    assert failure["plugin"] == "clash" and failure["names"] == ["strip"]
    assert (
        "postprocessor 'strip' is already registered by llmrun.builtins.postprocessors"
        in (failure["error"])
    )
    recipe = recipe_in(tmp_path, postprocess=["strip", "echo_back"])
    result = run_cli("validate", str(recipe), env=env_for(site, "clash"))
    assert result.returncode == 0, result.stderr


def test_every_builtin_options_schema_is_a_json_schema() -> None:
    # The registry checks a plugin's options_schema as it registers, not the built-ins' (40 ms
    # at every start): this is that check for them.
    registry = load_registry(entry_points=False)
    schemas = {
        (info.kind, info.name): info.cls.options_schema
        for info in registry.all()
        if getattr(info.cls, "options_schema", None) is not None
    }
    assert len(schemas) >= 20, sorted(schemas)
    for where, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None


def test_plugin_that_raises_while_registering_is_skipped_whole(site: Path, tmp_path: Path):
    env = env_for(site, "halfway")
    data = plugins_json(env)
    assert set(components(data)) >= BUILTINS
    assert {c["package"] for c in data["components"]} == {"llmrun"}  # no half_loader, half_post
    errors = sorted(f["error"] for f in data["failures"])
    assert len(errors) == 2, errors
    assert errors[0].startswith("RuntimeError: halfway: registration failed")
    assert errors[1].startswith("writer 'bad_schema': invalid options_schema")
    raised = next(f for f in data["failures"] if f["error"].startswith("RuntimeError"))
    assert sorted(raised["names"]) == ["half_loader", "half_post"]

    recipe = recipe_in(tmp_path, postprocess=["half_post"])
    result = run_cli("validate", str(recipe), env=env)
    assert result.returncode == 2
    assert "unknown postprocessor 'half_post'" in result.stderr
    assert "halfway (llmrun-fixture-halfway 0.5): RuntimeError" in result.stderr

    bad_writer = recipe_in(tmp_path, output={"path": "o.jsonl", "writer": "bad_schema"})
    result = run_cli("validate", str(bad_writer), env=env)
    assert result.returncode == 2
    assert "invalid options_schema" in result.stderr and "internal error" not in result.stderr

    schema = run_cli("schema", env=env)
    assert schema.returncode == 0
    jsonschema.Draft202012Validator.check_schema(json.loads(schema.stdout))


# -- LLMRUN_PLUGINS ------------------------------------------------------------------------------


def test_llmrun_plugins_restricts_which_entry_points_load(site: Path):
    none = plugins_json(env_for(site, ""))
    assert {c["package"] for c in none["components"]} == {"llmrun"} and none["failures"] == []
    only_clash = plugins_json(env_for(site, " clash , nosuchplugin"))
    assert ("postprocessor", "echo_back") in components(only_clash)
    assert ("postprocessor", "shout") not in components(only_clash)
    assert [f["plugin"] for f in only_clash["failures"]] == ["clash"]  # broken never imported


def test_without_llmrun_plugins_every_entry_point_loads(site: Path):
    env = {k: v for k, v in os.environ.items() if k != "LLMRUN_PLUGINS"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [*llmrun_command(), "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {("loader", "numbers"), ("postprocessor", "echo_back")} <= set(components(data))
    assert {"broken", "clash", "halfway"} <= set(failures(data))


# -- llmrun schema -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def printed_schema() -> dict[str, Any]:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


def test_schema_is_valid_json_schema(printed_schema: dict[str, Any]):
    jsonschema.Draft202012Validator.check_schema(printed_schema)
    props = printed_schema["properties"]
    for kind, section, key in (
        ("loader", "data", "loader"),
        ("provider", "provider", "name"),
        ("writer", "output", "writer"),
    ):
        names = {name for k, name in BUILTINS if k == kind}
        assert names <= set(props[section]["properties"][key]["enum"]), kind
    assert "strip" in props["postprocess"]["items"]["oneOf"][0]["enum"]


def test_base_schema_is_the_shipped_core():
    result = run_cli("schema", "--base")
    assert result.returncode == 0
    base = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(base)
    shipped = (REPO / "llmrun" / "schemas" / "recipe.schema.json").read_text(encoding="utf-8")
    assert base == json.loads(shipped)


def test_every_shipped_recipe_validates_against_the_schema(printed_schema: dict[str, Any]):
    validator = jsonschema.Draft202012Validator(printed_schema)
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes, "recipes/ has no recipe"
    for path in recipes:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        errors = [e.message for e in validator.iter_errors(data)]
        assert not errors, (path.name, errors)


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({"postprocess": [{"strip": None}, {"strip": {"chars": "."}}]}, True),
        ({"provider": {"name": "openai", "model": "m", "api_keys": ["k"]}}, True),
        ({"provider": {"name": "openai"}}, False),  # model is required
        ({"provider": {"name": "mock", "modle": "x"}}, False),
        ({"provider": {"name": "nosuch"}}, False),
        ({"postprocess": [{"strip": {"chars": 1}}]}, False),
        ({"data": {"loader": "csv", "path": "d.csv", "delimiter": ";;"}}, False),
        ({"run": {"concurrency": 0}}, False),
    ],
)
def test_schema_agrees_with_recipe_loading(
    printed_schema: dict[str, Any], change: dict[str, Any], accepted: bool, tmp_path: Path
):
    recipe: dict[str, Any] = {
        "data": {"path": "d.jsonl"},
        "prompt": "x",
        "provider": {"name": "mock"},
        "output": {"path": "o.jsonl"},
        **change,
    }
    assert jsonschema.Draft202012Validator(printed_schema).is_valid(recipe) is accepted
    try:
        load_recipe(write_recipe(tmp_path, recipe), load_registry(entry_points=False), environ={})
    except RecipeError:
        loaded = False
    else:
        loaded = True
    assert loaded is accepted


def test_an_engine_no_plugin_registers_is_a_recipe_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(2))
    recipe = basic_recipe({"name": "mock"})
    recipe["run"] = {"engine": "ray", "workers": 2}
    path = write_recipe(tmp_path, recipe)
    done = run_cli("run", str(path), cwd=tmp_path, env={"LLMRUN_PLUGINS": ""})
    assert done.returncode == 2, done.stderr
    assert "run.engine" in done.stderr and "pip install llmrun-ray" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()
    checked = run_cli("validate", str(path), cwd=tmp_path, env={"LLMRUN_PLUGINS": ""})
    assert checked.returncode == 2 and "run.engine" in checked.stderr
    local = run_cli("run", str(path), "--engine", "local", "--address", "auto", cwd=tmp_path)
    assert local.returncode == 2 and "--address names a cluster" in local.stderr
    zero = run_cli("run", str(path), "--engine", "local", "--workers", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--workers must be 1 or more" in zero.stderr


def test_a_registered_engine_builds_the_run_with_the_cluster_the_user_named(
    tmp_path: Path,
) -> None:
    import argparse
    import types

    import anyio

    from llmrun.api import make_engine
    from llmrun.commands.run import engine_of
    from llmrun.run.progress import make_progress

    built: list[tuple[Any, ...]] = []

    class InlineEngine:
        """An engine plugin that runs the job here, noting what it was given."""

        @classmethod
        def build(
            cls,
            recipe: Any,
            registry: Any,
            progress: Any,
            *,
            address: Any,
            overrides: Any,
            **options: Any,
        ) -> Any:
            built.append((address, list(overrides), recipe.run.workers, sorted(options)))
            return make_engine(recipe, registry, progress, **options)

    def register_engines(register: Any) -> None:
        register("inline", InlineEngine)

    plugin = types.SimpleNamespace(register_engines=llmrun.hookimpl(register_engines))
    registry = load_registry(entry_points=False, plugins={"inline": plugin})
    assert registry.get("engine", "inline").cls is InlineEngine
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    recipe = basic_recipe({"name": "mock"})
    recipe["run"] = {"engine": "inline", "workers": 3}
    loaded = load_recipe(write_recipe(tmp_path, recipe), registry)
    args = argparse.Namespace(address="10.0.0.1:6379", overrides=["run.concurrency=2"])
    factory = engine_of(loaded, registry, args)
    engine = factory(
        loaded,
        registry,
        make_progress("none"),
        limit=None,
        fresh=False,
        retry_errors=False,
        handle_signals=False,
    )
    summary = anyio.run(engine.run)
    assert summary.status == "completed" and summary.stats.ok == 5
    assert built == [
        (
            "10.0.0.1:6379",
            ["run.concurrency=2"],
            3,
            ["fresh", "handle_signals", "limit", "retry_errors"],
        )
    ]
