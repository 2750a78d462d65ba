"""Start-up time of `llmrun --help`, `llmrun validate` and `llmrun plugins` with ten plugins.

Ten plugin distributions are laid out in a temporary folder as an installer would (a package and
a ``*.dist-info`` with an ``llmrun`` entry point). Each imports something real at import time
(``json``, ``decimal``, ``email``, ...) and sleeps a little, like a plugin that pulls in its SDK,
so a command that imports entry points it does not need pays for it. The folder goes on
PYTHONPATH and LLMRUN_PLUGINS is unset: every plugin is installed and selectable.

    python benchmarks/startup.py [--runs 15] [--plugin-import-s 0.02]

Prints the median and best wall time and the median CPU time of each command (a fresh process
each run) and whether the median meets the 0.3 s target. Nothing is asserted: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.3
HEAVY = ["json", "decimal", "email.message", "http.client", "xml.dom.minidom"]
PLUGIN = """
import time
import {heavy}

import llmrun

time.sleep({sleep})  # what importing a real SDK costs


class Tag{n}:
    options_schema = {{"type": "object"}}

    def __init__(self, options, context):
        pass

    def __call__(self, result):
        result.fields["tag{n}"] = True


@llmrun.hookimpl
def register_postprocessors(register):
    register("tag{n}", Tag{n})
"""


def make_site(folder: Path, count: int, sleep: float) -> None:
    for n in range(count):
        module = f"llmrun_bench_tag{n}"
        (folder / module).mkdir()
        (folder / module / "__init__.py").write_text(
            PLUGIN.format(n=n, heavy=HEAVY[n % len(HEAVY)], sleep=sleep), encoding="utf-8"
        )
        info = folder / f"llmrun_bench_tag{n}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: llmrun-bench-tag{n}\nVersion: 1.0\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(f"[llmrun]\ntag{n} = {module}\n", encoding="utf-8")


def llmrun_command() -> list[str]:
    script = Path(sys.executable).parent / "llmrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]


def timed(args: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (user + system) of ``runs`` fresh processes. CPU time is what to
    compare on a busy machine: waiting for a core does not count in it."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(args, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {done.stderr}")
    return walls, cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--plugins", type=int, default=10)
    parser.add_argument("--plugin-import-s", type=float, default=0.02)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        make_site(site, args.plugins, args.plugin_import_s)
        # Bytecode caching on, as in any installed environment (pip compiles at install): with
        # PYTHONDONTWRITEBYTECODE set, every process would compile llmrun and its dependencies
        # from source (~65 ms). The first run of each command writes the caches.
        drop = {"LLMRUN_PLUGINS", "PYTHONDONTWRITEBYTECODE"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["PYTHONPATH"] = str(site)
        quick = str(repo / "recipes" / "quickstart.yaml")
        uses_one = Path(tmp) / "uses_plugin.yaml"
        # The data beside the recipe: a recipe reads only inside its own folder unless allowed
        # (docs/sharing.md), and this one is in the temporary folder.
        shutil.copyfile(repo / "recipes" / "reviews.jsonl", Path(tmp) / "reviews.jsonl")
        uses_one.write_text(
            "data: {path: reviews.jsonl, id: review_id}\n"
            "prompt: '{{ text }}'\nprovider: {name: mock}\npostprocess: [strip, tag3]\n"
            "output: {path: out.jsonl}\n",
            encoding="utf-8",
        )
        cmd = llmrun_command()
        none = {**env, "LLMRUN_PLUGINS": ""}  # the same commands with no plugin selectable
        cases = [
            ("llmrun --help", [*cmd, "--help"], env),
            ("llmrun --help (no plugins)", [*cmd, "--help"], none),
            ("llmrun validate (built-ins only)", [*cmd, "validate", quick], env),
            ("llmrun validate (no plugins)", [*cmd, "validate", quick], none),
            ("llmrun validate (names a plugin)", [*cmd, "validate", str(uses_one)], env),
            ("llmrun plugins", [*cmd, "plugins"], env),
        ]
        print(
            f"{args.plugins} plugins installed, each taking ~{args.plugin_import_s * 1000:.0f} ms"
            f" to import; {args.runs} runs each; Python {sys.version.split()[0]}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(f"{'command':36} {'median s':>9} {'best s':>8} {'cpu s':>7}  target {TARGET_S} s")
        for name, argv, case_env in cases:
            timed(argv, case_env, 1)  # warm-up: writes the bytecode caches, not counted
            walls, cpus = timed(argv, case_env, args.runs)
            median = statistics.median(walls)
            met = "met" if median <= TARGET_S else "missed"
            if name == "llmrun plugins":
                met = "(imports every plugin by design)"
            cpu = statistics.median(cpus)
            print(f"{name:36} {median:9.3f} {min(walls):8.3f} {cpu:7.3f}  {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
