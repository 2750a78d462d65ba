"""`llmrun report` and `llmrun view`, rendered in a real headless Chromium.

One real run against the fake server on 127.0.0.1 makes an output with ok rows, retried rows,
refused requests (error rows) and replies, ids and messages that try to inject markup; the
report and the viewer are then opened in Chromium and read from the DOM it built.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmrun.redaction import fingerprint
from llmrun.report.data import read_pace_events
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .browser import Node, assert_inert, dump_dom
from .conftest import basic_recipe, llmrun_command, read_jsonl, run_cli, write_jsonl, write_recipe

HOSTILE = '<script>alert("x")</script></pre><img src=x onerror=alert(1)>'
KEYS = ["sk-first-key-0123456789", "sk-second-key-0123456789"]
N = 60


def _record_id(request: RecordedRequest) -> str:
    text = json.dumps(request.body)
    found = re.search(r"id=(r\d{5})", text)
    return found.group(1) if found else ""


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished run: 60 records; every 10th is refused (400, a hostile message), every 7th
    is rate limited once, r00005 gets a hostile reply; plus one record with a hostile id."""
    folder = tmp_path_factory.mktemp("job")
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = _record_id(request)
        with lock:
            seen[rid] = seen.get(rid, 0) + 1
            first = seen[rid] == 1
        number = int(rid[1:]) if rid else -1
        if number % 10 == 3:
            body = {"error": {"message": f"bad request {HOSTILE}", "type": "invalid_request"}}
            return Fault(status=400, body=json.dumps(body).encode())
        if number % 7 == 0 and first:
            return Fault(status=429, headers={"retry-after": "0"})
        return None

    def reply(body: Any) -> str:
        return HOSTILE if "id=r00005" in json.dumps(body) else "label: positive " * 8

    records = [{"id": f"r{i:05d}", "text": f"record number {i}"} for i in range(N)]
    records.append({"id": HOSTILE, "text": "hostile id"})
    write_jsonl(folder / "data.jsonl", records)
    # 50 ms: the run lasts past its first quarter second, when a lone 429 on this local
    # (unpaced) endpoint starts to count against the pace (run/limits.py).
    with FakeOpenAI(fault=fault, reply=reply, latency_s=0.05) as server:
        recipe = basic_recipe(
            {"name": "openai", "base_url": server.url, "model": "fake-model", "api_keys": KEYS},
            prices={"fake-model": {"input": 1.0, "output": 2.0}},
        )
        recipe["run"] = {"concurrency": 4, "max_retries": 2}
        path = write_recipe(folder, recipe)
        proc = run_cli("run", str(path), "-q", cwd=folder)
    assert proc.returncode == 1, proc.stderr  # error rows
    # A row whose error type came from a server (a batch result's code can): hostile too.
    with open(folder / "out.jsonl", "a", encoding="utf-8") as fh:
        row = read_jsonl(folder / "out.jsonl")[-1] | {
            "id": "batch-row",
            "status": "error",
            "text": None,
            "error": {"type": "$\\frac{1}{2}$ --> " + HOSTILE, "message": HOSTILE},
            "key": "$\\frac{1}{2}$ --> " + HOSTILE,
        }
        fh.write(json.dumps(row) + "\n")
    yield path


