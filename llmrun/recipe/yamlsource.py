"""Safe YAML loading that remembers where every key and value stood in the file.

A recipe is untrusted: aliases may not expand it past ``EXPANSION`` times its own size (a
500-byte "billion laughs" would otherwise take gigabytes), nesting stops at ``MAX_DEPTH``, and
an anchor that contains itself is an error with its line, not a crash.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import Problem, RecipeError

Path_ = tuple[str | int, ...]
Positions = dict[Path_, tuple[int, int]]  # key path -> (line, column), both 1-based
MAX_DEPTH = 64  # levels of nesting: recipes use under ten
EXPANSION = 10  # nodes built, at most, per node written (aliases reuse nodes)
MIN_BUDGET = 10_000  # nodes any recipe may build, however small its text


class _Limits:
    """The node budget of one document and the anchors being built (to catch a cycle)."""

    def __init__(self, root: yaml.Node) -> None:
        self.budget = MIN_BUDGET + EXPANSION * _distinct_nodes(root)
        self.open: set[int] = set()


def _distinct_nodes(root: yaml.Node) -> int:
    """How many nodes the document holds, each counted once however many aliases name it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return len(seen)


MERGE_TAG = "tag:yaml.org,2002:merge"


def _merged_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """The pairs ``node`` holds once its ``<<`` merges are flattened (huge for a cycle), worked
    out before PyYAML flattens it in place, which would build them all."""
    if not isinstance(node, yaml.MappingNode):
        return 0
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        return 1 << 62  # a merge cycle: no finite size
    active.add(id(node))
    total = 0
    for key, value in node.value:
        if key.tag != MERGE_TAG:
            total += 1
            continue
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        total += sum(_merged_size(src, memo, active) for src in sources)
    active.discard(id(node))
    memo[id(node)] = total
    return total


def _fault(message: str, node: yaml.Node, path: Path_, filename: str) -> RecipeError:
    mark = node.start_mark
    return RecipeError([Problem(message, dotted(path), filename, mark.line + 1, mark.column + 1)])


def load_yaml(text: str, filename: str) -> tuple[Any, Positions]:
    """Parse one YAML document; refuse duplicate keys; return the data and its positions."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        positions: Positions = {}
        data = _build(loader, node, (), positions, filename, {}, _Limits(node))
    except RecursionError:
        # The parser recurses per level of nesting: a deep enough document exhausts it.
        raise RecipeError(
            [Problem(f"invalid YAML: nested more than {MAX_DEPTH} levels deep", "", filename)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise RecipeError(
            [Problem(f"invalid YAML: {exc.problem or exc}", "", filename, line, col)]
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(f"invalid YAML: {exc}", "", filename)]) from None
    finally:
        loader.dispose()
    return data, positions


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path_,
    positions: Positions,
    filename: str,
    explicit_keys: dict[int, set[int]],
    limits: _Limits,
) -> Any:
    limits.budget -= 1
    if limits.budget < 0:
        raise _fault(
            f"invalid YAML: aliases expand the document past {EXPANSION} times its size "
            "(an alias bomb?)",
            node,
            path,
            filename,
        )
    if len(path) > MAX_DEPTH:
        raise _fault(
            f"invalid YAML: nested more than {MAX_DEPTH} levels deep", node, path, filename
        )
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        if id(node) in limits.open:
            raise _fault(
                "invalid YAML: this anchor contains itself (an alias inside it names it)",
                node,
                path,
                filename,
            )
        limits.open.add(id(node))
        try:
            return _build_collection(loader, node, path, positions, filename, explicit_keys, limits)
        finally:
            limits.open.discard(id(node))
    return loader.construct_object(node, deep=True)


def _build_collection(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path_,
    positions: Positions,
    filename: str,
    explicit_keys: dict[int, set[int]],
    limits: _Limits,
) -> Any:
    if isinstance(node, yaml.MappingNode):
        # Key nodes written in this mapping itself, taken before flatten_mapping adds merged
        # ones to it (in place, so a node reached again through an alias is already flat).
        explicit = explicit_keys.setdefault(id(node), {id(k) for k, _ in node.value})
        if _merged_size(node, {}, set()) > limits.budget:
            raise _fault(
                "invalid YAML: merge keys (<<) expand this mapping past the document's budget, "
                "or a merge names a mapping that contains it",
                node,
                path,
                filename,
            )
        loader.flatten_mapping(node)  # resolves `<<` merge keys, putting merged pairs first
        out: dict[Any, Any] = {}
        merged: set[str] = set()  # keys that came from `<<`: a later key may override them
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise RecipeError(
                    [
                        Problem(
                            "mapping keys must be plain scalars",
                            dotted(path),
                            filename,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                        )
                    ]
                )
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in merged:
                merged.discard(key)
                for stale in [p for p in positions if p[: len(child)] == child]:
                    del positions[stale]
            elif key in out:
                raise RecipeError(
                    [
                        Problem(
                            f"duplicate key {key!r}",
                            dotted(child),
                            filename,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                        )
                    ]
                )
            if id(key_node) not in explicit:
                merged.add(key)
            positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(loader, value_node, child, positions, filename, explicit_keys, limits)
        return out
    return [
        _build(loader, item, (*path, i), positions, filename, explicit_keys, limits)
        for i, item in enumerate(node.value)
    ]


def dotted(path: tuple[Any, ...]) -> str:
    """``("postprocess", 1, "json")`` -> ``postprocess[1].json``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def position_of(path: tuple[Any, ...], positions: Positions) -> tuple[int | None, int | None]:
    """The position of the deepest known prefix of ``path``."""
    for end in range(len(path), -1, -1):
        pos = positions.get(tuple(path[:end]))
        if pos is not None:
            return pos
    return None, None
