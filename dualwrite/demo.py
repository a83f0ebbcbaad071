"""The demo migration: the shop example moved live, end to end, on the local stack.

One call does what an operator does over weeks, in minutes: start the local services when
needed, create the old schema with data, run a live write workload, install capture, run the
relay, the workers and the backfill at once, wait for the pipeline to catch up, reconcile to
zero drift, write the readiness report, cut over, rehearse the rollback (writes on the new
schema flowing back to the old one through the reverse pipeline, reconciled clean) and stop
what it started. Every step advances the recorded migration state, through the same guarded
transitions an operator uses.

It runs in schemas of its own (``demo_legacy`` in the source database, ``demo_shop`` in the
target), recreated on each run, under a fresh migration name and topic prefix, so runs never
see each other's data. The migration files it used are written to the output folder, so
``dualwrite status OUTPUT/migration.toml`` and friends work on the result afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.backfill import BackfillProgress, run_backfill
from dualwrite.config import MigrationConfig, load_migration
from dualwrite.db import make_engine
from dualwrite.devstack import DevStackSettings, down, up
from dualwrite.errors import DualwriteError
from dualwrite.lag import pipeline_status
from dualwrite.relay import run_relay
from dualwrite.state import Check, transition
from dualwrite.transform import Transforms, load_transforms
from dualwrite.worker import run_worker

__all__ = ["DemoError", "DemoResult", "DemoSettings", "external_services", "run_demo"]

REPO = Path(__file__).resolve().parents[1]
SOURCE_SCHEMA = "demo_legacy"
TARGET_SCHEMA = "demo_shop"


class DemoError(DualwriteError):
    """A demo step failed; the message names the step and the evidence."""


@dataclass(frozen=True)
class DemoSettings:
    customers: int = 25_000  # ~4.9 rows each: ~120k rows in the old schema
    workload_s: float = 20.0  # live writes while backfill and workers run
    writers: int = 2
    workers: int = 2
    output: Path = Path("demo-output")
    catch_up_timeout_s: float = 300.0


@dataclass
class DemoResult:
    migration: str
    source_rows: int = 0
    live_transactions: int = 0
    reconcile_status: str = ""
    ready: bool = False
    reverse_status: str = ""
    final_state: str = ""
    reports: dict[str, Path] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)


Say = Callable[[str], None]


def _migration_toml(name: str, prefix: str, urls: Mapping[str, str], tables: str) -> str:
    src, tgt = SOURCE_SCHEMA, TARGET_SCHEMA
    return f"""# Written by `dualwrite demo`: the shop example in schemas {src} -> {tgt}.
name = "{name}"

[source]
url = "{urls["DUALWRITE_SOURCE_URL"]}"

[target]
url = "{urls["DUALWRITE_TARGET_URL"]}"

[kafka]
bootstrap_servers = ["{urls["DUALWRITE_KAFKA_BOOTSTRAP"]}"]
topic_prefix = "{prefix}"

[capture]
schema = "dualwrite_capture_{name.replace("-", "_")}"

[transform]
module = "examples.shop.transform"

[thresholds]
max_lag_s = 30
max_reconcile_age_s = 3600
max_dead_letters = 0

