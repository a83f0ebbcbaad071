"""The canonical encoding computed inside PostgreSQL, byte for byte what Python computes.

For a column of target type ``T`` holding a value ``v``, :func:`value_sql` builds a SQL
expression whose text is exactly ``json.dumps(canonical(T, v))`` as :func:`encode_row`
writes it; a row's text is ``'[' || c1 || ',' || c2 ... || ']'`` over the compared columns in
name order, so the SQL row text *equals* ``encode_row`` of the Python canonical values (golden
tests check this value by value against a real server). Hence two rows have equal SQL text
exactly when Python would find them equal, and a checksum of the text can stand in for
fetching the rows.

A plan (:class:`SqlPlan`) says how to compute that text on both sides of one target table:
on the target from its own columns, on the source from the source columns through the SQL
form of the transform: identity, rename, drop and constants exactly; declared conversions
through SQL equivalents (:data:`CONVERTER_SQL`); or a user-supplied SQL form
(``Transforms.sql_form``). Where a SQL equivalent is exact only for some values (``lower`` on
non-ASCII text depends on the server's locale), the source side emits a marker no target value
can produce, so such a row always differs in SQL and is decided by the Python comparison.
Every plan is checked against the Python transform and the Python canonical form on a sample
of rows before use; a plan that disagrees is not used (the table takes the streaming path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dualwrite.capture._ddl import TableShape, qualified, row_image
from dualwrite.config import TableConfig
from dualwrite.envelope import EnvelopeError
from dualwrite.snapshot import decode_image
from dualwrite.transform import TargetSpec, TransformError, Transforms
from reconcile._canonical import base_type, canonical, encode_row

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

INTEGERS = frozenset({"smallint", "integer", "bigint"})
NUMBERS = INTEGERS | {"numeric", "real", "double precision"}
TEXTS = frozenset({"text", "character varying"})
JSONS = frozenset({"json", "jsonb"})
UNVERIFIABLE = sql.SQL("""'{"sql":"unverifiable"}'""")
"""Emitted by the source side only where SQL cannot reproduce Python exactly: never equal to a
target value's text (a target value is never this object), so the row goes to Python."""

_TS_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US'


def _q(e: sql.Composable) -> sql.Composable:
    return sql.SQL("""'"' || {} || '"'""").format(e)


def _scalar(source: str, target: str, x: sql.Composable) -> sql.Composable | None:
    """JSON text of canonical(target, x) for non-NULL x of type source, or None."""
    if source in NUMBERS and target in NUMBERS:
        if source in INTEGERS:
            return _q(sql.SQL("{}::text").format(x))
        return _q(
            sql.SQL(
                "CASE WHEN {x}::text IN ('NaN', 'Infinity', '-Infinity') THEN {x}::text "
                "ELSE trim_scale({x}::text::numeric)::text END"
            ).format(x=x)
        )
    if source == target == "boolean":
        return sql.SQL("CASE WHEN {} THEN 'true' ELSE 'false' END").format(x)
    if source in TEXTS and target in TEXTS:
        return sql.SQL("to_json({}::text)::text").format(x)
    if target == "character" and (source in TEXTS or source == "character"):
        return sql.SQL("to_json(rtrim({}::text, ' '))::text").format(x)
    if source == target == "uuid":
        return _q(sql.SQL("{}::text").format(x))
    if source == target == "bytea":
        return _q(sql.SQL("encode({}, 'hex')").format(x))
    if source == target == "date":
        return sql.SQL(
            """CASE WHEN isfinite({x}) THEN '"' || {x}::text || '"' """
            """ELSE '{{"text":"' || {x}::text || '"}}' END"""
        ).format(x=x)
    if source == target and target in ("timestamp with time zone", "timestamp without time zone"):
        zoned = (
            sql.SQL("({} AT TIME ZONE 'UTC')").format(x)
            if target == "timestamp with time zone"
            else x
        )
        suffix = '"+00:00"' if target == "timestamp with time zone" else ""
        return sql.SQL(
            """CASE WHEN isfinite({x}) THEN '"' || to_char({z}, {f}) || '"' """
            """ELSE '{{"text":"' || {x}::text || '"}}' END"""
        ).format(x=x, z=zoned, f=sql.Literal(_TS_FORMAT + suffix))
    if source in JSONS and target in JSONS:
        return sql.SQL("to_json({}::jsonb::text)::text").format(x)
    return None


