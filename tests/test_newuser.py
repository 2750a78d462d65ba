"""What a new user trips over (issue 16): each message that misled, through the real CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from llmrun.testing.fake_images import image_for
from llmrun.testing.fake_openai import FakeOpenAI, Fault, RecordedRequest

from .conftest import (
    basic_recipe,
    llmrun_command,
    make_records,
    read_cli,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_recipe,
)
from .test_run import record_id_of

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3
MOCK: dict[str, Any] = {"name": "mock"}


def setup(tmp_path: Path, provider: dict[str, Any] | None = None, n: int = 5, **more: Any) -> Path:
    write_jsonl(tmp_path / "data.jsonl", make_records(n))
    return write_recipe(tmp_path, basic_recipe(provider or MOCK, **more))


def test_batch_mode_without_a_batch_api_stops_at_once(tmp_path: Path) -> None:
    recipe = setup(tmp_path)
    result = run_cli("run", str(recipe), "--mode", "batch", "-q", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "provider 'mock' has no batch API" in result.stderr
    assert "providers with one: anthropic, openai" in result.stderr
    assert "cannot connect" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
    # auto mode still runs the mock directly
    auto = run_cli("run", str(recipe), "--mode", "auto", "-q", cwd=tmp_path)
    assert auto.returncode == EXIT_OK, auto.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5


def test_missing_data_file_is_a_recipe_error_before_the_run(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, basic_recipe(MOCK))
    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "data.path: cannot read the data: no file" in result.stderr
    assert "data.jsonl" in result.stderr
    assert "RunAborted" not in result.stderr and "done" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.jsonl.llmrun").exists()


def test_status_suggests_what_fixes_template_and_postprocess_errors(tmp_path: Path) -> None:
    records = make_records(6)
    for rec in records[:2]:
        del rec["text"]  # these cannot fill the prompt
    write_jsonl(tmp_path / "data.jsonl", records)
    provider = {"name": "mock", "replies": ["maybe"]}
    recipe = write_recipe(
        tmp_path, basic_recipe(provider, postprocess=[{"choices": {"labels": ["yes", "no"]}}])
    )
    run = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert run.returncode == EXIT_ERRORS, run.stderr
    status = read_cli("status", str(recipe), cwd=tmp_path)
    assert status.returncode == EXIT_OK, status.stderr
    assert "0 retryable" in status.stdout
    assert "4 postprocess error(s)" in status.stderr and "llmrun repost" in status.stderr
    assert "2 template error(s): the prompt could not be rendered" in status.stderr
    assert "retryable error(s)" not in status.stderr

    # The hints are true: repost after fixing the chain, --retry-errors after fixing the data.
    write_recipe(tmp_path, basic_recipe(provider, postprocess=[{"choices": {"labels": ["maybe"]}}]))
    repost = run_cli("repost", str(recipe), cwd=tmp_path)
    assert repost.returncode == EXIT_ERRORS, repost.stderr  # the template rows remain
    write_jsonl(tmp_path / "data.jsonl", make_records(6))
    again = run_cli("run", str(recipe), "--retry-errors", "-q", cwd=tmp_path)
    assert again.returncode == EXIT_OK, again.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)


def test_set_with_a_key_of_a_section_says_which(tmp_path: Path) -> None:
    recipe = setup(tmp_path)
    result = run_cli("run", str(recipe), "--set", "concurrency=4", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "did you mean --set run.concurrency=4?" in result.stderr
    typo = read_cli("validate", str(recipe), "--set", "promt=hi", cwd=tmp_path)
    assert typo.returncode == EXIT_USAGE and "did you mean --set prompt=hi?" in typo.stderr


def test_validate_names_the_line_of_a_missing_variable(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", make_records(3))
    (tmp_path / "recipe.yaml").write_text(
        "name: t\n"
        "data: {path: data.jsonl, id: id}\n"
        "prompt:\n"
        "  system: be terse\n"
        "  user: |\n"
        "    Record {{ id }}\n"
        "    Text {{ txt }}\n"
        "provider: {name: mock}\n"
        "output: {path: out.jsonl}\n",
        encoding="utf-8",
    )
    result = read_cli("validate", str(tmp_path / "recipe.yaml"))
    assert result.returncode == EXIT_USAGE
    assert "recipe.yaml:7: prompt.user: the prompt uses txt" in result.stderr


def test_bad_base_url_and_non_ascii_key_are_recipe_errors(tmp_path: Path) -> None:
    provider = {"name": "openai", "model": "m", "base_url": "http://127.0.0.1:1:2/v1"}
    recipe = setup(tmp_path, {**provider, "api_keys": ["k"]})
    bad_url = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert bad_url.returncode == EXIT_USAGE, bad_url.stderr
    assert "not a usable URL" in bad_url.stderr and "internal error" not in bad_url.stderr
    secret = "sk-t\u00e9st-\u201cquoted\u201d"
    provider["base_url"] = "http://127.0.0.1:9/v1"
    recipe = write_recipe(tmp_path, basic_recipe({**provider, "api_keys": ["${MY_KEY}"]}))
    for command in ("run", "validate"):
        result = run_cli(command, str(recipe), cwd=tmp_path, env={"MY_KEY": secret})
        assert result.returncode == EXIT_USAGE, result.stderr
        assert "provider.api_keys[0]: the key has a character" in result.stderr
        assert "t\u00e9st" not in result.stderr and "quoted" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_plan_on_the_mock_uses_its_latency(tmp_path: Path) -> None:
    recipe = setup(tmp_path, n=40)
    quick = read_cli("plan", str(recipe), "--json", cwd=tmp_path)
    assert quick.returncode == EXIT_OK, quick.stderr
    plan = json.loads(quick.stdout)
    assert plan["call_latency_s"] == 0 and plan["duration_s"] == 0
    slow = read_cli("plan", str(recipe), "--json", "--set", "provider.latency_s=0.5", cwd=tmp_path)
    plan = json.loads(slow.stdout)
    # 40 calls, 8 at a time, 0.5 s each: 5 waves
    assert plan["call_latency_s"] == 0.5 and plan["duration_s"] == 2.5


def test_repost_takes_the_same_data_file_written_another_way(tmp_path: Path) -> None:
    recipe = setup(tmp_path)
    assert run_cli("run", str(recipe), "-q", cwd=tmp_path).returncode == EXIT_OK
    absolute = f"data.path={tmp_path / 'data.jsonl'}"
    same = run_cli("repost", str(recipe), "--set", absolute, cwd=tmp_path)
    assert same.returncode == EXIT_OK, same.stderr
    assert "reposted 5 row(s)" in same.stderr
    sub = tmp_path / "sub"
    sub.mkdir()
    dotted = run_cli("repost", str(recipe), "--set", "data.path=sub/../data.jsonl", cwd=tmp_path)
    assert dotted.returncode == EXIT_OK, dotted.stderr
    other = run_cli("repost", str(recipe), "--set", "data.path=sub/data.jsonl", cwd=tmp_path)
    assert other.returncode == EXIT_USAGE and "changed since the replies" in other.stderr


def test_openai_environment_variables_as_the_official_client(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    recipe = setup(tmp_path, {"name": "openai", "model": "gpt-test"}, n=3)
    env = {
        "OPENAI_BASE_URL": fake_openai.url,
        "OPENAI_API_KEY": "sk-env-key",
        "OPENAI_ORG_ID": "org-123",
        "OPENAI_PROJECT_ID": "proj_456",
    }
    result = run_cli("run", str(recipe), "-q", cwd=tmp_path, env=env)
    assert result.returncode == EXIT_OK, result.stderr
    assert len(fake_openai.requests) == 3
    for request in fake_openai.requests:
        assert request.headers["authorization"] == "Bearer sk-env-key"
        assert request.headers["openai-organization"] == "org-123"
        assert request.headers["openai-project"] == "proj_456"
    # The recipe's own value wins over the environment's.
    elsewhere = {**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    set_url = f"provider.base_url={fake_openai.url}"
    again = run_cli(
        "run", str(recipe), "--fresh", "-q", "--set", set_url, cwd=tmp_path, env=elsewhere
    )
    assert again.returncode == EXIT_OK, again.stderr
    assert len(fake_openai.requests) == 6
    # A base URL that is not one is a recipe error naming the variable.
    bad = read_cli("validate", str(recipe), cwd=tmp_path, env={**env, "OPENAI_BASE_URL": "nope"})
    assert bad.returncode == EXIT_USAGE and "OPENAI_BASE_URL" in bad.stderr
    # The mock is not OpenAI: the variables leave it alone.
    (tmp_path / "m").mkdir()
    mock = setup(tmp_path / "m")
    assert run_cli("run", str(mock), "-q", cwd=tmp_path / "m", env=env).returncode == EXIT_OK


def test_nested_ids_by_dotted_path(tmp_path: Path) -> None:
    records = [
        {"metadata": {"row_id": f"row-{i}", "tags": [f"t{i}"]}, "text": f"say {i}"}
        for i in range(4)
    ]
    records.append({"metadata": {"other": 1}, "text": "no id"})
    records.append({"a.b": "literal", "a": {"b": "nested"}, "text": "dots in the name"})
    write_jsonl(tmp_path / "data.jsonl", records)
    recipe = write_recipe(
        tmp_path,
        basic_recipe(
            MOCK, prompt="{{ text }}", data={"path": "data.jsonl", "id": "metadata.row_id"}
        ),
    )
    result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert {f"row-{i}" for i in range(4)} <= set(rows)
    assert all(rows[f"row-{i}"]["status"] == "ok" for i in range(4))
    missing = rows["data.jsonl:5"]
    assert missing["status"] == "error"
    assert "metadata has no 'row_id'; its fields: other" in missing["error"]["message"]
    assert rows["data.jsonl:6"]["error"]["message"].startswith(
        "record has no 'metadata.row_id' (data.id): the record has no 'metadata'"
    )
    validate = read_cli("validate", str(recipe), cwd=tmp_path)
    assert validate.returncode == EXIT_USAGE
    assert "data.jsonl:5: data.id: record has no 'metadata.row_id'" in validate.stderr
    # A list index, and a field named with the dots taken before the path.
    write_recipe(
        tmp_path,
        basic_recipe(
            MOCK, prompt="{{ text }}", data={"path": "data.jsonl", "id": "metadata.tags.0"}
        ),
    )
    listed = run_cli("run", str(recipe), "--fresh", "--limit", "4", "-q", cwd=tmp_path)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == ["t0", "t1", "t2", "t3"]
    write_recipe(
        tmp_path, basic_recipe(MOCK, prompt="{{ text }}", data={"path": "data.jsonl", "id": "a.b"})
    )
    dots = run_cli("run", str(recipe), "--fresh", "-q", cwd=tmp_path)
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert dots.returncode == EXIT_ERRORS and "literal" in ids and "nested" not in ids


def test_duplicate_ids_are_warned_about_at_run_time(tmp_path: Path) -> None:
    records = make_records(30)
    for i in range(10, 30):
        records[i]["id"] = "r00001" if i < 12 else f"dup{i % 2}"
    write_jsonl(tmp_path / "data.jsonl", records)
    recipe = write_recipe(tmp_path, basic_recipe(MOCK))
    result = run_cli("run", str(recipe), "--progress", "plain", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    # 2 repeats of r00001 and 18 of dup0/dup1: five named, then the count at 10
    assert "duplicate id 'r00001' at data.jsonl:11" in result.stderr
    assert "duplicate id 'r00001' at data.jsonl:12" in result.stderr
    assert "duplicate id 'dup0' at data.jsonl:15" in result.stderr
    assert result.stderr.count("duplicate id") == 5
    assert "10 records so far repeat an earlier record's id" in result.stderr
    assert "100 records" not in result.stderr
    # Warned, not dropped and not turned into errors: a false alarm must not cost a record.
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 30
    # Distinct ids: no warning (and a resumed run reads each record once again: none either).
    write_jsonl(tmp_path / "data.jsonl", make_records(30))
    clean = run_cli("run", str(recipe), "--fresh", "--progress", "plain", cwd=tmp_path)
    again = run_cli("run", str(recipe), "--progress", "plain", cwd=tmp_path)
    assert "duplicate id" not in clean.stderr + again.stderr
    assert "repeat an earlier" not in clean.stderr + again.stderr


def test_invalid_utf8_is_an_error_row_naming_the_line(tmp_path: Path) -> None:
    good = [json.dumps(r).encode() for r in make_records(4)]
    bad = b'{"id": "bad", "text": "caf\xe9 au lait"}'
    (tmp_path / "data.jsonl").write_bytes(b"\n".join([good[0], good[1], bad, good[2]]) + b"\n")
    recipe = write_recipe(tmp_path, basic_recipe(MOCK))
    result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 4
    (error,) = [r for r in rows if r["status"] == "error"]
    assert error["id"] == "data.jsonl:3"
    assert "not valid UTF-8 (byte 0xe9" in error["error"]["message"]
    assert "data.errors: replace" in error["error"]["message"]
    validate = read_cli("validate", str(recipe), cwd=tmp_path)
    assert (
        validate.returncode == EXIT_USAGE
        and "data.jsonl:3: data: not valid UTF-8" in validate.stderr
    )
    # Asked for in the recipe: read with U+FFFD, as before.
    data = {"path": "data.jsonl", "id": "id", "errors": "replace"}
    write_recipe(tmp_path, basic_recipe(MOCK, data=data))
    replaced = run_cli("run", str(recipe), "--fresh", "-q", cwd=tmp_path)
    assert replaced.returncode == EXIT_OK, replaced.stderr
    row = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}["bad"]
    assert row["record"]["text"] == "caf\ufffd au lait"
    # CSV and text: the same, at the row's line.
    (tmp_path / "data.csv").write_bytes(b'id,text\na,"one\ntwo"\nb,\xff\xfe\nc,fine\n')
    csv_data = {"path": "data.csv", "id": "id"}
    write_recipe(tmp_path, basic_recipe(MOCK, data=csv_data, prompt="{{ text }}"))
    as_csv = run_cli("run", str(recipe), "--fresh", "-q", cwd=tmp_path)
    assert as_csv.returncode == EXIT_ERRORS, as_csv.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows if r["status"] == "ok") == ["a", "c"]
    (error,) = [r for r in rows if r["status"] == "error"]
    assert error["id"] == "data.csv:4" and "not valid UTF-8 (byte 0xff" in error["error"]["message"]
    (tmp_path / "data.txt").write_bytes(b"first\n\x80second\nthird\n")
    txt = {"path": "data.txt", "number": "line"}
    write_recipe(tmp_path, basic_recipe(MOCK, data={**txt, "id": "line"}, prompt="{{ text }}"))
    as_text = run_cli("run", str(recipe), "--fresh", "-q", cwd=tmp_path)
    assert as_text.returncode == EXIT_ERRORS, as_text.stderr
    statuses = {r["id"]: r["status"] for r in read_jsonl(tmp_path / "out.jsonl")}
    assert statuses == {"1": "ok", "data.txt:2": "error", "3": "ok"}


def test_run_log_in_the_state_folder(tmp_path: Path) -> None:
    hostile = "bad \x1b[31mred\x1b[0m\nsecond line"
    seen: set[str] = set()

    def fault(request: RecordedRequest) -> Fault | None:
        rid = record_id_of(request)
        if rid == "r00002":  # always refused, with a message that tries the terminal
            body = {"error": {"message": hostile, "type": "invalid_request_error"}}
            return Fault(400, {"content-type": "application/json"}, json.dumps(body).encode())
        if rid == "r00004" and rid not in seen:  # one 429, then fine
            seen.add(rid)
            return Fault(429, {"retry-after": "0.01"})
        return None

    with FakeOpenAI(fault=fault) as server:
        provider = {"name": "openai", "model": "gpt-test", "base_url": server.url}
        recipe = setup(tmp_path, {**provider, "api_keys": ["sk-secret-1", "sk-secret-2"]}, n=8)
        (tmp_path / "data.jsonl").write_text(
            (tmp_path / "data.jsonl").read_text(encoding="utf-8")
            + json.dumps({"id": "r00001", "text": "again"})
            + "\n",
            encoding="utf-8",
        )
        result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    log = (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8")
    lines = log.splitlines()
    assert "INFO run of test started" in lines[0]
    assert any("WARNING duplicate id 'r00001' at data.jsonl:9" in line for line in lines)
    (error,) = [line for line in lines if " ERROR " in line]
    assert "r00002 (data.jsonl:3): invalid_request: HTTP 400: bad \\x1b[31mred" in error
    assert "\\x1b[0m\\nsecond line" in error
    assert "\x1b" not in log  # escaped, never raw
    # The lone 429's Retry-After delayed its own request: no pause of the key is logged
    # (tests/test_retries.py shows one that is).
    assert "paused" not in log
    assert "INFO run ended: completed" in log
    assert "counts: 9/9" in log
    assert "sk-secret" not in log
    # A second run appends; a run refused at once (missing data) writes nothing.
    again = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert again.returncode == EXIT_ERRORS
    log2 = (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8")
    assert log2.startswith(log) and log2.count("run of test started") == 2
    (tmp_path / "data.jsonl").unlink()
    assert run_cli("run", str(recipe), "-q", cwd=tmp_path).returncode == EXIT_USAGE
    assert (tmp_path / "out.jsonl.llmrun" / "run.log").read_text(encoding="utf-8") == log2


def test_validate_shows_record_ids(tmp_path: Path) -> None:
    recipe = setup(tmp_path, n=8)
    result = read_cli("validate", str(recipe), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "record ids (data.id id): r00000, r00001, r00002, r00003, r00004, ... (8 checked)" in (
        result.stderr
    )
    no_id = write_recipe(tmp_path, basic_recipe(MOCK, data={"path": "data.jsonl"}), "hashed.yaml")
    hashed = read_cli("validate", str(no_id), "--records", "2", cwd=tmp_path)
    assert hashed.returncode == EXIT_OK, hashed.stderr
    assert "record ids (content hashes: no data.id): h" in hashed.stderr


def test_init_prompt_with_backslash_n_as_docs_sharing_writes_it(tmp_path: Path) -> None:
    result = run_cli(
        "init",
        "labels.yaml",
        "--no-input",
        "--system",
        "Be terse.\\nOne word.",
        "--prompt",
        "Review: {{ text }}\\nPositive, negative or neutral? (a \\\\n stays)",
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_OK, result.stderr
    plan = read_cli("plan", "labels.yaml", "--json", cwd=tmp_path)
    assert plan.returncode == EXIT_OK, plan.stderr
    system, user = json.loads(plan.stdout)["prompts"][0]
    assert system["content"] == "Be terse.\nOne word."
    assert user["content"].endswith("\nPositive, negative or neutral? (a \\n stays)")
    assert "\\nPositive" not in user["content"]
    docs = (Path(__file__).parent.parent / "docs" / "sharing.md").read_text(encoding="utf-8")
    assert "--prompt 'Review: {{ text }}\\nPositive, negative or neutral?'" in docs


def test_commands_that_call_nothing_need_no_key(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    provider = {"name": "openai", "model": "gpt-test"}
    recipe = setup(tmp_path, provider, n=6)
    keyed = {"OPENAI_API_KEY": "sk-run-key", "OPENAI_BASE_URL": fake_openai.url}
    assert run_cli("run", str(recipe), "-q", cwd=tmp_path, env=keyed).returncode == EXIT_OK
    no_key = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    no_key["OPENAI_BASE_URL"] = fake_openai.url  # the same calls, for repost
    out = str(tmp_path / "out.jsonl")
    for args in (
        ("export", out, "--to", "csv", "--order", "input", "--recipe", str(recipe)),
        ("status", str(recipe)),
        ("repost", str(recipe)),
    ):
        result = subprocess.run(
            [*llmrun_command(), *args], env=no_key, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == EXIT_OK, (args, result.stderr)
        assert "OPENAI_API_KEY" not in result.stderr
    rows = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [f"r0000{i}" for i in range(6)]
    # run and validate still want the key.
    refused = subprocess.run(
        [*llmrun_command(), "validate", str(recipe)], env=no_key, capture_output=True, text=True
    )
    assert refused.returncode == EXIT_USAGE and "OPENAI_API_KEY is not set" in refused.stderr
    assert len(fake_openai.requests) == 6


def test_plugins_never_wrap_a_name(tmp_path: Path) -> None:
    names = json.loads(run_cli("plugins", "--json").stdout)["components"]
    for columns in ("60", "80", "200"):
        result = run_cli("plugins", env={"COLUMNS": columns})
        assert result.returncode == EXIT_OK, result.stderr
        lines = result.stdout.splitlines()
        for component in names:
            # the whole name, as one word of a line (a wrapped name is in none)
            whole = f" {component['name']} "
            assert any(whole in line + " " for line in lines), (columns, component["name"])
        assert "openai-completions" in result.stdout


def test_request_files_run_as_they_are(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    bodies = [
        {
            "model": "gpt-a",
            "messages": [{"role": "user", "content": f"Say {i}"}],
            "max_tokens": 5 + i,
            "temperature": 0.1 * i,
            "logit_bias": {"50256": -100},
            "user": "cookbook",
            "metadata": {"row_id": f"row-{i}"},
        }
        for i in range(3)
    ]
    batch = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-b",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": f"Count {i}"}]},
                ],
                "seed": i,
                "service_tier": "flex",
            },
        }
        for i in range(2)
    ]
    lines = [json.dumps(b) for b in bodies] + [json.dumps(b) for b in batch]
    lines.append(
        json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {}})
    )
    (tmp_path / "cookbook.jsonl").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    (tmp_path / "batch.jsonl").write_text("\n".join(lines[3:]) + "\n", encoding="utf-8")
    provider = {
        "name": "openai",
        "model": "ignored",
        "base_url": fake_openai.url,
        "api_keys": ["k"],
    }
    cookbook = write_recipe(
        tmp_path,
        {
            "data": {
                "loader": "openai-requests",
                "path": "cookbook.jsonl",
                "id": "metadata.row_id",
            },
            "prompt": {"messages": "record"},
            "provider": provider,
            "output": {"path": "cookbook-out.jsonl"},
        },
        "cookbook.yaml",
    )
    assert read_cli("validate", str(cookbook)).returncode == EXIT_OK
    result = run_cli("run", str(cookbook), "-q")
    assert result.returncode == EXIT_OK, result.stderr
    sent = sorted(fake_openai.requests, key=lambda r: r.body["max_tokens"])
    assert [r.body for r in sent] == [
        {k: v for k, v in b.items() if k != "metadata"} for b in bodies
    ]
    rows = read_jsonl(tmp_path / "cookbook-out.jsonl")
    assert sorted(r["id"] for r in rows) == ["row-0", "row-1", "row-2"]

    batch_recipe = write_recipe(
        tmp_path,
        {
            "data": {"loader": "openai-requests", "path": "batch.jsonl", "id": "custom_id"},
            "prompt": {"messages": "record"},
            "provider": provider,
            "output": {"path": "batch-out.jsonl"},
        },
        "batch.yaml",
    )
    result = run_cli("run", str(batch_recipe), "-q")
    assert result.returncode == EXIT_ERRORS, result.stderr  # the embeddings line
    sent = [r.body for r in fake_openai.requests[3:]]
    assert sorted(sent, key=lambda b: b["seed"]) == [b["body"] for b in batch]
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "batch-out.jsonl")}
    assert rows["req-0"]["status"] == rows["req-1"]["status"] == "ok"
    assert "only POST /v1/chat/completions" in rows["batch.jsonl:3"]["error"]["message"]


STABLE = ("id", "status", "text", "fields", "error", "record", "attempts", "cost_usd")


def _stable(row: dict[str, Any]) -> dict[str, Any]:
    skip = ("first_token_s", "request_id")  # per call by nature
    response = {k: v for k, v in (row["response"] or {}).items() if k not in skip}
    return {**{k: row[k] for k in STABLE}, "response": response}


def test_streaming_gives_the_same_rows_and_a_time_to_first_token(tmp_path: Path) -> None:
    prices = {"gpt-test": {"input": 1.0, "output": 2.0}}
    with FakeOpenAI() as server:
        provider = {
            "name": "openai",
            "model": "gpt-test",
            "base_url": server.url,
            "api_keys": ["k"],
        }
        recipe = setup(tmp_path, provider, n=6, prices=prices)
        plain = run_cli("run", str(recipe), "-q", cwd=tmp_path)
        assert plain.returncode == EXIT_OK, plain.stderr
        before = sorted(map(_stable, read_jsonl(tmp_path / "out.jsonl")), key=lambda r: r["id"])
        streamed = run_cli(
            "run", str(recipe), "--fresh", "-q", "--set", "generation.stream=true", cwd=tmp_path
        )
        assert streamed.returncode == EXIT_OK, streamed.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        sent = [r.body for r in server.requests]
    assert sorted(map(_stable, rows), key=lambda r: r["id"]) == before
    assert all(r["response"]["first_token_s"] >= 0 for r in rows)
    assert all(r["cost_usd"] > 0 for r in rows)  # usage came in the stream's last event
    assert all("stream" not in b for b in sent[:6])
    assert all(
        b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in sent[6:]
    )


def test_a_stream_is_bounded_by_an_idle_timeout_not_a_total_one(tmp_path: Path) -> None:
    words = " ".join(f"w{i}" for i in range(7))
    # 1 + 7 + 2 events, 0.3 s apart: about 3 s in all, never 1 s without a byte.
    with FakeOpenAI(reply=lambda body: words, stream_gap_s=0.3) as server:
        provider = {
            "name": "openai",
            "model": "gpt-test",
            "base_url": server.url,
            "api_keys": ["k"],
        }
        run = {"concurrency": 2, "max_retries": 0, "timeout_s": 1.0}
        recipe = setup(tmp_path, provider, n=2, run=run, generation={"stream": True})
        result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
        assert result.returncode == EXIT_OK, result.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert {r["text"] for r in rows} == {words}
        assert all(r["latency_s"] > 1.0 for r in rows)  # longer than run.timeout_s, and ok
        # The same answer unstreamed, as slow in all: cut by the total timeout. No request is
        # ever answered within 2 x run.timeout_s, so the run stops as for a server that never
        # answers (issue 15): exit 3, no row.
        server.latency_s, server.stream_gap_s = 2.5, 0.0
        whole = run_cli("run", str(recipe), "--fresh", "-q", "--set", "generation.stream=false")
        assert whole.returncode == EXIT_ABORTED, whole.stderr
        assert "never answers" in whole.stderr
        assert read_jsonl(tmp_path / "out.jsonl") == []
        # A stream that stalls longer than run.timeout_s between events is cut: here too no
        # call ever completes, so the run stops as for a server that never answers.
        server.latency_s, server.stream_gap_s = 0.0, 2.5
        stalled = run_cli("run", str(recipe), "--fresh", "-q", cwd=tmp_path)
        assert stalled.returncode == EXIT_ABORTED, stalled.stderr
        assert "never answers" in stalled.stderr
        assert read_jsonl(tmp_path / "out.jsonl") == []


def test_hostile_streams_become_error_rows(tmp_path: Path) -> None:
    def event(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    delta = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    tool = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}
                    ]
                },
                "finish_reason": None,
            }
        ]
    }
    more = {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    bodies = {
        "r00000": b"data: {not json\n\n",
        "r00001": event(delta)
        + event({"error": {"message": "overloaded", "type": "server_error"}}),
        "r00002": event(delta),  # cut: no finish, no [DONE]
        "r00003": event([1, 2]) + b"data: [DONE]\n\n",
        "r00004": event(tool) + event(more) + b"data: [DONE]\n\n",
    }

    def fault(request: RecordedRequest) -> Fault | None:
        body = bodies[record_id_of(request) or ""]
        return Fault(200, {"content-type": "text/event-stream"}, body)

    with FakeOpenAI(fault=fault) as server:
        provider = {
            "name": "openai",
            "model": "gpt-test",
            "base_url": server.url,
            "api_keys": ["k"],
        }
        run = {"concurrency": 5, "max_retries": 0}
        recipe = setup(tmp_path, provider, n=5, run=run, generation={"stream": True})
        result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert "not JSON" in rows["r00000"]["error"]["message"]
    assert "overloaded" in rows["r00001"]["error"]["message"]
    assert rows["r00002"]["error"]["type"] == "stream_cut"
    assert "not a JSON object" in rows["r00003"]["error"]["message"]
    ok = rows["r00004"]
    assert ok["status"] == "ok" and ok["response"]["finish_reason"] == "tool_calls"
    assert ok["response"]["tool_calls"] == [{"id": "c1", "name": "f", "arguments": {"a": 1}}]


def test_image_generation_saves_images_beside_the_output(tmp_path: Path) -> None:
    records = [{"id": f"p{i}", "text": f"a red fox number {i}"} for i in range(3)]
    records.append({"id": "../../escape", "text": "a fox with a hostile id"})
    write_jsonl(tmp_path / "data.jsonl", records)
    with FakeOpenAI() as server:
        provider = {
            "name": "openai-images",
            "model": "dall-e-3",
            "base_url": server.url,
            "api_keys": ["k"],
            "size": "1024x1024",
        }
        recipe = write_recipe(
            tmp_path,
            basic_recipe(provider, prompt="Draw {{ text }}", output={"path": "out/pics.jsonl"}),
        )
        result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
        assert result.returncode == EXIT_OK, result.stderr
        sent = [r.body for r in server.requests]
        # gpt-image: priced by tokens, two images a record
        provider = {**provider, "model": "gpt-image-1", "n": 2}
        provider.pop("size")
        write_recipe(
            tmp_path,
            basic_recipe(provider, prompt="Draw {{ text }}", output={"path": "out/gpt.jsonl"}),
        )
        again = run_cli("run", str(recipe), "-q", cwd=tmp_path)
        assert again.returncode == EXIT_OK, again.stderr
    assert all(b["response_format"] == "b64_json" and b["size"] == "1024x1024" for b in sent)
    assert sorted(b["prompt"] for b in sent)[0] == "Draw a fox with a hostile id"
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "pics.jsonl")}
    folder = tmp_path / "out" / "pics-images"
    for rid, row in rows.items():
        (image,) = row["response"]["images"]
        path = tmp_path / image["path"]
        assert path.parent == folder and path.suffix == ".png"
        assert row["text"] == image["path"]
        prompt = "Draw " + next(r["text"] for r in records if r["id"] == rid)
        assert path.read_bytes() == image_for(prompt, 0)  # the image the server sent
        assert image["revised_prompt"] == f"A detailed picture of: {prompt}"
        assert row["cost_usd"] == 0.04  # per image, from the price table
        assert row["response"]["usage"]["images"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpt-images",
        "gpt.jsonl",
        "gpt.jsonl.llmrun",
        "pics-images",
        "pics.jsonl",
        "pics.jsonl.llmrun",
    ]
    gpt = read_jsonl(tmp_path / "out" / "gpt.jsonl")
    for row in gpt:
        assert len(row["response"]["images"]) == 2 and row["response"]["usage"]["images"] == 2
        usage = row["response"]["usage"]
        expected = (usage["input_tokens"] * 5.0 + usage["output_tokens"] * 40.0) / 1e6
        assert abs(row["cost_usd"] - expected) < 1e-9


def test_image_generation_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    bad = {
        "p0": {"data": [{"b64_json": base64.b64encode(b"#!/bin/sh\nrm -rf ~\n").decode()}]},
        "p1": {"data": [{"b64_json": "not base64 at all!"}]},
        "p2": {"data": [{"url": "http://127.0.0.1:9/secret.png"}]},
        "p3": {"data": []},
    }

    def fault(request: RecordedRequest) -> Fault | None:
        rid = request.body["prompt"].split()[-1]
        return Fault(200, {"content-type": "application/json"}, json.dumps(bad[rid]).encode())

    records = [{"id": rid, "text": rid} for rid in bad]
    write_jsonl(tmp_path / "data.jsonl", records)
    with FakeOpenAI(fault=fault) as server:
        provider = {
            "name": "openai-images",
            "model": "dall-e-2",
            "base_url": server.url,
            "api_keys": ["k"],
        }
        run = {"max_retries": 0}
        recipe = write_recipe(tmp_path, basic_recipe(provider, prompt="Draw {{ text }}", run=run))
        result = run_cli("run", str(recipe), "-q", cwd=tmp_path)
    assert result.returncode == EXIT_ERRORS, result.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert "not PNG, JPEG or WebP" in rows["p0"]["error"]["message"]
    assert "not base64" in rows["p1"]["error"]["message"]
    assert rows["p2"]["status"] == "ok"
    assert rows["p2"]["response"]["images"] == [{"url": "http://127.0.0.1:9/secret.png"}]
    assert rows["p3"]["status"] == "error"
    assert not (tmp_path / "out-images").exists() or not list((tmp_path / "out-images").iterdir())
