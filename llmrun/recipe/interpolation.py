"""Where a recipe's ``${VAR}`` may expand and which of its values are secrets.

A variable always expands in the provider's keys, ``base_url`` and headers (values sent only
with the request, never shown), and elsewhere only when the recipe declares it in ``env:``;
every value that came from such a place, or looks like a key where keys go, is a secret the run
redacts from every output. ``load.py`` calls ``interpolate`` before validating the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..access import KNOWN_KEY_HOMES
from ..errors import Problem
from ..redaction import looks_like_secret, url_password
from .envvars import Environment, variables_in
from .problems import locate
from .yamlsource import Positions, dotted

SECRET_WORDS = ("key", "token", "secret", "password", "auth")


@dataclass
class Scoping:
    """Where ``${VAR}`` may expand: secret places always, other places only for the variables
    the recipe declares in its top-level ``env:`` list (and values given with ``--set``).
    ``sources`` remembers which variable each key came from, for plan and the run's start."""

    declared: frozenset[str]
    sources: dict[str, str] = field(default_factory=dict)
    # Every variable expanded anywhere in the provider section (headers, URLs, keys): its value
    # -> "$NAME". It travels with each request, so it is routed and checked as a key is: a
    # service's key put into a header reached any host unasked.
    sent: dict[str, str] = field(default_factory=dict)

    def allows(self, path: tuple[Any, ...], name: str, positions: Positions) -> bool:
        return (
            name in self.declared
            or is_secret_place(path)
            or positions.get(path) == (0, 0)  # the user's own --set
        )


# Provider options a secret may go into: sent only with the request, never in a prompt.
SECRET_PLACES = ("api_keys", "base_url", "base_urls", "endpoints", "endpoint", "headers")


def _is_key_path(path: tuple[Any, ...]) -> bool:
    """provider.api_keys[i], or provider.endpoints[i].api_keys[j]: a key, however written."""
    return path[:2] == ("provider", "api_keys") or (
        path[:2] == ("provider", "endpoints") and len(path) == 5 and path[3] == "api_keys"
    )


# Sections whose values reach the request body or the rows.
_TO_THE_MODEL = {("prompt",), ("generation",), ("steps",), ("examples",), ("provider",)}
KEY_NAME_ENDS = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_ACCESS_KEY", "_SECRET_KEY")


def is_key_variable(name: str) -> bool:
    """A variable that holds a key: a known service's, or one named as keys are."""
    return name in KNOWN_KEY_HOMES or name.upper().endswith(KEY_NAME_ENDS)


def is_secret_place(path: tuple[Any, ...]) -> bool:
    if len(path) < 2 or path[0] != "provider":
        return False
    return path[1] in SECRET_PLACES or is_secret_path(path)


def interpolate(
    value: Any,
    path: tuple[Any, ...],
    env: Environment,
    positions: Positions,
    filename: str,
    problems: list[Problem],
    secrets: set[str],
    scoping: Scoping,
) -> Any:
    if isinstance(value, dict):
        return {
            k: v
            if path == () and k == "env"  # the declaration itself is a list of names
            else interpolate(v, (*path, k), env, positions, filename, problems, secrets, scoping)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            interpolate(v, (*path, i), env, positions, filename, problems, secrets, scoping)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str):
        return value
    if "$" in value:
        refused = [n for n in variables_in(value) if not scoping.allows(path, n, positions)]
        # Declared or not, a key never goes where the request body or the rows take it (a
        # prompt, generation, the model): to whatever host the recipe names, past the key
        # check. A loader's or writer's own option may hold one (a database password): that
        # goes to the plugin the user installed, declared under env:.
        keys = [
            n
            for n in variables_in(value)
            if is_key_variable(n)
            and n not in refused
            and path[:1] in _TO_THE_MODEL
            and not is_secret_place(path)
        ]
        if keys and positions.get(path) != (0, 0):  # the user's own --set may
            file, line, col = locate(path, positions, filename)
            for name in keys:
                problems.append(
                    Problem(
                        f"${{{name}}} holds a key: a key goes only into provider.api_keys or a "
                        f"provider header, never into {dotted(path)} (it would be sent in the "
                        "request body to the recipe's endpoint and written into the rows)",
                        dotted(path),
                        file,
                        line,
                        col,
                    )
                )
            return value
        if refused:
            file, line, col = locate(path, positions, filename)
            for name in refused:
                problems.append(
                    Problem(
                        f"${{{name}}} is not expanded here: environment variables reach only "
                        "provider keys, base_url and headers; to use it in "
                        f"{dotted(path)}, list it under `env:` at the top of the recipe "
                        "(`llmrun plan` shows that list)",
                        dotted(path),
                        file,
                        line,
                        col,
                    )
                )
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
    if used and path[:1] == ("provider",):
        for name in variables_in(value):
            found = env.get(name)
            if found:
                scoping.sent.setdefault(found, f"${name}")
                if is_key_variable(name):  # wherever it went (a URL too), it is a secret
                    secrets.add(found)
    # A key written into the recipe itself is as secret as one read from the environment.
    if (used and is_secret_path(path)) or (_is_key_path(path) and text):
        secrets.add(text)
        names = variables_in(value)
        if used and len(names) == 1:
            scoping.sources[text] = f"${names[0]}"
        elif positions.get(path) == (0, 0):
            scoping.sources[text] = "--set"
    return text


_SECRET_HEADER = ("authorization", "cookie", "key", "token", "secret", "password", "auth")


def literal_secrets(provider: Any) -> set[str]:
    """Secrets written into the provider section as they are: a URL's password (``base_url:
    https://user:pw@proxy``) and every header whose name or value looks like a secret."""
    found: set[str] = set()
    if not isinstance(provider, dict):
        return found
    urls = [provider.get("base_url"), provider.get("endpoint")]
    for listed in (provider.get("base_urls"), provider.get("endpoints")):
        if isinstance(listed, list):  # a pool's endpoints: each URL may hold a password too
            urls += [e.get("base_url") if isinstance(e, dict) else e for e in listed]
    for url in urls:
        if isinstance(url, str):
            password = url_password(url)
            if password:
                found.add(password)
    headers = provider.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if not isinstance(value, str) or not value:
                continue
            if any(w in str(name).lower() for w in _SECRET_HEADER) or looks_like_secret(value):
                found.add(value)
                scheme, _, rest = value.partition(" ")  # "Bearer sk-...": the token alone too
                if rest and scheme.isalpha():
                    found.add(rest)
    return found


def is_secret_path(path: tuple[Any, ...]) -> bool:
    names = [p.lower() for p in path if isinstance(p, str)]
    return any(word in name for name in names[-2:] for word in SECRET_WORDS)
