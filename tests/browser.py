"""A real headless Chromium for the report and viewer tests (the system's package).

``--dump-dom`` loads a page the way a person's browser does and prints the DOM it built: what
an injected tag would become is visible there. Chromium missing makes the test skip on a
developer's machine and fail under CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


def chromium() -> str:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium found (apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: CI must install it (.ci/run)")
    pytest.skip(message)


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def dump_dom(url: str, profile: Path) -> Node:
    """The DOM Chromium built for ``url``, as a tree."""
    proc = _run(["--dump-dom", url], profile)
    assert "<html" in proc.stdout, proc.stdout[:500]
    return parse(proc.stdout)


def screenshot(url: str, target: Path, profile: Path, size: str = "1200,900") -> Path:
    _run(["--hide-scrollbars", f"--window-size={size}", f"--screenshot={target}", url], profile)
    assert target.stat().st_size > 1000
    return target


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    content: list[Node | str] = field(default_factory=list)  # text and children, in order

    def iter(self, tag: str | None = None) -> list[Node]:
        out = [self] if tag is None or self.tag == tag else []
        for child in self.children:
            out.extend(child.iter(tag))
        return out

    def by_id(self, ident: str) -> Node:
        for node in self.iter():
            if node.attrs.get("id") == ident:
                return node
        raise AssertionError(f"no element with id {ident!r}")

    def ids(self, prefix: str) -> list[Node]:
        return [n for n in self.iter() if n.attrs.get("id", "").startswith(prefix)]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.content)

    def classed(self, name: str) -> list[Node]:
        return [n for n in self.iter() if name in n.attrs.get("class", "").split()]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        self.stack[-1].content.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        self.stack[-1].content.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def assert_inert(dom: Node) -> None:
    """Nothing from the rows became markup: no script, image, frame or event handler."""
    for bad in ("script", "img", "iframe", "object", "embed"):
        assert not dom.iter(bad), f"a <{bad}> element is in the page"
    for node in dom.iter():
        handlers = [k for k in node.attrs if k.startswith("on")]
        assert not handlers, (node.tag, handlers)
