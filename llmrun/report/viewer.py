"""``llmrun view``: a small web page on 127.0.0.1 to browse an output's rows.

Pages are made on the server, a page of rows at a time, from the row index (``index``): the
browser holds one page and runs no script. Filters by status and error type use the index;
full-text search and field filters read rows from a position on, up to ``SCAN`` rows a request,
and link to the next position. Every text shown is escaped (rows hold server text), the page
forbids scripts and outside resources (Content-Security-Policy), and requests naming another
host are refused (a web page elsewhere cannot reach the viewer through DNS rebinding).

The standard library's threading HTTP server is enough for one person's browser, and needs no
extra install.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2

from ..recipe.model import Recipe
from .index import ROW_CAP, RowIndex

PAGE = 50  # rows on a page
SCAN = 200_000  # rows a search request reads at most before it offers to go on
PREVIEW = 160  # characters of a reply shown in the list
SHOW = 20_000  # characters of one value shown on a row's page
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def _clip(text: str, cap: int) -> str:
    return text if len(text) <= cap else text[: cap - 1] + "…"


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    return _clip(json.dumps(value, ensure_ascii=False, indent=2, default=str), SHOW)


def lookup(row: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path (``fields.label``, ``response.usage.input_tokens``)."""
    value = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def field_matches(row: Any, path: str, wanted: str) -> bool:
    """A field filter: the field exists (and is not null) when ``wanted`` is empty; a string
    contains ``wanted`` (any case); any other value's JSON equals it."""
    found, value = lookup(row, path)
    if not found or value is None:
        return False
    if not wanted:
        return True
    if isinstance(value, str):
        return wanted.lower() in value.lower()
    return json.dumps(value, ensure_ascii=False) == wanted


