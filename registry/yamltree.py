"""Build plain values from YAML while recording the line of every key path.

PyYAML's loaders lose line numbers; manifests need them in every error. The document is
composed into a node tree and walked here. Only what a configuration file needs is accepted:
mappings with plain keys, lists, and scalars with their implicit tags (or ``!!str``); merge
keys, other tags, recursive aliases and alias bombs are refused with the line they are on.
"""

from __future__ import annotations

import json

import yaml

from registry.errors import ManifestError

# Expanding aliases can blow a small file up exponentially; real manifests stay far below this.
_MAX_NODES = 100_000
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show_value(value: object) -> str:
    """The value as YAML or JSON would print it; containers by kind only."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, str | bool | int | float):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _tag(node: yaml.Node) -> str:
    return node.tag.replace("tag:yaml.org,2002:", "!!")


class YamlTree:
    """Builds plain values from the YAML node tree, recording the line of every key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self._open: set[int] = set()
        self._count = 0
        self._scalars = yaml.SafeLoader("")  # resolves and constructs scalar nodes only

    def build(self, text: str) -> object:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            if root is None:
                raise ManifestError(
                    self.source, "", "the manifest is empty; expected version and functions"
                )
            return self._value(root, "", root.start_mark.line + 1)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            problem = ", ".join(part for part in (exc.context, exc.problem) if part)
            raise ManifestError(self.source, "", f"invalid YAML: {problem}", line) from exc
        except yaml.YAMLError as exc:
            raise ManifestError(self.source, "", f"invalid YAML: {exc}") from exc
        except RecursionError as exc:
            raise ManifestError(self.source, "", "invalid YAML: nested too deeply") from exc

    def _error(self, node: yaml.Node, path: str, problem: str) -> ManifestError:
        return ManifestError(self.source, path, problem, node.start_mark.line + 1)

    def _value(self, node: yaml.Node, path: str, line: int) -> object:
        self.lines[path] = line
        self._count += 1
        if self._count > _MAX_NODES:
            raise self._error(node, path, f"too many values (more than {_MAX_NODES})")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            raise self._error(node, path, "an alias refers to a value that contains it")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                items = enumerate(node.value)
                return [self._value(v, f"{path}[{i}]", v.start_mark.line + 1) for i, v in items]
            raise self._error(node, path, f"unsupported YAML tag {_tag(node)}")
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, object]:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error(key_node, path, "expected a plain key, not a list or mapping")
            if key_node.tag == _MERGE_TAG:
                raise self._error(key_node, path, 'merge keys ("<<") are not supported')
            key = key_node.value
            key_path = join_path(path, key)
            if key in result:
                first = self.lines[key_path]
                problem = f"duplicate key {show_value(key)}, first given on line {first}"
                raise self._error(key_node, key_path, problem)
            result[key] = self._value(value_node, key_path, key_node.start_mark.line + 1)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: str) -> object:
        # Only the tag an untagged scalar would get, or !!str, is allowed: explicit tags such as
        # "!!bool maybe" make PyYAML's constructors raise KeyError, TypeError and the like.
        plain = node.style is None
        implicit = self._scalars.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, node.value, (plain, not plain)
        )
        if node.tag not in (implicit, _STR_TAG):
            raise self._error(node, path, f"unsupported YAML tag {_tag(node)}")
        try:
            return self._scalars.construct_object(node)
        except ValueError as exc:  # e.g. a date that does not exist, "2024-13-45"
            raise self._error(node, path, f"invalid value {show_value(node.value)}: {exc}") from exc
