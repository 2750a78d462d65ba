"""YAML recipe -> validated, immutable ``Recipe``.

Order of work: parse YAML keeping positions; apply ``--set`` overrides; substitute ``${VAR}``;
validate against the base schema, then each component's section against that component's own
option schema. Every fault found is reported at once, each with file, line, column and key path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import PluginError, Problem, RecipeError
from ..plugins import Registry
from ..redaction import Redactor
from .envvars import Environment, read_dotenv
from .keyenv import default_key
from .problems import locate, schema_problems, selection_problems, template_problems
from .schema import CORE_KEYS, base_schema
from .selection import parse_shard
from .yamlsource import Positions, dotted, load_yaml

SECRET_WORDS = ("key", "token", "secret", "password", "auth")
LOADER_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".txt": "text",
}
COMPRESSED_SUFFIXES = (".gz", ".zst")
RUN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "concurrency": 16,
        "max_retries": 5,
        "timeout_s": 120.0,
        "connect_timeout_s": 10.0,
        "drain_s": 30.0,
        "requests_per_minute": None,
        "mode": "direct",
        "batch_max_requests": None,
        "batch_max_bytes": None,
        "batch_poll_s": 30.0,
        "batch_poll_max_s": 600.0,
        "batch_resubmits": 2,
        "auto_threshold": 1000,
        "auto_deadline_s": 21600.0,
        "requests_per_second": None,
        "tokens_per_minute": None,
        "tokens_per_second": None,
        "adaptive": None,
        "budget_usd": None,
    }
)


@dataclass(frozen=True)
class ComponentSpec:
    """A component chosen by a recipe: its name, options, and where the section is."""

    name: str
    options: Mapping[str, Any]
    where: str  # key path in the recipe, for messages


@dataclass(frozen=True)
class RunSettings:
    concurrency: int
    max_retries: int
    timeout_s: float
    connect_timeout_s: float
    drain_s: float
    requests_per_minute: float | None
    # Batch mode (docs/batch.md); defaults so code building RunSettings by hand keeps working.
    mode: str = "direct"  # direct | batch | auto
    batch_max_requests: int | None = None  # per batch file; None: the provider's limit
    batch_max_bytes: int | None = None
    batch_poll_s: float = 30.0  # first poll interval; grows 1.5x while nothing changes
    batch_poll_max_s: float = 600.0
    batch_resubmits: int = 2  # times a failed or expired request is submitted again
    auto_threshold: int = 1000  # auto mode: fewer records than this go direct
    auto_deadline_s: float = 21600.0  # auto mode: a batch running longer is cancelled
    tokens_per_minute: float | None = None
    adaptive: bool = False  # on by default when no explicit limit is set (see load_recipe)
    # run.adaptive: true, written out: the slow start even when the endpoint is local
    slow_start_local: bool = False
    budget_usd: float | None = None

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Paths are absolute; ``secrets`` must be redacted from any output."""

    path: Path
    name: str
    data: ComponentSpec
    id_field: str | None
    limit: int | None
    messages: tuple[tuple[str, Any], ...]  # (role, template source, or a tuple of parts)
    provider: ComponentSpec
    api_keys: tuple[str, ...]
    generation: Mapping[str, Any]
    run: RunSettings
    postprocess: tuple[ComponentSpec, ...]
    output_path: Path
    writer: ComponentSpec
    include: str | tuple[str, ...]
    keep_raw: bool
    secrets: frozenset[str]
    prices: Mapping[str, Any]  # model -> {input, output, cached_input} USD per 1M tokens
    job_hash: str  # hash of what decides the results (not run settings, never secrets)
    # Record selection (llmrun/recipe/selection.py); `limit` above is part of it.
    offset: int = 0
    sample: float | int | None = None
    seed: int = 0
    filter: str | None = None
    shard: tuple[int, int] | None = None
    # Prompt images: templates rendering to a path/URL per record, attached to the last user
    # message; and the detail asked for them.
    images: tuple[str, ...] = ()
    image_detail: str | None = None
    examples: Mapping[str, Any] | None = None  # few-shot turns: {path, user, assistant}
    # provider.base_urls: replicas of one model, each request to the one that can start soonest
    endpoints: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``run.concurrency=8`` -> (("run", "concurrency"), 8); the value is read as YAML."""
    key, sep, value = text.partition("=")
    keys = tuple(p.strip() for p in key.split("."))
    if not sep or not all(keys):
        raise RecipeError([Problem(f"--set expects key.path=value, got {text!r}", file="--set")])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def load_recipe(
    path: str | Path,
    registry: Registry,
    *,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Recipe:
    """Read, interpolate and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path).resolve()
    filename = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(
            [Problem(f"cannot read recipe: {exc.strerror or exc}", file=filename)]
        ) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            [Problem(f"cannot read recipe: not UTF-8 text ({exc.reason})", file=filename)]
        ) from None
    data, positions = load_yaml(text, filename)
    if not isinstance(data, dict):
        raise RecipeError(
            [
                Problem(
                    "a recipe is a YAML mapping (key: value lines)", file=filename, line=1, column=1
                )
            ]
        )
    for item in overrides:
        keys, value = parse_override(item)
        _apply_override(data, keys, value, positions)

    env = Environment(read_dotenv(path.parent / ".env"), environ)
    problems: list[Problem] = []
    secrets: set[str] = set()
    data = _interpolate(data, (), env, positions, filename, problems, secrets)
    if problems:
        raise RecipeError(problems)
    try:
        recipe = build_recipe(data, positions, path, registry, frozenset(secrets))
        if recipe.api_keys:
            return recipe
        where = locate(("provider", "name"), positions, filename)
        return default_key(recipe, registry, env, where)
    except RecipeError as exc:  # schema messages quote values: keep keys out of them
        redact = Redactor(secrets)
        raise RecipeError(
            [Problem(redact(p.message), p.path, p.file, p.line, p.column) for p in exc.problems]
        ) from None


def build_recipe(
    data: dict[str, Any],
    positions: Positions,
    path: Path,
    registry: Registry,
    secrets: frozenset[str] = frozenset(),
) -> Recipe:
    """Validate interpolated recipe data and build the Recipe."""
    filename = str(path)
    problems = schema_problems(data, base_schema(), (), positions, filename)

    def section(key: str) -> dict[str, Any] | None:
        value = data.get(key)
        return dict(value) if isinstance(value, dict) else None

    data_section, provider_section, output_section = (
        section("data"),
        section("provider"),
        section("output"),
    )
    if data_section is not None and "loader" not in data_section:
        given = data_section.get("path")
        guessed = LOADER_BY_SUFFIX.get(_data_suffix(str(given)))
        if guessed is None:
            file, line, col = locate(("data",), positions, filename)
            exts = ", ".join(LOADER_BY_SUFFIX)
            problems.append(
                Problem(
                    f"give `path:` (a {exts} file) or `loader:`"
                    if given is None
                    else f"no loader given and none implied by the path's extension ({exts}); "
                    "add `loader:`",
                    "data",
                    file,
                    line,
                    col,
                )
            )
            data_section = None
        else:
            data_section["loader"] = guessed
    if output_section is not None:
        output_section.setdefault("writer", "jsonl")

    if provider_section is not None:
        urls = provider_section.get("base_urls")
        if isinstance(urls, list) and urls and "base_url" not in provider_section:
            provider_section["base_url"] = urls[0]  # the provider builds requests for the first
    found: dict[str, ComponentSpec | None] = {}
    for kind, sect in (
        ("loader", data_section),
        ("provider", provider_section),
        ("writer", output_section),
    ):
        key, name_key, core = CORE_KEYS[kind]
        if sect is None or not isinstance(sect.get(name_key), str):
            continue  # the base schema already said what is wrong
        found[kind] = _component(
            registry,
            kind,
            sect[name_key],
            sect,
            (key,),
            core,
            name_key,
            positions,
            filename,
            problems,
        )
    posts: list[ComponentSpec] = []
    post_items = data.get("postprocess")
    for i, item in enumerate(post_items if isinstance(post_items, list) else []):
        opts: Any
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
        else:
            continue  # reported by the base schema
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            file, line, col = locate(("postprocess", i, name), positions, filename)
            problems.append(
                Problem(
                    "options must be a mapping",
                    dotted(("postprocess", i, name)),
                    file,
                    line,
                    col,
                )
            )
            continue
        spec = _component(
            registry,
            "postprocessor",
            name,
            opts,
            ("postprocess", i, name),
            (),
            None,
            positions,
            filename,
            problems,
            name_path=("postprocess", i),
        )
        if spec:
            posts.append(spec)
    problems.extend(template_problems(data.get("prompt"), path.parent, positions, filename))
    if data_section is not None:
        problems.extend(selection_problems(data_section, path.parent, positions, filename))
    if problems:
        raise RecipeError(sorted(problems, key=lambda p: (p.file != filename, p.line or 0)))
    loader, provider, writer = found["loader"], found["provider"], found["writer"]
    assert loader and provider and writer and data_section and provider_section and output_section

    base = path.parent
    prompt = data["prompt"]
    if isinstance(prompt, str):
        messages: tuple[tuple[str, Any], ...] = (("user", prompt),)
    elif "messages" in prompt:
        # A content is a template string, or (with images) a list of parts, kept frozen.
        messages = tuple((m["role"], freeze(m["content"])) for m in prompt["messages"])
    else:
        messages = tuple((role, prompt[role]) for role in ("system", "user") if role in prompt)
    run = {**RUN_DEFAULTS, **data.get("run", {})}
    include = output_section.get("include", "all")
    images = prompt.get("images", ()) if isinstance(prompt, dict) else ()
    shard = data_section.get("shard")
    return Recipe(
        path=path,
        name=str(data.get("name") or path.stem),
        data=loader,
        id_field=data_section.get("id"),
        limit=data_section.get("limit"),
        messages=messages,
        provider=provider,
        api_keys=tuple(provider_section.get("api_keys", ())),
        endpoints=tuple(str(u) for u in provider_section.get("base_urls", ())),
        generation=freeze(data.get("generation", {})),
        run=RunSettings(
            concurrency=int(run["concurrency"]),
            max_retries=int(run["max_retries"]),
            timeout_s=float(run["timeout_s"]),
            connect_timeout_s=float(run["connect_timeout_s"]),
            drain_s=float(run["drain_s"]),
            mode=str(run["mode"]),
            batch_max_requests=run["batch_max_requests"],
            batch_max_bytes=run["batch_max_bytes"],
            batch_poll_s=float(run["batch_poll_s"]),
            batch_poll_max_s=float(run["batch_poll_max_s"]),
            batch_resubmits=int(run["batch_resubmits"]),
            auto_threshold=int(run["auto_threshold"]),
            auto_deadline_s=float(run["auto_deadline_s"]),
            requests_per_minute=_per_minute(run["requests_per_minute"], run["requests_per_second"]),
            tokens_per_minute=_per_minute(run["tokens_per_minute"], run["tokens_per_second"]),
            adaptive=bool(
                run["adaptive"]
                if run["adaptive"] is not None
                else not any(run[k] for k in _LIMIT_KEYS)
            ),
            slow_start_local=run["adaptive"] is True,
            budget_usd=None if run["budget_usd"] is None else float(run["budget_usd"]),
        ),
        postprocess=tuple(posts),
        output_path=(base / str(output_section["path"])).resolve(),
        writer=writer,
        include=include if isinstance(include, str) else tuple(include),
        keep_raw=bool(output_section.get("raw", False)),
        secrets=secrets,
        prices=freeze(data.get("prices", {})),
        job_hash=job_hash(data, secrets),
        offset=int(data_section.get("offset", 0)),
        sample=data_section.get("sample"),
        seed=int(data_section.get("seed", 0)),
        filter=data_section.get("filter"),
        shard=None if shard is None else parse_shard(str(shard)),
        images=(images,) if isinstance(images, str) else tuple(images),
        image_detail=prompt.get("image_detail") if isinstance(prompt, dict) else None,
        examples=freeze(prompt.get("examples")) if isinstance(prompt, dict) else None,
    )