def test_the_report_has_every_plot_drawn_and_the_rows_listed(job: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    proc = run_cli("report", str(job), "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    html = target.read_text(encoding="utf-8")
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "<script" not in html.split("<body>", 1)[1].replace("&lt;script", "")
    dom = dump_dom(target.as_uri(), tmp_path / "profile")
    assert_inert(dom)
    rows = read_jsonl(job.parent / "out.jsonl")
    for plot in ("throughput", "latency", "tokens", "cost", "errors", "keys"):
        svg = dom.by_id(f"plot-{plot}").iter("svg")
        assert len(svg) == 1, plot
    # Drawn data, not empty axes: the lines have a point per time slot, the histograms bars.
    for line in ("data-throughput", "data-inflight", "data-tokens-in", "data-cost", "data-retries"):
        paths = dom.by_id(line).iter("path")
        assert paths and paths[0].attrs["d"].count("L") >= 5, line
    latency_bars = dom.ids("data-latency-")
    assert len(latency_bars) == 50
    assert len(dom.ids("data-cost-row-")) == 40
    assert dom.ids("data-errors-0-")  # error rows by type, stacked
    # Pace per key: a line for each key that answered, named by its fingerprint, never the key.
    used = Counter(r["key"] for r in rows if r["key"])
    assert {fingerprint(k) for k in KEYS} <= set(used) and len(used) == 3
    keys_plot = dom.by_id("plot-keys")
    for n in range(2):  # the two keys that made the calls; the third is the hostile row's
        paths = dom.by_id(f"data-key-{n}").iter("path")
        assert paths and paths[0].attrs["d"].count("L") >= 5, n
    assert dom.by_id("data-key-2").iter("path")
    # run.log's pace changes (the adaptive pace after each 429) as each key's dashed line.
    events = read_pace_events(job.parent / "out.jsonl.llmrun/run.log")
    assert {e.kind for e in events} == {"pace"} and {e.key for e in events} <= set(used)
    assert dom.ids("data-key-pace-")
    assert not any(k in html for k in KEYS)
    assert len(keys_plot.iter("svg")) == 1
    # The summary counts match the output.
    summary = {
        " ".join(tr.iter("td")[0].text().split()): " ".join(tr.iter("td")[1].text().split())
        for tr in dom.iter("table")[0].iter("tr")
    }
    errors = sum(r["status"] == "error" for r in rows)
    assert summary["rows"] == f"{len(rows)} ({len(rows) - errors} ok, {errors} errors)"
    assert summary["invalid_request"] == "6"
    assert summary["retries"] == f"{sum(r['attempts'] - 1 for r in rows)} calls made again"
    assert summary["cost"] == f"${sum(r['cost_usd'] or 0 for r in rows):.4f}"
    # Failed rows link to their row in the page, which shows the row (escaped text).
    failed = dom.by_id("failed-table")
    links = [a.attrs["href"] for a in failed.iter("a")]
    assert len(links) == errors
    for href in links:
        line = int(href.removeprefix("#row-"))
        shown = json.loads(dom.by_id(f"row-{line}").iter("pre")[0].text())
        assert shown == rows[line - 1]
    assert HOSTILE in failed.text()  # the hostile message, as text
    slow = dom.by_id("slowest-table").iter("tr")[1:]
    latencies = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    assert slow[0].iter("td")[3].text() == f"{max(latencies):.3f}s"
    costly = dom.by_id("costliest-table").iter("tr")[1]
    assert costly.iter("td")[4].text() == f"${max(r['cost_usd'] or 0 for r in rows):.6f}"


def test_a_report_of_an_output_file_and_a_missing_one(tmp_path: Path) -> None:
    out = write_jsonl(tmp_path / "rows.jsonl", [])
    (tmp_path / "rows.jsonl").write_text("not json\n", encoding="utf-8")
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "rows.jsonl.report.html").read_text(encoding="utf-8")
    assert "damaged lines" in html
    proc = run_cli("report", str(tmp_path / "nothing.jsonl"))
    assert proc.returncode == 2
    assert "no such output file" in proc.stderr


class Viewer:
    def __init__(self, source: Path, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [*llmrun_command(), "view", str(source), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if found:
                self.url = found.group(0)
                break
        else:
            raise AssertionError(f"llmrun view exited with {self.proc.wait()}")
        self.profile = profile

    def page(self, path: str = "", **query: str) -> Node:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        return dump_dom(url, self.profile)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def viewer(job: Path, tmp_path: Path) -> Iterator[Viewer]:
    view = Viewer(job, tmp_path / "profile")
    yield view
    view.close()


def _listed(dom: Node) -> list[dict[str, str]]:
    out = []
    for tr in dom.by_id("rows").iter("tr")[1:]:
        cells = tr.iter("td")
        out.append(
            {
                "line": cells[0].text(),
                "id": cells[1].text(),
                "status": cells[2].text(),
                "type": cells[3].text(),
            }
        )
    return out


@pytest.mark.slow
def test_the_viewer_pages_filters_and_searches_rows(job: Path, viewer: Viewer) -> None:
    rows = read_jsonl(job.parent / "out.jsonl")
    first = viewer.page()
    assert_inert(first)
    listed = _listed(first)
    assert [x["id"] for x in listed] == [r["id"] for r in rows[:50]]  # one page, in order
    assert first.by_id("next").attrs["href"]
    second = _listed(viewer.page(page="1"))
    assert [x["id"] for x in second] == [r["id"] for r in rows[50:]]

    errors = _listed(viewer.page(status="error"))
    assert [x["id"] for x in errors] == [r["id"] for r in rows if r["status"] == "error"]
    assert {x["status"] for x in errors} == {"error"}
    refused = _listed(viewer.page(type="invalid_request"))
    expected = [r["id"] for r in rows if (r["error"] or {}).get("type") == "invalid_request"]
    assert [x["id"] for x in refused] == expected and len(expected) == 6
    hostile_type = rows[-1]["error"]["type"]
    assert [x["id"] for x in _listed(viewer.page(type=hostile_type))] == ["batch-row"]

    found = _listed(viewer.page(q="RECORD NUMBER 4"))  # any case, anywhere in the row
    want = [r["id"] for r in rows if "record number 4" in json.dumps(r)]
    assert [x["id"] for x in found] == want
    assert {f"r{i:05d}" for i in [4, *range(40, 50)]} <= set(want)
    found = _listed(viewer.page(q='alert("x")'))  # quotes are searched as written
    want = [r["id"] for r in rows if 'alert(\\"x\\")' in json.dumps(r)]
    assert [x["id"] for x in found] == want
    assert {"r00005", "batch-row", "r00003", HOSTILE} <= set(want)
    by_field = _listed(viewer.page(field="response.usage.output_tokens", value="2", status="ok"))
    want = [
        r["id"]
        for r in rows
        if ((r["response"] or {}).get("usage") or {}).get("output_tokens") == 2
        and r["status"] == "ok"
    ]
    assert [x["id"] for x in by_field] == want
    present = _listed(viewer.page(field="error.status"))
    assert [x["id"] for x in present] == expected  # only the refused rows have an HTTP status
    assert _listed(viewer.page(field="no.such.field")) == []


def test_a_row_page_shows_record_prompt_reply_fields_and_error(job: Path, viewer: Viewer) -> None:
    rows = read_jsonl(job.parent / "out.jsonl")
    line = next(i for i, r in enumerate(rows, 1) if r["id"] == "r00005")
    dom = viewer.page(f"row/{line}")
    assert_inert(dom)
    panels = {p.iter("h2")[0].text(): p.iter("pre")[0].text() for p in dom.classed("panel")}
    assert json.loads(panels["record"]) == {"id": "r00005", "text": "record number 5"}
    assert "[system]\nYou are terse." in panels["prompt"]
    assert "[user]\nid=r00005 record number 5" in panels["prompt"]  # rendered again
    assert panels["reply"] == HOSTILE  # shown as text
    refused = next(i for i, r in enumerate(rows, 1) if r["id"] == "r00003")
    dom = viewer.page(f"row/{refused}")
    panels = {p.iter("h2")[0].text(): p.iter("pre")[0].text() for p in dom.classed("panel")}
    assert json.loads(panels["error"])["type"] == "invalid_request"
    hostile = next(i for i, r in enumerate(rows, 1) if r["id"] == HOSTILE)
    dom = viewer.page(f"row/{hostile}")
    assert_inert(dom)
    assert dom.by_id("row-id").text() == HOSTILE


def test_the_viewer_answers_only_to_its_own_host_name(viewer: Viewer) -> None:
    port = int(viewer.url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={"Host": "attacker.example:80"})
    answer = conn.getresponse()
    assert answer.status == 403
    conn.request("GET", "/row/99999", headers={"Host": f"127.0.0.1:{port}"})
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 404
    conn.request("GET", "/", headers={"Host": f"localhost:{port}"})
    answer = conn.getresponse()
    assert answer.status == 200
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    conn.close()


def test_the_index_follows_an_output_that_grows_or_is_rewritten(tmp_path: Path) -> None:
    from llmrun.report.index import RowIndex

    out = tmp_path / "o.jsonl"
    rows = [
        {
            "id": f"x{i}",
            "status": "ok" if i % 3 else "error",
            "error": None if i % 3 else {"type": f"t{i % 2}"},
        }
        for i in range(10)
    ]
    write_jsonl(out, rows)
    index = RowIndex.open(out)
    assert len(index) == 10 and index.type_counts() == {"t0": 2, "t1": 2}
    assert (tmp_path / "o.jsonl.llmrun" / "view-index.bin").exists()
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "more", "status": "ok"}) + "\n")
        fh.write('{"id": "torn", "sta')  # a run is writing it: not indexed yet
    index = RowIndex.open(out)
    assert len(index) == 11
    assert [r["id"] for _, r, _ in index.read([10]) if r] == ["more"]
    # A row whose id holds the status marker is classified from the parsed row.
    write_jsonl(out, [{"id": 'a", "status": "ok', "status": "error", "error": {"type": "z"}}])
    index = RowIndex.open(out)
    assert len(index) == 1 and list(index.select("error", "z")) == [0]


