"""The canonical comparison computed inside PostgreSQL: a row token per row, equal on both
sides exactly when Python's canonical comparison calls the rows equal.

Each compared column contributes a *token* to the row's text, built so that the row text is an
unambiguous (prefix-free) encoding of the column values under the canonical rules of
:mod:`reconcile._canonical`:

- scalars (numbers, boolean, uuid, date, timestamps, bytea) are their text under reconcile's
  pinned session settings (UTC, ISO dates, shortest exact floats, hex bytea) followed by
  ``,``; NULL is the empty text, so ``,`` alone. None of these texts is empty or holds ``,``;
- strings (text, varchar, char, json/jsonb, arrays) are ``<byte length>:<text>``; NULL is
  ``:`` alone (a length never starts with ``:``), so separators or NULL markers inside values
  cannot collide with anything;
- numbers are normalised as Python normalises them: ``trim_scale`` unless both sides have the
  very same declared type (then the text is already canonical), floats' ``-0`` as ``0``,
  mixed number types through ``numeric``; ``char(n)`` without pad; json through ``jsonb``.

The row's checksum is ``hashtextextended`` (64 bits) of the concatenated tokens. Where SQL
would normalise differently from Python only for some values (``numeric[]`` scale inside
arrays, ``-0`` inside float arrays, jsonb's JSON null), the tokens differ for Python-equal
values: that only makes the row a candidate, which Python then clears. The converse never
happens: different canonical values always give different tokens.

A plan (:class:`SqlPlan`) says how to compute the tokens on both sides of one target table:
on the target from its own columns, on the source through the SQL form of the transform:
identity, rename, drop and constants exactly; declared conversions through SQL equivalents
(:data:`CONVERTER_SQL`); or a user-supplied SQL form (``Transforms.sql_form``). Where a SQL
equivalent is exact only for some values (``lower`` on non-ASCII text depends on the server's
locale), the source side emits a marker no target token contains at that position, so such a
row always differs in SQL and is decided in Python. Every plan is checked on a sample of source
rows before use: the SQL form's tokens must equal the target-side tokens of what the Python
transform produces for the same rows; a plan that disagrees is not used.
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
    {"boolean", "uuid", "date", "timestamp with time zone", "timestamp without time zone", "bytea"}
)
UNVERIFIABLE = sql.SQL("'?'")
"""The source side's token where SQL cannot reproduce Python exactly: ``?`` is neither a
digit, ``:`` nor a scalar's first character where a target token starts."""

Token = tuple[sql.Composable, ...]  # arguments of concat()


def _scalar(x: sql.Composable) -> Token:
    return (x, sql.SQL("','"))


def _string(x: sql.Composable) -> Token:
    return (sql.SQL("octet_length({})").format(x), sql.SQL("':'"), x)


def _number(type_name: str, x: sql.Composable, same: bool) -> sql.Composable:
    """A number's canonical text: its own text when both sides share the exact type."""
    base = base_type(type_name)
    if base in INTEGERS:
        return x
    if base == "numeric":
        return x if same and type_name != "numeric" else sql.SQL("trim_scale({})").format(x)
    if same:
        return sql.SQL("CASE WHEN {x} = 0 THEN 0 ELSE {x} END").format(x=x)
    return sql.SQL(
        "CASE WHEN {x}::text IN ('NaN', 'Infinity', '-Infinity') THEN {x}::text "
        "ELSE trim_scale({x}::text::numeric)::text END"
    ).format(x=x)