def _data_suffix(path: str) -> str:
    """The extension that names a data file's format, behind any compression (``.jsonl.gz``)."""
    name = Path(path).name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return Path(name).suffix


_LIMIT_KEYS = (
    "requests_per_minute",
    "requests_per_second",
    "tokens_per_minute",
    "tokens_per_second",
)


def _per_minute(per_minute: float | None, per_second: float | None) -> float | None:
    """The tighter of a per-minute and a per-second limit, per minute (starts are evenly
    spaced, so a per-minute pace holds every second too)."""
    rates = [float(r) for r in (per_minute, None if per_second is None else per_second * 60) if r]
    return min(rates) if rates else None


def job_hash(data: Mapping[str, Any], secrets: Iterable[str]) -> str:
    """Hash what decides the results: data, prompt, provider (keys excluded), generation,
    postprocessing. Run settings and the output's own options are left out, so raising the
    concurrency does not count as a changed recipe."""
    secret_set = set(secrets)
    relevant = {k: data.get(k) for k in ("data", "prompt", "provider", "generation", "postprocess")}
    relevant["provider"] = {
        # Which replica answers does not decide the results.
        k: v
        for k, v in (relevant["provider"] or {}).items()
        if k not in ("api_keys", "base_urls")
    }
    # How many records to take decides no record's result, like --limit; nor does which part
    # (offset, shard) or which sample of them. `filter` stays: it defines the job's population.
    portion = ("limit", "offset", "shard", "sample", "seed")
    relevant["data"] = {k: v for k, v in (relevant["data"] or {}).items() if k not in portion}
    text = json.dumps(_redacted(relevant, secret_set), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def freeze(value: Any) -> Any:
    """Deeply immutable copy: dicts become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON-ready copy of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _redacted(value: Any, secrets: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, secrets) for v in value]
    if isinstance(value, str) and value in secrets:
        return "<secret>"
    return value


def _apply_override(
    data: dict[str, Any], keys: tuple[str, ...], value: Any, positions: Positions
) -> None:
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key) if isinstance(node, dict) else None
        if not isinstance(nxt, dict):
            if nxt is not None:
                raise RecipeError(
                    [
                        Problem(
                            f"cannot set {'.'.join(keys)}: "
                            f"{'.'.join(keys[: i + 1])} is not a mapping",
                            file="--set",
                        )
                    ]
                )
            nxt = {}
            node[key] = nxt
            positions[keys[: i + 1]] = (0, 0)  # a section the override created
        node = nxt
    node[keys[-1]] = value
    for path in [p for p in positions if p[: len(keys)] == keys]:
        del positions[path]
    positions[keys] = (0, 0)  # marks "came from --set"; _locate reports it as such


def _interpolate(
    value: Any,
    path: tuple[Any, ...],
    env: Environment,
    positions: Positions,
    filename: str,
    problems: list[Problem],
    secrets: set[str],
) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, (*path, k), env, positions, filename, problems, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, (*path, i), env, positions, filename, problems, secrets)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str):
        return value
    text, missing, used = env.interpolate(value) if "$" in value else (value, [], False)
    for name in missing:
        file, line, col = locate(path, positions, filename)
        problems.append(
            Problem(
                f"environment variable ${{{name}}} is not set "
                f"(set it, or add {name}=... to {Path(filename).parent / '.env'})",
                dotted(path),
                file,
                line,
                col,
            )
        )
    # A key written into the recipe itself is as secret as one read from the environment.
    if (used and _is_secret_path(path)) or (path[:2] == ("provider", "api_keys") and text):
        secrets.add(text)
    return text


def _is_secret_path(path: tuple[Any, ...]) -> bool:
    names = [p.lower() for p in path if isinstance(p, str)]
    return any(word in name for name in names[-2:] for word in SECRET_WORDS)


def _component(
    registry: Registry,
    kind: str,
    name: Any,
    section: Mapping[str, Any],
    path: tuple[Any, ...],
    core_keys: tuple[str, ...],
    name_key: str | None,
    positions: Positions,
    filename: str,
    problems: list[Problem],
    *,
    name_path: tuple[Any, ...] | None = None,
) -> ComponentSpec | None:
    where = (*path, name_key) if name_key else (name_path or path)
    try:
        info = registry.get(kind, str(name))
    except PluginError as exc:
        file, line, col = locate(where, positions, filename)
        problems.append(Problem(str(exc), dotted(where), file, line, col))
        return None
    options = {k: v for k, v in section.items() if k not in core_keys}
    schema = getattr(info.cls, "options_schema", None) or {"type": "object"}
    found = schema_problems(options, schema, path, positions, filename, core_keys)
    problems.extend(found)
    return None if found else ComponentSpec(str(name), freeze(options), dotted(path))