def test_an_output_rewritten_in_place_with_the_same_start_is_indexed_again(
    tmp_path: Path,
) -> None:
    # Same inode, same first 4 KB, as long or longer: only the rows after the start changed
    # (a rewrite by another tool, or a new file on a reused inode). The cached index of the
    # old rows must not be taken for it.
    from llmrun.report.index import RowIndex

    out = tmp_path / "o.jsonl"
    pad = "p" * 200
    start = [{"id": f"s{i}", "status": "ok", "text": pad} for i in range(40)]  # over 4 KB
    old = [{"id": f"old{i}", "status": "ok", "text": pad} for i in range(20)]
    write_jsonl(out, start + old)
    assert len(RowIndex.open(out)) == 60
    inode = out.stat().st_ino
    new = [
        {"id": f"new{i}", "status": "error", "error": {"type": "gone"}, "text": pad + "q" * i}
        for i in range(20)
    ]
    with open(out, "r+", encoding="utf-8") as fh:  # in place: the inode stays
        fh.write("".join(json.dumps(r) + "\n" for r in start + new))
        fh.truncate()
    assert out.stat().st_ino == inode
    index = RowIndex.open(out)
    assert len(index) == 60
    assert list(index.select("error", "gone")) == list(range(40, 60))
    assert [r["id"] for _, r, _ in index.read([40]) if r] == ["new0"]