class Viewer:
    """What the pages need: the output's index, the recipe (for prompts) and the templates."""

    def __init__(self, output: Path, name: str, recipe: Recipe | None = None) -> None:
        self.output = output
        self.name = name
        self.recipe = recipe
        self._lock = threading.Lock()
        self._index: RowIndex | None = None
        self._inode = 0
        self._selections: OrderedDict[tuple[str, str], range | list[int]] = OrderedDict()
        self._template: Any = None
        self.ready = threading.Event()  # set once the index is built
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def index(self) -> RowIndex:
        """The index, brought up to date when the output grew or was rewritten (a run may be
        writing it while it is viewed)."""
        with self._lock:
            stat = self.output.stat()
            current = self._index
            if current is None or stat.st_size != current.end or stat.st_ino != self._inode:
                fresh = RowIndex.open(self.output)
                if current is None or fresh.end != current.end or len(fresh) != len(current):
                    self._selections.clear()
                self._index, self._inode = fresh, stat.st_ino
            assert self._index is not None
            return self._index

    def _select(self, index: RowIndex, status: str, etype: str) -> range | list[int]:
        key = (status, etype)
        with self._lock:
            found = self._selections.get(key)
            if found is not None:
                self._selections.move_to_end(key)
                return found
        rows = index.select(status, etype)
        with self._lock:
            self._selections[key] = rows
            while len(self._selections) > 8:  # a list holds up to 8 bytes a row: keep few
                self._selections.popitem(last=False)
        return rows

    # -- pages ---------------------------------------------------------------------------------

    def start_indexing(self) -> None:
        """Build (or bring up to date) the index in the background: the first page of a large
        output shows before it is done (``first_rows``)."""

        def build() -> None:
            try:
                self.index()
            finally:
                self.ready.set()

        threading.Thread(target=build, name="llmrun-view-index", daemon=True).start()

    def first_rows(self) -> list[tuple[int, dict[str, Any] | None, int]]:
        """The output's first page read straight from the file (no index needed)."""
        out: list[tuple[int, dict[str, Any] | None, int]] = []
        with open(self.output, "rb") as fh:
            for line in fh:
                if len(out) == PAGE or not line.endswith(b"\n"):
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line) if len(line) <= ROW_CAP else None
                except ValueError:
                    row = None
                out.append((len(out), row if isinstance(row, dict) else None, len(line)))
        return out

    def list_page(self, query: dict[str, str]) -> str:
        status, etype = query.get("status", ""), query.get("type", "")
        text, field, wanted = query.get("q", ""), query.get("field", ""), query.get("value", "")
        if not self.ready.is_set() and not any(query.values()):
            return self.env.get_template("view_list.html").render(
                name=self.name,
                output=str(self.output),
                indexing=True,
                items=[self._item(i, row, size) for i, row, size in self.first_rows()],
                query={},
                back="?",
            )
        index = self.index()
        chosen = self._select(index, status, etype)
        found: list[tuple[int, dict[str, Any] | None, int]] = []
        total: int | None = None
        page = max(0, _int(query.get("page")))
        start = max(0, _int(query.get("at")))
        after: int | None = None  # where the next search page starts (None: no more)
        scanned = 0
        if not text and not field:
            total = len(chosen)
            start = page * PAGE
            found = list(index.read(chosen[start : start + PAGE]))
        else:
            needle = json.dumps(text.lower(), ensure_ascii=False)[1:-1].encode()
            position = start
            while position < len(chosen) and len(found) < PAGE and scanned < SCAN:
                batch = chosen[position : position + min(1000, SCAN - scanned)]
                for i, row, size in index.read(batch):
                    position += 1
                    scanned += 1
                    if row is None:
                        continue
                    if text and needle not in json.dumps(row, ensure_ascii=False).lower().encode():
                        continue
                    if field and not field_matches(row, field, wanted):
                        continue
                    found.append((i, row, size))
                    if len(found) == PAGE:
                        break
            after = position if position < len(chosen) else None
        items = [self._item(i, row, size) for i, row, size in found]
        base = {k: v for k, v in query.items() if k in ("status", "type", "q", "field", "value")}
        return self.env.get_template("view_list.html").render(
            name=self.name,
            output=str(self.output),
            indexing=False,
            rows=len(index),
            counts=index.status_counts(),
            types=list(index.type_counts().items()),
            query=base,
            items=items,
            total=total,
            page=page,
            pages=None if total is None else max(1, -(-total // PAGE)),
            start=start,
            scanned=scanned,
            after=after,
            link=lambda **kw: "?" + urllib.parse.urlencode({**base, **kw}),
            back="?" + urllib.parse.urlencode({**base, "page": page} if total else base),
        )

    def _item(self, i: int, row: dict[str, Any] | None, size: int) -> dict[str, Any]:
        if row is None:
            return {
                "line": i + 1,
                "id": "",
                "status": "damaged",
                "type": "",
                "preview": f"cannot show this row ({size:,} bytes)",
                "latency": None,
                "cost": None,
            }
        error = row.get("error") if isinstance(row.get("error"), dict) else {}
        assert isinstance(error, dict)
        reply = row.get("text")
        if reply is None and isinstance(row.get("response"), dict):
            reply = row["response"].get("text")
        preview = str(error.get("message") or "") if row.get("status") != "ok" else ""
        preview = preview or ("" if reply is None else str(reply))
        return {
            "line": i + 1,
            "id": _clip(str(row.get("id")), 120),
            "status": str(row.get("status")),
            "type": str(error.get("type") or ""),
            "preview": _clip(preview, PREVIEW),
            "latency": row.get("latency_s"),
            "cost": row.get("cost_usd"),
        }

    def row_page(self, line: int, query: dict[str, str]) -> str | None:
        index = self.index()
        if not 1 <= line <= len(index):
            return None
        ((_, row, size),) = list(index.read([line - 1]))
        panels: list[tuple[str, str]] = []
        if row is None:
            panels.append(("row", f"this row cannot be shown ({size:,} bytes, or not JSON)"))
        else:
            response = row.get("response") if isinstance(row.get("response"), dict) else None
            reply = (response or {}).get("text")
            panels = [
                ("record", _pretty(row.get("record"))),
                ("prompt", self._prompt(row)),
                ("reply", "" if reply is None else _clip(str(reply), SHOW)),
                (
                    "text (after postprocessing)",
                    "" if row.get("text") is None else _clip(str(row["text"]), SHOW),
                ),
                ("fields", _pretty(row.get("fields"))),
                *(
                    [("parsed (response.parsed)", _pretty(response["parsed"]))]
                    if response and response.get("parsed") is not None
                    else []
                ),
                ("error", _pretty(row.get("error"))),
            ]
        back = query.get("back", "")
        return self.env.get_template("view_row.html").render(
            name=self.name,
            line=line,
            rows=len(index),
            row_id="" if row is None else _clip(str(row.get("id")), 300),
            status="damaged" if row is None else str(row.get("status")),
            panels=panels,
            raw="" if row is None else _pretty(row),
            back=back if back.startswith("?") else "?",
            qback=urllib.parse.quote(back if back.startswith("?") else "?", safe=""),
        )

    def _prompt(self, row: dict[str, Any]) -> str:
        """The prompt rendered again from the recipe and the row's record (what ``output.
        include`` kept of it)."""
        if self.recipe is None:
            return "(give the recipe instead of the output to see prompts)"
        record = row.get("record")
        if not isinstance(record, dict):
            return "(the row keeps no record: output.include is none, or it was unreadable)"
        if self._template is None:
            from ..recipe.templates import PromptTemplate

            self._template = PromptTemplate.for_recipe(self.recipe)
        try:
            prompt = self._template.render(str(row.get("id")), record)
        except Exception as exc:  # the recipe changed, or include kept too few fields
            return f"(cannot render the prompt for this record: {exc})"
        parts = []
        for message in prompt.messages:
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(
                    str(p.get("text")) if p.get("type") == "text" else "[image]"
                    for p in content
                    if isinstance(p, dict)
                )
            parts.append(f"[{message.get('role')}]\n{content}")
        return _clip("\n\n".join(parts), SHOW)


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def make_server(viewer: Viewer, port: int) -> ThreadingHTTPServer:
    """The HTTP server on 127.0.0.1:``port`` (0: any free port)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "llmrun-view"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the terminal shows the URL, not every request

        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost"):
                self._send(HTTPStatus.FORBIDDEN, "only http://127.0.0.1 may ask")
                return
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            try:
                body: str | None
                if url.path == "/":
                    body = viewer.list_page(query)
                elif url.path.startswith("/row/") and url.path[5:].isdigit():
                    body = viewer.row_page(int(url.path[5:]), query)
                else:
                    body = None
            except OSError as exc:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read the output: {exc}")
                return
            if body is None:
                self._send(HTTPStatus.NOT_FOUND, "no such page")
                return
            self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")

        def _send(self, status: HTTPStatus, body: str, kind: str = "text/plain") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def serve(viewer: Viewer, port: int, ready: Callable[[str], None]) -> None:
    """Serve until interrupted; ``ready`` gets the URL once the server listens (the index is
    built meanwhile)."""
    server = make_server(viewer, port)
    viewer.start_indexing()
    try:
        ready(f"http://127.0.0.1:{server.server_address[1]}/")
        server.serve_forever()
    finally:
        server.server_close()
