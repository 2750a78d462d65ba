"""`llmrun plugin new`: the scaffolded distribution installs into a fresh virtual environment and
passes its own tests (which use the fixtures llmrun ships for plugin authors) as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import built_once, run_cli

# Slow (builds distributions in a fresh environment): `-m "not slow"` leaves them out. The venv
# is built once for the run and shared by the xdist workers (conftest.built_once).
pytestmark = pytest.mark.slow

# kind -> the component's name; one plugin of each kind is generated and installed.
KINDS = {"postprocessor": "shout_it", "loader": "lines", "provider": "chatty"}
TESTS = {"postprocessor": 4, "loader": 3, "provider": 4}


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder holding one generated plugin of each kind, the python of a fresh venv they
    are installed in)."""
    root = built_once(tmp_path_factory, "scaffold", generate_and_install)
    return root, venv_python(root / "venv")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def generate_and_install(root: Path) -> None:
    for kind, name in KINDS.items():
        made = run_cli("plugin", "new", name, "--kind", kind, cwd=root)
        assert made.returncode == 0, made.stderr
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv_python(venv)
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The local llmrun checkout (and pytest) come from this environment, added as a site
    # directory so its editable install resolves; nothing is downloaded.
    ours = sysconfig.get_paths()["purelib"]
    Path(venv_site, "llmrun_checkout.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n", encoding="utf-8"
    )
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            *(str(root / f"llmrun-{name.replace('_', '-')}") for name in KINDS.values()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr


@pytest.fixture(scope="session")
def scaffolded(installed: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the generated postprocessor plugin's folder, the venv's python)."""
    root, python = installed
    return root / "llmrun-shout-it", python


def test_scaffold_layout(scaffolded: tuple[Path, Path]):
    plugin, _ = scaffolded
    files = sorted(p.relative_to(plugin).as_posix() for p in plugin.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "llmrun_shout_it/__init__.py",
        "pyproject.toml",
        "tests/test_shout_it.py",
    ]
    pyproject = (plugin / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.llmrun]\nshout_it = "llmrun_shout_it"' in pyproject
    assert 'LLMRUN_API = ">=1"' in (plugin / "llmrun_shout_it/__init__.py").read_text("utf-8")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scaffolded_plugin_passes_its_own_tests(installed: tuple[Path, Path], kind: str):
    root, python = installed
    plugin = root / f"llmrun-{KINDS[kind].replace('_', '-')}"
    env = {k: v for k, v in os.environ.items() if k != "LLMRUN_PLUGINS"}
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=plugin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{TESTS[kind]} passed" in result.stdout


def test_installed_scaffolds_are_listed_by_llmrun_plugins(installed: tuple[Path, Path]):
    _, python = installed
    env = {**os.environ, "LLMRUN_PLUGINS": ",".join(KINDS.values())}
    result = subprocess.run(
        [str(python), "-m", "llmrun", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["failures"] == []
    found = {(c["kind"], c["name"]): c for c in data["components"]}
    for kind, name in KINDS.items():
        assert found[(kind, name)]["package"] == f"llmrun-{name.replace('_', '-')}"
        assert found[(kind, name)]["version"] == "0.1.0"


def test_plugin_new_refuses_bad_names_and_busy_folders(tmp_path: Path):
    bad = run_cli("plugin", "new", "Bad-Name", cwd=tmp_path)
    assert bad.returncode == 2 and "lower-case letters" in bad.stderr
    (tmp_path / "llmrun-x").mkdir()
    (tmp_path / "llmrun-x" / "keep.txt").write_text("mine", encoding="utf-8")
    busy = run_cli("plugin", "new", "x", cwd=tmp_path)
    assert busy.returncode == 2 and "not empty" in busy.stderr
    assert (tmp_path / "llmrun-x" / "keep.txt").read_text(encoding="utf-8") == "mine"
