"""Resume at scale (issue 14): a job with 1,000,000 rows already done and 1,000 new records.

    python benchmarks/resume_scale.py [--rows 1000000] [--new 1000] [--cache DIR] [--runs 1]

The job: realistic records (a product review of 150-450 characters and three more fields)
rendered by a Jinja template into a system and a user message, the ``mock`` provider (1% of
calls fail with HTTP 500 and are not retried, so the output has error rows too), three record
fields echoed into each row. Its input has ``rows + new`` records; its output the first
``rows`` of them, done.

The output is made once and kept in ``--cache``: the real ``llmrun run`` runs the first 1,000
records, then its rows are repeated with each record's id put in (ids are written with a fixed
width, so every copy has the byte length of the row the real run would have written for that
record: the input's record ``i`` is record ``i % 1000`` with id ``i``). The manifest is the
real run's. At every start, a no-op run over the input cut back to its first ``rows`` records
leaves the state a completed run leaves (with the resume checkpoint); the new records are then
put back at the end of the same file.

Measured, each in a fresh process of the real CLI (``llmrun run recipe.yaml --quiet --json``):

- *resume*: the job as a completed run over the first ``rows`` records left it (its output,
  manifest and resume checkpoint), the ``new`` records since appended to the input: seconds
  from the process's start to its first call (the earliest ``started_at`` of the new rows), to
  its end, and its peak RSS (``os.wait4``'s ``ru_maxrss``);
- *resume after kill -9*: the same as left by a run killed 30 s after its last checkpoint
  (``--killed-after`` rows past it, written since; runs save one every 30 s as they go): the
  checkpoint is read, and only those rows are indexed;
- *resume, no checkpoint*: the same without any checkpoint (a run made before checkpoints
  existed, or ``LLMRUN_CHECKPOINT_S=0`` and killed): the whole output and input are read;
- *no-op rerun*: the command again after *resume*, every record done.

Before each resume the output is cut back to its ``rows`` rows and the state folder put back.
Nothing is asserted: this is a measurement. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _WORDS, SYSTEM, TEMPLATE

SEED = 1000  # records the real run answers; the output repeats their rows
TARGET_FIRST_CALL_S = 3.0
TARGET_RSS_MB = 100.0
TARGET_NOOP_S = 3.0


def record(i: int) -> dict[str, Any]:
    """Input record ``i``: the content of record ``i % SEED`` (so the real run's rows for the
    first SEED records stand for all), its own id."""
    rng = random.Random(i % SEED)
    size = rng.randint(150, 450)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return {
        "id": f"r{i:08d}",
        "product": f"product-{rng.randint(1, 5000)}",
        "stars": rng.randint(1, 5),
        "lang": rng.choice(("en", "en", "en", "de", "fr")),
        "text": " ".join(words)[:size],
    }


def recipe_text(data: str) -> str:
    recipe = {
        "name": "resume-scale",
        "data": {"path": data, "id": "id"},
        "prompt": {"system": SYSTEM, "user": TEMPLATE},
        "provider": {"name": "mock", "error_rate": 0.01},
        "generation": {"temperature": 0, "max_tokens": 16},
        "run": {"concurrency": 64, "max_retries": 0},
        "output": {"path": "out/labels.jsonl", "include": ["product", "stars", "lang"]},
    }
    return json.dumps(recipe, indent=2) + "\n"  # JSON is YAML


def llmrun_command() -> list[str]:
    script = Path(sys.executable).parent / "llmrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]


def write_data(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        chunk: list[str] = []
        for i in range(n):
            chunk.append(json.dumps(record(i)) + "\n")
            if len(chunk) == 10_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))


def prepare(cache: Path, rows: int, new: int, log: Any) -> Path:
    """The job folder in ``cache`` (made once for these sizes): recipe, input, the output of
    ``rows`` done records (``out/labels.jsonl.base``) and its manifest."""
    folder = cache / f"job-{rows}-{new}"
    if (folder / "ready").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"making the job in {folder} (once) ...")
    write_data(folder / "seed.jsonl", SEED)
    (folder / "seed.yaml").write_text(recipe_text("seed.jsonl"), encoding="utf-8")
    done = subprocess.run(
        [*llmrun_command(), "run", "seed.yaml", "--quiet", "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # 1: some error rows, as intended
        raise SystemExit(f"the seed run failed: {done.stderr}")
    seed_out = folder / "out" / "labels.jsonl"
    seed_rows = seed_out.read_bytes().splitlines(keepends=True)
    by_id = {json.loads(line)["id"]: line for line in seed_rows}
    if len(by_id) != SEED:
        raise SystemExit(f"the seed run wrote {len(by_id)} rows, not {SEED}")
    state = folder / "out" / "labels.jsonl.llmrun"
    manifest = (state / "manifest.json").read_bytes()
    base = folder / "out" / "labels.jsonl.base"
    with open(base, "wb") as fh:
        buf: list[bytes] = []
        for i in range(rows):
            j = i % SEED
            row = by_id[f"r{j:08d}"]
            buf.append(row if i == j else row.replace(f"r{j:08d}".encode(), f"r{i:08d}".encode()))
            if len(buf) == 10_000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    seed_out.unlink()
    shutil.rmtree(state)
    (folder / "manifest.base.json").write_bytes(manifest)
    write_data(folder / "data.jsonl", rows + new)
    (folder / "recipe.yaml").write_text(recipe_text("data.jsonl"), encoding="utf-8")
    (folder / "ready").write_text(f"{rows}\n", encoding="utf-8")
    return folder


def make_checkpoint(folder: Path, rows: int, name: str = "base") -> None:
    """The state a completed run leaves when the input held only the first ``rows`` records:
    the input and the output are cut back to them (the same files), a no-op run over it
    writes the resume checkpoint (job/checkpoint.py), kept in ``resume.NAME/`` for
    reset(), and the rest of both files is put back. Made by this llmrun at every start (a
    checkpoint of another version would not be used).

    With ``rows`` short of the output's rows, it is the checkpoint a run saves as it goes
    (every 30 s) as that run's killed later: it holds the first ``rows`` records and rows, and
    the rows after it are those the killed run wrote since (its content is the same: an input
    prefix whose every record has its row in an output prefix, their ids and counts)."""
    data = folder / "data.jsonl"
    out = folder / "out" / "labels.jsonl"
    reset(folder, checkpoint=None)
    tails = []
    for path in (data, out):
        with open(path, "rb") as fh:
            prefix = sum(len(line) for line in itertools.islice(fh, rows))
            fh.seek(prefix)
            tails.append(fh.read())
        os.truncate(path, prefix)
    try:
        run_once(folder)
    finally:
        for path, tail in zip((data, out), tails, strict=True):
            with open(path, "ab") as fh:
                fh.write(tail)
    state = folder / "out" / "labels.jsonl.llmrun"
    kept = folder / f"resume.{name}"
    shutil.rmtree(kept, ignore_errors=True)
    if (state / "resume.idx").exists():  # its head and the files of ids it names
        kept.mkdir()
        for path in (state / "resume.idx", *state.glob("resume-*.ids")):
            shutil.copyfile(path, kept / path.name)


def reset(folder: Path, checkpoint: str | None) -> None:
    """The output as made: ``rows`` rows, the seed run's manifest, and the resume checkpoint
    ``resume.CHECKPOINT/`` (``base``: of the completed run over the first ``rows`` records;
    ``killed``: saved by a run as it went, then killed) or none."""
    out = folder / "out" / "labels.jsonl"
    state = folder / "out" / "labels.jsonl.llmrun"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    shutil.copyfile(folder / "manifest.base.json", state / "manifest.json")
    if checkpoint and (folder / f"resume.{checkpoint}").is_dir():
        for path in (folder / f"resume.{checkpoint}").iterdir():
            shutil.copyfile(path, state / path.name)
    base = folder / "out" / "labels.jsonl.base"
    # Runs only append: cutting the working copy back is enough once it has been copied.
    if out.exists() and out.stat().st_size >= base.stat().st_size:
        os.truncate(out, base.stat().st_size)
    else:
        shutil.copyfile(base, out)


def run_once(folder: Path) -> dict[str, Any]:
    """One ``llmrun run`` in a fresh process: wall time, peak RSS, CPU, and its first call."""
    out = folder / "out" / "labels.jsonl"
    size_before = out.stat().st_size
    argv = [*llmrun_command(), "run", "recipe.yaml", "--quiet", "--json"]
    started = time.time()
    proc = subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    stdout = proc.stdout.read() if proc.stdout else b""
    stderr = proc.stderr.read() if proc.stderr else b""
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        report = json.loads(stdout)
    except ValueError:
        raise SystemExit(f"llmrun failed ({proc.returncode}): {stderr.decode()[-2000:]}") from None
    first = None
    with open(out, "rb") as fh:
        fh.seek(size_before)
        for line in fh:
            at = dt.datetime.fromisoformat(json.loads(line)["started_at"].replace("Z", "+00:00"))
            first = at.timestamp() if first is None else min(first, at.timestamp())
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "first_call_s": None if first is None else first - started,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "written": report["ok"] + report["error"],
        "resumed": report["resumed_ok"] + report["resumed_error"],
        "resumed_ok": report["resumed_ok"],
        "resumed_error": report["resumed_error"],
        "status": report["status"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="measured resume + no-op pairs")
    parser.add_argument(
        "--killed-after",
        type=int,
        default=30_000,
        help="rows the killed run wrote after its last checkpoint (30 s at 1,000 rows/s)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "llmrun-resume-scale",
        help="where the job is made once and kept (about 1 GB at 10^6 rows)",
    )
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    folder = prepare(args.cache, args.rows, args.new, log)
    make_checkpoint(folder, args.rows)
    make_checkpoint(folder, args.rows - args.killed_after, "killed")
    size_mb = (folder / "out" / "labels.jsonl.base").stat().st_size / 1e6
    log(
        f"{args.rows:,} rows done ({size_mb:,.0f} MB of output), {args.new:,} new records; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    cold, killed, resumes, noops = [], [], [], []
    for n in range(args.runs):
        reset(folder, checkpoint=None)
        cold.append(run_once(folder))
        reset(folder, checkpoint="killed")
        killed.append(run_once(folder))
        reset(folder, checkpoint="base")
        resumes.append(run_once(folder))
        noops.append(run_once(folder))
        rounds = (("cold", cold), ("killed", killed), ("resume", resumes), ("no-op", noops))
        for name, got in rounds:
            log(f"round {n + 1}: {name:6} {json.dumps(got[-1])}")
            if got[-1]["written"] != (0 if name == "no-op" else args.new):
                raise SystemExit("a run did not write what was expected: see above")
    med = statistics.median
    first = med([r["first_call_s"] for r in resumes])
    first_killed = med([r["first_call_s"] for r in killed])
    rss = max(r["maxrss_mb"] for r in cold + killed + resumes + noops)
    noop_s = med([r["wall_s"] for r in noops])
    print(f"{'':34} {'first call s':>12} {'total s':>8} {'peak RSS MB':>12} {'CPU s':>6}")
    scenarios = (
        (f"resume (+{args.new} new)", resumes),
        (f"resume after kill -9 ({args.killed_after:,} rows past)", killed),
        ("resume, no checkpoint", cold),
        ("no-op rerun", noops),
    )
    for name, runs in scenarios:
        fc = [r["first_call_s"] for r in runs if r["first_call_s"] is not None]
        first_text = f"{med(fc):.2f}" if fc else "-"
        print(
            f"{name:34} {first_text:>12} {med([r['wall_s'] for r in runs]):8.2f}"
            f" {max(r['maxrss_mb'] for r in runs):12.1f} {med([r['cpu_s'] for r in runs]):6.2f}"
        )
    verdict = {
        f"first new call <= {TARGET_FIRST_CALL_S} s": first <= TARGET_FIRST_CALL_S,
        f"after kill -9, first new call <= {TARGET_FIRST_CALL_S} s": first_killed
        <= TARGET_FIRST_CALL_S,
        f"peak RSS <= {TARGET_RSS_MB:.0f} MB": rss <= TARGET_RSS_MB,
        f"no-op rerun < {TARGET_NOOP_S} s": noop_s < TARGET_NOOP_S,
    }
    for target, met in verdict.items():
        print(f"{target}: {'met' if met else 'missed'}")
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
