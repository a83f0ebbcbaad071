"""Rows in Python: the expected row of a target key (the transform of the source rows), the
target row, and their classification. Used by the streaming comparison, to decide the
candidates the segment checksums found, and by the in-flight re-check.

Lookups are batched (one query per side per ``batch`` keys), so re-checking ten thousand
keys costs a few queries, not thirty thousand.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from dualwrite.capture._ddl import TableShape, qualified, row_image
from dualwrite.config import QualifiedName
from dualwrite.envelope import EnvelopeError
from dualwrite.snapshot import decode_image
from dualwrite.transform import TargetSpec, TransformError, Transforms, key_text
from reconcile._canonical import same_canonical
from reconcile._types import Difference

Expected = dict[str, dict[str, Any]]  # key text -> {column: python value}
Key = tuple[Any, ...]


def add_expected(
    expected: Mapping[str, Expected],
    transforms: Transforms,
    label: str,
    key_cols: tuple[str, ...],
    key_json: str,
    image: str,
    types: dict[str, str],
    merge: bool = True,
) -> Difference | None:
    """Transform one source row into ``expected[target][key]``; ``merge`` starts a merged
    target's row with every owned column NULL (else only this source's columns are set, to be
    merged later). Returns the transform_error difference when decoding or the transform
    fails."""
    try:
        row = decode_image(image, types)
        ops = transforms.apply(label, "read", {c: row[c] for c in key_cols}, row, 0)
    except (EnvelopeError, TransformError) as exc:
        source_key = json.dumps(json.loads(key_json), separators=(",", ":"), ensure_ascii=False)
        return Difference(label, source_key, "transform_error", detail=str(exc))
    for op in ops:
        if op.values is None:
            continue  # filtered out of this target
        target = str(op.target)
        if target not in expected:
            continue
        spec = transforms.targets[target]
        expected[target].setdefault(op.key_text, blank(spec) if merge else {}).update(op.values)
    return None


def blank(spec: TargetSpec) -> dict[str, Any]:
    """A merged row starts with every owned column NULL (an absent owner contributes NULLs)."""
    if not spec.owners:
        return {}
    return {c: None for cols in spec.owners.values() for c in cols}


def target_types(conn: psycopg.Connection[Any], table: QualifiedName) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (qualified(table).as_string(conn),),
    ).fetchall()
    conn.commit()
    return {r[0]: r[1] for r in rows}


def compare_values(
    types: Mapping[str, str],
    columns: Iterable[str],
    want: Mapping[str, Any],
    got: Mapping[str, Any],
) -> dict[str, tuple[Any, Any]]:
    """The columns whose canonical forms differ: {column: (expected, actual)}."""
    out: dict[str, tuple[Any, Any]] = {}
    for c in columns:
        w, g = want.get(c), got.get(c)
        if not same_canonical(types.get(c, "text"), w, g):
            out[c] = (w, g)
    return out


def classify(
    target: str,
    key: str,
    want: Mapping[str, Any] | None,
    got: Mapping[str, Any] | None,
    types: Mapping[str, str],
) -> Difference | None:
    if want is None and got is None:
        return None
    if want is None:
        return Difference(target, key, "extra")
    if got is None:
        return Difference(target, key, "missing")
    changed = compare_values(types, [c for c in want if c in types], want, got)
    return Difference(target, key, "mismatch", changed) if changed else None


def _json_key_value(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    if isinstance(v, dt.date | dt.datetime | dt.time):
        return v.isoformat()
    if isinstance(v, Decimal | uuid.UUID):
        return str(v)
    return v


def _key_match(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("({}) = ({})").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
        sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in columns),
    )


def _by_keys(table: QualifiedName, columns: Sequence[str], select: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "SELECT {select} FROM {t} AS t JOIN json_populate_recordset(NULL::{t}, %s::json) AS r "
        "ON {match}"
    ).format(select=select, t=qualified(table), match=_key_match(columns))


def _key_objects(columns: Sequence[str], keys: Iterable[Key]) -> str:
    return json.dumps(
        [{c: _json_key_value(v) for c, v in zip(columns, k, strict=True)} for k in keys],
        default=str,
    )


def source_mapping(
    transforms: Transforms, label: str, target: str, shape: TableShape
) -> dict[str, str] | None:
    """{target key column: source key column}, or None when ``label`` does not feed ``target``."""
    st = transforms.sources.get(label)
    if st is None or target not in st.targets:
        return None
    mapping = dict(st.targets[target])
    if not mapping and label in transforms.renamers:
        rename = transforms.renamers[label]
        mapping = {rename(c): c for c in shape.key}
    return mapping


def evaluate(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    target: str,
    key_columns: tuple[str, ...],
    keys: Sequence[Key],
    types: Mapping[str, str],
    batch: int = 2000,
) -> list[Difference]:
    """Recompute both sides for target ``keys`` (tuples in ``key_columns`` order); return the
    differences that hold now (missing, extra, mismatch, or transform_error of a source row)."""
    out: list[Difference] = []
    spec_table = transforms.targets[target].table
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        expected: dict[str, Expected] = {target: {}}
        for label, shape in shapes.items():
            mapping = source_mapping(transforms, label, target, shape)
            if mapping is None or set(mapping) != set(key_columns):
                continue
            if set(mapping.values()) != set(shape.key):
                continue
            source_cols = [mapping[c] for c in key_columns]
            key_json = sql.SQL("json_build_object({})::text").format(
                sql.SQL(", ").join(
                    sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c)) for c in shape.key
                )
            )
            select = sql.SQL("{}, {}::text").format(key_json, row_image(shape, "t"))
            rows = src.execute(
                _by_keys(shape.source, source_cols, select), (_key_objects(source_cols, chunk),)
            ).fetchall()
            src.commit()
            for kj, image in rows:
                error = add_expected(expected, transforms, label, shape.key, kj, image, shape.types)
                if error is not None:
                    out.append(error)
        with dst.cursor() as cur:
            cur.execute(
                _by_keys(spec_table, key_columns, sql.SQL("t.*")),
                (_key_objects(key_columns, chunk),),
            )
            names = [d.name for d in cur.description or []]
            found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        dst.commit()
        got = {key_text(tuple(r[c] for c in key_columns)): r for r in found}
        for k in chunk:
            text = key_text(k)
            d = classify(target, text, expected[target].get(text), got.get(text), types)
            if d is not None:
                out.append(d)
    return out


def group_by_target(diffs: Iterable[Difference]) -> dict[str, list[Difference]]:
    grouped: dict[str, list[Difference]] = defaultdict(list)
    for d in diffs:
        grouped[d.target].append(d)
    return grouped