def tokens(
    source_type: str, target_type: str, x: sql.Composable, y: sql.Composable
) -> tuple[Token, Token] | None:
    """The tokens of source value ``x`` (of ``source_type``) and target value ``y`` (of
    ``target_type``), or None when SQL cannot compare this pair of types exactly."""
    s, t = base_type(source_type), base_type(target_type)
    same = source_type == target_type
    if s in NUMBERS and t in NUMBERS:
        return _scalar(_number(source_type, x, same)), _scalar(_number(target_type, y, same))
    if s.endswith("[]") or t.endswith("[]"):
        if not same:
            return None
        element = s[:-2]
        if element in NUMBERS - INTEGERS:

            def trimmed(v: sql.Composable) -> sql.Composable:
                return sql.SQL(
                    "array_dims({v}) || (SELECT array_agg({e} ORDER BY u.o) "
                    "FROM unnest({v}) WITH ORDINALITY AS u(e, o))::text"
                ).format(v=v, e=_number(element, sql.SQL("u.e"), False))

            return _string(trimmed(x)), _string(trimmed(y))
        if element in SCALARS | NUMBERS | TEXTS | JSONS | {"character"}:
            return _string(sql.SQL("{}::text").format(x)), _string(sql.SQL("{}::text").format(y))
        return None
    if s == t and s in SCALARS:
        return _scalar(x), _scalar(y)
    if s in TEXTS and t in TEXTS:
        return _string(sql.SQL("{}::text").format(x)), _string(sql.SQL("{}::text").format(y))
    if t == "character" and (s in TEXTS or s == "character"):
        return (
            _string(sql.SQL("rtrim({}::text, ' ')").format(x)),
            _string(sql.SQL("{}::text").format(y)),
        )
    if s in JSONS and t in JSONS:
        return (
            _string(sql.SQL("{}::jsonb::text").format(x)),
            _string(sql.SQL("{}::jsonb::text").format(y)),
        )
    return None


def _ascii_guarded(x: sql.Composable, exact: Token) -> Token:
    return (
        sql.SQL(
            "CASE WHEN {x} IS NULL OR octet_length({x}) = char_length({x}) THEN concat({e}) "
            "ELSE {marker} END"
        ).format(x=x, e=sql.SQL(", ").join(exact), marker=UNVERIFIABLE),
    )


PY_WHITESPACE_ASCII = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
"""What ``str.strip()`` removes among ASCII characters."""

ConverterSql = Callable[[str, str, str, sql.Composable, sql.Composable], tuple[Token, Token] | None]


def _cents(
    argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
) -> tuple[Token, Token] | None:
    if base_type(source) not in INTEGERS:
        return None  # quantize would round fractions half-even; PostgreSQL rounds half away
    return tokens("numeric", target, sql.SQL("({}::numeric / 100)").format(x), y)


def _text_function(fn: str) -> ConverterSql:
    def build(
        argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
    ) -> tuple[Token, Token] | None:
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
        pair = tokens("text", target, applied, y)
        return None if pair is None else (_ascii_guarded(x, pair[0]), pair[1])

    return build


def _zone(
    argument: str, source: str, target: str, x: sql.Composable, y: sql.Composable
) -> tuple[Token, Token] | None:
    if base_type(source) != "timestamp without time zone":
        return None
    zoned = sql.SQL("({} AT TIME ZONE {})").format(x, sql.Literal(argument))
    return tokens("timestamp with time zone", target, zoned, y)


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
    """How to compute one target table's row tokens on both sides."""

    target: str
    spec: TargetSpec
    source: TableShape
    label: str
    key: tuple[str, ...]  # target key columns
    source_key: tuple[str, ...]  # the source column of each target key column, same order
    key_types: tuple[str, ...]  # target key types (format_type)
    columns: tuple[str, ...]  # compared target columns, sorted
    target_types: Mapping[str, str]
    source_tokens: tuple[Token, ...]
    target_tokens: tuple[Token, ...]

    def row_text(self, side: str) -> sql.Composable:
        parts = self.source_tokens if side == "source" else self.target_tokens
        return sql.SQL("concat({})").format(sql.SQL(", ").join(a for t in parts for a in t))

    def row_hash(self, side: str) -> sql.Composable:
        """64 bits of hash of the row text, as a bigint."""
        return sql.SQL("hashtextextended({}, 0)").format(self.row_text(side))

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
    produced: dict[str, tuple[Token, Token] | None] = {}
    if forms is not None:
        for column, expression in forms.items():
            if column in target_types:
                t = target_types[column]
                cast = sql.SQL("({})::{}").format(sql.SQL(expression), sql.SQL(t))
                produced[column] = tokens(t, t, cast, _col(column))
        for c, s in zip(key, source_key, strict=True):
            produced.setdefault(c, tokens(shape.types[s], target_types[c], _col(s), _col(c)))
    else:
        dropped = set(table.drop)
        for column, source_type in shape.types.items():
            name = rename(column)
            if column in dropped or name not in target_types:
                continue
            conversion = table.convert.get(column)
            if conversion is None:
                produced[name] = tokens(source_type, target_types[name], _col(column), _col(name))
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
                produced[name] = tokens(t, t, literal, _col(name))
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
            source_tokens=tuple(p[0] for p in pairs if p is not None),
            target_tokens=tuple(p[1] for p in pairs if p is not None),
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


