"""Cutover readiness: the gates a migration must pass before traffic moves to the new store,
each with its evidence and what to do when it fails.

Gates (thresholds from the migration file's ``[thresholds]``):

- ``capture``: capture installed on every source table, triggers enabled, no schema change
  since install.
- ``backfill``: every source table has a finished backfill (all shards of one sharding).
- ``relay_lag``: the capture changelog holds no change older than ``max_lag_s``.
- ``worker_lag``: the worker group has committed on every partition and its end-to-end lag
  is under ``max_lag_s``: the age of the oldest event it has not applied (read from Kafka at
  its committed offsets); nothing pending counts as zero lag, however quiet the source is.
- ``dead_letters``: at most ``max_dead_letters`` (default 0: none) keys are quarantined and
  dead letters unresolved (a re-driven letter stays on the topic as history but is resolved).
- ``reconcile``: the newest reconcile run of this migration is clean and younger than
  ``max_reconcile_age_s``.
- ``reverse_path``: capture is installed on the new tables for the rollback direction and the
  newest round-trip check of the inverse transforms passed.

A gate that cannot be evaluated (a service down, a table missing) fails with the error as its
evidence: an unknown is never reported as ready.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine

from dualwrite import capture
from dualwrite.config import MigrationConfig
from dualwrite.dlq import dead_letters, migration_quarantine
from dualwrite.envelope import EnvelopeError, decode_event
from dualwrite.errors import DualwriteError
from dualwrite.kafka_io import records_at
from dualwrite.lag import PartitionLag, SourceLag, pipeline_status
from dualwrite.state import Check, MigrationState, current_state

__all__ = [
    "GATES",
    "Gate",
    "ReadinessReport",
    "evaluate_readiness",
    "gate_checks",
]

SCHEMA_VERSION: Final = 1


@dataclass(frozen=True)
class Gate:
    name: str
    title: str
    passed: bool
    summary: str  # one line: the figure that decided it
    evidence: Mapping[str, Any] = field(default_factory=dict)
    remedy: str = ""  # what to do when it fails


@dataclass(frozen=True)
class ReadinessReport:
    migration: str
    generated_at: dt.datetime
    state: MigrationState
    gates: tuple[Gate, ...]

    @property
    def ready(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _query(engine: Engine, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())
    finally:
        raw.close()


def _exists(engine: Engine, relation: str) -> bool:
    return bool(_query(engine, "SELECT to_regclass(%s) IS NOT NULL", (relation,))[0][0])


def backfill_gate(config: MigrationConfig, target: Engine) -> Gate:
    remedy = "run `dualwrite backfill MIGRATION` (it resumes where it stopped)"
    rows = (
        _query(
            target,
            "SELECT source_table, shard, rows_done, finished_at FROM dualwrite.backfill_progress",
        )
        if _exists(target, "dualwrite.backfill_progress")
        else []
    )
    tables: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for table in config.tables:
        label = str(table.source)
        shards = [r for r in rows if r[0] == label]
        # complete when every shard k/N of some sharding N has finished
        by_n: dict[int, list[tuple[Any, ...]]] = {}
        for r in shards:
            n = int(str(r[1]).split("/")[1])
            by_n.setdefault(n, []).append(r)
        done = [
            n
            for n, rs in by_n.items()
            if {int(str(r[1]).split("/")[0]) for r in rs if r[3] is not None} == set(range(n))
        ]
        finished = [r[3] for r in shards if r[3] is not None]
        tables[label] = {
            "rows_done": sum(int(r[2]) for r in shards),
            "shards": sorted(str(r[1]) for r in shards),
            "finished_at": max(finished).isoformat() if done and finished else None,
        }
        if not done:
            missing.append(label)
    if missing:
        return Gate(
            "backfill",
            "Backfill complete",
            False,
            f"not finished for {len(missing)} of {len(config.tables)} table(s): {', '.join(missing)}",
            {"tables": tables},
            remedy,
        )
    return Gate(
        "backfill",
        "Backfill complete",
        True,
        f"finished for all {len(config.tables)} table(s), "
        f"{sum(t['rows_done'] for t in tables.values()):,} rows",
        {"tables": tables},
        remedy,
    )


def capture_gate(config: MigrationConfig, source: Engine) -> Gate:
    st = capture.status(source, config)
    tables = {
        t.source: {
            "installed": t.installed,
            "trigger_enabled": t.trigger_enabled,
            "mode": t.mode,
            "schema_drift": list(t.schema_drift),
        }
        for t in st.tables
    }
    # outbox tables have no trigger; the application writes them
    off = [
        t.source
        for t in st.tables
        if not t.installed or (t.mode == "trigger" and not t.trigger_enabled)
    ]
    drifted = [t.source for t in st.tables if t.schema_drift]
    if off:
        summary = f"not installed or disabled on: {', '.join(off)}"
    elif drifted:
        summary = f"the schema changed since install on: {', '.join(drifted)}"
    else:
        summary = f"installed on all {len(st.tables)} table(s) in schema {st.schema}"
    return Gate(
        "capture",
        "Capture installed",
        not off and not drifted,
        summary,
        {"schema": st.schema, "tables": tables},
        "run `dualwrite capture install MIGRATION` (after a schema change: re-install, then "
        "re-check the transform)",
    )


def relay_lag_gate(config: MigrationConfig, source: Engine) -> Gate:
    limit = config.thresholds.max_lag_s
    st = capture.status(source, config)
    age = st.oldest_unrelayed_age_s or 0.0
    return Gate(
        "relay_lag",
        "Relay lag",
        st.installed and age <= limit,
        f"{st.backlog:,} change(s) waiting, oldest {age:.1f}s (limit {limit:g}s)"
        if st.installed
        else "capture is not installed",
        {
            "backlog": st.backlog,
            "oldest_unrelayed_age_s": st.oldest_unrelayed_age_s,
            "last_relayed_at": st.last_relayed_at,
            "max_lag_s": limit,
        },
        "check that `dualwrite relay MIGRATION` is running and reaches Kafka "
        "(its log and `dualwrite capture status`)",
    )


def worker_lag_gate(config: MigrationConfig, target: Engine) -> Gate:
    limit = config.thresholds.max_lag_s
    remedy = "check that `dualwrite worker MIGRATION` processes are running (`dualwrite status`)"
    st = pipeline_status(target, config)
    ours = {str(t.source) for t in config.tables}
    sources = [s for s in st.sources if s.source in ours]
    pending = st.total_lag
    uncommitted = [p.partition for p in st.partitions if p.committed is None and p.end_offset > 0]
    lag_s, measured = 0.0, "nothing pending"
    if pending and not uncommitted:
        lag_s, measured = _oldest_pending_age(config, st.partitions, sources)
    evidence = {
        "pending_events": pending,
        "lag_measured_by": measured,
        "partitions": [
            {"partition": p.partition, "end": p.end_offset, "committed": p.committed}
            for p in st.partitions
        ],
        "end_to_end_lag_s": round(lag_s, 3),
        "max_lag_s": limit,
        "sources": {
            s.source: {
                "version": s.version,
                "source_ts": s.source_ts.isoformat() if s.source_ts else None,
            }
            for s in sources
        },
    }
    if not st.partitions:
        return Gate(
            "worker_lag",
            "Worker lag",
            False,
            f"topic {config.changes_topic} does not exist yet",
            evidence,
            "start the relay and the workers",
        )
    if uncommitted:
        return Gate(
            "worker_lag",
            "Worker lag",
            False,
            f"the worker group has not committed on partition(s) {uncommitted}",
            evidence,
            remedy,
        )
    return Gate(
        "worker_lag",
        "Worker lag",
        lag_s <= limit,
        f"{pending:,} event(s) pending, end-to-end lag {lag_s:.1f}s (limit {limit:g}s)",
        evidence,
        remedy,
    )


def _oldest_pending_age(
    config: MigrationConfig, partitions: Sequence[PartitionLag], sources: Sequence[SourceLag]
) -> tuple[float, str]:
    """The end-to-end lag of the pending events: the age of the oldest change the group has
    not applied, read from the first record after its committed offset on each partition
    that lags (the envelope's capture time). A partition whose record cannot be read falls
    back to the bound from the target: now - the source time of the last change applied of
    each table, which overstates the lag of a table that has been quiet since."""
    lagging = {p.partition: p.committed or 0 for p in partitions if p.lag > 0}
    records = records_at(config.kafka.bootstrap_servers, config.changes_topic, lagging)
    now = dt.datetime.now(dt.UTC)
    ages: list[float] = []
    for record in records.values():
        try:
            captured = decode_event(record.value or b"").ts
        except EnvelopeError:  # a poison record: the time Kafka received it
            captured = dt.datetime.fromtimestamp(record.timestamp_ms / 1000, dt.UTC)
        ages.append(max(0.0, (now - captured).total_seconds()))
    if len(records) == len(lagging):
        return max(ages, default=0.0), "age of the oldest unapplied event per lagging partition"
    bound = max((s.lag_s or 0.0 for s in sources), default=0.0)
    return max([*ages, bound]), "upper bound: age of the last applied change per table"


def dead_letters_gate(config: MigrationConfig, target: Engine) -> Gate:
    limit = config.thresholds.max_dead_letters
    letters = dead_letters(config, idle_timeout_ms=1000)
    keys = migration_quarantine(target, config, letters)  # the target's is shared
    open_keys = {q.msg_key for q in keys}
    unresolved = [d for d in letters if d.key in open_keys]
    evidence = {
        "quarantined_keys": [
            {"key": q.msg_key, "reason": q.reason, "since": q.since.isoformat(), "parked": q.parked}
            for q in keys[:20]
        ],
        "quarantined_total": len(keys),
        "dead_letters_on_topic": len(letters),
        "unresolved_dead_letters": len(unresolved),
        "max_dead_letters": limit,
    }
    passed = max(len(keys), len(unresolved)) <= limit
    return Gate(
        "dead_letters",
        "Dead letters",
        passed,
        f"{len(keys)} quarantined key(s), {len(unresolved)} unresolved dead letter(s) "
        f"({len(letters)} on the topic in all; limit {limit})",
        evidence,
        "inspect with `dualwrite dlq list` / `dlq show KEY`, fix the transform or the data, "
        "then `dualwrite dlq redrive MIGRATION`",
    )


def reconcile_gate(config: MigrationConfig, target: Engine) -> Gate:
    limit = config.thresholds.max_reconcile_age_s
    remedy = "run `dualwrite reconcile MIGRATION` and fix (or repair) what it reports"
    rows = (
        _query(
            target,
            "SELECT finished_at, status, counts FROM dualwrite.reconcile_runs "
            "WHERE migration = %s ORDER BY finished_at DESC LIMIT 1",
            (config.name,),
        )
        if _exists(target, "dualwrite.reconcile_runs")
        else []
    )
    if not rows:
        return Gate(
            "reconcile",
            "Last reconcile clean and fresh",
            False,
            "no reconcile run recorded for this migration",
            {"max_age_s": limit},
            remedy,
        )
    finished, status, counts = rows[0]
    age = (_now() - finished).total_seconds()
    evidence = {
        "finished_at": finished.isoformat(),
        "age_s": round(age, 1),
        "status": status,
        "counts": counts,
        "max_age_s": limit,
    }
    if status != "clean":
        summary = f"the last run ({finished:%Y-%m-%d %H:%M:%S} UTC) found {status}"
    elif age > limit:
        summary = f"the last clean run is {age / 3600:.1f} h old (limit {limit / 3600:g} h)"
    else:
        summary = f"clean, {age / 60:.1f} min ago"
    return Gate(
        "reconcile",
        "Last reconcile clean and fresh",
        status == "clean" and age <= limit,
        summary,
        evidence,
        remedy,
    )


GATES: Final[Mapping[str, Callable[[MigrationConfig, Engine, Engine], Gate]]] = {
    "capture": lambda c, s, t: capture_gate(c, s),
    "backfill": lambda c, s, t: backfill_gate(c, t),
    "relay_lag": lambda c, s, t: relay_lag_gate(c, s),
    "worker_lag": lambda c, s, t: worker_lag_gate(c, t),
    "dead_letters": lambda c, s, t: dead_letters_gate(c, t),
    "reconcile": lambda c, s, t: reconcile_gate(c, t),
    "reverse_path": lambda c, s, t: reverse_path_gate(c, t),
}


def reverse_path_gate(config: MigrationConfig, target: Engine) -> Gate:
    from dualwrite.reverse import last_round_trip, reverse_status

    remedy = (
        "run `dualwrite reverse install MIGRATION` (capture on the new tables) and "
        "`dualwrite reverse check MIGRATION` (round trip of the inverse transforms)"
    )
    st = reverse_status(config, target)
    rt = last_round_trip(config, target=target)
    off = [t.source for t in st.tables if not (t.installed and t.trigger_enabled)]
    evidence: dict[str, Any] = {
        "reverse_capture_schema": st.schema,
        "reverse_capture": {
            t.source: {"installed": t.installed, "trigger_enabled": t.trigger_enabled}
            for t in st.tables
        },
        "round_trip": None
        if rt is None
        else {
            "checked_at": rt.checked_at.isoformat(),
            "rows_checked": rt.rows_checked,
            "failures": rt.failures,
            "ok": rt.ok,
        },
    }
    if off:
        summary = f"reverse capture not installed on: {', '.join(off)}"
    elif rt is None:
        summary = "no round-trip check of the inverse transforms recorded"
    elif rt.detail.get("sample") == 0:
        summary = "the last round-trip check sampled no row (--sample 0): nothing was checked"
    elif not rt.ok:
        summary = (
            f"the last round-trip check ({rt.checked_at:%Y-%m-%d %H:%M:%S} UTC) failed on "
            f"{rt.failures} of {rt.rows_checked} row(s)"
        )
    else:
        summary = (
            f"reverse capture on {len(st.tables)} new table(s); round trip ok on "
            f"{rt.rows_checked:,} row(s) at {rt.checked_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    return Gate(
        "reverse_path",
        "Rollback path ready",
        not off and rt is not None and rt.ok and rt.detail.get("sample") != 0,
        summary,
        evidence,
        remedy,
    )


TITLES: Final[Mapping[str, str]] = {
    "capture": "Capture installed",
    "backfill": "Backfill complete",
    "relay_lag": "Relay lag",
    "worker_lag": "Worker lag",
    "dead_letters": "Dead letters",
    "reconcile": "Last reconcile clean and fresh",
    "reverse_path": "Rollback path ready",
}


_UNKNOWN: Final = "fix what the error names (a service down, a missing table or inverse), then run readiness again"


def _evaluate(name: str, config: MigrationConfig, source: Engine, target: Engine) -> Gate:
    title = TITLES[name]
    try:
        return GATES[name](config, source, target)
    except (DualwriteError, OSError) as exc:
        return Gate(
            name, title, False, f"could not be evaluated: {exc}", {"error": str(exc)}, _UNKNOWN
        )
    except Exception as exc:  # a database error names what is wrong; never report "ready"
        if type(exc).__module__.split(".")[0] in {"sqlalchemy", "psycopg", "kafka"}:
            return Gate(
                name,
                title,
                False,
                f"could not be evaluated: {type(exc).__name__}: {exc}",
                {"error": str(exc)},
                _UNKNOWN,
            )
        raise


def evaluate_readiness(
    config: MigrationConfig,
    source: Engine,
    target: Engine,
    gates: tuple[str, ...] | None = None,
) -> ReadinessReport:
    """Evaluate ``gates`` (default: all) and read the migration's state."""
    names = gates or tuple(GATES)
    unknown = [n for n in names if n not in GATES]
    if unknown:
        raise DualwriteError(f"unknown gate(s) {unknown}; gates are {', '.join(GATES)}")
    return ReadinessReport(
        config.name,
        _now(),
        # the state belongs to the forward migration, kept on its target
        current_state(source, config.reverse_of.name)
        if config.reverse_of
        else current_state(target, config.name),
        tuple(_evaluate(n, config, source, target) for n in names),
    )


# which gates guard entering each state (readiness as a whole guards cut_over)
PRECONDITIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "capturing": ("capture",),
    "backfilling": ("capture",),
    "streaming": ("backfill",),
    "verified": ("backfill", "worker_lag", "dead_letters", "reconcile"),
    "cut_over": tuple(GATES),
    "complete": (),
    "rolled_back": (),  # checked on the reverse direction, see gate_checks
}
# entering rolled_back: the reverse pipeline has delivered everything to the old store
ROLLBACK_PRECONDITIONS: Final = ("relay_lag", "worker_lag", "dead_letters")


def gate_checks(
    config: MigrationConfig, source: Engine, target: Engine, to_state: str
) -> Callable[[], list[Check]]:
    """The precondition checks of entering ``to_state``, for :func:`dualwrite.state.transition`."""

    def run() -> list[Check]:
        if to_state == "rolled_back":
            from dualwrite.reverse import reverse_config

            # the reverse direction reads the new store (forward target) and writes the old
            report = evaluate_readiness(
                reverse_config(config), target, source, ROLLBACK_PRECONDITIONS
            )
            return [Check(f"reverse {g.name}", g.passed, g.summary) for g in report.gates]
        names = PRECONDITIONS.get(to_state, ())
        if not names:
            return []
        report = evaluate_readiness(config, source, target, names)
        return [Check(g.name, g.passed, g.summary) for g in report.gates]

    return run
