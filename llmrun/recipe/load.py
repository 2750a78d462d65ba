"""YAML recipe -> validated, immutable ``Recipe``.

Order of work: parse YAML keeping positions; apply ``--set`` overrides; substitute ``${VAR}``;
validate against the base schema, then each component's section against that component's own
option schema. Every fault found is reported at once, each with file, line, column and key path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..access import Access
from ..errors import PluginError, Problem, RecipeError
from ..plugins import Registry
from ..redaction import Redactor
from .envvars import Environment, read_dotenv
from .guards import (
    KeyRoute,
    cache_problems,
    key_homes,
    key_routes,
    output_problems,
    read_problems,
)
from .interpolation import Scoping, interpolate, literal_secrets
from .keyenv import check_keys, default_key, env_options
from .model import (
    DEFAULT_CACHE_GB,
    CacheSettings,
    ComponentSpec,
    Endpoint,
    Recipe,
    RunSettings,
    StepSpec,
    freeze,
)
from .overrides import apply_override, override_hints, parse_override, user_data_folder
from .problems import locate, schema_problems, selection_problems, template_problems
from .provenance import NOT_HASHED, hide_secrets, job_hash
from .schema import CORE_KEYS, base_schema
from .sections import code_of, component_spec, engine_runs_steps, postprocessors
from .selection import parse_shard
from .steps import build_steps, prompt_messages
from .yamlsource import Positions, dotted, load_yaml

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
        "max_response_bytes": 64 * 1024 * 1024,
        "batch_max_results_bytes": 1024 * 1024 * 1024,
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
        "engine": "local",
        "workers": None,
    }
)


def cache_settings(value: Any, base: Path) -> CacheSettings | None:
    """The ``cache:`` section (a path or ``{path, max_gb, sampled}``, already validated by the
    schema), its path resolved against ``base``."""
    if value is None:
        return None
    if isinstance(value, str):
        return CacheSettings((base / value).resolve())
    max_gb = float(value.get("max_gb", DEFAULT_CACHE_GB))
    return CacheSettings(
        (base / str(value["path"])).resolve(),
        max_bytes=int(max_gb * 1e9),
        sampled=bool(value.get("sampled", False)),
    )


def load_recipe(
    path: str | Path,
    registry: Registry,
    *,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    access: Access | None = None,
) -> Recipe:
    """Read, interpolate and validate a recipe; raise RecipeError listing every problem.
    ``access`` is what the user allowed beyond the recipe (default: nothing)."""
    access = access or Access()
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
        apply_override(data, keys, value, positions)

    access = user_data_folder(data, positions, path.parent, access)
    env = Environment(read_dotenv(path.parent / ".env"), environ)
    problems: list[Problem] = []
    secrets: set[str] = set()
    declared = data.get("env")
    scoping = Scoping(
        frozenset(str(n) for n in declared) if isinstance(declared, list) else frozenset()
    )
    data = interpolate(data, (), env, positions, filename, problems, secrets, scoping)
    secrets |= literal_secrets(data.get("provider"))
    if problems:
        raise RecipeError(problems)
    try:
        recipe = build_recipe(data, positions, path, registry, frozenset(secrets), access)
        own = [key for pooled in recipe.endpoints for key in pooled.api_keys]
        sources = {key: scoping.sources.get(key, "the recipe") for key in (*recipe.api_keys, *own)}
        # Every endpoint with keys of its own needs none from the provider's variable.
        if not recipe.api_keys and not (own and all(e.api_keys for e in recipe.endpoints)):
            where = locate(("provider", "name"), positions, filename)
            recipe, variable = default_key(recipe, registry, env, where)
            sources |= {key: f"${variable}" for key in recipe.api_keys}
        check_keys(recipe)
        # OPENAI_BASE_URL and the like are the user's own environment, not the recipe's: a
        # base URL set there is the user's choice of host for their key.
        from_env = env_options(recipe, registry, env)
        user_url = from_env.provider.options.get("base_url") != recipe.provider.options.get(
            "base_url"
        )
        # A variable expanded elsewhere in the provider section (a header, a URL) goes with
        # every request to every endpoint: checked as a key.
        sent = {value: name for value, name in scoping.sent.items() if value not in sources}
        return _route_keys(from_env, registry, sources, positions, filename, user_url, sent)
    except RecipeError as exc:  # schema messages quote values: keep keys out of them
        redact = Redactor(secrets)
        hints = override_hints(overrides)
        raise RecipeError(
            [
                Problem(
                    redact(p.message) + (hints.get(p.path, "") if p.file == "--set" else ""),
                    p.path,
                    p.file,
                    p.line,
                    p.column,
                )
                for p in exc.problems
            ]
        ) from None


def build_recipe(
    data: dict[str, Any],
    positions: Positions,
    path: Path,
    registry: Registry,
    secrets: frozenset[str] = frozenset(),
    access: Access | None = None,
) -> Recipe:
    """Validate interpolated recipe data and build the Recipe."""
    access = access or Access()
    scope = access.scope(path.parent)
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
        pool = provider_section.get("endpoints")
        if isinstance(pool, list) and pool and isinstance(pool[0], dict):
            if "base_urls" in provider_section:
                file, line, col = locate(("provider", "endpoints"), positions, filename)
                problems.append(
                    Problem(
                        "give provider.base_urls or provider.endpoints, not both (endpoints "
                        "lists each base_url with its own keys and limits)",
                        "provider.endpoints",
                        file,
                        line,
                        col,
                    )
                )
            urls = [e.get("base_url") for e in pool if isinstance(e, dict)]
            if len(set(map(str, urls))) < len(urls):  # as base_urls' uniqueItems
                file, line, col = locate(("provider", "endpoints"), positions, filename)
                problems.append(
                    Problem(
                        "provider.endpoints lists a base_url twice: each endpoint once, with "
                        "all its keys under its api_keys",
                        "provider.endpoints",
                        file,
                        line,
                        col,
                    )
                )
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
        found[kind] = component_spec(
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

    def posts_of(items: Any, at: tuple[Any, ...]) -> list[ComponentSpec]:
        return postprocessors(registry, items, at, positions, filename, problems)

    posts = posts_of(data.get("postprocess"), ("postprocess",))
    steps: tuple[StepSpec, ...] = ()
    if "steps" in data and "prompt" in data:
        file, line, col = locate(("steps",), positions, filename)
        problems.append(
            Problem(
                "give `prompt` (one call per record) or `steps`, not both", "steps", file, line, col
            )
        )
    elif "steps" not in data and "prompt" not in data:
        file, line, col = locate((), positions, filename)
        problems.append(Problem(PROMPT_REQUIRED, "prompt", file, line, col))
    elif isinstance(data.get("steps"), list):
        if data.get("postprocess"):
            file, line, col = locate(("postprocess",), positions, filename)
            problems.append(
                Problem(
                    "with `steps`, each step has its own `postprocess`",
                    "postprocess",
                    file,
                    line,
                    col,
                )
            )
        hashed_provider = {k: v for k, v in (provider_section or {}).items() if k not in NOT_HASHED}
        steps = build_steps(
            data["steps"],
            base_generation=data.get("generation") or {},
            provider=hide_secrets(hashed_provider, frozenset(secrets)),
            base_dir=path.parent,
            scope=scope,
            positions=positions,
            filename=filename,
            posts_of=posts_of,
            problems=problems,
        )
        mode = (data.get("run") or {}).get("mode", "direct")
        engine = (data.get("run") or {}).get("engine", "local")
        if steps and engine != "local" and not engine_runs_steps(registry, engine, mode):
            file, line, col = locate(("run", "engine"), positions, filename)
            problems.append(
                Problem(
                    f"run.engine: {engine} does not run a steps: recipe"
                    + (" in batch mode" if mode == "batch" else "")
                    + "; use the local engine (docs/steps.md)",
                    "run.engine",
                    file,
                    line,
                    col,
                )
            )
        if steps and mode == "auto":
            file, line, col = locate(("run", "mode"), positions, filename)
            problems.append(
                Problem(
                    "run.mode: auto is for one-call recipes; a steps: recipe runs direct or "
                    "batch (docs/steps.md)",
                    "run.mode",
                    file,
                    line,
                    col,
                )
            )
        if provider_section is not None and found.get("provider") is not None:
            for i, step in enumerate(steps):
                if step.provider_options:
                    component_spec(
                        registry,
                        "provider",
                        provider_section["name"],
                        {**provider_section, **step.provider_options},
                        ("steps", i, "provider"),
                        CORE_KEYS["provider"][2],
                        None,
                        positions,
                        filename,
                        problems,
                    )
    engine_name = (data.get("run") or {}).get("engine", "local")
    if isinstance(engine_name, str) and engine_name != "local":
        try:
            registry.get("engine", engine_name)
        except PluginError as exc:
            file, line, col = locate(("run", "engine"), positions, filename)
            hint = " (pip install llmrun-ray)" if engine_name == "ray" else ""
            problems.append(Problem(f"{exc}{hint}", "run.engine", file, line, col))
    if "prompt" in data:
        problems.extend(
            template_problems(data.get("prompt"), path.parent, positions, filename, scope)
        )
    if data_section is not None:
        problems.extend(selection_problems(data_section, path.parent, positions, filename, scope))
    problems.extend(read_problems(data, scope, positions, filename))
    output_path: Path | None = None
    if output_section is not None and isinstance(output_section.get("path"), str):
        output_path = (path.parent / str(output_section["path"])).resolve()
        problems.extend(output_problems(data, output_path, path, positions, filename))
    cache = cache_settings(data.get("cache"), path.parent)
    if cache is not None:
        problems.extend(cache_problems(cache.path, output_path, path, positions, filename))
    if problems:
        raise RecipeError(sorted(problems, key=lambda p: (p.file != filename, p.line or 0)))
    loader, provider, writer = found["loader"], found["provider"], found["writer"]
    assert loader and provider and writer and data_section and provider_section and output_section
    assert output_path is not None

    # With steps, the recipe's prompt is the first step's: what validate and plan look at.
    prompt = data["prompt"] if not steps else data["steps"][0]["prompt"]
    request_prompt = isinstance(prompt, dict) and prompt.get("messages") == "record"
    messages = prompt_messages(prompt)
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
        endpoints=_endpoints(provider_section),
        generation=freeze(data.get("generation", {})) if not steps else steps[0].generation,
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
            max_response_bytes=int(run["max_response_bytes"]),
            batch_max_results_bytes=int(run["batch_max_results_bytes"]),
            engine=str(run["engine"]),
            workers=None if run["workers"] is None else int(run["workers"]),
        ),
        postprocess=tuple(posts),
        output_path=output_path,
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
        access=access,
        env_names=tuple(str(n) for n in data.get("env") or ()),
        code=tuple(
            filter(
                None,
                (
                    code_of(registry, c)
                    for c in (loader, provider, *posts, *(p for s in steps for p in s.postprocess))
                ),
            )
        ),
        cache=cache,
        request_prompt=request_prompt,
        steps=steps,
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


def _endpoints(provider: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """``provider.base_urls`` (each with the provider's keys and the run's limits), or
    ``provider.endpoints`` (each with its own where given); already validated."""
    if provider.get("endpoints"):
        return tuple(
            Endpoint(
                str(e["base_url"]),
                tuple(str(k) for k in e.get("api_keys", ())),
                e.get("requests_per_minute"),
                e.get("tokens_per_minute"),
            )
            for e in provider["endpoints"]
        )
    return tuple(Endpoint(str(u)) for u in provider.get("base_urls", ()))


PROMPT_REQUIRED = "'prompt' is required (or `steps`, for several calls per record)"


def _route_keys(
    recipe: Recipe,
    registry: Registry,
    sources: Mapping[str, str],
    positions: Positions,
    filename: str,
    user_url: bool = False,
    sent: Mapping[str, str] | None = None,
) -> Recipe:
    """The recipe with where each key goes; RecipeError when a key of a known service would
    go to another host the user has not confirmed. ``user_url``: the base URL came from the
    user's environment (``OPENAI_BASE_URL``), not from the recipe. ``sent``: other values of
    variables every request carries (a header's), value -> "$NAME"."""
    cls = registry.get("provider", recipe.provider.name).cls
    options = recipe.provider.options
    endpoint_of = getattr(cls, "key_endpoint", None)
    endpoint = (
        str(endpoint_of(options))
        if callable(endpoint_of)
        else str(options.get("base_url") or options.get("endpoint") or "")
    )
    homes_of = getattr(cls, "key_homes", None)
    homes = dict(homes_of(options)) if callable(homes_of) else {}
    # Of the other variables a request carries, those that are a known service's key (a
    # header or URL holding $VLLM_HOST is no key to route).
    known = key_homes(homes)
    extra = {value: name for value, name in (sent or {}).items() if name[1:] in known}
    at = ("provider", "base_url") if ("provider", "base_url") in positions else ("provider",)
    if ("provider", "endpoint") in positions:
        at = ("provider", "endpoint")
    # Each endpoint of provider.base_urls gets every key: each is checked as the base URL is
    # (a recipe listing the provider's own host first and another after it sent the key
    # there unconfirmed).
    targets: list[tuple[str, tuple[str | int, ...], bool]] = [
        (endpoint, at, positions.get(at) == (0, 0) or user_url)
    ]
    if recipe.endpoints:
        targets = []
        for i, pooled in enumerate(recipe.endpoints):
            at_i: tuple[str | int, ...] = ("provider", "base_urls", i)
            if ("provider", "endpoints", i, "base_url") in positions:
                at_i = ("provider", "endpoints", i, "base_url")
            elif at_i not in positions:
                at_i = ("provider", "base_urls")
            targets.append((pooled.url, at_i, positions.get(at_i) == (0, 0)))
    routes: list[KeyRoute] = []
    problems: list[Problem] = []
    for i, (url, where, given) in enumerate(targets):
        # An endpoint of provider.endpoints with keys of its own sends those, and only those;
        # any other endpoint sends the provider's (never another endpoint's).
        own = recipe.endpoints[i].api_keys if recipe.endpoints else ()
        keys = {key: sources.get(key, "the recipe") for key in own or recipe.api_keys}
        keys |= extra
        file, line, col = locate(where, positions, filename)
        found, trouble = key_routes(
            url,
            keys,
            homes,
            recipe.access,
            given,
            Problem("", dotted(where), file, line, col),
        )
        routes.extend(found)
        problems.extend(trouble)
    if problems:
        raise RecipeError(problems)
    return replace(recipe, key_routes=tuple(routes))
