"""Reading a config: YAML text and dotted overrides (`--set run.shards=8`) into a validated PipelineConfig
(pipeline/config.py), every error naming the field, what was expected and what it got, secrets excepted."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.redaction import redact

# A field whose name is one of these, or ends in "_" + one of them, holds a secret (or, for "options",
# storage options that may carry credentials): its value never appears in an error. "max_tokens" does not.
_SECRET_NAMES = ("secret", "password", "token", "key", "credentials", "credential", "options")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last silently: a
    second `model:` section pasted below the first would replace it whole)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` then a key of its own is an override
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {line}): keep one",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check its spelling and nesting)"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    secret = any(str(part).lower() == name or str(part).lower().endswith("_" + name)
                 for part in err["loc"] for name in _SECRET_NAMES)
    shown = "<redacted>" if secret else redact(repr(err.get("input")))  # a URL may hold credentials
    return f"{loc}: {msg} (got {shown})"


def parse_config(data: Any, origin: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{origin}: expected a mapping of settings (index_name, corpus, ...), got {got}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, origin) from None


def invalid(exc: ValidationError, origin: str) -> ConfigError:
    """A ConfigError listing each wrong field of `origin` as `dotted.key: what is wrong (got value)`."""
    lines = "\n  ".join(_describe(e) for e in exc.errors())
    return ConfigError(f"{origin} is invalid:\n  {lines}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config; `overrides` maps dotted keys (`run.shards`) to values applied on top. The same file
    content and overrides give the same (immutable) config object: the CLI checks a config before its flow
    starts, and the flow then loads it without parsing it again."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (expected a YAML file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    try:
        frozen_overrides = json.dumps(overrides or {}, sort_keys=True)
    except TypeError:  # a value JSON cannot hold: parse without the cache
        return _parse(text, str(p), overrides or {})
    return _parse_cached(text, str(p), frozen_overrides)


@lru_cache(maxsize=16)
def _parse_cached(text: str, origin: str, overrides_json: str) -> PipelineConfig:
    return _parse(text, origin, json.loads(overrides_json))


# settings that are maps: in an override key, all after the field's name is one key of it (drift statistics hold
# dots, metrics '@': monitor.max_drop.ndcg@10, publish.gate.max_drift.vectors.isotropy)
MAP_FIELDS = ("publish.gate.max_drift", "monitor.max_drop", "monitor.max_drift")


def _parse(text: str, origin: str, overrides: dict[str, Any]) -> PipelineConfig:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:  # its str() quotes the line, which may hold a secret: where and what only
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{origin}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {type(exc).__name__}") from None
    for dotted, value in overrides.items():
        field = next((f for f in MAP_FIELDS if dotted.startswith(f + ".")), None)
        if field:  # one key of a map, set beside the file's keys
            parents, leaf = field.split("."), dotted.removeprefix(field + ".")
        elif re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", dotted):
            *parents, leaf = dotted.split(".")
        else:
            raise ConfigError(f"override key {dotted!r}: expected dotted field names like run.shards")
        node = data if isinstance(data, dict) else {}
        for depth, part in enumerate(parents, start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:depth])
                raise ConfigError(f"override key {dotted!r}: {section} is a value, not a section")
        node[leaf] = value
    return parse_config(data, origin=f"{origin} with overrides {', '.join(overrides)}" if overrides else origin)
