"""Reverse reconcile: old rows the forward transform filters out were never migrated.

In the rollback direction the target is the old schema. Rows there that the forward
transform sends to no new table (the shop's QA orders) have no new row to come back from, so
the plain diff would call them extra; they are not drift, and are left out of the result.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from dualwrite.capture._ddl import qualified, row_image
from dualwrite.config import MigrationConfig, TableConfig
from dualwrite.envelope import EnvelopeError
from dualwrite.snapshot import decode_image, source_shape
from dualwrite.transform import TransformError, Transforms, key_text, load_transforms
from reconcile._compare import Difference

log = logging.getLogger(__name__)

_CHUNK = 1000


def drop_unmigrated(
    old: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    differences: list[Difference],
) -> list[Difference]:
    """``differences`` without the extra rows the forward transform filters out.

    ``config`` is the reversed migration (``old`` connects to its target, the old database),
    ``transforms`` its registry. A row the forward transform fails on stays extra.
    """
    forward_config = config.reverse_of
    extras: dict[str, list[Difference]] = defaultdict(list)
    for d in differences:
        if d.category == "extra":
            extras[d.target].append(d)
    if forward_config is None or not extras:
        return differences
    forward = load_transforms(forward_config)
    tables = {str(t.source): t for t in forward_config.tables}
    unmigrated: set[tuple[str, str]] = set()
    for label, found in extras.items():
        table = tables.get(label)
        if table is None or label not in forward.sources:
            continue
        key_cols = transforms.targets[label].key
        for start in range(0, len(found), _CHUNK):
            keys = [
                dict(zip(key_cols, json.loads(d.key), strict=True))
                for d in found[start : start + _CHUNK]
            ]
            for shown, row in _rows(old, table, keys, key_cols):
                try:
                    ops = forward.apply(label, "read", {c: row[c] for c in key_cols}, row, 0)
                except TransformError:
                    continue
                if all(op.values is None for op in ops):
                    unmigrated.add((label, shown))
    if unmigrated:
        log.info(
            "%d old row(s) are filtered out by the forward transform: not extra", len(unmigrated)
        )
    return [d for d in differences if d.category != "extra" or (d.target, d.key) not in unmigrated]


def _rows(
    old: psycopg.Connection[Any],
    table: TableConfig,
    keys: list[dict[str, Any]],
    key_cols: tuple[str, ...],
) -> list[tuple[str, dict[str, Any]]]:
    """The rows of ``keys``, as ``(key text as reconcile spells it, typed row)``."""
    shape = source_shape(old, table)
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_cols)
    r_keys = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in key_cols)
    query = sql.SQL(
        "SELECT {img}::text FROM {t} AS t WHERE ({tk}) IN "
        "(SELECT {rk} FROM json_populate_recordset(NULL::{t}, %s::json) AS r)"
    ).format(img=row_image(shape, "t"), t=qualified(shape.source), tk=t_keys, rk=r_keys)
    found = old.execute(query, (json.dumps(keys, default=str),)).fetchall()
    old.commit()
    out: list[tuple[str, dict[str, Any]]] = []
    for (image,) in found:
        try:
            row = decode_image(image, shape.types)
        except EnvelopeError:
            continue
        out.append((key_text(tuple(row[c] for c in key_cols)), row))
    return out
