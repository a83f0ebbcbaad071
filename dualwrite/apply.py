"""Applying target row operations idempotently and monotonically (invariant 3).

One call of :meth:`Applier.apply` is one target transaction:

0. It takes the advisory lock of each target table it writes: shared for the stream,
   exclusive for a backfill chunk (all version 0), which therefore never runs beside a stream
   batch on the same table.
1. Operations are collapsed to the newest version per (target table, target key, source).
2. The version bookkeeping (``dualwrite.applied`` on the target, never columns in the
   user's tables) is upserted first with ``ON CONFLICT ... DO UPDATE ... WHERE
   applied.version < EXCLUDED.version RETURNING``: the rows it returns are exactly the
   operations that are newer than anything applied for their key, decided under the
   bookkeeping row's lock, so concurrent workers (a rebalance) cannot both win.
3. Only the winners touch data: COPY into a staging table, then one ``INSERT ... ON CONFLICT
   DO UPDATE`` (whole rows, or only the owned columns of a merge) or ``DELETE`` (or, for a
   owner of a merged row, clearing its columns, and deleting the row once no owner has a
   live row behind it) per target table.
4. The applied source position per source table is recorded in ``dualwrite.source_positions``.

Backfill chunks (version 0) are written where no bookkeeping row exists for their key (see
:meth:`Applier._apply_absent`). Replays, restarts and re-driven dead letters change nothing. Not thread-safe: one
Applier per worker thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import operator
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from dualwrite.config import QualifiedName
from dualwrite.errors import DualwriteError
from dualwrite.origin import MARK_TOOLKIT_WRITE
from dualwrite.transform import ReadBatch, ReadGroup, TargetOp, TargetSpec, Transforms, key_text

log = logging.getLogger(__name__)

SCHEMA = "dualwrite"

BOOKKEEPING_DDL = """
CREATE SCHEMA IF NOT EXISTS dualwrite;
CREATE TABLE IF NOT EXISTS dualwrite.applied (
    target_table text   NOT NULL,
    target_key   text   NOT NULL,
    source_table text   NOT NULL,
    version      bigint NOT NULL,
    deleted      boolean NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_table, target_key, source_table)
);
CREATE TABLE IF NOT EXISTS dualwrite.source_positions (
    source_table text PRIMARY KEY,
    version      bigint NOT NULL,
    source_ts    timestamptz,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
"""


class ApplyError(DualwriteError):
    """The target rejected a batch (constraint, type, missing table or key index)."""


@dataclass(frozen=True)
class ApplyResult:
    applied: int
    skipped: int  # older or equal versions


@dataclass
class _TargetInfo:
    columns: dict[str, str]  # column -> type name
    key: tuple[str, ...]
    oids: dict[str, int]  # column -> type oid (binary COPY)


def ensure_bookkeeping(engine: Engine) -> None:
    """Create the ``dualwrite`` schema and bookkeeping tables on the target (idempotent)."""
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('dualwrite.bookkeeping'))")
            cur.execute(BOOKKEEPING_DDL)
        raw.commit()
    finally:
        raw.close()


class Applier:
    """Applies batches of :class:`TargetOp` on one target connection."""

    def __init__(
        self, conn: psycopg.Connection[Any], transforms: Transforms, *, backfill_slot: int = 0
    ) -> None:
        """``backfill_slot``: which of a target table's :data:`LOCK_SLOTS` locks this
        applier's snapshot reads take (a backfill shard's number: shards on different slots
        write one table at once)."""
        self.conn = conn
        self.transforms = transforms
        self._slot = backfill_slot % LOCK_SLOTS
        self._targets: dict[QualifiedName, _TargetInfo] = {}
        self._orders: dict[tuple[QualifiedName, ...], list[QualifiedName] | None] = {}
        self._names: dict[QualifiedName, str] = {}  # str() of a name runs two regexes

    def apply(
        self,
        ops: Sequence[TargetOp],
        positions: Mapping[str, tuple[int, dt.datetime | None]] | None = None,
    ) -> ApplyResult:
        """Apply ``ops`` in one transaction (commits it). Raises :class:`ApplyError` (after
        rolling back) when the target rejects the batch; the caller isolates the culprit.
        Operations that are all version 0 (snapshot reads) are written as
        :meth:`apply_reads` writes them."""
        snapshot = bool(ops) and all(op.version == 0 for op in ops)
        with self._transaction():
            self._lock_targets({op.target for op in ops}, exclusive=snapshot)
            if snapshot:
                applied = self._write_reads(self._read_batch(ops))
            else:
                applied = self._apply_general(ops)
            if positions:
                self._record_positions(positions)
        return ApplyResult(applied, len(ops) - applied)

    def apply_reads(self, batch: ReadBatch) -> ApplyResult:
        """Apply a chunk of snapshot reads (:meth:`Transforms.apply_reads`, the backfill) in
        one transaction, insert-if-absent (:meth:`_write_reads`). Raises :class:`ApplyError`
        as :meth:`apply` does."""
        with self._transaction():
            self._lock_targets(batch.targets, exclusive=True)
            applied = self._write_reads(batch)
        return ApplyResult(applied, batch.operations - applied)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One target transaction whose writes the capture triggers skip; the target's
        rejections become :class:`ApplyError` (after the rollback)."""
        try:
            with self.conn.transaction():
                self.conn.execute(MARK_TOOLKIT_WRITE)  # capture triggers skip these rows
                yield
        except (
            psycopg.errors.DataError,
            psycopg.errors.IntegrityError,
            psycopg.errors.ProgrammingError,
            psycopg.errors.UndefinedTable,
            psycopg.errors.InvalidColumnReference,
        ) as exc:
            raise ApplyError(f"{type(exc).__name__}: {str(exc).strip()}") from exc

    # --- internals -----------------------------------------------------------------------

    def _lock_targets(self, targets: Iterable[QualifiedName], *, exclusive: bool) -> None:
        """Serialise the backfill's chunks with the stream's batches, per target table.

        Each target table has :data:`LOCK_SLOTS` advisory locks. A batch of snapshot reads
        (all version 0: a backfill chunk) takes its slot's lock of each of its tables
        exclusively; any other batch (the stream, a re-drive) takes every slot's lock of its
        tables shared. So a chunk and a stream batch never write one table at once, workers
        never wait for each other, and chunks of backfill shards on different slots (disjoint
        key ranges) do not wait for each other either. Taken before the transaction's first
        write, in one statement, in the order of the locks' names (no lock-order deadlock),
        and held to its end: a chunk's statements see every stream batch on its tables either
        committed or not started, which is what lets the backfill write single-owner rows
        without claiming their keys (``docs/backfill.md``)."""
        tables = [self._name(t) for t in targets]
        if not tables:
            return
        slots = (self._slot,) if exclusive else range(LOCK_SLOTS)
        locks = sorted(f"{table}#{slot}" for table in tables for slot in slots)
        self.conn.execute(_LOCK_EXCLUSIVE if exclusive else _LOCK_SHARED, (locks,))

    def _name(self, target: QualifiedName) -> str:
        name = self._names.get(target)
        if name is None:
            name = self._names[target] = str(target)
        return name

    def _apply_general(self, ops: Sequence[TargetOp]) -> int:
        names = self._names
        # id(target) -> its text, valid for this call (``ops`` keeps the objects alive): a
        # QualifiedName is hashed by a Python-level __hash__, an id by the dict itself.
        by_id: dict[int, str] = {}
        newest: dict[tuple[str, str, str], TargetOp] = {}
        for op in ops:
            target = by_id.get(id(op.target))
            if target is None:
                target = names.get(op.target)
                if target is None:
                    target = names[op.target] = str(op.target)
                by_id[id(op.target)] = target
            ident = (target, key_text(op.key), op.source)
            current = newest.get(ident)
            if current is None or op.version > current.version:
                newest[ident] = op
        if not newest:
            return 0
        winners = self._claim(newest)
        spec_of = self.transforms.targets
        by_name: dict[str, list[TargetOp]] = defaultdict(list)
        for ident in sorted(winners):
            by_name[ident[0]].append(newest[ident])
        by_target = {group[0].target: group for group in by_name.values()}
        applied = 0
        targets = sorted(by_target, key=str)
        order = self._parents_first(targets)
        if order is None:  # no foreign keys between them: one table after the other
            for table in targets:
                applied += self._write(table, spec_of[names[table]], by_target[table])
            return applied
        # Foreign keys between target tables (the old schema, in the rollback direction):
        # deletes child tables first, upserts parent tables first.
        for table in reversed(order):
            deletes = [op for op in by_target[table] if op.is_delete]
            if deletes:
                applied += self._write(table, spec_of[names[table]], deletes)
        for table in order:
            upserts = [op for op in by_target[table] if not op.is_delete]
            if upserts:
                applied += self._write(table, spec_of[names[table]], upserts)
        return applied

    def _parents_first(self, targets: list[QualifiedName]) -> list[QualifiedName] | None:
        """``targets`` with every table after the tables its foreign keys reference (name
        order otherwise, and for the tables of a reference cycle); None when no foreign key
        links them. Cached per table set."""
        ident = tuple(targets)
        if ident in self._orders:
            return self._orders[ident]
        names = [
            sql.SQL("{}.{}")
            .format(sql.Identifier(t.schema), sql.Identifier(t.name))
            .as_string(None)
            for t in targets
        ]
        edges = self.conn.execute(
            "WITH t AS (SELECT i, to_regclass(n) AS oid FROM unnest(%s::text[]) WITH ORDINALITY "
            "AS u(n, i)) SELECT child.i, parent.i FROM pg_constraint c "
            "JOIN t AS child ON child.oid = c.conrelid JOIN t AS parent ON parent.oid = c.confrelid "
            "WHERE c.contype = 'f' AND c.conrelid <> c.confrelid",
            (names,),
        ).fetchall()
        if not edges:
            self._orders[ident] = None
            return None
        parents: dict[QualifiedName, set[QualifiedName]] = {t: set() for t in targets}
        for child, parent in edges:
            parents[targets[child - 1]].add(targets[parent - 1])
        order: list[QualifiedName] = []
        while parents:
            ready = [t for t in targets if t in parents and not parents[t] - set(order)]
            step = ready[:1] or [next(t for t in targets if t in parents)]  # a cycle: name order
            order.append(step[0])
            del parents[step[0]]
        self._orders[ident] = order
        return order

    def _claim(self, newest: Mapping[tuple[str, str, str], TargetOp]) -> set[tuple[str, str, str]]:
        # Temp tables are created inside the batch transaction on purpose: if it rolls back,
        # so does their creation, and the next batch creates them again (IF NOT EXISTS).
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _dw_ops (target_table text, target_key text, "
            "source_table text, version bigint, deleted boolean) ON COMMIT DELETE ROWS"
        )
        rows = [
            (target, key, source, op.version, op.values is None)
            for (target, key, source), op in newest.items()
        ]
        with self.conn.cursor() as cur:
            # The INSERT below orders the rows (the lock order); the COPY order does not matter.
            _copy(cur, sql.SQL("COPY _dw_ops FROM STDIN"), _OPS_OIDS, rows)
            cur.execute(
                "INSERT INTO dualwrite.applied AS a (target_table, target_key, source_table, version, deleted) "
                "SELECT target_table, target_key, source_table, version, deleted FROM _dw_ops "
                "ORDER BY target_table, target_key, source_table "
                "ON CONFLICT (target_table, target_key, source_table) DO UPDATE SET "
                "version = EXCLUDED.version, deleted = EXCLUDED.deleted, applied_at = now() "
                "WHERE a.version < EXCLUDED.version "
                "RETURNING target_table, target_key, source_table"
            )
            return set(cur.fetchall())  # tuple rows: (target_table, target_key, source_table)

    def _read_batch(self, ops: Sequence[TargetOp]) -> ReadBatch:
        """Version-0 ``ops`` grouped as :meth:`Transforms.apply_reads` groups a chunk's reads
        (the first operation of a key stays, as in the general path)."""
        groups: dict[tuple[QualifiedName, str, tuple[str, ...] | None], ReadGroup] = {}
        general: list[TargetOp] = []
        specs = self.transforms.targets
        for op in ops:
            values = op.values
            columns = None if values is None else tuple(values)
            group = groups.get((op.target, op.source, columns))
            if group is None:
                spec = specs[self._name(op.target)]
                if columns is None and spec.owners:
                    general.append(op)  # a merged row's delete checks its other owners
                    continue
                missing = [c for c in spec.key if columns is not None and c not in columns]
                if missing:
                    raise ApplyError(f"a write of {op.target} lacks its key column(s) {missing}")
                positions = () if columns is None else tuple(columns.index(c) for c in spec.key)
                group = ReadGroup(op.target, op.source, columns, positions, {})
                groups[op.target, op.source, columns] = group
            row = op.key if values is None else tuple(values.values())
            group.rows.setdefault(key_text(op.key), row)
        return ReadBatch(list(groups.values()), general)

    def _write_reads(self, batch: ReadBatch) -> int:
        """Snapshot reads (version 0: the backfill), written only where no version at all is
        recorded for their (target, key, source): insert-if-absent.

        The transaction holds its target tables' advisory locks exclusively
        (:meth:`_lock_targets`), so no stream batch on these tables is in flight: every stream
        write is either committed, with its bookkeeping row visible to these statements, or
        not started, and will then overwrite (version >= 1) what this one writes. So a
        single-owner row is written, one statement per target table and source, exactly for
        the staged keys that have no bookkeeping row, and records none itself. A merged row's
        owner still claims its key with a version-0 bookkeeping row (``ON CONFLICT DO
        NOTHING ... RETURNING``, in key order): the merge's delete rule reads the other owners'
        rows. Deletes of a merged row take the general path (they must check the other
        owners). ``docs/backfill.md`` has the whole argument.
        """
        name = self._name
        ordered = sorted(
            (g for g in batch.groups if g.rows),
            key=lambda g: (name(g.target), g.source, g.columns or ()),
        )
        parents_first = self._parents_first(sorted({g.target for g in ordered}, key=str))
        if parents_first is not None:  # foreign keys: deletes child first, upserts parent first
            rank = {t: i for i, t in enumerate(parents_first)}
            ordered.sort(
                key=lambda g: (0, -rank[g.target]) if g.columns is None else (1, rank[g.target])
            )
        general = list(batch.general)
        applied = 0
        for group in ordered:
            target = name(group.target)
            spec = self.transforms.targets[target]
            info = self._info(group.target)
            if _KEY_COLUMN in info.columns:
                general.extend(map(group.op_of, group.rows.values()))
            elif group.columns is None:
                applied += self._delete_absent(spec, info, target, group)
            else:
                applied += self._upsert_absent(spec, info, target, group)
        if general:
            applied += self._apply_general(general)
        return applied

    def _upsert_absent(
        self, spec: TargetSpec, info: _TargetInfo, target: str, group: ReadGroup
    ) -> int:
        table, source, columns = group.target, group.source, group.columns
        assert columns is not None
        unknown = [c for c in columns if c not in info.columns]
        if unknown:
            raise ApplyError(f"target table {table} has no column(s) {', '.join(unknown)}")
        values = _adapted(list(group.rows.values()), columns, info.columns)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        if not spec.owners and self._all_new(spec, info, target, group):
            copied = self._copy_new(table, info, columns, values)
            if copied is not None:
                return copied
        rows = [(key, *row) for key, row in zip(group.rows, values, strict=True)]
        stage = self._stage(table, info, list(columns), rows, key_column=True)
        # A merged row's owners need the claim: whether the row lives on after one owner's
        # delete is decided from the other owners' bookkeeping rows. A single-owner row needs
        # none: under the table's exclusive lock (``_lock_targets``) a key without any
        # bookkeeping row was not written by the stream, committed or in flight.
        if spec.owners:
            admitted = sql.SQL(
                "WITH claimed AS ({claim}) "
                "INSERT INTO {t} ({cols}) SELECT {s_cols} FROM {s} AS s "
                "JOIN claimed AS c ON c.target_key = s.{k} "
            ).format(
                claim=_claim_absent(stage, deleted=False),
                t=_table(table),
                cols=cols,
                s_cols=_prefixed("s", columns),
                s=stage,
                k=sql.Identifier(_KEY_COLUMN),
            )
        else:
            admitted = sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT {s_cols} FROM {s} AS s WHERE {unrecorded} "
            ).format(
                t=_table(table),
                cols=cols,
                s_cols=_prefixed("s", columns),
                s=stage,
                unrecorded=_UNRECORDED,
            )
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    '{admitted}ORDER BY s.{k} COLLATE "C" ON CONFLICT ({conflict}) {action}'
                ).format(
                    admitted=admitted,
                    k=sql.Identifier(_KEY_COLUMN),
                    conflict=sql.SQL(", ").join(sql.Identifier(c) for c in spec.key),
                    action=_upsert_action(columns, spec.key),
                ),
                (target, source),
            )
            return max(cur.rowcount, 0)

    def _delete_absent(
        self, spec: TargetSpec, info: _TargetInfo, target: str, group: ReadGroup
    ) -> int:
        table, source = group.target, group.source
        if self._all_new(spec, info, target, group):
            return 0  # no row to delete
        stage = self._stage(
            table,
            info,
            list(spec.key),
            [(key, *target_key) for key, target_key in group.rows.items()],
            key_column=True,
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in spec.key
        )
        # Only single-owner rows come here (a merged row's deletes take the general path),
        # so no claim is needed: see _upsert_absent.
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "DELETE FROM {t} AS t USING {s} AS s WHERE {match} AND {unrecorded}"
                ).format(t=_table(table), s=stage, match=match, unrecorded=_UNRECORDED),
                (target, source),
            )
            return max(cur.rowcount, 0)

    def _all_new(self, spec: TargetSpec, info: _TargetInfo, target: str, group: ReadGroup) -> bool:
        """Whether none of a single-owner chunk's keys has a row in its table or a bookkeeping
        row (a first backfill of the table): then its rows can be copied straight into the
        table, and its deletes have nothing to do. Asked for one-column keys of
        :data:`_ARRAY_KEY_TYPES`; False for the others.

        First by range, where Python orders the keys as PostgreSQL does (``int`` keys of an
        integer column, ``UUID`` keys of a uuid column): no row between the chunk's least and
        greatest key and no bookkeeping row for the table at all, two index probes per chunk.
        Else (or when that finds something) key by key, two index lookups per key: the keys
        travel as one text, their key texts joined by newlines (a JSON text has none: JSON
        escapes control characters), and the server takes each key value out of its key text
        (``'[42]'::json->>0``); psycopg would dump a list parameter element by element in
        Python. Per 1M keys the lookups cost 1.9 s of server CPU, the range 0.02 s
        (bench/RESULTS.md, issue 5 sixth run)."""
        if len(spec.key) != 1 or info.columns.get(spec.key[0]) not in _ARRAY_KEY_TYPES:
            return False
        (column,) = spec.key
        type_name = info.columns[column]
        at = group.key_positions[0] if group.columns is not None else 0
        values = [row[at] for row in group.rows.values()]
        if set(map(type, values)) == {_RANGE_KEY_TYPES.get(type_name)}:
            row = self.conn.execute(
                sql.SQL(
                    "SELECT EXISTS (SELECT 1 FROM {t} WHERE {c} BETWEEN %s AND %s) "
                    "OR EXISTS (SELECT 1 FROM dualwrite.applied WHERE target_table = %s)"
                ).format(t=_table(group.target), c=sql.Identifier(column)),
                (min(values), max(values), target),
            ).fetchone()
            if row is not None and not row[0]:
                return True
        row = self.conn.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {t} WHERE {c} = ANY(ARRAY("
                "SELECT (k::json->>0)::{type} FROM unnest(string_to_array(%(keys)s, E'\\n')) AS k))) "
                "OR EXISTS (SELECT 1 FROM dualwrite.applied WHERE target_table = %(target)s "
                "AND source_table = %(source)s "
                "AND target_key = ANY(string_to_array(%(keys)s, E'\\n')))"
            ).format(t=_table(group.target), c=sql.Identifier(column), type=sql.SQL(type_name)),
            {"keys": "\n".join(group.rows), "target": target, "source": group.source},
        ).fetchone()
        return row is not None and not row[0]

    def _copy_new(
        self,
        table: QualifiedName,
        info: _TargetInfo,
        columns: Sequence[str],
        values: Sequence[Sequence[Any]],
    ) -> int | None:
        """COPY rows whose keys :meth:`_all_new` found absent straight into ``table`` (as
        cheap as a plain load: no staging, no per-row conflict check). Under the table's
        exclusive lock no stream batch can add one of the keys meanwhile; should another
        writer have (a unique violation), the copy is undone and None returned, and the
        caller takes the statement path, which decides row by row."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            _table(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                _copy(cur, statement, [info.oids[c] for c in columns], values)
            return len(values)
        except psycopg.errors.UniqueViolation:
            log.info("%s: a key of the chunk was written meanwhile; writing it row by row", table)
            return None

    def _info(self, target: QualifiedName) -> _TargetInfo:
        info = self._targets.get(target)
        if info is not None:
            return info
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::int FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (
                sql.SQL("{}.{}")
                .format(sql.Identifier(target.schema), sql.Identifier(target.name))
                .as_string(None),
            ),
        ).fetchall()
        if not rows:
            raise ApplyError(f"target table {target} does not exist")
        spec = self.transforms.targets[str(target)]
        info = _TargetInfo({r[0]: r[1] for r in rows}, spec.key, {r[0]: r[2] for r in rows})
        self._targets[target] = info
        return info

    def _write(self, target: QualifiedName, spec: TargetSpec, ops: list[TargetOp]) -> int:
        info = self._info(target)
        table = sql.SQL("{}.{}").format(sql.Identifier(target.schema), sql.Identifier(target.name))
        key_cols = list(spec.key)
        deletes = [op for op in ops if op.is_delete]
        upserts = [op for op in ops if not op.is_delete]
        count = 0
        if deletes:
            by_source: dict[str, list[TargetOp]] = defaultdict(list)
            for op in deletes:
                by_source[op.source].append(op)
            for source, group in by_source.items():
                owned = spec.owned_by(source)
                stage = self._stage(target, info, key_cols, [op.key for op in group])
                match = sql.SQL(" AND ").join(
                    sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key_cols
                )
                if owned is not None:
                    self._delete_owned(table, spec, source, owned, stage, match, group)
                else:
                    self.conn.execute(
                        sql.SQL("DELETE FROM {t} AS t USING {s} AS s WHERE {m}").format(
                            t=table, s=stage, m=match
                        )
                    )
                count += len(group)
        groups: dict[tuple[str, ...], list[TargetOp]] = defaultdict(list)
        for op in upserts:
            assert op.values is not None
            groups[tuple(op.values)].append(op)
        for columns, group in groups.items():
            unknown = [c for c in columns if c not in info.columns]
            if unknown:
                raise ApplyError(f"target table {target} has no column(s) {', '.join(unknown)}")
            rows = _rows(group, columns, info.columns)
            stage = self._stage(target, info, list(columns), rows)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            conflict = sql.SQL(", ").join(sql.Identifier(c) for c in key_cols)
            action = _upsert_action(columns, spec.key)
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({k}) {a}"
                ).format(t=table, cols=cols, s=stage, k=conflict, a=action)
            )
            count += len(group)
        return count

    def _delete_owned(
        self,
        table: sql.Composable,
        spec: TargetSpec,
        source: str,
        owned: tuple[str, ...],
        stage: sql.Composable,
        match: sql.Composable,
        group: list[TargetOp],
    ) -> None:
        """One owner of a merged row is gone: clear its columns; delete the row when no other
        owner still has a live row behind it.

        The target rows are locked first, so the liveness check (a new statement, hence a new
        snapshot) sees every other owner's committed bookkeeping: two owners deleting at once
        are serialised and the second one deletes the row.
        """
        key_order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in spec.key)
        self.conn.execute(
            sql.SQL(
                "SELECT 1 FROM {t} AS t JOIN {s} AS s ON {m} ORDER BY {o} FOR UPDATE OF t"
            ).format(t=table, s=stage, m=match, o=key_order)
        )
        alive = {
            row[0]
            for row in self.conn.execute(
                "SELECT target_key FROM dualwrite.applied WHERE target_table = %s "
                "AND target_key = ANY(%s) AND source_table <> %s AND NOT deleted",
                (str(spec.table), [op.key_text for op in group], source),
            )
        }
        # Rows that go are deleted without clearing their columns first (a NOT NULL owned
        # column, as in an old schema, would refuse the NULL); the rest lose this owner's columns.
        info = self._info(spec.table)
        gone = [op.key for op in group if op.key_text not in alive]
        if gone:
            dead = self._stage(spec.table, info, list(spec.key), gone)
            self.conn.execute(
                sql.SQL("DELETE FROM {t} AS t USING {s} AS s WHERE {m}").format(
                    t=table, s=dead, m=match
                )
            )
        kept = [op.key for op in group if op.key_text in alive]
        if kept:
            live = self._stage(spec.table, info, list(spec.key), kept)
            sets = sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in owned)
            self.conn.execute(
                sql.SQL("UPDATE {t} AS t SET {sets} FROM {s} AS s WHERE {m}").format(
                    t=table, sets=sets, s=live, m=match
                )
            )

    def _stage(
        self,
        target: QualifiedName,
        info: _TargetInfo,
        columns: list[str],
        rows: Sequence[Sequence[Any]],
        *,
        key_column: bool = False,
    ) -> sql.Composable:
        """COPY ``rows`` into a per-session temp table shaped like ``columns`` of the target
        (after a leading text column of key texts with ``key_column``)."""
        name = (
            f"_dw_{'k' if key_column else 's'}_{abs(hash((str(target), tuple(columns)))) % 10**12}"
        )
        stage = sql.Identifier(name)
        shape: list[sql.Composable] = [sql.Identifier(c) for c in columns]
        if key_column:
            shape.insert(0, sql.SQL("NULL::text AS {}").format(sql.Identifier(_KEY_COLUMN)))
        self.conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS "
                "AS SELECT {cols} FROM {t} WITH NO DATA"
            ).format(
                s=stage,
                cols=sql.SQL(", ").join(shape),
                t=sql.SQL("{}.{}").format(
                    sql.Identifier(target.schema), sql.Identifier(target.name)
                ),
            )
        )
        # Emptied at every commit; a DELETE clears what an earlier use in this transaction
        # left (cheap on an empty table, where TRUNCATE would swap the table's file each time).
        self.conn.execute(sql.SQL("DELETE FROM {}").format(stage))
        oids = [info.oids[c] for c in columns]
        if key_column:
            oids.insert(0, _TEXT_OID)
        with self.conn.cursor() as cur:
            _copy(cur, sql.SQL("COPY {} FROM STDIN").format(stage), oids, rows)
        return stage

    def _record_positions(self, positions: Mapping[str, tuple[int, dt.datetime | None]]) -> None:
        items = sorted(positions.items())
        self.conn.execute(
            "INSERT INTO dualwrite.source_positions AS p (source_table, version, source_ts) "
            "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[]) ORDER BY 1 "
            "ON CONFLICT (source_table) DO UPDATE SET version = GREATEST(p.version, EXCLUDED.version), "
            "source_ts = GREATEST(p.source_ts, EXCLUDED.source_ts), applied_at = now()",
            ([k for k, _ in items], [v for _, (v, _t) in items], [t for _, (_v, t) in items]),
        )


_KEY_COLUMN = "_dw_target_key"  # the key text column of the insert-if-absent staging tables


def _table(name: QualifiedName) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(name.schema), sql.Identifier(name.name))


def _upsert_action(columns: Sequence[str], key: Sequence[str]) -> sql.Composable:
    """``DO UPDATE SET`` the non-key ``columns`` (only those: a merge owner's), or
    ``DO NOTHING`` when there are none."""
    non_key = [c for c in columns if c not in key]
    if not non_key:
        return sql.SQL("DO NOTHING")
    return sql.SQL("DO UPDATE SET {}").format(
        sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in non_key
        )
    )


def _claim_absent(stage: sql.Composable, *, deleted: bool) -> sql.Composable:
    """The version-0 bookkeeping insert of a keyed stage (parameters: target, source), in
    key order as :meth:`Applier._claim` locks; returns the claimed key texts."""
    return sql.SQL(
        "INSERT INTO dualwrite.applied AS a (target_table, target_key, source_table, version, deleted) "
        "SELECT %s, s.{k}, %s, 0, {deleted} FROM {s} AS s ORDER BY s.{k} "
        "ON CONFLICT (target_table, target_key, source_table) DO NOTHING "
        "RETURNING a.target_key"
    ).format(k=sql.Identifier(_KEY_COLUMN), deleted=sql.Literal(deleted), s=stage)


# A version-0 operation of a single-owner row is admitted when its key (in the keyed stage
# ``s``) has no bookkeeping row at all (parameters: target, source).
_UNRECORDED = sql.SQL(
    "NOT EXISTS (SELECT 1 FROM dualwrite.applied AS a WHERE a.target_table = %s "
    "AND a.target_key = s.{k} AND a.source_table = %s)"
).format(k=sql.Identifier(_KEY_COLUMN))


def _prefixed(alias: str, columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns
    )


# Key column types (as ``format_type`` names them) whose Python values travel as one array
# parameter for the "are these keys new" lookup of a backfill chunk.
_ARRAY_KEY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "uuid"})
# Of those, the ones whose values of this exact Python type sort in Python as in PostgreSQL.
_RANGE_KEY_TYPES: dict[str, type] = {
    "smallint": int,
    "integer": int,
    "bigint": int,
    "uuid": uuid.UUID,
}

LOCK_SLOTS = 4
"""Advisory locks per target table (``Applier._lock_targets``): backfill shards K and J write
one table at once unless K and J are equal modulo this; a stream batch takes all of them."""

# Per-target-table advisory locks (two-key form; the first key is dualwrite's namespace, the
# second the hash of "schema.table#slot"): exclusive for a backfill chunk (its slot), shared
# for a stream batch (every slot). ``unnest`` feeds the lock calls in the array's (sorted) order.
_LOCK_SPACE = 0x6477_0001  # "dw", 1
_LOCK_EXCLUSIVE = (
    f"SELECT count(pg_advisory_xact_lock({_LOCK_SPACE}, hashtext(t))) FROM unnest(%s::text[]) AS t"
)
_LOCK_SHARED = (
    f"SELECT count(pg_advisory_xact_lock_shared({_LOCK_SPACE}, hashtext(t))) "
    "FROM unnest(%s::text[]) AS t"
)


def _rows(
    ops: Sequence[TargetOp], columns: tuple[str, ...], types: Mapping[str, str]
) -> list[tuple[Any, ...]]:
    """The staging rows of ``ops`` (which all write ``columns``), json values adapted."""
    if not any(types[c] in ("json", "jsonb") for c in columns):
        get = operator.itemgetter(*columns)
        if len(columns) == 1:
            return [(get(op.values),) for op in ops]  # type: ignore[arg-type]
        return [get(op.values) for op in ops]  # type: ignore[arg-type]
    return [
        tuple(_adapt(op.values[c], types[c]) for c in columns)  # type: ignore[index]
        for op in ops
    ]


def _adapted(
    rows: list[tuple[Any, ...]], columns: tuple[str, ...], types: Mapping[str, str]
) -> list[tuple[Any, ...]]:
    """``rows`` of values in ``columns`` order, json values adapted as :func:`_rows` does."""
    if not any(types[c] in ("json", "jsonb") for c in columns):
        return rows
    kinds = [types[c] for c in columns]
    return [tuple(map(_adapt, row, kinds)) for row in rows]


def _adapt(value: Any, type_name: str) -> Any:
    if type_name in ("json", "jsonb") and value is not None and not isinstance(value, str):
        return Jsonb(value) if type_name == "jsonb" else json.dumps(value, default=str)
    return value


# --- COPY: binary where every value has the exact Python type of its column's binary dumper

_TEXT_OID = 25
_OPS_OIDS = (25, 25, 25, 20, 16)  # _dw_ops: text, text, text, bigint, boolean
_NONE = type(None)


def _ints(bits: int) -> Callable[[Sequence[Any]], bool]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(column: Sequence[Any]) -> bool:
        kinds = set(map(type, column))
        if not kinds <= {int, _NONE}:
            return False
        values = [v for v in column if v is not None] if _NONE in kinds else column
        return not values or (low <= min(values) and max(values) <= high)

    return check


def _exactly(*types: type) -> Callable[[Sequence[Any]], bool]:
    allowed = {*types, _NONE}
    return lambda column: set(map(type, column)) <= allowed


_TZINFO = operator.attrgetter("tzinfo")


def _datetimes(*, aware: bool) -> Callable[[Sequence[Any]], bool]:
    def check(column: Sequence[Any]) -> bool:
        kinds = set(map(type, column))
        if not kinds <= {dt.datetime, _NONE}:
            return False
        values = [v for v in column if v is not None] if _NONE in kinds else column
        zones = set(map(_TZINFO, values))
        if zones and all(type(zone) is dt.timezone for zone in zones):  # a fixed offset, never None
            return aware
        if zones <= {None}:
            return not aware or not zones
        offsets = set(map(dt.datetime.utcoffset, values))  # a tzinfo may still say "naive"
        return None not in offsets if aware else offsets <= {None}

    return check


_BINARY_CHECKS: dict[int, Callable[[Sequence[Any]], bool]] = {
    21: _ints(16),  # smallint
    23: _ints(32),  # integer
    20: _ints(64),  # bigint
    16: _exactly(bool),
    25: _exactly(str),  # text
    1043: _exactly(str),  # character varying
    1700: _exactly(Decimal),  # numeric
    701: _exactly(float),  # double precision
    1082: _exactly(dt.date),  # date (a datetime is not one here: exact types)
    1114: _datetimes(aware=False),  # timestamp without time zone
    1184: _datetimes(aware=True),  # timestamp with time zone
    2950: _exactly(uuid.UUID),
    17: _exactly(bytes),  # bytea
}
"""Per type oid: whether a column of values can be sent in binary with the same result as in
text. Only exact Python types psycopg's binary dumper of that oid takes as the text path
would (no ``int`` into numeric, no ``str`` into a timestamp, no naive datetime into
timestamptz, integers within the column's range); anything else sends the batch as text,
where the server parses and casts each value."""


def _binary_ok(oids: Sequence[int], rows: Sequence[Sequence[Any]]) -> bool:
    """True when every column of ``rows`` passes the check of its type oid."""
    return bool(rows) and all(
        (check := _BINARY_CHECKS.get(oid)) is not None and check(column)
        for oid, column in zip(oids, zip(*rows, strict=True), strict=True)
    )


def _copy(
    cur: psycopg.Cursor[Any],
    statement: sql.Composed | sql.SQL,
    oids: Sequence[int],
    rows: Sequence[Sequence[Any]],
) -> None:
    """COPY ``rows`` with ``statement`` (``COPY ... FROM STDIN``): in binary when every column's
    values pass :data:`_BINARY_CHECKS` (measured on order-shaped rows: 2.9 against 5.0 µs of
    client CPU, 5.4 against 8.3 µs of wall time per row), else as text. The same rows reach
    the table either way."""
    binary = _binary_ok(oids, rows)
    if binary:
        statement = sql.Composed([statement, sql.SQL(" (FORMAT BINARY)")])
    with cur.copy(statement) as copy:
        if binary:
            copy.set_types(list(oids))
        for row in rows:
            copy.write_row(row)
