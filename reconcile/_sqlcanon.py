"""The canonical comparison computed inside PostgreSQL: a 64-bit row hash per row, equal on
both sides when Python's canonical comparison calls the rows equal, and different (but for a
2**-64 accident) when it does not.

The row hash is ``hash_record_extended(ROW(item, ...), 0)``: PostgreSQL combines each item's
own extended hash function, which is consistent with the item type's equality operator. So
the whole question is which items to hash, per column and per pair of (source, target)
types, such that the *database's* equality of the items is exactly Python's canonical
equality (:mod:`reconcile._canonical`):

- numbers: ``numeric`` and the integer types hash by value (``1.10 = 1.1``; int2/int4/int8
  hash alike); floats likewise (``-0 = 0``, ``NaN = NaN``); mixed number types, and any float
  meeting another type, go through ``numeric`` from their shortest exact text;
- text and varchar with the byte-wise ``"C"`` collation (never a case-insensitive one);
  ``char(n)`` as ``bpchar``, whose equality ignores pad spaces; json/jsonb as the ``jsonb``
  text (not ``jsonb =``, which would call ``1.0`` and ``1`` equal inside JSON);
- booleans, uuids, dates, timestamps (UTC instants for timestamptz), bytea: their own
  equality; arrays: element-wise, plus ``array_dims`` (the array hash ignores the shape).

Where SQL normalises differently from Python only for some values (array lower bounds, jsonb's
JSON null vs SQL NULL), equal values hash differently: the row merely becomes a candidate that
Python clears. The converse does not happen: different canonical values give different items.

A plan (:class:`SqlPlan`) says how to compute the items on both sides of one target table: on
the target from its own columns, on the source through the SQL form of the transform:
identity, rename, drop and constants exactly; declared conversions through SQL equivalents
(:data:`CONVERTER_SQL`); or a user-supplied SQL form (``Transforms.sql_form``). Where a SQL
equivalent is exact only for some values (``lower`` on non-ASCII text depends on the server's
locale), the source side adds an item that is true for such values where the target side has
false, so such a row always differs in SQL and is decided in Python. Every plan is checked on
a sample of source rows before use: the SQL form's row hash must equal the target-side row hash
of what the Python transform produces for the same rows; a plan that disagrees is not used.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dualwrite.capture._ddl import TableShape, qualified, row_image
from dualwrite.config import TableConfig
from dualwrite.envelope import EnvelopeError
from dualwrite.snapshot import decode_image
from dualwrite.transform import TargetSpec, TransformError, Transforms
from reconcile._canonical import base_type

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

INTEGERS = frozenset({"smallint", "integer", "bigint"})
FLOATS = frozenset({"real", "double precision"})
NUMBERS = INTEGERS | FLOATS | {"numeric"}
TEXTS = frozenset({"text", "character varying"})
JSONS = frozenset({"json", "jsonb"})
SCALARS = frozenset(
    {
        "boolean",
        "uuid",
        "date",
        "timestamp with time zone",
        "timestamp without time zone",
        "bytea",
    }
)
ARRAY_ELEMENTS = SCALARS | NUMBERS | TEXTS | {"character"}

Items = tuple[sql.Composable, ...]  # what one column contributes to ROW(...)


SEED = 0x2545F4914F6CDD1D
"""The hash seed. Never 0: some types hash a value to the seed itself (a float's zero), and
``hash_record_extended`` hashes NULL to 0, so seed 0 would make NULL and 0.0 collide."""


def row_hash(columns: Sequence[sql.Composable]) -> sql.Composable:
    """The 64-bit hash (bigint) of a row of items."""
    return sql.SQL("hash_record_extended(ROW({}), {})").format(
        sql.SQL(", ").join(columns), sql.Literal(SEED)
    )


def _number(type_name: str, x: sql.Composable, exact_type: bool) -> sql.Composable:
    base = base_type(type_name)
    if exact_type:
        return x
    if base in FLOATS:
        return sql.SQL("{}::text::numeric").format(x)
    return sql.SQL("{}::numeric").format(x)


def _c(x: sql.Composable, cast: str) -> sql.Composable:
    return sql.SQL('{}::{} COLLATE "C"').format(x, sql.SQL(cast))


def items(
    source_type: str, target_type: str, x: sql.Composable, y: sql.Composable
) -> tuple[Items, Items] | None:
    """The items hashing source value ``x`` (of ``source_type``) and target value ``y`` (of
    ``target_type``), or None when SQL cannot compare this pair of types exactly."""
    s, t = base_type(source_type), base_type(target_type)
    if s in NUMBERS and t in NUMBERS:
        # one type family hashes alike by value; floats meeting anything else via numeric
        exact = (s in INTEGERS and t in INTEGERS) or s == t
        return (_number(source_type, x, exact),), (_number(target_type, y, exact),)
    if s.endswith("[]") or t.endswith("[]"):
        if s != t or s[:-2] not in ARRAY_ELEMENTS:
            return None
        return (x, sql.SQL("array_dims({})").format(x)), (y, sql.SQL("array_dims({})").format(y))
    if s == t and s in SCALARS:
        return (x,), (y,)
    if s in TEXTS and t in TEXTS:
        return (_c(x, "text"),), (_c(y, "text"),)
    if t == "character" and (s in TEXTS or s == "character"):
        return (_c(x, "bpchar"),), (_c(y, "bpchar"),)
    if s in JSONS and t in JSONS:
        return (_c(x, "jsonb::text"),), (_c(y, "jsonb::text"),)
    return None


def _ascii_guarded(x: sql.Composable, exact: tuple[Items, Items]) -> tuple[Items, Items]:
    flag = sql.SQL("coalesce(octet_length({x}) <> char_length({x}), false)").format(x=x)
    return (*exact[0], flag), (*exact[1], sql.SQL("false"))


PY_WHITESPACE_ASCII = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
"""What ``str.strip()`` removes among ASCII characters."""

ConverterSql = Callable[[str, str, str, sql.Composable, sql.Composable], tuple[Items, Items] | None]


def _cents(
    argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
) -> tuple[Items, Items] | None:
    if base_type(source) not in INTEGERS:
        return None  # quantize would round fractions half-even; PostgreSQL rounds half away
    # exact: an integer times 0.01 is the same numeric value as divided by 100 (hashed alike
    # whatever the scale), and multiplying costs less than numeric division per row
    return items("numeric", target, sql.SQL("({}::numeric * 0.01)").format(x), y)


def _text_function(fn: str) -> ConverterSql:
    def build(
        argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
    ) -> tuple[Items, Items] | None:
        if base_type(source) not in TEXTS:
            return None
        if fn == "trim":
            applied: sql.Composable = sql.SQL("btrim({}, {})").format(
                x, sql.Literal(PY_WHITESPACE_ASCII)
            )
        elif fn == "nfc":
            applied = x  # ASCII text is already NFC
        else:
            applied = sql.SQL('{}({} COLLATE "C")').format(sql.SQL(fn), x)
        pair = items("text", target, applied, y)
        return None if pair is None else _ascii_guarded(x, pair)

    return build


def _zone(
    argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
) -> tuple[Items, Items] | None:
    if base_type(source) != "timestamp without time zone":
        return None
    zoned = sql.SQL("({} AT TIME ZONE {})").format(x, sql.Literal(argument))
    return items("timestamp with time zone", target, zoned, y)


CONVERTER_SQL: dict[str, ConverterSql] = {
    "cents_to_numeric": _cents,
    "lower": _text_function("lower"),
    "upper": _text_function("upper"),
    "trim": _text_function("trim"),
    "nfc": _text_function("nfc"),
    "zone": _zone,
}
"""SQL equivalents of the declared conversions (:data:`dualwrite.transform.CONVERTERS`),
keyed the same way; each returns None where it is not exact for the column's types."""


@dataclass(frozen=True)
class SqlPlan:
    """How to compute one target table's row hash on both sides."""

    target: str
    spec: TargetSpec
    source: TableShape
    label: str
    key: tuple[str, ...]  # target key columns
    source_key: tuple[str, ...]  # the source column of each target key column, same order
    key_types: tuple[str, ...]  # target key types (format_type)
    columns: tuple[str, ...]  # compared target columns, sorted
    target_types: Mapping[str, str]
    source_items: tuple[Items, ...]
    target_items: tuple[Items, ...]

    def row_hash(self, side: str) -> sql.Composable:
        """The row's 64-bit hash (bigint)."""
        parts = self.source_items if side == "source" else self.target_items
        return row_hash([a for column in parts for a in column])

    def table(self, side: str) -> sql.Composable:
        return qualified(self.source.source if side == "source" else self.spec.table)

    def key_columns(self, side: str) -> tuple[str, ...]:
        return self.source_key if side == "source" else self.key

    def key_type_names(self, side: str) -> tuple[str, ...]:
        if side == "source":
            return tuple(self.source.types[c] for c in self.source_key)
        return self.key_types


def _same(name: str) -> str:
    return name


def _col(name: str) -> sql.Composable:
    return sql.SQL("t.{}").format(sql.Identifier(name))


def plan_for(
    transforms: Transforms,
    table: TableConfig,
    shape: TableShape,
    target: str,
    target_types: Mapping[str, str],
) -> tuple[SqlPlan | None, str]:
    """The SQL plan for ``target`` fed by ``table`` alone, or None and the reason there is none."""
    label = str(table.source)
    st = transforms.sources.get(label)
    spec = transforms.targets.get(target)
    if st is None or spec is None:
        return None, "no transform"
    if spec.owners:
        return None, "merged target (several owners)"
    feeders = [s for s in transforms.sources.values() if target in s.targets]
    if len(feeders) != 1:
        return None, "several sources feed it"
    forms = transforms.sql_forms.get(label, {}).get(target)
    declared = label in transforms.renamers
    if forms is None and not declared:
        return None, "its transform is Python code without a SQL form"
    rename: Callable[[str], str] = transforms.renamers.get(label, _same)
    mapping = dict(st.targets[target])
    key = spec.key or tuple(rename(c) for c in shape.key)
    if not mapping:
        mapping = {rename(c): c for c in shape.key}
    if set(mapping) != set(key) or any(mapping[c] not in shape.types for c in key):
        return None, "key columns not mapped"
    source_key = tuple(mapping[c] for c in key)
    for c, s in zip(key, source_key, strict=True):
        if c not in target_types:
            return None, f"target key column {c} missing"
        same = (
            base_type(shape.types[s]) == base_type(target_types[c])
            or {
                base_type(shape.types[s]),
                base_type(target_types[c]),
            }
            <= INTEGERS
        )  # equal keys must have equal Python values on both sides
        if not same:
            return None, f"key column {c}: {shape.types[s]} -> {target_types[c]}"
    produced: dict[str, tuple[Items, Items] | None] = {}
    if forms is not None:
        for column, expression in forms.items():
            if column in target_types:
                t = target_types[column]
                cast = sql.SQL("({})::{}").format(sql.SQL(expression), sql.SQL(t))
                produced[column] = items(t, t, cast, _col(column))
        for c, s in zip(key, source_key, strict=True):
            produced.setdefault(c, items(shape.types[s], target_types[c], _col(s), _col(c)))
    else:
        dropped = set(table.drop)
        for column, source_type in shape.types.items():
            name = rename(column)
            if column in dropped or name not in target_types:
                continue
            conversion = table.convert.get(column)
            if conversion is None:
                produced[name] = items(source_type, target_types[name], _col(column), _col(name))
                continue
            fn, _, argument = conversion.partition(":")
            converter = CONVERTER_SQL.get(fn)
            produced[name] = (
                None
                if converter is None
                else converter(argument, source_type, target_types[name], _col(column), _col(name))
            )
        for name, constant in table.constants.items():
            if name in target_types:
                if name in key:
                    return None, f"constant overrides key column {name}"
                t = target_types[name]
                literal = sql.SQL("{}::{}").format(sql.Literal(constant), sql.SQL(t))
                produced[name] = items(t, t, literal, _col(name))
    for column, pair in produced.items():
        if pair is None:
            return None, f"column {column}: no exact SQL form for its types or conversion"
    columns = tuple(sorted(produced))
    pairs = [produced[c] for c in columns]
    return (
        SqlPlan(
            target=target,
            spec=spec,
            source=shape,
            label=label,
            key=tuple(key),
            source_key=source_key,
            key_types=tuple(target_types[c] for c in key),
            columns=columns,
            target_types=dict(target_types),
            source_items=tuple(p[0] for p in pairs if p is not None),
            target_items=tuple(p[1] for p in pairs if p is not None),
        ),
        "",
    )


def _parameter(value: Any) -> Any:
    """A Python value as a query parameter the target's column type accepts."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict | list) and not isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


def target_hashes_of(
    dst: psycopg.Connection[Any], plan: SqlPlan, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """The target-side row hashes of Python rows (as if written to the target)."""
    if not rows:
        return []
    columns = plan.columns
    # one row's placeholders, repeated as text (composing them row by row cost more client
    # CPU than the query); the type names are format_type's, read from the catalog
    one = "(" + ", ".join(f"%s::{plan.target_types[c]}" for c in columns) + ")"
    values = sql.SQL(", ".join([one] * len(rows)))
    params: list[Any] = []
    for row in rows:
        for c in columns:
            v = row.get(c)
            if isinstance(v, dict | list) and base_type(plan.target_types[c]) in JSONS:
                v = Jsonb(v)
            params.append(_parameter(v))
    query = sql.SQL("SELECT {} FROM (VALUES {}) AS t({})").format(
        plan.row_hash("target"), values, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    hashes = [int(r[0]) for r in dst.execute(query, params).fetchall()]
    dst.commit()
    return hashes


def check_plan(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    plan: SqlPlan,
    transforms: Transforms,
    sample_rows: int = 300,
) -> str:
    """Compare the SQL form of the transform with the Python transform on a sample of source
    rows (the first, and a block sample): "" when the SQL form's row hash equals the
    target-side hash of what Python produces, for every row, else the first disagreement."""
    shape = plan.source
    image = row_image(shape, "t")
    first = sql.SQL("ORDER BY {} LIMIT {}").format(_keys(shape.key), sql.Literal(sample_rows // 2))
    spread = sql.SQL("TABLESAMPLE SYSTEM (1) REPEATABLE (7) LIMIT {}").format(
        sql.Literal(sample_rows // 2)
    )
    for sample in (first, spread):
        rows = src.execute(
            sql.SQL("SELECT {img}::text, {hash} FROM {t} AS t {sample}").format(
                img=image, hash=plan.row_hash("source"), t=plan.table("source"), sample=sample
            )
        ).fetchall()
        src.commit()
        produced: list[dict[str, Any]] = []
        hashes: list[int] = []
        for image_text, row_hash in rows:
            try:
                row = decode_image(image_text, shape.types)
                ops = transforms.apply(plan.label, "read", {c: row[c] for c in shape.key}, row, 0)
            except (EnvelopeError, TransformError) as exc:
                return f"the Python transform fails on a sampled row: {exc}"
            outputs = [op.values for op in ops if str(op.target) == plan.target]
            if not outputs or outputs[0] is None:
                return "the Python transform filters out a sampled row"
            columns = {c for c in outputs[0] if c in plan.target_types}
            if columns != set(plan.columns):
                return f"columns differ: Python {sorted(columns)}, SQL {list(plan.columns)}"
            if any(isinstance(v, str) and not v.isascii() for v in row.values()):
                continue  # may hold the non-ASCII marker: decided in Python at run time
            produced.append(dict(outputs[0]))
            hashes.append(int(row_hash))
        for want, got, values in zip(
            target_hashes_of(dst, plan, produced), hashes, produced, strict=True
        ):
            if want != got:
                return f"the SQL form disagrees with the Python transform on the row {values!r}"
    return ""


def _keys(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(_col(c) for c in columns)
