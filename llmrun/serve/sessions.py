"""Chat sessions: a conversation's history kept on disk beside the output, so it survives a
restart. Each exchange is written whole (a temporary file renamed over the old one): a kill
leaves the history before or after the exchange, never half of it."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import anyio

from ..job.store import now_iso

_ID = re.compile(r"[0-9a-f]{32}")


class NoSession(Exception):
    pass


class Sessions:
    def __init__(self, folder: Path, history: int) -> None:
        self.folder = folder
        self.history = history  # messages kept besides the system message
        self._locks: dict[str, anyio.Lock] = {}

    def _path(self, session_id: str) -> Path:
        # The id becomes a file name: only our own form of id ever reaches the disk.
        if not _ID.fullmatch(session_id):
            raise NoSession(session_id)
        return self.folder / f"{session_id}.json"

    def create(self, system: str | None) -> dict[str, Any]:
        session: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "created_at": now_iso(),
            "system": system,
            "messages": [],
        }
        self._save(session)
        return session

    def get(self, session_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(session_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise NoSession(session_id) from None
        if not isinstance(data, dict):
            raise NoSession(session_id)
        return data

    def lock(self, session_id: str) -> anyio.Lock:
        """One exchange at a time per session, so each sees the previous reply."""
        return self._locks.setdefault(session_id, anyio.Lock())

    def messages(self, session: dict[str, Any], content: str) -> list[dict[str, Any]]:
        """The messages to send: the system message, the history, the new user message."""
        system = [{"role": "system", "content": session["system"]}] if session["system"] else []
        return [*system, *session["messages"], {"role": "user", "content": content}]

    def add(self, session: dict[str, Any], content: str, reply: str | None) -> None:
        history = [
            *session["messages"],
            {"role": "user", "content": content},
            {"role": "assistant", "content": reply or ""},
        ]
        # Bounded: the oldest exchanges go first, whole (a user turn and its reply).
        excess = max(0, len(history) - self.history)
        session["messages"] = history[excess + excess % 2 :]
        self._save(session)

    def delete(self, session_id: str) -> None:
        try:
            self._path(session_id).unlink()
        except FileNotFoundError:
            raise NoSession(session_id) from None
        self._locks.pop(session_id, None)

    def _save(self, session: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(session["id"])
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(session, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
