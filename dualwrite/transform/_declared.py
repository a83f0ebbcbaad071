"""Transforms declared in the migration file: renames, dropped columns, constants, conversions.

For a table the transform module does not cover::

    [[tables]]
    source = "legacy.orders"
    target = "shop.orders"
    rename = { amount_cents = "amount", placed_at = "placed_at_utc" }
    drop = ["internal_note"]
    constants = { currency = "EUR" }
    convert = { amount_cents = "cents_to_numeric", email = "lower", placed_at = "zone:Europe/Berlin" }

Conversions apply to source column names, before renaming; each is a named function in
:data:`CONVERTERS` (``name`` or ``name:argument``). Unknown names are rejected when the
registry is built, naming the table and the column.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dualwrite.config import TableConfig
from dualwrite.errors import DualwriteError

Converter = Callable[[Any], Any]


def _cents(v: Any) -> Any:
    return None if v is None else (Decimal(v) / 100).quantize(Decimal("0.01"))


def _to_cents(v: Any) -> Any:
    if v is None:
        return None
    cents = Decimal(v).scaleb(2)
    if not cents.is_finite() or cents != cents.to_integral_value():
        raise ValueError(f"{v} is not a whole number of cents")
    return int(cents)


def _lower(v: Any) -> Any:
    return None if v is None else str(v).lower()


def _upper(v: Any) -> Any:
    return None if v is None else str(v).upper()


def _trim(v: Any) -> Any:
    return None if v is None else str(v).strip()


def _nfc(v: Any) -> Any:
    return None if v is None else unicodedata.normalize("NFC", str(v))


def _zone(argument: str) -> Converter:
    try:
        zone = ZoneInfo(argument)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {argument!r}") from None

    def convert(v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v  # NULL, or PostgreSQL's 'infinity'
        if not isinstance(v, dt.datetime) or v.tzinfo is not None:
            raise ValueError(f"expected a timestamp without time zone, got {v!r}")
        # As PostgreSQL's AT TIME ZONE: a repeated (autumn) local time is the later, standard-
        # time instant; a skipped (spring) local time is read with the offset before the jump.
        earlier, later = v.replace(tzinfo=zone, fold=0), v.replace(tzinfo=zone, fold=1)
        if earlier.utcoffset() != later.utcoffset():
            back = earlier.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None)
            if back == v:  # the time exists twice
                return later.astimezone(dt.UTC)
        return earlier.astimezone(dt.UTC)

    return convert


def _to_zone(argument: str) -> Converter:
    try:
        zone = ZoneInfo(argument)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {argument!r}") from None

    def convert(v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v  # NULL, or PostgreSQL's 'infinity'
        if not isinstance(v, dt.datetime) or v.tzinfo is None:
            raise ValueError(f"expected a timestamp with time zone, got {v!r}")
        return v.astimezone(zone).replace(tzinfo=None)

    return convert


CONVERTERS: dict[str, Callable[[str], Converter]] = {
    "cents_to_numeric": lambda _arg: _cents,
    "numeric_to_cents": lambda _arg: _to_cents,
    "lower": lambda _arg: _lower,
    "upper": lambda _arg: _upper,
    "trim": lambda _arg: _trim,
    "nfc": lambda _arg: _nfc,
    "zone": _zone,
    "to_zone": _to_zone,
}
"""Named conversions for declared transforms; ``zone:<IANA zone>`` reads a naive timestamp
as local time in that zone and returns it as an aware UTC timestamp, ``to_zone:<IANA zone>``
does the opposite."""

INVERSE_CONVERTERS: dict[str, str | None] = {
    "cents_to_numeric": "numeric_to_cents",
    "numeric_to_cents": "cents_to_numeric",
    "zone": "to_zone",
    "to_zone": "zone",
    # normalisers: the normalised value is a valid old value, so it is written back as is
    "lower": None,
    "upper": None,
    "trim": None,
    "nfc": None,
}
"""The conversion that undoes each conversion (same argument), for the automatic inverse of a
declared transform in the rollback direction; ``None``: write the value back unchanged. A
conversion missing here has no inverse: rolling back its table needs an inverse in the
transform module. Add an entry when you add a converter to :data:`CONVERTERS`."""


class DeclaredTransformError(DualwriteError):
    """A declared transform names an unknown conversion or an invalid argument."""


def build_converter(spec: str, where: str) -> Converter:
    name, _, argument = spec.partition(":")
    factory = CONVERTERS.get(name)
    if factory is None:
        raise DeclaredTransformError(
            f"{where}: unknown conversion {name!r} (known: {', '.join(sorted(CONVERTERS))})"
        )
    try:
        return factory(argument)
    except ValueError as exc:
        raise DeclaredTransformError(f"{where}: {exc}") from None


def declared_transform(
    table: TableConfig,
) -> tuple[Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]], Callable[[str], str]]:
    """The row function of a declared transform, and the source -> target column renamer."""
    converters = {
        column: build_converter(spec, f"{table.source} column {column}")
        for column, spec in table.convert.items()
    }
    rename = dict(table.rename)
    dropped = set(table.drop)
    constants = dict(table.constants)
    target = str(table.target)

    def column_name(source_column: str) -> str:
        return rename.get(source_column, source_column)

    def transform(row: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
        values: dict[str, Any] = {}
        for column, value in row.items():
            if column in dropped:
                continue
            convert = converters.get(column)
            values[column_name(column)] = convert(value) if convert else value
        values.update(constants)
        return {target: values}

    return transform, column_name


def declared_inverse(
    table: TableConfig,
) -> Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]:
    """The automatic inverse of a declared transform: a target row -> ``{source: row}``.

    Renames are undone, constant columns left out, conversions undone with
    :data:`INVERSE_CONVERTERS`; dropped columns are not rebuilt (the old row keeps its value).
    Raises :class:`DeclaredTransformError` naming the table and column of a conversion that
    has no inverse.
    """
    back: dict[str, Converter] = {}
    for column, spec in table.convert.items():
        name, _, argument = spec.partition(":")
        where = f"{table.source} column {column}"
        if name not in INVERSE_CONVERTERS:
            raise DeclaredTransformError(
                f"{where}: conversion {name!r} has no inverse, so rows of {table.target} cannot "
                f"be written back to {table.source} for rollback; register an inverse of "
                f"{table.target} in the transform module (@transforms.inverse) or add one to "
                "INVERSE_CONVERTERS"
            )
        undo = INVERSE_CONVERTERS[name]
        if undo is not None:
            back[column] = build_converter(f"{undo}:{argument}" if argument else undo, where)
    source_name = {target: source for source, target in table.rename.items()}
    constants = set(table.constants)
    source = str(table.source)

    def inverse(row: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
        values: dict[str, Any] = {}
        for column, value in row.items():
            if column in constants:
                continue
            name = source_name.get(column, column)
            convert = back.get(name)
            values[name] = convert(value) if convert else value
        return {source: values}

    return inverse
