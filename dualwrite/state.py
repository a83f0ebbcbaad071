"""The migration's state, persisted in the target's ``dualwrite`` schema, and its guarded
transitions.

::

    (new) -> capturing -> backfilling -> streaming -> verified -> cut_over -> complete
                                             ^            |          |
                                             +------------+          +--> rolled_back

Every transition is an explicit call naming the state it leaves and the one it enters. It
runs the caller's precondition checks first and refuses (``TransitionRefused``, with the
failed checks as evidence) unless they all pass or ``force`` is given; a forced transition
is recorded as forced, with the failed checks and the reason. The change itself is a
compare-and-set under a row lock, so two operators racing to move the same migration cannot
both win: the second sees the state the first left and is refused.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine

from dualwrite.errors import DualwriteError

__all__ = [
    "STATES",
    "TRANSITIONS",
    "Check",
    "MigrationState",
    "StateError",
    "Transition",
    "TransitionRefused",
    "current_state",
    "history",
    "transition",
]

STATES: Final = (
    "capturing",
    "backfilling",
    "streaming",
    "verified",
    "cut_over",
    "complete",
    "rolled_back",
)
NEW: Final = "new"  # no state recorded yet

# state -> the states it may move to
TRANSITIONS: Final[Mapping[str, tuple[str, ...]]] = {
    NEW: ("capturing",),
    "capturing": ("backfilling",),
    "backfilling": ("streaming",),
    "streaming": ("verified",),
    "verified": ("cut_over", "streaming"),
    "cut_over": ("complete", "rolled_back"),
    "complete": (),
    "rolled_back": (),
}

DDL = """
CREATE SCHEMA IF NOT EXISTS dualwrite;
CREATE TABLE IF NOT EXISTS dualwrite.migration_state (
    migration  text PRIMARY KEY,
    state      text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS dualwrite.migration_transitions (
    id          bigserial PRIMARY KEY,
    migration   text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    forced      boolean NOT NULL,
    reason      text,
    actor       text NOT NULL,
    checks      jsonb NOT NULL
);
"""


class StateError(DualwriteError):
    """A state or transition that does not exist."""


@dataclass(frozen=True)
class Check:
    """One precondition: its name, whether it holds, and the evidence either way."""

    name: str
    passed: bool
    detail: str


class TransitionRefused(DualwriteError):
    """A precondition failed (or the state moved under us); nothing was changed."""

    def __init__(self, message: str, failed: Sequence[Check] = ()) -> None:
        super().__init__(message)
        self.failed = tuple(failed)


@dataclass(frozen=True)
class MigrationState:
    migration: str
    state: str
    since: dt.datetime | None  # None while the state is "new"


@dataclass(frozen=True)
class Transition:
    migration: str
    from_state: str
    to_state: str
    at: dt.datetime
    forced: bool
    reason: str | None
    actor: str
    checks: tuple[Check, ...] = field(default_factory=tuple)


def _connection(engine: Engine) -> Any:
    raw: Any = engine.raw_connection()
    with raw.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('dualwrite.bookkeeping'))")
        cur.execute(DDL)
    raw.commit()
    return raw


def current_state(engine: Engine, migration: str) -> MigrationState:
    """The recorded state (``new`` when nothing was recorded yet)."""
    raw = _connection(engine)
    try:
        with raw.cursor() as cur:
            cur.execute(
                "SELECT state, since FROM dualwrite.migration_state WHERE migration = %s",
                (migration,),
            )
            row = cur.fetchone()
    finally:
        raw.close()
    if row is None:
        return MigrationState(migration, NEW, None)
    return MigrationState(migration, row[0], row[1])


def history(engine: Engine, migration: str) -> list[Transition]:
    """Every recorded transition, oldest first."""
    raw = _connection(engine)
    try:
        with raw.cursor() as cur:
            cur.execute(
                "SELECT from_state, to_state, at, forced, reason, actor, checks "
                "FROM dualwrite.migration_transitions WHERE migration = %s ORDER BY id",
                (migration,),
            )
            rows = cur.fetchall()
    finally:
        raw.close()
    return [
        Transition(
            migration,
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            tuple(Check(c["name"], c["passed"], c["detail"]) for c in r[6]),
        )
        for r in rows
    ]


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def transition(
    engine: Engine,
    migration: str,
    to_state: str,
    *,
    checks: Callable[[], Sequence[Check]] = lambda: (),
    force: bool = False,
    reason: str | None = None,
) -> Transition:
    """Move ``migration`` to ``to_state`` if the graph allows it and every check passes.

    ``checks`` is evaluated once, before the state row is locked (checks may be slow: they
    read Kafka and both databases). With ``force``, failed checks do not refuse the move but
    are recorded with it; a move the graph does not allow is refused even with ``force``.
    """
    if to_state not in STATES:
        raise StateError(f"unknown state {to_state!r}; states are {', '.join(STATES)}")
    before = current_state(engine, migration).state
    if to_state not in TRANSITIONS[before]:
        allowed = ", ".join(TRANSITIONS[before]) or "none (final state)"
        raise TransitionRefused(
            f"{migration}: cannot go from {before} to {to_state}; from {before} the next "
            f"states are: {allowed}"
        )
    evaluated = tuple(checks())
    failed = [c for c in evaluated if not c.passed]
    if failed and not force:
        raise TransitionRefused(
            f"{migration}: {before} -> {to_state} refused, "
            f"{len(failed)} precondition(s) failed: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed)
            + " (fix them, or pass --force with --reason to override; it is recorded)",
            failed,
        )
    actor = _actor()
    raw = _connection(engine)
    try:
        with raw.cursor() as cur:
            cur.execute(
                "INSERT INTO dualwrite.migration_state (migration, state, since) "
                "VALUES (%s, %s, now()) ON CONFLICT (migration) DO NOTHING",
                (migration, NEW),
            )
            cur.execute(
                "SELECT state FROM dualwrite.migration_state WHERE migration = %s FOR UPDATE",
                (migration,),
            )
            row = cur.fetchone()
            now_state = row[0] if row else NEW
            if now_state != before:
                raw.rollback()
                raise TransitionRefused(
                    f"{migration}: the state changed to {now_state} while checking "
                    f"{before} -> {to_state}; run the command again"
                )
            cur.execute(
                "UPDATE dualwrite.migration_state SET state = %s, since = now() "
                "WHERE migration = %s RETURNING since",
                (to_state, migration),
            )
            at_row = cur.fetchone()
            cur.execute(
                "INSERT INTO dualwrite.migration_transitions "
                "(migration, from_state, to_state, at, forced, reason, actor, checks) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                (
                    migration,
                    before,
                    to_state,
                    at_row[0],
                    force,
                    reason,
                    actor,
                    json.dumps(
                        [
                            {"name": c.name, "passed": c.passed, "detail": c.detail}
                            for c in evaluated
                        ]
                    ),
                ),
            )
        raw.commit()
    finally:
        raw.close()
    return Transition(migration, before, to_state, at_row[0], force, reason, actor, evaluated)
