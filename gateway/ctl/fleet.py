"""Fleet files: the backends, models and routes an operator declares, in YAML or JSON.

A fleet file has up to three lists, `backends`, `models` and `routes`, whose entries carry the admin API's
fields and are named by `id` or `name`. `load_fleet` checks the whole file with the same validation the admin
API uses (`placement.records`) and returns each object in its canonical form (what the API stores), so that a
file and a gateway's registry compare field by field. Errors name the entry, the field and, for YAML, the line.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.ctl.errors import USAGE, CtlError
from placement.errors import InvalidSpec
from placement.records import BackendSpec, ModelSpec, RouteSpec

KINDS = ("backends", "models", "routes")
# libyaml's parser when PyYAML has it: the pure-Python one took ~4 s of a 10,000-model fleet file's 4.7 s `diff`
# (docs/benchmarks.md, "10,000 models"); same documents, same marks.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SINGULAR = {"backends": "backend", "models": "model", "routes": "route"}


def canonical(kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The stored form of one object, as the admin API would keep it; InvalidSpec when the API would refuse it."""
    fields = {k: v for k, v in body.items() if k not in ("id", "name")}
    if kind == "backends":
        return BackendSpec.parse(name, fields).to_json()
    if kind == "models":
        return ModelSpec.parse(name, fields).to_json()
    return RouteSpec.parse(name, fields).to_json()


def from_record(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of a record the admin API returned (its settings, without state)."""
    keys: tuple[str, ...]
    if kind == "backends":
        keys = ("kind", "url", "grpc_url", "capacity", "model_base_path")
        name = record["id"]
    elif kind == "models":
        keys = ("runtime", "source", "memory_bytes", "min_copies", "max_copies", "pinned", "hedge")
        name = record["name"]
    else:
        keys = ("splits", "shadows", "sticky_header", "hedge")
        name = record["name"]
    return canonical(kind, name, {k: record[k] for k in keys if k in record})


@dataclass
class Fleet:
    """Canonical objects by kind, then by name, in file order."""

    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        objects: dict[str, dict[str, Any]] = getattr(self, kind)
        return objects

    def to_file(self) -> dict[str, list[dict[str, Any]]]:
        return {kind: list(self.of(kind).values()) for kind in KINDS}

    def count(self) -> int:
        return sum(len(self.of(k)) for k in KINDS)


class _Lines:
    """Line numbers of a YAML document's entries and fields (1-based); empty for JSON."""

    def __init__(self, text: str, is_yaml: bool) -> None:
        self.entries: dict[tuple[str, int], int] = {}
        self.fields: dict[tuple[str, int, str], int] = {}
        if not is_yaml:
            return
        root = yaml.compose(text, Loader=_SafeLoader)
        if not isinstance(root, yaml.MappingNode):
            return
        for key, seq in root.value:
            if not isinstance(seq, yaml.SequenceNode):
                continue
            for i, item in enumerate(seq.value):
                self.entries[(key.value, i)] = item.start_mark.line + 1
                if isinstance(item, yaml.MappingNode):
                    for k, _v in item.value:
                        self.fields[(key.value, i, str(k.value))] = k.start_mark.line + 1

    def line(self, kind: str, index: int, message: str = "") -> int | None:
        """The line of the field the message names first, else of the entry."""
        named = []
        for (k, i, name), line in self.fields.items():
            found = re.search(rf"(?<![\w.]){re.escape(name)}\b", message) if (k, i) == (kind, index) else None
            if found:
                named.append((found.start(), line))
        return min(named)[1] if named else self.entries.get((kind, index))


class _StrictLoader(_SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """YAML's safe loader, except that a key given twice in one mapping is an error, not the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one entry", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def parse_text(text: str, path: str) -> tuple[Any, _Lines]:
    is_yaml = not path.endswith(".json")
    try:
        data = yaml.load(text, Loader=_StrictLoader) if is_yaml else json.loads(text)
        return data, _Lines(text, is_yaml)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise CtlError(f"{where}: not valid YAML: {exc.problem or exc}", USAGE) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise CtlError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {exc}", USAGE) from None


def load_fleet(path: str) -> Fleet:
    """Read and check a whole fleet file (`-` is stdin). CtlError (exit status 2) on the first problem."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CtlError(f"cannot read the fleet file {path}: {exc.strerror or exc}", USAGE) from None
    data, lines = parse_text(text, path)
    return fleet_from_data(data, path, lines)


def fleet_from_data(data: Any, path: str, lines: _Lines | None = None) -> Fleet:
    lines = lines or _Lines("", False)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CtlError(f"{path}: a fleet file is a mapping with backends, models and routes lists", USAGE)
    unknown = sorted(set(data) - set(KINDS))
    if unknown:
        raise CtlError(f"{path}: unknown section(s) {unknown}; a fleet file has backends, models and routes", USAGE)
    fleet = Fleet()
    for kind in KINDS:
        entries = data.get(kind) or []
        if not isinstance(entries, list):
            raise CtlError(f"{path}: {kind} must be a list of entries", USAGE)
        for i, entry in enumerate(entries):
            where = f"{kind}[{i}]"

            def fail(message: str, where: str = where, i: int = i, kind: str = kind) -> CtlError:
                line = lines.line(kind, i, message)
                return CtlError(f"{path}{f':{line}' if line else ''}: {where}: {message}", USAGE)

            if not isinstance(entry, dict):
                raise fail("an entry must be a mapping of the admin API's fields")
            name = entry.get("id", entry.get("name"))
            if "id" in entry and "name" in entry and entry["id"] != entry["name"]:
                raise fail("id and name differ; give one of them")
            if not isinstance(name, str):
                raise fail("every entry needs an id or name (a string)")
            where = f"{where} ({name})"
            if name in fleet.of(kind):
                raise fail(f"the {SINGULAR[kind]} {name!r} is declared more than once", where)
            try:
                fleet.of(kind)[name] = canonical(kind, name, entry)
            except InvalidSpec as exc:
                raise fail(str(exc), where) from None
    clash = sorted(set(fleet.models) & set(fleet.routes))
    if clash:
        raise CtlError(f"{path}: {clash} named both a model and a route; a route can't share a model's name", USAGE)
    return fleet


def check_file(path: str) -> Fleet:
    """For `serve --config`: the file checked before the gateway starts; exit status 2 with the reason."""
    try:
        return load_fleet(path)
    except CtlError as exc:
        print(f"modelyard: --config: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
