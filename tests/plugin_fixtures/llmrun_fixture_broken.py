"""A plugin that cannot be imported (as when a dependency is missing)."""

from __future__ import annotations

raise ImportError("llmrun_fixture_broken needs libteleport, which is not installed")
