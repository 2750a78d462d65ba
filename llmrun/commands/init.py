"""``llmrun init [RECIPE]``: scaffold a recipe from flags, or from questions on a terminal.

The recipe starts with a ``# yaml-language-server: $schema=`` line pointing at the recipe schema
inside the installed llmrun (an absolute path: it works offline and always matches the installed
version; ``--schema`` puts any other path or URL there). Without ``--data``, a three-record
``data.jsonl`` is written beside the recipe so the recipe runs at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

# name -> (provider, base_url, environment variable of the key, a model to start with)
PRESETS: dict[str, tuple[str, str | None, str | None, str]] = {
    "mock": ("mock", None, None, "mock"),
    "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
    "vllm": ("openai", "http://localhost:8000/v1", None, "Qwen/Qwen2.5-7B-Instruct"),
    "ollama": ("openai", "http://localhost:11434/v1", None, "llama3.2"),
    "llamacpp": ("openai", "http://localhost:8080/v1", None, "local"),
}
SAMPLE_RECORDS = (
    {"id": "1", "text": "The battery lasts two days and charging is quick."},
    {"id": "2", "text": "It stopped working after a week; support never answered."},
    {"id": "3", "text": "Does what it says. Nothing more, nothing less."},
)
DEFAULT_PROMPT = "Summarize in one short sentence:\n{{ text }}"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("init", help="write a new recipe (from flags, or questions)")
    p.add_argument(
        "recipe", nargs="?", default="recipe.yaml", help="file to write (default recipe.yaml)"
    )
    p.add_argument("--name", help="the job's name (default: the file's name)")
    p.add_argument("--data", metavar="PATH", help="data file (default: a sample data.jsonl)")
    p.add_argument("--loader", help="loader name (default: from the data file's extension)")
    p.add_argument("--id", dest="id_field", metavar="FIELD", help="field holding record ids")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a ready provider section")
    p.add_argument("--provider", help="provider name (default: from the preset, else mock)")
    p.add_argument("--model", help="model name")
    p.add_argument("--base-url", help="the provider's base URL (OpenAI-compatible servers)")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    p.add_argument("--system", help="system prompt (\\n starts a new line)")
    p.add_argument(
        "--prompt",
        help="user prompt template (Jinja2; record fields as variables; \\n starts a new line)",
    )
    p.add_argument("--output", metavar="PATH", help="output file (default out/NAME.jsonl)")
    p.add_argument("--schema", help="what the $schema line points at (default: installed)")
    p.add_argument("--force", action="store_true", help="overwrite an existing recipe")
    p.add_argument(
        "--no-input", action="store_true", help="never ask questions, even on a terminal"
    )
    p.set_defaults(handler=cmd_init)


def unescape(text: str | None) -> str | None:
    """``\\n`` -> newline and ``\\\\`` -> one backslash; every other backslash stays."""
    if text is None:
        return None
    return re.sub(r"\\([\\n])", lambda m: "\n" if m.group(1) == "n" else "\\", text)


def cmd_init(args: argparse.Namespace, err: Any) -> int:
    import json
    from pathlib import Path

    from ..errors import RecipeError

    target = Path(args.recipe)
    if target.exists() and not args.force:
        raise RecipeError(f"{target} exists; choose another name or pass --force")
    if sys.stdin.isatty() and not args.no_input:
        _ask(args)
    # A shell argument cannot easily hold a newline: `\n` in --prompt and --system is one, as in
    # a YAML double-quoted string (`\\n` keeps a backslash and an n).
    args.prompt, args.system = unescape(args.prompt), unescape(args.system)
    # A preset fills in what the flags leave open; a provider of its own name is its preset.
    preset = PRESETS.get(args.preset or args.provider or "mock")
    provider = args.provider or (preset[0] if preset else "mock")
    if preset is not None and preset[0] != provider:
        preset = None
    base_url = args.base_url or (preset[1] if preset else None)
    key_env = args.api_key_env or (preset[2] if preset else None)
    model = args.model or (preset[3] if preset else None)
    name = args.name or target.stem
    folder = target.parent
    data_note = ""
    if args.data is None:
        data_path = folder / "data.jsonl"
        if not data_path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            data_path.write_text(
                "".join(json.dumps(r) + "\n" for r in SAMPLE_RECORDS), encoding="utf-8"
            )
            data_note = f"wrote {data_path} (three sample records)"
        data_rel, id_field = "data.jsonl", args.id_field or "id"
        prompt = args.prompt or DEFAULT_PROMPT
    else:
        data_rel, id_field = args.data, args.id_field
        prompt = args.prompt or "{{ record }}"
    text = render_recipe(
        schema=args.schema or installed_schema(),
        name=name,
        data=data_rel,
        loader=args.loader,
        id_field=id_field,
        system=args.system,
        prompt=prompt,
        provider=provider,
        model=model,
        base_url=base_url,
        key_env=key_env,
        output=args.output or f"out/{name}.jsonl",
    )
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    if data_note:
        err.print(data_note, markup=False)
    err.print(
        f"wrote {target}; next: `llmrun validate {target}`, `llmrun plan {target}`, "
        f"`llmrun run {target}`",
        markup=False,
    )
    return 0


def installed_schema() -> str:
    """The recipe schema inside the installed package, as an absolute path."""
    from importlib import resources

    return str(resources.files("llmrun").joinpath("schemas/recipe.schema.json"))


def render_recipe(
    *,
    schema: str,
    name: str,
    data: str,
    loader: str | None,
    id_field: str | None,
    system: str | None,
    prompt: str,
    provider: str,
    model: str | None,
    base_url: str | None,
    key_env: str | None,
    output: str,
) -> str:
    """The recipe's text: YAML written by hand so the comments survive."""
    import yaml

    def scalar(value: str) -> str:
        dumped = yaml.safe_dump(value, default_style=None, width=1 << 20, allow_unicode=True)
        return dumped.removesuffix("\n...\n").rstrip("\n")

    def block(value: str, indent: str) -> str:
        if "\n" not in value:
            return scalar(value)
        body = "".join(f"{indent}  {line}\n" if line else "\n" for line in value.split("\n"))
        return "|-\n" + body.rstrip("\n")

    lines = [
        f"# yaml-language-server: $schema={schema}",
        "# Check with `llmrun validate`, see the cost with `llmrun plan`, then `llmrun run`.",
        f"name: {scalar(name)}",
        "data:",
        f"  path: {scalar(data)}",
    ]
    if loader:
        lines.append(f"  loader: {scalar(loader)}")
    if id_field:
        lines.append(f"  id: {scalar(id_field)}")
    lines.append("prompt:")
    if system:
        lines.append(f"  system: {block(system, '  ')}")
    lines.append(f"  user: {block(prompt, '  ')}")
    lines += ["provider:", f"  name: {scalar(provider)}"]
    if model:
        lines.append(f"  model: {scalar(model)}")
    if base_url:
        lines.append(f"  base_url: {scalar(base_url)}")
    if key_env:
        lines.append(f'  api_keys: ["${{{key_env}}}"]   # from the environment or a .env file')
    lines += [
        "generation:",
        "  temperature: 0",
        "  max_tokens: 256",
        "run:",
        "  concurrency: 16",
        "output:",
        f"  path: {scalar(output)}",
        "",
    ]
    return "\n".join(lines)


def _ask(args: argparse.Namespace) -> None:
    """Fill what the flags left open by asking; Enter keeps the default shown."""

    def ask(question: str, default: str | None) -> str | None:
        shown = f" [{default}]" if default else ""
        answer = input(f"{question}{shown}: ").strip()
        return answer or default

    args.data = args.data or ask("data file (empty: a sample data.jsonl)", None)
    if args.data and not args.id_field:
        args.id_field = ask("field holding each record's id (empty: hash of the record)", None)
    if not args.provider and not args.preset:
        args.preset = ask(f"provider preset ({', '.join(sorted(PRESETS))})", "mock")
        if args.preset not in PRESETS:
            args.provider, args.preset = args.preset, None
    preset = PRESETS.get(args.preset or "")
    args.model = args.model or ask("model", preset[3] if preset else None)
    args.prompt = args.prompt or ask(
        "user prompt (record fields as {{ field }})",
        DEFAULT_PROMPT.replace("\n", " ") if not args.data else None,
    )
