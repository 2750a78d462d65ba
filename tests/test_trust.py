"""A recipe from another team is untrusted: every attack of issue 13 tried through the real
`llmrun` command (validate, plan, run) on real files and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from llmrun.testing.fake_openai import FakeOpenAI, Fault

from .conftest import (
    basic_recipe,
    llmrun_command,
    make_records,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_recipe,
)

NOWHERE = {"name": "openai", "model": "gpt-test", "base_url": "http://127.0.0.1:9/v1"}
KEY = "sk-live-abcdef0123456789SECRET"
SHELL = "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}"


def job(tmp_path: Path, provider: dict[str, Any] | None = None, **overrides: Any) -> Path:
    folder = tmp_path / "job"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "data.jsonl", make_records(3))
    return write_recipe(folder, basic_recipe(provider or NOWHERE, **overrides))


def openai(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"name": "openai", "model": "gpt-test", "base_url": server.url, **extra}


def refused_by_every_command(recipe: Path, env: dict[str, str], *says: str) -> None:
    """validate, plan and run each refuse the recipe (exit 2) saying each of ``says``, and
    none shows the key."""
    for command in ("validate", "plan", "run"):
        refused = run_cli(command, str(recipe), env=env)
        assert refused.returncode == 2, (command, refused.stderr)
        for text in says:
            assert text in refused.stderr, (command, text, refused.stderr)
        assert KEY not in refused.stdout + refused.stderr


# -- templates and data.filter run in a sandbox ------------------------------------------------


def test_a_template_cannot_run_shell_commands(tmp_path: Path):
    for where in ("prompt", "filter"):
        if where == "prompt":
            recipe = job(tmp_path, prompt={"user": SHELL})
        else:
            recipe = job(tmp_path, data={"path": "data.jsonl", "filter": SHELL[3:-3]})
        for command in ("validate", "plan", "run"):
            result = run_cli(command, str(recipe), cwd=recipe.parent)
            assert result.returncode == 2, (where, command, result.stderr)
            assert "attributes starting with __" in result.stderr and "sandbox" in result.stderr
            assert f"{recipe}:" in result.stderr  # file:line of the key
            assert not (recipe.parent / "PWNED").exists()


def test_a_template_reaching_internals_at_render_time_is_stopped_per_record(tmp_path: Path):
    # `attr()` hides the name from the syntax check: the sandbox itself refuses at render.
    prompt = "{{ cycler|attr('__init__') }} {{ text }}"
    with FakeOpenAI() as server:
        recipe = job(tmp_path, openai(server, api_keys=["k-123456"]), prompt={"user": prompt})
        assert run_cli("validate", str(recipe)).returncode == 2
        result = run_cli("run", str(recipe), "--quiet")
        assert server.count("/v1/chat/completions") == 0
    assert result.returncode == 1, result.stderr
    rows = read_jsonl(recipe.parent / "out.jsonl")
    assert {r["status"] for r in rows} == {"error"}
    assert all("unsafe" in r["error"]["message"] for r in rows)


def test_a_normal_template_renders_as_before(tmp_path: Path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "shots.json").write_text('[{"q": "2+2", "a": "4"}]', encoding="utf-8")
    (folder / "head.txt").write_text("Be brief.", encoding="utf-8")
    prompt = (
        '{% include "head.txt" %} {% for s in load("shots.json") %}{{ s.q }}={{ s.a }} '
        "{% endfor %}{{ record | tojson }} {{ text | upper | truncate_tokens(50) }}"
        "{{ record._id }}{{ record['_id'] }}"  # a record's own _id is data, not an internal
    )
    with FakeOpenAI() as server:
        write_jsonl(folder / "data.jsonl", [{**r, "_id": "m1"} for r in make_records(2)])
        recipe = write_recipe(
            folder, basic_recipe(openai(server, api_keys=["k-123456"]), prompt={"user": prompt})
        )
        result = run_cli("run", str(recipe), "--quiet")
        assert result.returncode == 0, result.stderr
        sent = server.requests[0].body["messages"][-1]["content"]
    assert sent.startswith("Be brief. 2+2=4 {")
    assert "RECORD NUMBER" in sent and sent.endswith("m1m1")


# -- code the recipe names runs only with the user's trust -------------------------------------


def test_python_postprocessor_needs_trust_and_validate_plan_never_import_it(tmp_path: Path):
    recipe = job(tmp_path, postprocess=[{"python": {"function": "helpers:tag"}}])
    folder = recipe.parent
    (folder / "helpers.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').touch()\n"
        "def tag(result):\n    return {'tagged': True}\n",
        encoding="utf-8",
    )
    validate = run_cli("validate", str(recipe), cwd=folder)
    assert validate.returncode == 2
    assert "python function helpers:tag" in validate.stderr and "--trust" in validate.stderr
    plan = run_cli("plan", str(recipe), "--sample", "0", cwd=folder)
    assert plan.returncode == 0, plan.stderr
    assert "code:      postprocess[0].python: python function helpers:tag" in plan.stdout
    assert "not run: pass --trust" in plan.stdout
    with FakeOpenAI() as server:
        run = run_cli("run", str(recipe), f"--set=provider.base_url={server.url}", cwd=folder)
        assert run.returncode == 2 and "LLMRUN_TRUST" in run.stderr
        assert server.count("/v1/chat/completions") == 0
        assert not (folder / "IMPORTED").exists()
        trusted = run_cli(
            "run",
            str(recipe),
            f"--set=provider.base_url={server.url}",
            env={"LLMRUN_TRUST": str(folder / "*.yaml")},
        )
    assert trusted.returncode == 0, trusted.stderr
    assert "runs code (LLMRUN_TRUST=" in trusted.stderr
    assert (folder / "IMPORTED").exists()
    assert all(r["fields"]["tagged"] for r in read_jsonl(folder / "out.jsonl"))
    assert run_cli("validate", str(recipe), "--trust").returncode == 0


# -- reads stay inside the recipe's folder -----------------------------------------------------


def test_reads_outside_the_folder_are_refused_with_key_line_and_how_to_allow(tmp_path: Path):
    outside = tmp_path / "private"
    outside.mkdir()
    write_jsonl(outside / "secret.jsonl", [{"id": "s", "text": "PRIVATE"}])
    (outside / "secret.txt").write_text("PRIVATE", encoding="utf-8")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    cases = {
        "data.path": {"data": {"path": "../private/secret.jsonl", "id": "id"}},
        "data.path ": {"data": {"path": str(outside / "secret.jsonl"), "id": "id"}},
        "{% include %}": {"prompt": {"user": '{% include "link.txt" %} {{ text }}'}},
        "load()": {"prompt": {"user": "{{ load('../private/secret.txt') }} {{ text }}"}},
        "prompt.examples.path": {
            "prompt": {
                "user": "{{ text }}",
                "examples": {"path": "../private/secret.jsonl", "user": "x", "assistant": "y"},
            }
        },
    }
    for key, overrides in cases.items():
        recipe = job(tmp_path, **overrides)
        for command in ("validate", "plan"):
            result = run_cli(command, str(recipe), cwd=folder)
            assert result.returncode == 2, (key, command, result.stderr)
            assert key.strip() in result.stderr and "outside the recipe's folder" in result.stderr
            assert "--allow-read" in result.stderr
            assert f"{recipe}:" in result.stderr
            assert "PRIVATE" not in result.stdout + result.stderr
        allowed = run_cli("validate", str(recipe), "--allow-read", str(outside))
        assert allowed.returncode == 0, (key, allowed.stderr)
    from_env = run_cli("validate", str(recipe), env={"LLMRUN_ALLOW_READ": str(outside)})
    assert from_env.returncode == 0, from_env.stderr


def test_image_paths_from_record_data_stay_inside(tmp_path: Path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with FakeOpenAI() as server:
        recipe = job(
            tmp_path,
            openai(server, api_keys=["k-123456"]),
            prompt={"user": "{{ text }}", "images": "{{ image }}"},
        )
        write_jsonl(
            recipe.parent / "data.jsonl", [{"id": "a", "text": "t", "image": "../secret.png"}]
        )
        result = run_cli("run", str(recipe), "--quiet")
        assert server.count("/v1/chat/completions") == 0
    assert result.returncode == 1
    [row] = read_jsonl(recipe.parent / "out.jsonl")
    assert "outside the recipe's folder" in row["error"]["message"]
    assert "--allow-read" in row["error"]["message"]


# -- ${VAR}: only where secrets belong, or declared --------------------------------------------


def test_environment_variables_do_not_reach_prompts_unless_declared(tmp_path: Path):
    env = {"AWS_SECRET_ACCESS_KEY": "aws-very-secret-value"}
    recipe = job(tmp_path, prompt={"user": "{{ text }} ${AWS_SECRET_ACCESS_KEY}"})
    for command in ("validate", "plan", "run"):
        result = run_cli(command, str(recipe), env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert "${AWS_SECRET_ACCESS_KEY} is not expanded here" in result.stderr
        assert "prompt.user" in result.stderr and "`env:`" in result.stderr
        assert "aws-very-secret-value" not in result.stdout + result.stderr
    declared = job(tmp_path, prompt={"user": "{{ text }} ${TEAM}"}, env=["TEAM"])
    plan = run_cli("plan", str(declared), env={"TEAM": "blue"})
    assert plan.returncode == 0, plan.stderr
    assert "env:       TEAM" in plan.stdout and "blue" in plan.stdout


def test_a_key_variable_never_reaches_a_prompt_even_declared(tmp_path: Path):
    # Declaring it under env: made it expand in the prompt, and the prompt went (with the
    # key) to whatever host the recipe named, past the key check, and into the rows.
    with FakeOpenAI() as server:
        for name in ("OPENAI_API_KEY", "MY_SERVICE_TOKEN"):
            recipe = job(
                tmp_path,
                openai(server, api_keys=["k-local-123456"]),
                prompt={"user": "{{ text }} ${" + name + "}"},
                env=[name],
            )
            refused_by_every_command(recipe, {name: KEY}, f"${{{name}}} holds a key", "prompt.user")
        assert server.count("/v1/chat/completions") == 0


def test_a_services_key_goes_only_to_its_host_unless_the_user_confirms(tmp_path: Path):
    with FakeOpenAI() as server:
        for provider in (
            openai(server, preset="deepseek"),
            openai(server, api_key_env="OPENAI_API_KEY"),
            openai(server, api_keys=["${OPENAI_API_KEY}"]),
        ):
            recipe = job(tmp_path, provider)
            env = {"DEEPSEEK_API_KEY": KEY, "OPENAI_API_KEY": KEY}
            before = server.count("/v1/chat/completions")
            for command in ("plan", "run"):
                refused = run_cli(command, str(recipe), env=env)
                assert refused.returncode == 2, (provider, refused.stderr)
                assert "--allow-host 127.0.0.1" in refused.stderr
                assert f"{recipe}:" in refused.stderr
            assert server.count("/v1/chat/completions") == before
            plan = run_cli("plan", str(recipe), env={**env, "LLMRUN_ALLOW_HOSTS": "127.0.0.1"})
            host = server.url.split("//")[1].split("/")[0]
            assert f"endpoint:  {host} <- key#" in plan.stdout
            run = run_cli("run", str(recipe), "--allow-host", "127.0.0.1", "--fresh", env=env)
            assert run.returncode == 0, run.stderr
            assert f"endpoint {host} <- key#" in run.stderr
            assert KEY not in plan.stdout + run.stderr


def test_every_endpoint_of_a_pool_is_checked_before_a_services_key_goes_there(tmp_path: Path):
    # The provider's own host first, another after it: each endpoint of provider.base_urls
    # gets the key, so each is checked as a base_url is (the second used to get it unasked).
    with FakeOpenAI() as server:
        provider = openai(server, api_key_env="OPENAI_API_KEY")
        del provider["base_url"]
        provider["base_urls"] = ["https://api.openai.com/v1", server.url]
        recipe = job(tmp_path, provider)
        env = {"OPENAI_API_KEY": KEY}
        refused_by_every_command(recipe, env, "provider.base_urls[1]", "--allow-host 127.0.0.1")
        assert server.count("/v1/chat/completions") == 0
        plan = run_cli("plan", str(recipe), "--allow-host", "127.0.0.1", env=env)
        assert plan.returncode == 0, plan.stderr
        host = server.url.split("//")[1].split("/")[0]
        assert "endpoint:  api.openai.com <- key#" in plan.stdout
        assert f"{host} <- key#" in plan.stdout


def test_a_services_key_put_into_a_header_is_checked_as_a_key_is(tmp_path: Path):
    # headers: is where ${VAR} may go (an auth header), so a shared recipe could carry the
    # user's OpenAI key to any host in a header of its own, past the key check.
    with FakeOpenAI() as server:
        provider = openai(
            server, api_keys=["k-local-123456"], headers={"X-Forward": "Bearer ${OPENAI_API_KEY}"}
        )
        recipe = job(tmp_path, provider)
        env = {"OPENAI_API_KEY": KEY}
        refused_by_every_command(
            recipe, env, "the key in $OPENAI_API_KEY belongs to api.openai.com"
        )
        assert server.count("/v1/chat/completions") == 0
        # Confirmed, it goes (and plan says so); a variable that is no service's key in a
        # header or URL is no key to route.
        allowed = run_cli("run", str(recipe), "--allow-host", "127.0.0.1", "--json", env=env)
        assert allowed.returncode == 0, allowed.stderr
        assert "(from $OPENAI_API_KEY)" in allowed.stderr
        assert all(r.headers["x-forward"] == f"Bearer {KEY}" for r in server.requests)
        # In the URL's host name: refused, and the message that names the host shows the
        # key's fingerprint, never the key.
        in_url = openai(server, api_keys=["k-local-123456"])
        in_url["base_url"] = "https://x${OPENAI_API_KEY}.invalid/v1"
        refused = run_cli("validate", str(job(tmp_path, in_url)), env=env)
        assert refused.returncode == 2, refused.stderr
        assert "the key in $OPENAI_API_KEY belongs to api.openai.com" in refused.stderr
        assert KEY.lower() not in (refused.stdout + refused.stderr).lower()  # a host is lowered
        mine = job(tmp_path, openai(server, headers={"X-Team": "${TEAM_NAME}"}))
        plan = run_cli("plan", str(mine), env={"TEAM_NAME": "blue-team"})
        assert plan.returncode == 0, plan.stderr
        assert "TEAM_NAME" not in plan.stdout


def test_a_password_in_an_endpoint_of_a_pool_is_redacted_like_one_in_base_url(tmp_path: Path):
    # The schema's message quotes the value it refuses: the password in it is a secret.
    provider = {
        "name": "openai",
        "model": "m",
        "api_keys": ["k-1234567"],
        "base_urls": [
            "http://u:hunter2-secret@127.0.0.1:9/v1",
            "ftp://u:hunter2-secret@127.0.0.1:9/v1",
        ],
    }
    recipe = job(tmp_path, provider)
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2
    assert "provider.base_urls[1]" in result.stderr and "does not match" in result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr


# -- writes ------------------------------------------------------------------------------------


def test_output_refusals(tmp_path: Path):
    profile = tmp_path / "profile"
    profile.write_text("export PATH=/usr/bin\nalias ll='ls -l'", encoding="utf-8")
    recipe = job(tmp_path, output={"path": "../profile"})
    result = run_cli("run", str(recipe))
    assert result.returncode == 2
    assert "output.path" in result.stderr and "outside the recipe's folder" in result.stderr
    assert "not an llmrun output" in result.stderr
    # Named on the command line it may be anywhere, but still not over a foreign file.
    given = run_cli("run", str(recipe), "--output", str(profile))
    assert given.returncode == 2 and "not an llmrun output" in given.stderr
    assert profile.read_text(encoding="utf-8") == "export PATH=/usr/bin\nalias ll='ls -l'"
    inside = job(tmp_path, output={"path": "notes.txt"})
    (inside.parent / "notes.txt").write_text("my notes\n", encoding="utf-8")
    assert run_cli("validate", str(inside)).returncode == 2
    onto_data = job(tmp_path, output={"path": "data.jsonl"})
    result = run_cli("plan", str(onto_data))
    assert result.returncode == 2 and "is an input of the run" in result.stderr
    assert len(read_jsonl(onto_data.parent / "data.jsonl")) == 3


def test_a_state_folder_shipped_with_links_is_refused_not_written_through(tmp_path: Path):
    # A shared folder (a repository, an archive) may hold links: out.jsonl.llmrun/run.log ->
    # ~/.bashrc had every run append its log to that file; the whole state folder as a link
    # put the lock, manifest and log wherever it pointed.
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "profile.sh"
    victim.write_text("export SAFE=1\n", encoding="utf-8")
    recipe = job(tmp_path, {"name": "mock"})
    state = recipe.parent / "out.jsonl.llmrun"
    state.mkdir()
    (state / "run.log").symlink_to(victim)
    result = run_cli("run", str(recipe))
    assert result.returncode == 2, result.stderr
    assert "run.log is a symbolic link" in result.stderr
    assert victim.read_text(encoding="utf-8") == "export SAFE=1\n"
    (state / "run.log").unlink()
    state.rmdir()
    state.symlink_to(outside, target_is_directory=True)
    result = run_cli("run", str(recipe))
    assert result.returncode == 2, result.stderr
    assert "out.jsonl.llmrun is a symbolic link" in result.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["profile.sh"]
    assert not (recipe.parent / "out.jsonl").exists()


def test_outputs_llmrun_wrote_and_outputs_named_on_the_command_line_work(tmp_path: Path):
    with FakeOpenAI() as server:
        recipe = job(tmp_path, openai(server, api_keys=["k-123456"]))
        elsewhere = tmp_path / "results" / "out.jsonl"
        first = run_cli("run", str(recipe), "--quiet", "--output", str(elsewhere))
        assert first.returncode == 0, first.stderr
        again = run_cli("run", str(recipe), "--quiet", "--output", str(elsewhere))
        assert again.returncode == 0, again.stderr  # resumes its own output
        # A copy of an output without its state folder is still recognised by its rows.
        copy = recipe.parent / "copy.jsonl"
        copy.write_text(elsewhere.read_text(encoding="utf-8"), encoding="utf-8")
        resumed = run_cli("run", str(recipe), "--quiet", "--set", "output.path=copy.jsonl")
        assert resumed.returncode == 0, resumed.stderr
    assert len(read_jsonl(elsewhere)) == 3 and len(read_jsonl(copy)) == 3


# -- YAML --------------------------------------------------------------------------------------


def test_alias_bomb_fails_fast_with_bounded_memory(tmp_path: Path):
    pairs = zip("abcdefgh", "bcdefghi", strict=True)
    rows = "".join(f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in pairs)
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + rows
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb, encoding="utf-8")
    assert len(bomb.encode()) < 500
    with subprocess.Popen(
        [*llmrun_command(), "validate", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    ) as child:
        assert child.stderr is not None
        stderr = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its rusage
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert "alias bomb" in stderr and f"{path}:" in stderr
    assert usage.ru_maxrss < 300 * 1024  # KiB: the 9^9 expansion would take gigabytes


def test_recursive_anchor_is_a_recipe_error_with_its_line(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata: &d\n  nested: *d\n", encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{path}:2:7: data.nested:" in result.stderr and "contains itself" in result.stderr


# -- redaction ---------------------------------------------------------------------------------


def echo_headers(request: Any) -> Fault:
    """A 200 that echoes the request's headers into the reply text, as some proxies do."""
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps(request.headers)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return Fault(status=200, body=json.dumps(body).encode())