{tables}"""


class _Services:
    """Relay and workers of one direction, each in its own thread, until stopped."""

    def __init__(self, config: MigrationConfig, transforms: Transforms, workers: int) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.source, self.target = make_engine(config.source), make_engine(config.target)
        jobs: list[Callable[[], Any]] = [
            lambda: run_relay(self.source, config, stop=self.stop),
            *([lambda: run_worker(self.target, config, transforms, stop=self.stop)] * workers),
        ]
        self.threads = [
            threading.Thread(target=self._guard, args=(job,), daemon=True) for job in jobs
        ]
        for t in self.threads:
            t.start()

    def _guard(self, job: Callable[[], Any]) -> None:
        try:
            job()
        except BaseException as exc:  # reported by check(); the demo fails with it
            self.errors.append(exc)
            self.stop.set()

    def check(self) -> None:
        if self.errors:
            raise DemoError(f"a pipeline thread failed: {self.errors[0]!r}")

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        self.source.dispose()
        self.target.dispose()


def wait_caught_up(
    config: MigrationConfig,
    source: Engine,
    target: Engine,
    timeout_s: float,
    say: Say,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Until the changelog is empty and the worker group has committed every event."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        check()
        backlog = capture.status(source, config).backlog
        st = pipeline_status(target, config)
        committed = all(p.committed is not None for p in st.partitions if p.end_offset)
        if backlog == 0 and st.total_lag == 0 and committed and st.partitions:
            return
        line = f"   catching up: {backlog:,} change(s) to relay, {st.total_lag:,} event(s) to apply"
        if line != last:
            say(line)
            last = line
        if time.monotonic() > deadline:
            raise DemoError(f"the pipeline did not catch up in {timeout_s:.0f}s; {line}")
        time.sleep(0.5)


@contextlib.contextmanager
def _step(result: DemoResult, say: Say, title: str) -> Iterator[None]:
    say(f"== {title}")
    t0 = time.monotonic()
    yield
    elapsed = time.monotonic() - t0
    result.steps.append((title, elapsed))
    say(f"   done in {elapsed:.1f}s")


def _advance(target: Engine, config: MigrationConfig, to_state: str, checks: Any = None) -> None:
    transition(target, config.name, to_state, **({"checks": checks} if checks else {}))


def run_demo(settings: DemoSettings, say: Say = print) -> DemoResult:
    """Run the whole demo; raises :class:`DemoError` naming the step that failed."""
    if settings.customers < 1:
        raise DemoError(f"customers must be at least 1, got {settings.customers}")
    if not (REPO / "examples" / "shop" / "transform.py").is_file():
        raise DemoError(
            f"the demo needs the shop example of a dualwrite checkout; {REPO / 'examples'} "
            "is missing (run it from a clone of the repository)"
        )
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    stack = DevStackSettings.from_env()
    urls = external_services(stack)
    if urls:
        say("== services from DUALWRITE_SOURCE_URL, _TARGET_URL, _KAFKA_BOOTSTRAP")
        started: tuple[str, ...] = ()
    else:
        urls = stack.service_env()
        started = tuple(up(stack, lambda m: say(f"   {m}")).started)
    try:
        return _run(settings, urls, say)
    finally:
        if started:
            say(f"== stopping what the demo started: {', '.join(started)}")
            down(stack, progress=lambda m: say(f"   {m}"), only=started)


def external_services(
    stack: DevStackSettings, env: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The services named by ``DUALWRITE_SOURCE_URL``, ``_TARGET_URL`` and
    ``_KAFKA_BOOTSTRAP`` when all three are set and are not the local stack's (docker
    compose, CI services, a stack on other ports); None means: use the local stack."""
    env = os.environ if env is None else env
    local = stack.service_env()
    given = {name: env.get(name, "") for name in local}
    if not all(given.values()) or given == local:
        return None
    return given


def _run(settings: DemoSettings, urls: Mapping[str, str], say: Say) -> DemoResult:
    workload = importlib.import_module("examples.shop.workload")
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    name = f"demo-{run_id}"
    out = settings.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "migration.toml"
    path.write_text(
        _migration_toml(
            name,
            f"dualwrite.demo.{run_id}",
            urls,
            workload.tables_toml(SOURCE_SCHEMA, TARGET_SCHEMA),
        )
    )
    config = load_migration(path, env={})
    transforms = load_transforms(config)
    result = DemoResult(name)
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        with _step(result, say, f"old schema {SOURCE_SCHEMA}: create and seed"):
            for engine, schema in ((source, SOURCE_SCHEMA), (target, TARGET_SCHEMA)):
                _reset(engine, schema)
            workload.install_old_schema(source, SOURCE_SCHEMA)
            workload.install_new_schema(target, TARGET_SCHEMA)
            seeded = workload.seed(source, settings.customers, schema=SOURCE_SCHEMA)
            result.source_rows = seeded.rows
            with source.begin() as conn:  # fresh statistics: the backfill's row estimates
                for table in config.tables:
                    conn.execute(text(f"ANALYZE {table.source}"))
            say(
                f"   {seeded.customers:,} customers, {seeded.profiles:,} profiles, "
                f"{seeded.orders:,} orders: {seeded.rows:,} rows"
            )
        with _step(result, say, "capture: install triggers on the old tables"):
            capture.install(source, config)
            _advance(target, config, "capturing")
        _forward(settings, config, transforms, source, target, workload, result, say)
        with _step(result, say, "reconcile: the transform of the old store against the new"):
            _reconcile(config, transforms, source, target, out, result, say)
            _advance(target, config, "verified", _checks(config, source, target, "verified"))
        with _step(result, say, "rollback path: reverse capture on the new tables, round trip"):
            _prepare_reverse(config, source, target, say)
        with _step(result, say, "readiness: the cutover gates"):
            _readiness(config, source, target, out, result, say)
        with _step(result, say, "cutover: the new store takes the writes"):
            _advance(target, config, "cut_over", _checks(config, source, target, "cut_over"))
            say("   old-schema writers stopped and drained; state cut_over")
        _rehearse_rollback(settings, config, source, target, out, result, say)
        result.final_state = "rolled_back"
    finally:
        source.dispose()
        target.dispose()
    (out / "demo-result.json").write_text(
        json.dumps(
            {
                "migration": result.migration,
                "source_rows": result.source_rows,
                "live_transactions": result.live_transactions,
                "reconcile_status": result.reconcile_status,
                "ready": result.ready,
                "reverse_status": result.reverse_status,
                "final_state": result.final_state,
                "reports": {k: str(v) for k, v in result.reports.items()},
                "steps": [{"step": s, "seconds": round(t, 2)} for s, t in result.steps],
            },
            indent=2,
        )
        + "\n"
    )
    return result


