"""The SIGKILL chaos run: a job under a 15% fault mix, killed six times, then let finish.

The real ``llmrun run`` CLI (3,000 records, ``run.concurrency: 64``, otherwise the recipe's
defaults) against the fake OpenAI server in this process, 20 ms latency, failing 15% of the
requests with every kind of fault of ``llmrun.testing.limits.fault_mix`` (429 bare, with
``Retry-After: 1`` and with ``retry-after-ms``, 500, 503, resets, stalls of 2 s, non-JSON and
truncated bodies). Each of the first six runs is killed with SIGKILL once another 200 to 400
rows are written; the seventh runs to the end. Measured: seconds from the last kill to the end
of the last run, every record ``ok`` exactly once. Target: <= 60 s.

Usage: ``python benchmarks/chaos.py [--records 3000] [--kills 6] [--seed 15]``. Prints one JSON
line; exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from llmrun.testing.fake_openai import FakeOpenAI
from llmrun.testing.limits import fault_mix

TARGET_S = 60.0


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    script = Path(sys.executable).parent / "llmrun"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llmrun"]
    fault = fault_mix(0.15, seed=args.seed, stall_s=2.0)
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency_s=0.02, fault=fault) as fake:
        folder = Path(tmp)
        with open(folder / "data.jsonl", "w", encoding="utf-8") as fh:
            for i in range(args.records):
                text = f"record number {i} says hello, and asks for a short answer about it"
                fh.write(json.dumps({"id": f"r{i:07d}", "text": text}) + "\n")
        recipe = {
            "name": "chaos-bench",
            "data": {"path": "data.jsonl", "id": "id"},
            "prompt": {"system": "You are terse.", "user": "{{ text }}"},
            "provider": {"name": "openai", "base_url": fake.url, "model": "fake-model"},
            "generation": {"max_tokens": 16},
            "run": {"concurrency": 64},
            "output": {"path": "out.jsonl"},
        }
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        out = folder / "out.jsonl"
        run = [*command, "run", str(path), "--quiet"]
        last_kill = time.monotonic()
        for _ in range(args.kills):
            target = lines(out) + rng.randint(200, 400)
            proc = subprocess.Popen(run, cwd=folder, stderr=subprocess.DEVNULL)
            while lines(out) < target and proc.poll() is None:
                time.sleep(0.005)
            proc.kill()
            proc.wait()
            last_kill = time.monotonic()
        final = subprocess.run(run, cwd=folder, stderr=subprocess.DEVNULL, check=False)
        took = time.monotonic() - last_kill
        rows = [json.loads(line) for line in out.open(encoding="utf-8")]
    ids = [r["id"] for r in rows]
    ok = sum(1 for r in rows if r["status"] == "ok")
    result = {
        "records": args.records,
        "kills": args.kills,
        "after_last_kill_s": round(took, 1),
        "exit": final.returncode,
        "rows": len(ids),
        "unique": len(set(ids)),
        "ok": ok,
        "faults": sum(fault.chosen.values()),  # type: ignore[attr-defined]
        "target": f"<= {TARGET_S:g} s after the last kill, every record ok once",
    }
    result["met"] = took <= TARGET_S and ok == len(set(ids)) == len(ids) == args.records
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