def test_a_200_echoing_the_key_is_redacted_in_rows(tmp_path: Path):
    with FakeOpenAI(fault=echo_headers) as server:
        provider = openai(server, api_keys=[KEY], headers={"x-api-key": "hdr-secret-0987654"})
        recipe = job(tmp_path, provider, output={"path": "out.jsonl", "raw": True})
        result = run_cli("run", str(recipe), "--quiet")
    assert result.returncode == 0, result.stderr
    text = (recipe.parent / "out.jsonl").read_text(encoding="utf-8")
    assert "key#" in text
    assert KEY[:10] not in text and "hdr-secret" not in text


def test_messages_cut_at_any_length_leave_no_piece_of_the_key(tmp_path: Path):
    for pad in (270, 281, 290):
        body = ("x" * pad + f" Authorization: Bearer {KEY} end").encode()
        with FakeOpenAI(fault=lambda r, b=body: Fault(status=400, body=b)) as server:
            recipe = job(tmp_path, openai(server, api_keys=[KEY]))
            result = run_cli("run", str(recipe), "--quiet", "--fresh")
        assert result.returncode == 1, result.stderr
        text = (recipe.parent / "out.jsonl").read_text(encoding="utf-8")
        for piece in (KEY[:6], KEY[:12], "sk-live"):
            assert piece not in text, (pad, text)