def test_a_hostile_index_cache_shipped_with_an_output_is_not_trusted(tmp_path: Path) -> None:
    # The state folder may come with a shared output. A cache claiming more rows than its
    # file holds, a negative size, entries past the output or its types, or a description
    # that never ends must each be ignored and the index built again from the output.
    from llmrun.report.index import RowIndex

    out = tmp_path / "o.jsonl"
    rows = [{"id": f"x{i}", "status": "error", "error": {"type": "t"}} for i in range(5)]
    write_jsonl(out, rows)
    RowIndex.open(out)
    meta_path = tmp_path / "o.jsonl.llmrun" / "view-index.json"
    bin_path = meta_path.with_name("view-index.bin")
    good_meta, good_bin = json.loads(meta_path.read_text()), bin_path.read_bytes()
    hostile = [
        ({"rows": 10**12}, good_bin),  # past the file: a read of terabytes
        ({"end": -(10**12)}, good_bin),  # a tail read of the whole output
        ({"types": [""]}, good_bin),  # error types the entries point past
        ({}, good_bin[:40] + bytes([7]) + good_bin[41:]),  # a status that does not exist
    ]
    for change, data in hostile:
        meta_path.write_text(json.dumps({**good_meta, **change}))
        bin_path.write_bytes(data)
        index = RowIndex.open(out)
        assert len(index) == 5 and index.type_counts() == {"t": 5}, change
        assert list(index.select("error", "t")) == [0, 1, 2, 3, 4]
    meta_path.unlink()
    meta_path.symlink_to("/dev/zero")  # endless
    index = RowIndex.open(out)
    assert len(index) == 5
    # FIFOs: opening one waited for a writer forever. An empty index (so the size check
    # passes) whose rows file is a FIFO, then a description that is one.
    empty_tail = hashlib.blake2b(b"", digest_size=16).hexdigest()
    for fifo in (bin_path, meta_path):
        meta_path.unlink()
        meta_path.write_text(json.dumps({**good_meta, "rows": 0, "end": 0, "tail": empty_tail}))
        fifo.unlink()
        os.mkfifo(fifo)
        opened: list[RowIndex] = []
        reader = threading.Thread(
            target=lambda got=opened: got.append(RowIndex.open(out)), daemon=True
        )
        reader.start()
        reader.join(timeout=60)
        if reader.is_alive():  # let the stuck open go, then fail
            with open(fifo, "wb"):
                pass
        assert opened and len(opened[0]) == 5, fifo.name