def _reset(engine: Engine, schema: str) -> None:
    """Drop the demo's schema and forget what earlier runs recorded about the demo's tables
    (the version guard's bookkeeping would otherwise hold versions newer than this run's)."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        for table, column in (
            ("dualwrite.applied", "source_table"),
            ("dualwrite.source_positions", "source_table"),
            ("dualwrite.backfill_progress", "source_table"),
        ):
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                continue
            for prefix in (SOURCE_SCHEMA, TARGET_SCHEMA):
                conn.execute(
                    text(f"DELETE FROM {table} WHERE {column} LIKE :p"), {"p": f"{prefix}.%"}
                )


def _checks(
    config: MigrationConfig, source: Engine, target: Engine, to_state: str
) -> Callable[[], list[Check]]:
    from reconcile import gate_checks  # reconcile builds on dualwrite, not the reverse

    return gate_checks(config, source, target, to_state)


def _forward(
    settings: DemoSettings,
    config: MigrationConfig,
    transforms: Transforms,
    source: Engine,
    target: Engine,
    workload: Any,
    result: DemoResult,
    say: Say,
) -> None:
    services = _Services(config, transforms, settings.workers)
    writers: list[threading.Thread] = []
    done: list[Any] = []
    try:
        with _step(
            result,
            say,
            f"live: {settings.writers} writer(s) for {settings.workload_s:.0f}s, relay, "
            f"{settings.workers} worker(s) and the backfill at once",
        ):
            for i in range(settings.writers):
                writer = threading.Thread(
                    target=lambda seed=i: done.append(
                        workload.run_workload(
                            source,
                            duration_s=settings.workload_s,
                            schema=SOURCE_SCHEMA,
                            rng_seed=seed,
                        )
                    ),
                    daemon=True,
                )
                writer.start()
                writers.append(writer)
            _advance(target, config, "backfilling", _checks(config, source, target, "backfilling"))
            shown = [0.0]

            def progress(p: BackfillProgress) -> None:
                services.check()
                if p.done or time.monotonic() - shown[0] > 2:
                    shown[0] = time.monotonic()
                    say(
                        f"   backfill {p.source}: {p.rows_done:,}/{p.rows_estimate:,} rows, "
                        f"{p.rows_per_s:,.0f} rows/s{' (done)' if p.done else ''}"
                    )

            run_backfill(source, target, config, transforms, progress=progress)
            _advance(target, config, "streaming", _checks(config, source, target, "streaming"))
            for writer in writers:
                while writer.is_alive():
                    services.check()
                    writer.join(timeout=1)
            result.live_transactions = sum(r.transactions for r in done)
            say(f"   live writes: {result.live_transactions:,} transaction(s) committed")
            wait_caught_up(config, source, target, settings.catch_up_timeout_s, say, services.check)
    finally:
        services.close()


def _reconcile(
    config: MigrationConfig,
    transforms: Transforms,
    source: Engine,
    target: Engine,
    out: Path,
    result: DemoResult,
    say: Say,
    label: str = "reconcile",
) -> None:
    from reconcile import reconcile, record_run, summary_line, to_markdown, write_artifact

    outcome = reconcile(source, target, config, transforms, wait_s=60)
    record_run(target, outcome)
    (out / f"{label}.md").write_text(to_markdown(outcome))
    write_artifact(outcome, out / f"{label}-differences.jsonl")
    result.reports[label] = out / f"{label}.md"
    say(f"   {summary_line(outcome)}")
    if outcome.status != "clean":
        raise DemoError(
            f"{label} found {outcome.status}: {outcome.counts}; see {out / f'{label}.md'}"
        )
    result.reconcile_status = outcome.status


def _prepare_reverse(config: MigrationConfig, source: Engine, target: Engine, say: Say) -> None:
    from dualwrite.reverse import install_reverse, record_round_trip, round_trip_check

    installed = install_reverse(config, target)
    say(f"   reverse capture installed on {len(installed)} new table(s)")
    checked = round_trip_check(config, 1000, source=source, target=target)
    record_round_trip(config, checked, target=target)
    say(
        f"   round trip (old row -> transform -> inverse): {checked.rows_checked:,} row(s), "
        f"{len(checked.failures)} failure(s)"
    )
    if not checked.ok:
        raise DemoError(f"the inverse transforms fail the round trip: {checked.failures[:3]}")


# what "the new application" writes on the new schema during the rollback rehearsal
NEW_APP_WRITES = (
    f"UPDATE {TARGET_SCHEMA}.customers SET email = 'rollback-' || id || '@example.org', "
    f"updated_at = now() WHERE id % 29 = 0 AND created_at IS NOT NULL",
    f"UPDATE {TARGET_SCHEMA}.addresses SET city = 'Rollbackstadt' WHERE customer_id % 31 = 0",
    f"INSERT INTO {TARGET_SCHEMA}.orders (id, customer_id, amount, currency, status, placed_at) "
    f"SELECT m.id + g, g, 19.99, 'EUR', 'pending', now() "
    f"FROM (SELECT max(id) AS id FROM {TARGET_SCHEMA}.orders) m, generate_series(1, 100) g",
    f"UPDATE {TARGET_SCHEMA}.orders SET status = 'shipped' WHERE id % 41 = 0",
    f"DELETE FROM {TARGET_SCHEMA}.orders WHERE id % 53 = 0",
)


def _rehearse_rollback(
    settings: DemoSettings,
    config: MigrationConfig,
    source: Engine,
    target: Engine,
    out: Path,
    result: DemoResult,
    say: Say,
) -> None:
    from dualwrite.reverse import reverse_config

    reverse = reverse_config(config)
    rtransforms = load_transforms(reverse)
    (out / "migration-reverse.md").write_text(
        f"The rollback direction of `{config.name}` is `{reverse.name}`: run any command with "
        "`--reverse` on migration.toml (e.g. `dualwrite status --reverse migration.toml`).\n"
    )
    with _step(result, say, "rollback rehearsal: old rows aligned with the inverse of the new"):
        done = run_backfill(target, source, reverse, rtransforms)
        say(f"   reverse backfill: {sum(t.rows for t in done):,} row(s)")
    services = _Services(reverse, rtransforms, 1)
    try:
        with _step(result, say, "rollback rehearsal: writes on the new schema flow back"):
            touched = 0
            with target.begin() as conn:
                for statement in NEW_APP_WRITES:
                    touched += conn.execute(text(statement)).rowcount
            say(f"   the new application wrote {touched:,} row(s) on {TARGET_SCHEMA}")
            wait_caught_up(
                reverse, target, source, settings.catch_up_timeout_s, say, services.check
            )
            with source.connect() as conn:
                moved = conn.execute(
                    text(
                        f"SELECT count(*) FROM {SOURCE_SCHEMA}.customers "
                        "WHERE email LIKE 'rollback-%'"
                    )
                ).scalar_one()
            say(f"   {moved:,} customer email change(s) made on the new schema are in the old one")
    finally:
        services.close()
    with _step(result, say, "reverse reconcile: the old store against the inverse of the new"):
        _reconcile(reverse, rtransforms, target, source, out, result, say, "reverse-reconcile")
        result.reverse_status = "clean"
    with _step(result, say, "rollback: recorded once the old store has caught up"):
        transition(
            target,
            config.name,
            "rolled_back",
            checks=_checks(config, source, target, "rolled_back"),
            reason="demo rehearsal",
        )
        say("   state rolled_back: the old store is current; the application may return to it")


def _readiness(
    config: MigrationConfig,
    source: Engine,
    target: Engine,
    out: Path,
    result: DemoResult,
    say: Say,
) -> None:
    from reconcile import (
        evaluate_readiness,
        readiness_html,
        readiness_json,
        readiness_lines,
        readiness_markdown,
        verdict,
    )

    report = evaluate_readiness(config, source, target)
    for suffix, body in (
        ("html", readiness_html(report)),
        ("md", readiness_markdown(report)),
        ("json", json.dumps(readiness_json(report), indent=2) + "\n"),
    ):
        (out / f"readiness.{suffix}").write_text(body, encoding="utf-8")
    result.reports["readiness"] = out / "readiness.html"
    for _passed, line in readiness_lines(report):
        say(f"   {line}")
    say(f"   {verdict(report)}")
    say(f"   report: {out / 'readiness.html'}")
    result.ready = report.ready
    if not report.ready:
        raise DemoError(f"not ready for cutover: {verdict(report)}; see {out / 'readiness.html'}")