def value_sql(source_type: str, target_type: str, x: sql.Composable) -> sql.Composable | None:
    """JSON text of ``canonical(target_type, v)`` for ``v = x`` of ``source_type`` (NULL ->
    ``null``), or None when SQL cannot reproduce it exactly for this pair of types."""
    s, t = base_type(source_type), base_type(target_type)
    if s.endswith("[]") or t.endswith("[]"):
        if not (s.endswith("[]") and t.endswith("[]")):
            return None
        element = _scalar(s[:-2], t[:-2], sql.SQL("u.e"))
        if element is None:
            return None
        return sql.SQL(
            "CASE WHEN {x} IS NULL THEN 'null' WHEN cardinality({x}) = 0 THEN '[]' "
            "WHEN array_ndims({x}) = 1 THEN '[' || (SELECT string_agg("
            "CASE WHEN u.e IS NULL THEN 'null' ELSE {el} END, ',' ORDER BY u.o) "
            "FROM unnest({x}) WITH ORDINALITY AS u(e, o)) || ']' "
            """ELSE '{{"ndims":' || to_json({x}::text)::text || '}}' END"""
        ).format(x=x, el=element)
    scalar = _scalar(s, t, x)
    if scalar is None:
        return None
    return sql.SQL("CASE WHEN {x} IS NULL THEN 'null' ELSE {v} END").format(x=x, v=scalar)


def _ascii_guarded(x: sql.Composable, exact: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "CASE WHEN {x} IS NULL THEN 'null' WHEN octet_length({x}) = char_length({x}) "
        "THEN {exact} ELSE {marker} END"
    ).format(x=x, exact=exact, marker=UNVERIFIABLE)


PY_WHITESPACE_ASCII = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
"""What ``str.strip()`` removes among ASCII characters."""

ConverterSql = Callable[[str, str, str, sql.Composable], sql.Composable | None]


def _cents(argument: str, source: str, target: str, x: sql.Composable) -> sql.Composable | None:
    if base_type(source) not in INTEGERS:
        return None  # quantize would round fractions half-even; PostgreSQL rounds half away
    return value_sql("numeric", target, sql.SQL("({}::numeric / 100)").format(x))


def _text_function(fn: str) -> ConverterSql:
    def build(argument: str, source: str, target: str, x: sql.Composable) -> sql.Composable | None:
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
        exact = _scalar("text", base_type(target), applied)
        return None if exact is None else _ascii_guarded(x, exact)

    return build


def _zone(argument: str, source: str, target: str, x: sql.Composable) -> sql.Composable | None:
    if base_type(source) != "timestamp without time zone":
        return None
    return value_sql(
        "timestamp with time zone",
        target,
        sql.SQL("({} AT TIME ZONE {})").format(x, sql.Literal(argument)),
    )


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
    """How to compute one target table's canonical row text on both sides."""

    target: str
    spec: TargetSpec
    source: TableShape
    label: str
    key: tuple[str, ...]  # target key columns
    source_key: tuple[str, ...]  # the source column of each target key column, same order
    key_types: tuple[str, ...]  # target key types (format_type)
    columns: tuple[str, ...]  # compared target columns, sorted
    target_types: Mapping[str, str]
    source_values: tuple[sql.Composable, ...]
    target_values: tuple[sql.Composable, ...]

    def row_text(self, side: str) -> sql.Composable:
        values = self.source_values if side == "source" else self.target_values
        return sql.SQL("'[' || {} || ']'").format(sql.SQL(" || ',' || ").join(values))

    def row_hash(self, side: str) -> sql.Composable:
        """64 bits of the md5 of the row text, as a bigint."""
        return sql.SQL("('x' || left(md5({}), 16))::bit(64)::bigint").format(self.row_text(side))

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
            or {base_type(shape.types[s]), base_type(target_types[c])} <= INTEGERS
        )  # equal keys must have equal Python values on both sides
        if not same or value_sql(shape.types[s], target_types[c], sql.SQL("x")) is None:
            return (
                None,
                f"key column {c}: no exact SQL form for {shape.types[s]} -> {target_types[c]}",
            )
    produced: dict[str, sql.Composable] = {}
    if forms is not None:
        for column, expression in forms.items():
            if column in target_types:
                cast = sql.SQL("({})::{}").format(
                    sql.SQL(expression), sql.SQL(target_types[column])
                )
                built = value_sql(target_types[column], target_types[column], cast)
                if built is None:
                    return None, f"column {column}: type {target_types[column]} has no SQL form"
                produced[column] = built
        for c, s in zip(key, source_key, strict=True):
            produced.setdefault(c, value_sql(shape.types[s], target_types[c], _col(s)))  # type: ignore[arg-type]
    else:
        dropped = set(table.drop)
        for column, source_type in shape.types.items():
            if column in dropped:
                continue
            name = rename(column)
            if name not in target_types:
                continue
            conversion = table.convert.get(column)
            if conversion is None:
                built = value_sql(source_type, target_types[name], _col(column))
            else:
                fn, _, argument = conversion.partition(":")
                converter = CONVERTER_SQL.get(fn)
                built = (
                    None
                    if converter is None
                    else converter(argument, source_type, target_types[name], _col(column))
                )
            if built is None:
                return (
                    None,
                    f"column {column}: no exact SQL form ({source_type} -> {target_types[name]}, {conversion or 'copy'})",
                )
            produced[name] = built
        for name, constant in table.constants.items():
            if name in target_types:
                if name in key:
                    return None, f"constant overrides key column {name}"
                produced[name] = sql.Literal(
                    encode_row([canonical(target_types[name], constant)])[1:-1]
                )
    columns = tuple(sorted(produced))
    target_values = []
    for c in columns:
        built = value_sql(target_types[c], target_types[c], _col(c))
        if built is None:
            return None, f"target column {c}: type {target_types[c]} has no SQL form"
        target_values.append(built)
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
            source_values=tuple(produced[c] for c in columns),
            target_values=tuple(target_values),
        ),
        "",
    )


