"""Reading a spec's text: YAML with `yaml.safe_load` semantics that remembers the line of every key and list
item, the `a.b.c=value` overrides of the command line, and the line a problem's field path points at."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .problems import SpecError, SpecProblem


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of each mapping key and list item in `key_lines`, keyed by
    (id of the container, key or index); `parse_yaml` turns them into dotted paths."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    mapping: Dict[Any, Any] = {}
    seen = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        loader.key_lines[id(mapping), key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> List[Any]:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    for i, child in enumerate(node.value):
        loader.key_lines[id(items), i] = child.start_mark.line + 1
    return items


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
# YAML 1.1 number rules bite job specs: `24:00:00` is read as the base-60 integer 86400 and `1e-4`
# as a string. Times stay strings and exponents are floats here.
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o?[0-7_]+)$"), list("-+0123456789"))
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _load_scalar(text: str) -> Any:
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> Tuple[Any, Dict[str, int]]:
    """(data, {dotted path: line}); text that is not YAML is a SpecError naming the line."""
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(source, [SpecProblem("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)]) from None
    finally:
        loader.dispose()
    lines: Dict[str, int] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, (dict, list)):
            for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj):
                path = f"{prefix}[{k}]" if isinstance(obj, list) else f"{prefix}.{k}" if prefix else str(k)
                line = loader.key_lines.get((id(obj), k))
                if line:
                    lines[path] = line
                walk(v, path)

    walk(data, "")
    return data, lines


def line_for(path: str, lines: Dict[str, int]) -> Optional[int]:
    """The line of `path`, else of the nearest enclosing key ('environment.setup[1]' -> 'environment.setup')."""
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(?:\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else ""
    return None


def parse_override(text: str) -> Tuple[List[str], Any]:
    """`train.max_steps=1000` -> (['train', 'max_steps'], 1000); the value is a YAML scalar."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ValueError(f"override key {key!r} must be dotted names such as train.max_steps")
    try:
        value = _load_scalar(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> List[SpecProblem]:
    problems: List[SpecProblem] = []
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ValueError as exc:
            problems.append(SpecProblem("", str(exc)))
            continue
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(SpecProblem(".".join(parts[: i + 1]), f"override {text!r} goes inside a value that is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems
