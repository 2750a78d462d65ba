"""The plugin distributions under plugins/, installed like a user installs them.

One fresh virtual environment per session gets this checkout of llmrun and the plugins
(parquet, hf, wandb, ray) from their folders (not editable), plus pytest. Everything then runs
through that environment's own ``llmrun`` command and Python, so the plugins are found through
their entry points only. This process never imports pyarrow, datasets, wandb or ray: they exist only
in that environment.

Installing takes much of this module's time (a few minutes with a warm pip cache: ray is the
largest), and llmrun-ray's own tests about as long again (a local Ray cluster); see the
README of each plugin for what it installs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import built_once, read_jsonl, write_jsonl

# Slow (builds distributions in a fresh environment): `-m "not slow"` leaves them out. The
# environment is built once for the run and shared by the xdist workers (conftest.built_once).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PARQUET = ROOT / "plugins" / "llmrun-parquet"
HF = ROOT / "plugins" / "llmrun-hf"
# wandb joins this environment rather than one of its own: a second venv would install llmrun
# again, and one install of wandb (about 40 s with a warm cache, its own tests 20 s) costs less.
WANDB = ROOT / "plugins" / "llmrun-wandb"
RAY = ROOT / "plugins" / "llmrun-ray"


@dataclass
class Venv:
    folder: Path
    env: dict[str, str]

    @property
    def bin(self) -> Path:
        return self.folder / ("Scripts" if os.name == "nt" else "bin")

    def run(
        self, program: str, *args: str, cwd: Path | None = None, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / program), *args],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str, *args: str, **env: str) -> Any:
        """Run ``code`` in the venv's Python; it prints one JSON value, returned here."""
        proc = self.run("python", "-c", textwrap.dedent(code), *args, **env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    # Without PYTHONDONTWRITEBYTECODE (set in many CI images, and here): the big packages are
    # installed without bytecode (below), so under it every process compiled what it imported
    # anew: ray alone is a second of CPU a process, and each Ray job starts several (driver,
    # workers, actors). Now the first import of a module writes its bytecode for the others.
    dropped = {"LLMRUN_PLUGINS", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in {*dropped, "PYTHONDONTWRITEBYTECODE"}}
    # The Hugging Face cache of these tests is their own; nothing reaches the Hub.
    env["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))
    env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    # llmrun-wandb logs every run of this environment: nowhere, here (its own tests go offline).
    env["WANDB_MODE"] = "disabled"

    def build(folder: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
        install(Venv(folder, with_path(env, folder)))

    folder = built_once(tmp_path_factory, "plugin-dists-venv", build)
    return Venv(folder, with_path(env, folder))


def with_path(env: dict[str, str], folder: Path) -> dict[str, str]:
    bin_folder = folder / ("Scripts" if os.name == "nt" else "bin")
    return {**env, "PATH": os.pathsep.join([str(bin_folder), env.get("PATH", "")])}


def install(made: Venv) -> None:
    proc = made.run(
        "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        # No bytecode for the big wheels (pyarrow, pandas): less CPU on a 2-core CI machine.
        "--no-compile",
        str(ROOT),
        f"{PARQUET}[test]",
        f"{HF}[test]",
        f"{WANDB}[test]",
        # Ray is the largest of them (about 240 MB installed): it is installed here, once per
        # run with the others, and only its own tests (on a local cluster) import it.
        f"{RAY}[test]",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_plugins_are_listed_from_their_entry_points(venv: Venv) -> None:
    proc = venv.run("llmrun", "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["failures"] == []
    found = {
        (c["kind"], c["name"]): (c["plugin"], c["package"], c["version"])
        for c in listing["components"]
    }
    assert found[("loader", "parquet")] == ("parquet", "llmrun-parquet", "0.1.0")
    assert found[("writer", "parquet")] == ("parquet", "llmrun-parquet", "0.1.0")
    assert found[("loader", "hf")] == ("hf", "llmrun-hf", "0.1.0")
    assert found[("loader", "jsonl")][1] == "llmrun"
    # Not one of them without their entry points: the core knows nothing of them.
    none = json.loads(venv.run("llmrun", "plugins", "--json", LLMRUN_PLUGINS="").stdout)
    assert {c["package"] for c in none["components"]} == {"llmrun"}
    # Listing them imports neither pyarrow, datasets nor ray (they load when they are used).
    imported = venv.python(
        """
        import json, sys
        from llmrun.plugins import load_registry
        registry = load_registry()
        assert registry.get("loader", "hf") and registry.get("writer", "parquet")
        heavy = ("pyarrow", "datasets", "wandb", "ray")
        print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
        """
    )
    assert imported == []


PARQUET_RECIPE = """\
name: parquet-dist
data:
  loader: parquet
  path: data.parquet
  id: id
  columns: [id, text]
prompt: "Label: {{ text }}"
provider: {name: mock, replies: [positive, negative]}
run: {concurrency: 4}
output:
  writer: parquet
  path: out/labels.parquet
  row_group_size: 16
"""

MAKE_DATA = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = [{"id": f"r{i:03d}", "text": f"review {i}", "stars": i % 5} for i in range(40)]
pq.write_table(pa.Table.from_pylist(rows), sys.argv[1], row_group_size=7)
print(json.dumps(len(rows)))
"""

READ_OUTPUT = """
import json, sys
import pyarrow.parquet as pq

table = pq.read_table(sys.argv[1])
print(json.dumps({"rows": table.to_pylist(), "columns": table.column_names}))
"""


def test_a_recipe_reads_and_writes_parquet_through_the_cli(venv: Venv, tmp_path: Path) -> None:
    assert venv.python(MAKE_DATA, str(tmp_path / "data.parquet")) == 40
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(PARQUET_RECIPE, encoding="utf-8")
    check = venv.run("llmrun", "validate", str(recipe))
    assert check.returncode == 0, check.stdout + check.stderr

    first = venv.run("llmrun", "run", str(recipe), "--limit", "25", "--quiet")
    assert first.returncode == 0, first.stderr
    second = venv.run("llmrun", "run", str(recipe), "--quiet", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["resumed_ok"], summary["ok"], summary["error"]) == (25, 15, 0)

    out = tmp_path / "out" / "labels.parquet"
    parts = sorted(p.name for p in out.iterdir())
    assert parts and all(p.startswith("part-") for p in parts)  # no journal left behind
    table = venv.python(READ_OUTPUT, str(out))
    rows = table["rows"]
    assert sorted(r["id"] for r in rows) == [f"r{i:03d}" for i in range(40)]
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["text"] for r in rows} <= {"positive", "negative"}
    assert json.loads(rows[0]["record"]).keys() == {"id", "text"}  # columns: [id, text]


def test_status_plan_and_export_read_a_parquet_output_through_its_writer(
    venv: Venv, tmp_path: Path
) -> None:
    assert venv.python(MAKE_DATA, str(tmp_path / "data.parquet")) == 40
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(PARQUET_RECIPE, encoding="utf-8")
    first = venv.run("llmrun", "run", str(recipe), "--limit", "25", "--quiet")
    assert first.returncode == 0, first.stderr
    # A folder of parts, read by the parquet writer's read(): never opened as a file.
    status = venv.run("llmrun", "status", str(recipe), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["rows"], report["ok"], report["total"], report["remaining"]) == (25, 25, 40, 15)
    plan = venv.run("llmrun", "plan", str(recipe), "--json")
    assert plan.returncode == 0, plan.stderr
    assert (json.loads(plan.stdout)["done"], json.loads(plan.stdout)["to_send"]) == (25, 15)
    # export reads the folder through the parquet writer too: the recipe's, or named.
    for how in (["--recipe", str(recipe)], ["--from", "parquet"]):
        target = tmp_path / "labels.json"
        exported = venv.run(
            "llmrun",
            "export",
            str(tmp_path / "out" / "labels.parquet"),
            *how,
            "--to",
            "json",
            "--fields",
            "id,status",
            "-o",
            str(target),
        )
        assert exported.returncode == 0, exported.stderr
        rows = json.loads(target.read_text(encoding="utf-8"))
        assert sorted(r["id"] for r in rows) == [f"r{i:03d}" for i in range(25)]
        assert {r["status"] for r in rows} == {"ok"}


def read_folder(venv: Venv, folder: Path) -> dict[str, dict[str, Any]]:
    """The rows of a parquet folder by id (each id once), with their objects parsed."""
    rows = venv.python(READ_OUTPUT, str(folder))["rows"]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows)
    for row in rows:
        for key in ("fields", "error"):
            row[key] = json.loads(row[key]) if row.get(key) else row.get(key)
    return by_id


def test_repost_and_retry_errors_rewrite_a_parquet_output_through_its_writer(
    venv: Venv, tmp_path: Path
) -> None:
    assert venv.python(MAKE_DATA, str(tmp_path / "data.parquet")) == 40
    recipe = tmp_path / "recipe.yaml"
    failing = PARQUET_RECIPE.replace(
        "provider: {name: mock, replies: [positive, negative]}",
        # A call in three fails, not retried (no stored reply: an error repost leaves alone);
        # "maybe" fails the chain (an error repost redoes).
        "provider: {name: mock, replies: [positive, negative, maybe], error_rate: 0.3, seed: 3}"
        "\npostprocess: [{choices: {labels: [positive, negative]}}]",
    ).replace("run: {concurrency: 4}", "run: {concurrency: 4, max_retries: 0}")
    recipe.write_text(failing, encoding="utf-8")
    first = venv.run("llmrun", "run", str(recipe), "--limit", "25", "--quiet")
    assert first.returncode == 1, first.stderr
    out = tmp_path / "out" / "labels.parquet"
    state = tmp_path / "out" / "labels.parquet.llmrun"
    old = read_folder(venv, out)
    calls = {i for i, r in old.items() if r["status"] == "error" and not r["response"]}
    chain = {i for i, r in old.items() if r["status"] == "error" and r["response"]}
    assert len(old) == 25 and calls and chain

    # repost: the rows the chain failed are redone from their stored reply, no call made.
    recipe.write_text(failing.replace("negative]}}]", "negative], aliases: {maybe: negative}}}]"))
    reposted = venv.run("llmrun", "repost", str(recipe), "--json")
    assert reposted.returncode == 1, reposted.stderr  # the failed calls are still errors
    summary = json.loads(reposted.stdout)
    assert (summary["redone"], summary["kept"]) == (25 - len(calls), len(calls))
    assert summary["ok"] == 25 - len(calls) and summary["changed"] == len(chain)
    new = read_folder(venv, out)
    assert {i for i, r in new.items() if r["status"] == "error"} == calls
    assert all(new[i]["fields"] == {"label": "negative"} for i in chain)
    (kept,) = state.glob("before-repost-*.parquet")
    assert kept.is_dir() and read_folder(venv, kept) == old
    assert summary["previous"] == str(kept)

    # --retry-errors: the failed calls leave the output and are called again, with the 15
    # records not run yet; the old output is kept.
    retried = venv.run(
        "llmrun", "run", str(recipe), "--retry-errors", "--set", "provider.error_rate=0", "--json"
    )
    assert retried.returncode == 0, retried.stderr
    assert f"--retry-errors: {len(calls)} error row(s)" in retried.stderr
    summary = json.loads(retried.stdout)
    assert (summary["resumed_ok"], summary["resumed_error"]) == (25 - len(calls), 0)
    assert (summary["ok"], summary["error"]) == (len(calls) + 15, 0)
    (kept,) = state.glob("retried-*.parquet")
    assert read_folder(venv, kept) == new
    rows = read_folder(venv, out)
    assert sorted(rows) == [f"r{i:03d}" for i in range(40)]
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(p.name.startswith("part-") for p in out.iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    # A run after it finds every record done, one row each.
    after = venv.run("llmrun", "run", str(recipe), "--json", "--quiet")
    assert after.returncode == 0, after.stderr
    summary = json.loads(after.stdout)
    assert (summary["resumed_ok"], summary["ok"], summary["error"]) == (40, 0, 0)
    assert read_folder(venv, out) == rows


def test_a_bad_plugin_option_is_located_by_validate(venv: Venv, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(PARQUET_RECIPE.replace("row_group_size: 16", "row_group_size: 0"))
    proc = venv.run("llmrun", "validate", str(recipe))
    assert proc.returncode == 2
    assert "recipe.yaml:13" in proc.stderr + proc.stdout
    assert "output.row_group_size" in proc.stderr + proc.stdout


HF_RECIPE = """\
name: hf-dist
data:
  loader: hf
  path: reviews.jsonl
  id: id
prompt: "Stars for: {{ text }}"
provider: {name: mock, replies: ["3"]}
output: {path: out.jsonl}
"""


def test_a_recipe_reads_local_files_through_the_hf_loader(venv: Venv, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "reviews.jsonl", [{"id": f"h{i}", "text": f"t{i}"} for i in range(9)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(HF_RECIPE, encoding="utf-8")
    proc = venv.run("llmrun", "run", str(recipe), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [f"h{i}" for i in range(9)]
    assert {(r["status"], r["text"]) for r in rows} == {("ok", "3")}
    assert rows[0]["record"] == {"id": rows[0]["id"], "text": "t" + rows[0]["id"][1:]}


def test_a_hub_dataset_offline_stops_the_run_with_a_clear_message(
    venv: Venv, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        HF_RECIPE.replace("  path: reviews.jsonl", "  dataset: someorg/reviews\n  split: test")
    )
    proc = venv.run(
        "llmrun", "run", str(recipe), "--quiet", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot load dataset 'someorg/reviews' (split 'test')" in proc.stderr
    assert "only a dataset already in the local Hugging Face cache" in proc.stderr


def test_export_to_parquet_uses_the_plugin_writer(venv: Venv, tmp_path: Path) -> None:
    if "export" not in venv.run("llmrun", "--help").stdout:
        pytest.skip("this checkout has no `llmrun export` command yet")
    rows = [
        {"id": f"e{i}", "status": "ok", "text": "x", "fields": {"label": i}, "record": {"n": i}}
        for i in range(5)
    ]
    write_jsonl(tmp_path / "out.jsonl", rows)
    proc = venv.run("llmrun", "export", str(tmp_path / "out.jsonl"), "--to", "parquet")
    assert proc.returncode == 0, proc.stderr
    table = venv.python(READ_OUTPUT, str(tmp_path / "out.parquet"))
    assert sorted(r["id"] for r in table["rows"]) == [f"e{i}" for i in range(5)]


# llmrun-ray's 17 tests start a local Ray cluster: about 80 s alone, three times that beside
# the rest of the suite on 2 cores, and more on a loaded machine: past the default timeout.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "plugin",
    [
        pytest.param(RAY, marks=pytest.mark.slow(seconds=180)),
        pytest.param(PARQUET, marks=pytest.mark.slow(seconds=30)),
        HF,
        WANDB,
    ],
    ids=lambda p: p.name,
)
def test_each_plugins_own_tests_pass_in_the_installed_env(venv: Venv, plugin: Path) -> None:
    # pytest's script (not `python -m`) keeps the source folder off sys.path: the tests run
    # against the installed package.
    proc = venv.run("pytest", "-q", "-p", "no:cacheprovider", cwd=plugin, timeout=840)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
