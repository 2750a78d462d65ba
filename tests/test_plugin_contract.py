"""A plugin written only against the documented contract: one component of each kind, from
outside llmrun, run end to end (and resumed through its own writer)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

import llmrun
from llmrun.api import open_recipe
from llmrun.plugins import load_registry

from .conftest import write_recipe


class Numbers:
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 0}},
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.count_ = int(options["count"])

    def records(self) -> Iterator[llmrun.SourceRecord]:
        for i in range(self.count_):
            if i == 3:
                yield llmrun.SourceRecord(None, "numbers:3", error="three is unlucky")
            else:
                yield llmrun.SourceRecord({"n": i, "word": f"item{i}"}, f"numbers:{i}")

    def count(self) -> int:
        return self.count_


class ReverseTransport:
    def __init__(self) -> None:
        self.calls = 0

    async def send(self, request: httpx.Request, timeout_s: float) -> httpx.Response:
        self.calls += 1
        text = json.loads(request.content)["text"]
        return httpx.Response(200, json={"out": text[::-1]}, request=request)

    async def aclose(self) -> None:
        pass


TRANSPORT = ReverseTransport()


class Reverse:
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"model": {"type": "string"}},
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.model = str(options.get("model", "reverse-1"))

    def build_request(self, prompt: llmrun.Prompt, api_key: str | None) -> httpx.Request:
        text = prompt.messages[-1]["content"]
        return httpx.Request("POST", "http://reverse.invalid/", json={"text": text})

    def parse_response(self, response: httpx.Response) -> llmrun.Reply:
        return llmrun.Reply(text=response.json()["out"], finish_reason="stop", model=self.model)

    def transport(self) -> ReverseTransport:
        return TRANSPORT


class Upper:
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"field": {"type": "string"}},
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.field = str(options.get("field", "upper"))

    def __call__(self, result: llmrun.Result) -> None:
        if result.record.get("n") == 5:
            raise llmrun.PostprocessError("five is rejected")
        result.fields[self.field] = (result.text or "").upper()


class TabWriter:
    """id<TAB>status<TAB>json-row per line."""

    options_schema = {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {"path": {"type": "string"}},
    }

    def __init__(self, options: Mapping[str, Any], context: llmrun.ComponentContext) -> None:
        self.path = context.base_dir / str(options["path"])
        self.fh: Any = None

    def open(self) -> Iterator[Mapping[str, Any]]:
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                rid, status, _ = line.split("\t", 2)
                yield {"id": rid, "status": status}
        self.fh = open(self.path, "a")  # noqa: SIM115

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.fh.write(f"{row['id']}\t{row['status']}\t{json.dumps(row)}\n")
        self.fh.flush()

    def sync(self) -> None:
        pass

    def close(self) -> None:
        self.fh.close()


class ThirdParty:
    @llmrun.hookimpl
    def register_loaders(self, register: Any) -> None:
        register("numbers", Numbers)

    @llmrun.hookimpl
    def register_providers(self, register: Any) -> None:
        register("reverse", Reverse)

    @llmrun.hookimpl
    def register_postprocessors(self, register: Any) -> None:
        register("upper", Upper)

    @llmrun.hookimpl
    def register_writers(self, register: Any) -> None:
        register("tabs", TabWriter)


def test_every_component_kind_from_a_plugin(tmp_path: Path) -> None:
    registry = load_registry(entry_points=False, plugins={"thirdparty": ThirdParty()})
    assert registry.get("provider", "reverse").plugin == "thirdparty"
    recipe_path = write_recipe(
        tmp_path,
        {
            "data": {"loader": "numbers", "count": 8},
            "prompt": "{{ word }}",
            "provider": {"name": "reverse"},
            "postprocess": [{"upper": {"field": "shout"}}],
            "output": {"writer": "tabs", "path": "out.tsv"},
        },
    )
    recipe, _ = open_recipe(recipe_path, registry=registry)
    summary = llmrun.run_recipe_sync(recipe, registry=registry)
    lines = (tmp_path / "out.tsv").read_text().splitlines()
    rows = {
        json.loads(line.split("\t", 2)[2])["id"]: json.loads(line.split("\t", 2)[2])
        for line in lines
    }
    assert len(lines) == len(rows) == 8
    assert summary.stats.ok == 6 and summary.stats.error == 2
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["fields"]["shout"] == r["record"]["word"][::-1].upper() for r in ok)
    assert rows["numbers:3"]["error"]["type"] == "bad_input"
    assert "unlucky" in rows["numbers:3"]["error"]["message"]
    rejected = next(r for r in rows.values() if (r.get("record") or {}).get("n") == 5)
    assert rejected["error"]["type"] == "postprocess"
    assert rejected["response"]["text"] == "5meti"  # the reply is kept for re-processing
    calls = TRANSPORT.calls

    # Resume through the plugin's own writer: nothing is called again.
    again = llmrun.run_recipe_sync(recipe, registry=registry)
    assert again.stats.written == 0 and again.stats.resumed_ok == 6
    assert TRANSPORT.calls == calls
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 8