def python_row_text(plan: SqlPlan, values: Mapping[str, Any]) -> str:
    """``encode_row`` of the canonical values of ``plan.columns`` (what the SQL text must equal)."""
    return encode_row([canonical(plan.target_types[c], values.get(c)) for c in plan.columns])


def check_plan(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    plan: SqlPlan,
    transforms: Transforms,
    sample_rows: int = 300,
) -> str:
    """Compare the SQL row text with the Python transform + canonical form on a sample of
    rows of both sides; "" when they agree, else the first disagreement."""
    shape = plan.source
    image = row_image(shape, "t")
    for order in (sql.SQL("ORDER BY {}").format(_keys(shape.key)), sql.SQL("ORDER BY random()")):
        rows = src.execute(
            sql.SQL("SELECT {img}::text, {text} FROM {t} AS t {order} LIMIT {n}").format(
                img=image,
                text=plan.row_text("source"),
                t=plan.table("source"),
                order=order,
                n=sql.Literal(sample_rows // 2),
            )
        ).fetchall()
        src.commit()
        for image_text, sql_text in rows:
            if "unverifiable" in sql_text and '{"sql":"unverifiable"}' in sql_text:
                continue
            try:
                row = decode_image(image_text, shape.types)
                ops = transforms.apply(plan.label, "read", {c: row[c] for c in shape.key}, row, 0)
            except (EnvelopeError, TransformError) as exc:
                return f"the Python transform fails on a sampled row: {exc}"
            values = [op.values for op in ops if str(op.target) == plan.target]
            if not values or values[0] is None:
                return "the Python transform filters out a sampled row"
            produced = {c for c in values[0] if c in plan.target_types}
            if produced != set(plan.columns):
                return f"columns differ: Python {sorted(produced)}, SQL {list(plan.columns)}"
            expected = python_row_text(plan, values[0])
            if expected != sql_text:
                return f"source row text differs: Python {expected!r}, SQL {sql_text!r}"
    with dst.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {cols}, {text} FROM {t} AS t LIMIT {n}").format(
                cols=sql.SQL(", ").join(_col(c) for c in plan.columns),
                text=plan.row_text("target"),
                t=plan.table("target"),
                n=sql.Literal(sample_rows),
            )
        )
        for record in cur.fetchall():
            got = dict(zip(plan.columns, record[:-1], strict=True))
            if python_row_text(plan, got) != record[-1]:
                dst.commit()
                return f"target row text differs: Python {python_row_text(plan, got)!r}, SQL {record[-1]!r}"
    dst.commit()
    return ""


def _keys(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(_col(c) for c in columns)