def test_url_password_and_set_keys_stay_out_of_hints_and_manifest(tmp_path: Path):
    recipe = job(tmp_path, {**NOWHERE, "base_url": "http://user:${PROXY_PASSWORD}@127.0.0.1:9/v1"})
    result = run_cli(
        "run",
        str(recipe),
        f'--set=provider.api_keys=["{KEY}"]',
        "--allow-host",
        "127.0.0.1",
        env={"PROXY_PASSWORD": "pw-hunter2-secret"},
    )
    assert result.returncode == 3, result.stderr
    manifest = (recipe.parent / "out.jsonl.llmrun" / "manifest.json").read_text(encoding="utf-8")
    for text in (result.stderr, manifest):
        assert "hunter2" not in text and KEY[:10] not in text
    assert "run `llmrun run" in result.stderr and "key#" in result.stderr


def test_server_text_cannot_drive_the_terminal(tmp_path: Path):
    evil = json.dumps({"error": {"message": "bad \x1b[2J\x1b]0;pwned\x07 key", "type": "x"}})
    with FakeOpenAI(fault=lambda r: Fault(status=401, body=evil.encode())) as server:
        recipe = job(tmp_path, openai(server, api_keys=["k-123456"]))
        result = run_cli("run", str(recipe), "--progress", "plain")
    assert result.returncode == 3, result.stderr
    assert "bad" in result.stderr
    assert "\x1b[2J" not in result.stderr and "\x1b]0" not in result.stderr


def test_a_link_in_a_data_folder_is_not_followed_out(tmp_path: Path):
    (tmp_path / "secret.txt").write_text("PRIVATE", encoding="utf-8")
    with FakeOpenAI() as server:
        recipe = job(
            tmp_path,
            openai(server, api_keys=["k-123456"]),
            data={"loader": "files", "path": "docs"},
            prompt={"user": "{{ text }}"},
        )
        docs = recipe.parent / "docs"
        docs.mkdir()
        (docs / "a.txt").write_text("public", encoding="utf-8")
        (docs / "b.txt").symlink_to(tmp_path / "secret.txt")
        inside = run_cli("validate", str(recipe), "--set", "output.path=docs/out.jsonl")
        assert inside.returncode == 2 and "is inside an input of the run" in inside.stderr
        result = run_cli("run", str(recipe), "--quiet")
        sent = [r.body["messages"][-1]["content"] for r in server.requests]
    assert result.returncode == 1, result.stderr
    assert sent == ["public"]
    rows = {r["id"]: r for r in read_jsonl(recipe.parent / "out.jsonl")}
    assert "outside the recipe's folder" in rows["docs/b.txt"]["error"]["message"]