def target_tokens_of(
    dst: psycopg.Connection[Any], plan: SqlPlan, rows: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The target-side row text of Python rows (as if written to the target)."""
    if not rows:
        return []
    columns = plan.columns
    values = sql.SQL(", ").join(
        sql.SQL("({})").format(
            sql.SQL(", ").join(
                sql.SQL("%s::{}").format(sql.SQL(plan.target_types[c])) for c in columns
            )
        )
        for _ in rows
    )
    params: list[Any] = []
    for row in rows:
        for c in columns:
            v = row.get(c)
            if isinstance(v, dict | list) and base_type(plan.target_types[c]) in JSONS:
                from psycopg.types.json import Jsonb

                v = Jsonb(v)
            params.append(_parameter(v))
    query = sql.SQL("SELECT {} FROM (VALUES {}) AS t({})").format(
        plan.row_text("target"), values, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    texts = [str(r[0]) for r in dst.execute(query, params).fetchall()]
    dst.commit()
    return texts


def check_plan(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    plan: SqlPlan,
    transforms: Transforms,
    sample_rows: int = 300,
) -> str:
    """Compare the SQL form of the transform with the Python transform on a sample of source
    rows (the first and a random half): "" when the source-side row text equals the
    target-side text of what Python produces, for every row, else the first disagreement."""
    shape = plan.source
    image = row_image(shape, "t")
    first = sql.SQL("ORDER BY {} LIMIT {}").format(_keys(shape.key), sql.Literal(sample_rows // 2))
    spread = sql.SQL("TABLESAMPLE SYSTEM (1) REPEATABLE (7) LIMIT {}").format(
        sql.Literal(sample_rows // 2)
    )
    for sample in (first, spread):
        rows = src.execute(
            sql.SQL("SELECT {img}::text, {text} FROM {t} AS t {sample}").format(
                img=image, text=plan.row_text("source"), t=plan.table("source"), sample=sample
            )
        ).fetchall()
        src.commit()
        produced: list[dict[str, Any]] = []
        texts: list[str] = []
        for image_text, sql_text in rows:
            try:
                row = decode_image(image_text, shape.types)
                ops = transforms.apply(plan.label, "read", {c: row[c] for c in shape.key}, row, 0)
            except (EnvelopeError, TransformError) as exc:
                return f"the Python transform fails on a sampled row: {exc}"
            values = [op.values for op in ops if str(op.target) == plan.target]
            if not values or values[0] is None:
                return "the Python transform filters out a sampled row"
            columns = {c for c in values[0] if c in plan.target_types}
            if columns != set(plan.columns):
                return f"columns differ: Python {sorted(columns)}, SQL {list(plan.columns)}"
            if any(isinstance(v, str) and not v.isascii() for v in row.values()):
                continue  # may hold the non-ASCII marker: decided in Python at run time

            produced.append(dict(values[0]))
            texts.append(sql_text)
        for want, got in zip(target_tokens_of(dst, plan, produced), texts, strict=True):
            if want != got:
                return f"row text differs: Python transform {want!r}, SQL form {got!r}"
    return ""


def _keys(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(_col(c) for c in columns)
