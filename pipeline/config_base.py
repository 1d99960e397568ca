"""The base of every config section (pipeline/config.py): unknown keys refused, values frozen, and no boolean
where a number is wanted."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    """A config section: unknown keys refused (a typo fails before any work starts), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `true` as 1 in a number field: `run.shards: true` would have built one shard, silently,
        # and `monitor.max_drop: {ndcg@10: true}` would allow any fall
        if _boolean_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("expected a number, not a boolean")
        return value


def _kinds(annotation: Any) -> set:
    """The types an annotation allows, Annotated and unions unwrapped."""
    if get_origin(annotation) is Annotated:
        return _kinds(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return set().union(*map(_kinds, get_args(annotation)))
    return {annotation}


def _boolean_for_number(annotation: Any, value: Any) -> bool:
    """Whether `value` holds a boolean where `annotation` wants a number, at any depth of maps and lists."""
    kinds = _kinds(annotation)
    if isinstance(value, bool):
        return bool(kinds & {int, float}) and bool not in kinds
    for kind in kinds:
        origin, args = get_origin(kind), get_args(kind)
        if origin is dict and isinstance(value, dict) and len(args) == 2:
            inner, items = args[1], value.values()
        elif origin in (list, tuple) and isinstance(value, list | tuple) and args:
            inner, items = args[0], value
        else:
            continue
        if any(_boolean_for_number(inner, item) for item in items):
            return True
    return False
