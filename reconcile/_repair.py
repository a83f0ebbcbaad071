"""Repair: re-send differing keys from the source through the normal pipeline.

The repair writes synthetic change records (snapshot images ``'R'`` of present rows, delete
images ``'D'`` of absent ones, origin ``'s'``) into the source's changelog, with fresh
sequence numbers from the changelog's own sequence; the relay, the worker, the transforms
and the version guard carry them like live writes. The target is never written. The
ordering argument (row locks, waiting out concurrent writers before trusting an absence) is
in ``docs/reconcile.md``; the steps below follow it one for one.

Not thread-safe: one :func:`repair` call per thread (it opens its own source connection).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import (
    CHANGELOG,
    REGISTRY,
    TableShape,
    in_schema,
    key_object,
    message_key,
    qualified,
    row_image,
    source_label,
)
from dualwrite.config import MigrationConfig
from dualwrite.snapshot import connect
from dualwrite.transform import SourceTransform, Transforms
from reconcile._compare import Difference
from reconcile._errors import RepairError

__all__ = [
    "REPAIRABLE",
    "RepairEntry",
    "RepairProgress",
    "RepairResult",
    "SavedReport",
    "load_report",
    "repair",
]

log = logging.getLogger(__name__)

REPAIRABLE = ("missing", "extra", "mismatch")
"""Categories a repair re-sends; transform errors need a fixed transform, and in-flight or
unverified keys are not drift."""


@dataclass(frozen=True)
class SavedReport:
    """The differences read back from a saved artifact or JSON report; ``migration`` is None
    only for an empty artifact."""

    migration: str | None
    differences: tuple[Difference, ...]
    path: str


@dataclass(frozen=True)
class RepairEntry:
    """One source row to re-send: its table, its key (JSON values), the target keys that
    asked for it, and what was (or, in a dry run, would be) sent: ``snapshot``, ``delete``,
    ``delete+snapshot`` (absent, then written before the batch ended) or ``none`` (deleted
    meanwhile; the writer's own delete record carries it)."""

    source: str
    key: Mapping[str, Any]
    reasons: tuple[str, ...]
    sent: str = ""


@dataclass(frozen=True)
class RepairProgress:
    source: str
    done: int
    total: int


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did. ``complete`` is False when it stopped early (signal, or a
    concurrent transaction outlasted ``lock_wait_s``); ``detail`` then says why."""

    migration: str
    dry_run: bool
    entries: tuple[RepairEntry, ...]
    skipped: Mapping[str, int]  # category -> differences not re-sent
    snapshots: int
    deletes: int
    batches: int
    complete: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "dry_run": self.dry_run,
            "complete": self.complete,
            "detail": self.detail,
            "source_keys": len(self.entries),
            "snapshots": self.snapshots,
            "deletes": self.deletes,
            "batches": self.batches,
            "skipped": dict(self.skipped),
            "entries": [
                {"source": e.source, "key": dict(e.key), "sent": e.sent, "for": list(e.reasons)}
                for e in self.entries
            ],
        }


# --- reading a saved report ------------------------------------------------------------


def load_report(path: Path) -> SavedReport:
    """Read the differences of a JSONL artifact (``--artifact``) or a JSON report (``--json``).

    Raises :class:`RepairError` for an unreadable file, lines without a migration name, a
    mix of migrations, or a JSON report holding only a sample of the drifting keys.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepairError(f"cannot read {path}: {exc}") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None  # JSON lines (or not JSON at all: the artifact reader says which line)
    if isinstance(whole, dict) and "schema_version" in whole:
        return _from_json_report(path, whole)
    return _from_artifact(path, text)


def _from_json_report(path: Path, doc: dict[str, Any]) -> SavedReport:
    if (
        doc.get("schema_version") != 1
        or not isinstance(doc.get("samples"), dict)
        or not isinstance(doc.get("counts"), dict)
    ):
        raise RepairError(f"{path}: not a reconcile report this version reads (schema_version 1)")
    short = [
        f"{c}: {len(doc['samples'].get(c, []))} of {doc['counts'].get(c, 0)}"
        for c in REPAIRABLE
        if doc["counts"].get(c, 0) > len(doc["samples"].get(c, []))
    ]
    if short:
        raise RepairError(
            f"{path} holds only a sample of the differing keys ({'; '.join(short)}); "
            "repair from the full list: `dualwrite reconcile FILE --artifact drift.jsonl`"
        )
    differences = [
        _difference(path, f"samples.{c}[{i}]", item)
        for c, items in doc["samples"].items()
        for i, item in enumerate(items)
    ]
    return SavedReport(str(doc.get("migration", "")), tuple(differences), str(path))


def _from_artifact(path: Path, text: str) -> SavedReport:
    differences: list[Difference] = []
    migrations: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise RepairError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise RepairError(f"{path}:{number}: not a JSON object")
        migration = item.get("migration")
        if not isinstance(migration, str):
            raise RepairError(
                f"{path}:{number}: the line names no migration (an artifact written before "
                "repair existed?); run reconcile again with --artifact"
            )
        migrations.add(migration)
        differences.append(_difference(path, f"line {number}", item))
    if len(migrations) > 1:
        raise RepairError(f"{path} mixes migrations: {', '.join(sorted(migrations))}")
    # an empty artifact (a clean run) names no migration and asks for nothing
    return SavedReport(migrations.pop() if migrations else None, tuple(differences), str(path))


def _difference(path: Path, where: str, item: Any) -> Difference:
    if not isinstance(item, dict) or not all(
        isinstance(item.get(f), str) for f in ("target", "key", "category")
    ):
        raise RepairError(f"{path}: {where}: expected target, key and category strings")
    return Difference(
        item["target"], item["key"], item["category"], {}, str(item.get("detail", ""))
    )


# --- planning ----------------------------------------------------------------------------


@dataclass
class _Plan:
    shapes: dict[str, TableShape]
    entries: dict[tuple[str, str], RepairEntry] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def _plan(
    src: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    differences: Iterable[Difference],
) -> _Plan:
    by_label = {source_label(t.source): t for t in config.tables}
    plan = _Plan(shapes={})
    problems: list[str] = []
    feeders_of: dict[str, list[SourceTransform]] = {}
    for label, table in by_label.items():
        row = _registry_row(src, config.capture.schema, label)
        if row is not None:
            plan.shapes[label] = TableShape(table.source, int(row[0]), tuple(row[1]), dict(row[2]))
    for label, st in list(transforms.sources.items()):
        shape = plan.shapes.get(label)
        if shape is not None and label in transforms.renamers and not all(st.targets.values()):
            # a declared transform learns its key mapping from the first change it sees
            transforms._learn_key(st, dict.fromkeys(shape.key))
    for d in differences:
        if d.category not in REPAIRABLE:
            plan.skipped[d.category] = plan.skipped.get(d.category, 0) + 1
            continue
        feeders = feeders_of.get(d.target)
        if feeders is None:
            feeders = [st for st in transforms.sources.values() if d.target in st.targets]
            feeders_of[d.target] = feeders
        spec = transforms.targets.get(d.target)
        if spec is None or not feeders:
            problems.append(f"{d.target} {d.key}: no such target table in this migration")
            continue
        try:
            values = json.loads(d.key)
        except ValueError:
            values = None
        if not isinstance(values, list) or len(values) != len(spec.key) or not spec.key:
            problems.append(
                f"{d.target} {d.key}: not a key of {d.target} (a JSON array of "
                f"{', '.join(spec.key) or 'its key columns'})"
            )
            continue
        for st in feeders:
            shape = plan.shapes.get(st.source)
            if shape is None:
                problems.append(
                    f"{d.target} {d.key}: capture is not installed for its source {st.source} "
                    "(repair sends through the changelog; run `dualwrite capture install`)"
                )
                continue
            mapping = st.targets[d.target]
            source_key = {mapping[c]: v for c, v in zip(spec.key, values, strict=True)}
            if set(source_key) != set(shape.key):
                problems.append(
                    f"{d.target} {d.key}: its key maps to {st.source} columns "
                    f"({', '.join(source_key)}), not to that table's key ({', '.join(shape.key)})"
                )
                continue
            ident = (st.source, json.dumps(source_key, sort_keys=True, default=str))
            reason = f"{d.target} {d.key} {d.category}"
            entry = plan.entries.get(ident)
            reasons = (reason,) if entry is None else (*entry.reasons, reason)
            plan.entries[ident] = RepairEntry(st.source, source_key, reasons)
    if problems:
        raise RepairError(
            f"repair refused: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} of the "
            "report cannot be mapped to this migration's source rows; nothing was sent",
            problems,
        )
    return plan


def _registry_row(src: psycopg.Connection[Any], schema: str, label: str) -> tuple[Any, ...] | None:
    exists = src.execute("SELECT to_regclass(%s)", (in_schema(schema, REGISTRY).as_string(None),))
    found = exists.fetchone()
    if found is None or found[0] is None:
        src.commit()
        return None
    row = src.execute(
        sql.SQL("SELECT relid, key_columns, types FROM {} WHERE source_table = %s").format(
            in_schema(schema, REGISTRY)
        ),
        (label,),
    ).fetchone()
    src.commit()
    return None if row is None else tuple(row)


# --- sending -----------------------------------------------------------------------------


class _Statements:
    """The SQL of one source table's batch; the input is a JSON array of key objects."""

    def __init__(self, schema: str, shape: TableShape) -> None:
        table = qualified(shape.source)
        self.input = sql.SQL(
            "json_array_elements(%(keys)s::json) WITH ORDINALITY AS e(obj, n) "
            "CROSS JOIN LATERAL json_populate_record(NULL::{t}, e.obj) AS r"
        ).format(t=table)
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in shape.key
        )
        order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in shape.key)
        changelog = in_schema(schema, CHANGELOG)
        label = sql.Literal(source_label(shape.source))
        self.absent = sql.SQL(
            "SELECT e.n FROM {input} WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {m})"
        ).format(input=self.input, t=table, m=match)
        self.insert_deletes = sql.SQL(
            "INSERT INTO {cl} (source_table, op, key, msg_key, row_image, origin) "
            "SELECT {label}, 'D', {key}, {msg_key}, NULL, 's' FROM {input} "
            "WHERE e.n = ANY(%(only)s) ORDER BY e.n"
        ).format(
            cl=changelog,
            label=label,
            key=key_object(shape, "r"),
            msg_key=message_key(shape, "r"),
            input=self.input,
        )
        self.lock_present = sql.SQL(
            "SELECT e.n FROM {t} AS t JOIN ({input}) ON {m} ORDER BY {o} FOR SHARE OF t"
        ).format(t=table, input=self.input, m=match, o=order)
        self.insert_snapshots = sql.SQL(
            "INSERT INTO {cl} (source_table, op, key, msg_key, row_image, origin) "
            "SELECT {label}, 'R', {key}, {msg_key}, {image}, 's' FROM {t} AS t "
            "JOIN ({input}) ON {m} WHERE e.n = ANY(%(only)s) ORDER BY {o}"
        ).format(
            cl=changelog,
            label=label,
            key=key_object(shape, "t"),
            msg_key=message_key(shape, "t"),
            image=row_image(shape, "t"),
            t=table,
            input=self.input,
            m=match,
            o=order,
        )


