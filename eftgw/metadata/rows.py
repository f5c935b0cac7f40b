"""Conversions between table rows and the domain's dataclasses, derived from the dataclasses themselves.

A table's columns carry the names of its dataclass's fields (``schema.py`` and ``model.py`` agree on them,
and Alembic's comparison keeps the tables equal to ``schema.py``). :func:`from_row` builds a dataclass from
the columns of a row that it has fields for; :func:`values` gives the column values of a dataclass for a
table. Field types drive the conversions, in one place: enums are stored as their values and rebuilt from
them; lists and dicts are copied (so no row object is shared with the domain).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar

import sqlalchemy as sa

from eftgw.events import Event
from eftgw.model import AuditEvent, Case, FileRecord, Session, SftpAccount, Upload

T = TypeVar("T")


_DECODERS: dict[type[Any], dict[str, Any]] = {}


def _decoders(cls: type[Any]) -> dict[str, Any]:
    """Per field of ``cls``: how to turn a column value into the field's value (worked out once)."""
    decoders = _DECODERS.get(cls)
    if decoders is None:
        hints = typing.get_type_hints(cls)
        decoders = _DECODERS[cls] = {f.name: _decoder(hints[f.name]) for f in dataclasses.fields(cls)}
    return decoders


def _decoder(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        inner = _decoder(args[0])
        return lambda value: None if value is None else inner(value)
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return origin
    if origin is list:
        return list
    if origin is dict:
        return dict
    return lambda value: value


def from_row(cls: type[T], row: Any) -> T:
    """The dataclass ``cls`` from the row's columns that name its fields (others take their defaults)."""
    columns = row._mapping
    decoders = _decoders(cls)
    return cls(**{name: decode(columns[name]) for name, decode in decoders.items() if name in columns})


def values(table: sa.Table, item: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The column values of dataclass ``item`` for ``table`` (its fields that are columns)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(item):
        if field.name in table.c and field.name not in exclude:
            out[field.name] = _encode(getattr(item, field.name))
    return out


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


# The mappings the repository uses, one per entity.
case = functools.partial(from_row, Case)
file = functools.partial(from_row, FileRecord)
upload = functools.partial(from_row, Upload)
account = functools.partial(from_row, SftpAccount)
session = functools.partial(from_row, Session)
audit = functools.partial(from_row, AuditEvent)
event = functools.partial(from_row, Event)
