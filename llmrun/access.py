"""What a recipe may reach beyond itself, as the user (never the recipe) allowed it.

A recipe is untrusted input: it may come from another team. By default it reads only inside its
own folder, runs no code it names, and a key taken from the environment goes only to the host it
belongs to. The user widens this on the command line (``--trust``, ``--allow-read DIR``,
``--allow-host HOST``) or in the environment (``LLMRUN_TRUST``, ``LLMRUN_ALLOW_READ``,
``LLMRUN_ALLOW_HOSTS``), which a recipe cannot set: a ``.env`` beside the recipe is not read for
these (docs/sharing.md).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TRUST_ENV = "LLMRUN_TRUST"
ALLOW_READ_ENV = "LLMRUN_ALLOW_READ"
ALLOW_HOSTS_ENV = "LLMRUN_ALLOW_HOSTS"
HOW_TO_READ = f"pass --allow-read DIR, or add DIR to {ALLOW_READ_ENV}"

# Keys of well-known services, by the variable people keep them in, and the hosts they belong
# to: a recipe that sends one elsewhere needs the user's confirmation (--allow-host). A
# provider adds its own (a preset's variable) with ``key_homes(options)``.
KNOWN_KEY_HOMES: Mapping[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("api.openai.com",),
    "ANTHROPIC_API_KEY": ("api.anthropic.com",),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com",),
    "GOOGLE_API_KEY": ("generativelanguage.googleapis.com",),
    "AZURE_OPENAI_API_KEY": ("*.openai.azure.com", "*.cognitiveservices.azure.com"),
    "AZURE_OPENAI_AD_TOKEN": ("*.openai.azure.com", "*.cognitiveservices.azure.com"),
}


class OutsideError(ValueError):
    """A path a recipe names that resolves outside every folder it may read."""


@dataclass(frozen=True)
class Access:
    """The user's opt-ins. ``read_roots`` are resolved folders beyond the recipe's own."""

    trust: bool = False
    read_roots: tuple[Path, ...] = ()
    hosts: frozenset[str] = frozenset()
    # Where the trust came from, for messages ("--trust", "LLMRUN_TRUST=...").
    trusted_by: str = ""

    @classmethod
    def from_user(
        cls,
        recipe: str | Path,
        *,
        trust: bool = False,
        allow_read: Sequence[str] = (),
        allow_host: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> Access:
        """The opt-ins of the command line and the user's environment for this recipe file."""
        env = os.environ if environ is None else environ
        path = Path(recipe).resolve()
        by = "--trust" if trust else ""
        if not trust:
            for pattern in _split(env.get(TRUST_ENV, ""), os.pathsep):
                if _matches(path, pattern):
                    trust, by = True, f"{TRUST_ENV}={pattern}"
                    break
        folders = [*allow_read, *_split(env.get(ALLOW_READ_ENV, ""), os.pathsep)]
        roots = tuple(dict.fromkeys(Path(f).expanduser().resolve() for f in folders))
        hosts = [*allow_host, *_split(env.get(ALLOW_HOSTS_ENV, ""), ",")]
        return cls(trust, roots, frozenset(h.strip().lower() for h in hosts if h.strip()), by)

    def scope(self, base_dir: Path) -> ReadScope:
        return ReadScope((base_dir.resolve(), *self.read_roots))


def _split(text: str, sep: str) -> list[str]:
    return [part.strip() for part in text.split(sep) if part.strip()]


def _matches(path: Path, pattern: str) -> bool:
    """A trusted-recipe glob: matched against the resolved recipe path; a folder trusts every
    recipe under it."""
    expanded = os.path.abspath(os.path.expanduser(pattern))  # relative: to where you are
    if fnmatch.fnmatchcase(str(path), expanded):
        return True
    folder = Path(expanded)
    return (
        not any(c in pattern for c in "*?[") and folder.is_dir() and _inside(path, folder.resolve())
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class ReadScope:
    """The folders a recipe may read from: its own first, then those the user allowed."""

    roots: tuple[Path, ...]

    def check(self, path: Path | str, what: str) -> Path:
        """``path`` (relative to the recipe's folder) resolved, symlinks included; OutsideError
        naming ``what`` when it leaves every root."""
        base = self.roots[0]
        resolved = (base / path).resolve()
        if any(_inside(resolved, root) for root in self.roots):
            return resolved
        prefix = f"{what}: " if what else ""
        raise OutsideError(
            f"{prefix}{str(path)!r} resolves to {resolved}, outside the recipe's folder "
            f"{base}{self._others()}; to allow it, {HOW_TO_READ}"
        )

    def contains(self, path: Path) -> bool:
        resolved = path.resolve()
        return any(_inside(resolved, root) for root in self.roots)

    def _others(self) -> str:
        extra = self.roots[1:]
        return f" and the allowed folders ({', '.join(map(str, extra))})" if extra else ""