class _WaitTimedOut(Exception):
    def __init__(self, blockers: list[tuple[str, int | None]]) -> None:
        self.blockers = blockers


def repair(
    source: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    differences: Sequence[Difference],
    *,
    migration: str | None = None,
    batch_keys: int = 500,
    dry_run: bool = False,
    lock_wait_s: float = 30.0,
    progress: Callable[[RepairProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> RepairResult:
    """Re-send the source rows behind ``differences`` through the changelog.

    ``migration`` is the name the differences were recorded under (a saved report's); it
    must be this migration's. Every entry is mapped before anything is sent: any that cannot
    be (another migration, an unknown target table, a malformed key, a source table without
    capture) raises :class:`RepairError` and nothing is written. Then one source transaction
    per ``batch_keys`` keys of one source table; a batch is all or nothing. With ``dry_run``
    it only reads the source and says what each key would get.
    """
    if migration is not None and migration != config.name:
        raise RepairError(
            f"the report is from migration {migration!r}, this file is migration "
            f"{config.name!r}; nothing was sent"
        )
    stop = stop or threading.Event()
    src = connect(source, "dualwrite-repair")
    try:
        plan = _plan(src, config, transforms, differences)
        by_source: dict[str, list[RepairEntry]] = {}
        for entry in plan.entries.values():
            by_source.setdefault(entry.source, []).append(entry)
        done: list[RepairEntry] = []
        snapshots = deletes = batches = 0
        complete, detail = True, ""
        for label in sorted(by_source):
            entries = by_source[label]
            statements = _Statements(config.capture.schema, plan.shapes[label])
            for start in range(0, len(entries), batch_keys):
                if stop.is_set():
                    complete, detail = False, "stopped before every batch was sent"
                    break
                batch = entries[start : start + batch_keys]
                try:
                    sent = _send_batch(src, statements, batch, dry_run, lock_wait_s, stop)
                except _WaitTimedOut as exc:
                    complete = False
                    detail = (
                        "stopped while waiting; this batch was rolled back"
                        if stop.is_set()
                        else (
                            f"waited {lock_wait_s:g} s for transaction(s) in progress on the source "
                            "(a writer could be inserting a key the repair would delete): "
                            + ", ".join(
                                f"xid {x}" + (f" (backend pid {p})" if p else "")
                                for x, p in exc.blockers[:5]
                            )
                            + "; this batch was rolled back, nothing of it was sent"
                        )
                    )
                    break
                batches += 0 if dry_run else 1
                for entry, what in zip(batch, sent, strict=True):
                    done.append(RepairEntry(entry.source, entry.key, entry.reasons, what))
                    snapshots += "snapshot" in what
                    deletes += "delete" in what
                if progress is not None:
                    progress(
                        RepairProgress(label, min(start + len(batch), len(entries)), len(entries))
                    )
            if not complete:
                break
    finally:
        src.close()
    return RepairResult(
        config.name,
        dry_run,
        tuple(done),
        dict(plan.skipped),
        snapshots,
        deletes,
        batches,
        complete,
        detail,
    )


def _send_batch(
    src: psycopg.Connection[Any],
    statements: _Statements,
    batch: Sequence[RepairEntry],
    dry_run: bool,
    lock_wait_s: float,
    stop: threading.Event,
) -> list[str]:
    """One source transaction (steps 1 to 4 of the argument); returns what each key got."""
    params: dict[str, Any] = {"keys": json.dumps([dict(e.key) for e in batch], default=str)}
    with src.transaction():
        absent = [int(r[0]) for r in src.execute(statements.absent, params)]
        if dry_run:
            missing = set(absent)
            return ["delete" if i + 1 in missing else "snapshot" for i in range(len(batch))]
        if absent:
            src.execute(statements.insert_deletes, {**params, "only": absent})
            _wait_for_writers(src, lock_wait_s, stop)
        present = [int(r[0]) for r in src.execute(statements.lock_present, params)]
        if present:
            src.execute(statements.insert_snapshots, {**params, "only": present})
    gone, live = set(absent), set(present)
    out: list[str] = []
    for i in range(1, len(batch) + 1):
        parts = (["delete"] if i in gone else []) + (["snapshot"] if i in live else [])
        out.append("+".join(parts) or "none")
    return out


def _wait_for_writers(
    src: psycopg.Connection[Any], lock_wait_s: float, stop: threading.Event
) -> None:
    """Step 2: wait until every other transaction that holds a transaction id now has ended.

    The list comes from the transaction-id locks every such transaction holds (``pg_locks``),
    not from ``pg_current_snapshot()``: a snapshot's in-progress list omits transactions at
    or above its ``xmax``, which is only the latest *completed* id plus one.
    """
    holders = (
        "SELECT transactionid::text, pid FROM pg_locks WHERE locktype = 'transactionid' "
        "AND mode = 'ExclusiveLock' AND granted AND pid IS DISTINCT FROM pg_backend_pid()"
    )
    first = src.execute(holders).fetchall()
    xids = [r[0] for r in first]
    if not xids:
        return
    still = holders + " AND transactionid::text = ANY(%s)"
    deadline = time.monotonic() + lock_wait_s
    pause = 0.005
    while True:
        waiting = src.execute(still, (xids,)).fetchall()
        if not waiting:
            return
        if time.monotonic() >= deadline or stop.is_set():
            raise _WaitTimedOut([(r[0], r[1]) for r in waiting])
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