def test_ok_rows_as_the_writer_writes_them_are_indexed_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's rows are compact (orjson): the index's fast path looked only for the
    # spaced form of json.dumps, so every row of a real output was parsed. Ok rows, compact
    # or spaced, are classified from their first bytes; the others are parsed.
    from llmrun.jsonio import row_line
    from llmrun.report import index as index_module

    out = tmp_path / "o.jsonl"
    rows = [{"id": f"x{i}", "status": "ok", "text": "fine"} for i in range(6)]
    rows.append({"id": "bad", "status": "error", "error": {"type": "t"}})
    with open(out, "wb") as fh:
        fh.writelines(row_line(row) for row in rows[:3])
        fh.writelines((json.dumps(row) + "\n").encode() for row in rows[3:])
    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return json.loads(data)

    monkeypatch.setattr(index_module, "json_loads", loads)
    index = index_module.RowIndex.open(out)
    assert len(index) == 7 and list(index.select("ok")) == list(range(6))
    assert list(index.select("error", "t")) == [6]
    assert len(parsed) == 1 and b'"bad"' in parsed[0]


def test_the_first_page_shows_while_the_index_is_built(job: Path, tmp_path: Path) -> None:
    from llmrun.report.viewer import Viewer as Pages

    out = job.parent / "out.jsonl"
    rows = read_jsonl(out)
    pages = Pages(out, "test")  # indexing not started: as in the first instant of `view`
    html = pages.list_page({})
    assert 'id="indexing"' in html
    listed = re.findall(r'<td class="rid">(.*?)</td>', html)
    assert len(listed) == 50 and listed[0] == rows[0]["id"]
    html = pages.list_page({"status": "error"})  # a filter waits for the index
    assert 'id="indexing"' not in html
    assert len(re.findall(r'<td class="rid">', html)) == sum(r["status"] == "error" for r in rows)


def test_pace_events_are_read_from_the_run_log_and_nothing_else(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(
        b"2026-12-03T10:00:00.000Z INFO pace of key#0123abcd: unpaced -> 1,200.5 requests/min "
        b"after a 429\n"
        b"2026-12-03T10:00:01.000Z INFO key#0123abcd at http://127.0.0.1:9/v1 paused 2.5 s "
        b"(Retry-After)\n"
        b"2026-12-03T10:00:02.000Z WARNING retired key#4567cdef: invalid key\n"
        b"2026-12-03T10:00:03.000Z ERROR r00001: rate_limit: pace of key#0123abcd: 1 -> 2 "
        b"requests/min\n"  # an error row's message quoting a pace line: not an event
        b"not a log line pace of key#0123abcd: 1 -> 2 requests/min\n"
        + b"x" * 100_000
        + b"\n\xff\xfe garbage\n"
    )
    events = read_pace_events(log)
    assert [(e.key, e.kind, e.value) for e in events] == [
        ("key#0123abcd", "pace", 1200.5),
        ("key#0123abcd", "paused", 2.5),
        ("key#4567cdef", "retired", None),
    ]
    assert events[0].when == 1_796_292_000.0
    assert read_pace_events(tmp_path / "missing.log") == []
