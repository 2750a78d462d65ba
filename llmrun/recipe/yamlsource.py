"""Safe YAML loading that remembers where every key and value stood in the file."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import Problem, RecipeError

Path_ = tuple[str | int, ...]
Positions = dict[Path_, tuple[int, int]]  # key path -> (line, column), both 1-based


def load_yaml(text: str, filename: str) -> tuple[Any, Positions]:
    """Parse one YAML document; refuse duplicate keys; return the data and its positions."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        positions: Positions = {}
        data = _build(loader, node, (), positions, filename, {})
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
) -> Any:
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        # Key nodes written in this mapping itself, taken before flatten_mapping adds merged
        # ones to it (in place, so a node reached again through an alias is already flat).
        explicit = explicit_keys.setdefault(id(node), {id(k) for k, _ in node.value})
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
            out[key] = _build(loader, value_node, child, positions, filename, explicit_keys)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, i), positions, filename, explicit_keys)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


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
