"""Starting, stopping and inspecting the local PostgreSQL and Kafka together."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import FrameType

from dualwrite.devstack._kafka_broker import LocalKafka
from dualwrite.devstack._postgres import LocalPostgres
from dualwrite.devstack._settings import DevStackSettings
from dualwrite.errors import DevStackError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    """One local service as seen now."""

    name: str
    endpoint: str
    pid: int | None
    healthy: bool
    detail: str

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class StackStatus:
    """Both local services; ``started`` names those the last ``up`` call started itself."""

    services: tuple[ServiceStatus, ...]
    started: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services)


def up(settings: DevStackSettings, progress: Progress | None = None) -> StackStatus:
    """Start whatever of PostgreSQL and Kafka is not already running; idempotent.

    Checks every prerequisite and port before starting anything; if the second service fails
    to start, the first one started by this call is stopped again, so a failure leaves
    nothing half-started. Raises :class:`DevStackError` with the failing service's log tail.
    """
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    pg, kafka = LocalPostgres(settings), LocalKafka(settings)
    pg_running, kafka_running = pg.running_pid() is not None, kafka.running_pid() is not None
    if not pg_running:
        pg.check_prerequisites()
        pg.check_port()
    if not kafka_running:
        kafka.check_prerequisites()
        kafka.check_ports()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    try:
        if pg_running:
            say("postgres: already running")
        else:
            say(f"postgres: starting on 127.0.0.1:{settings.pg_port}")
            pg.start()
            started.append("postgres")
        if kafka_running:
            say("kafka: already running")
        else:
            if not kafka.libs_cached():
                say(f"kafka: fetching broker jars {settings.kafka_version} with Maven")
            say(f"kafka: starting on 127.0.0.1:{settings.kafka_port}")
            kafka.start()
            started.append("kafka")
    except BaseException:
        if "postgres" in started:
            with contextlib.suppress(DevStackError):
                pg.stop()
        raise
    current = status(settings)
    return StackStatus(current.services, tuple(started), time.monotonic() - t0)


def down(
    settings: DevStackSettings,
    wipe: bool = False,
    progress: Progress | None = None,
    only: Collection[str] | None = None,
) -> tuple[str, ...]:
    """Stop exactly the services whose pid files ``up`` wrote; return the names stopped.

    ``only`` limits it to those services (``up(...).started``: what one caller started).
    With ``wipe`` also delete their data (the Maven cache is kept).
    """
    say = progress or (lambda _msg: None)
    stopped: list[str] = []
    kafka, pg = LocalKafka(settings), LocalPostgres(settings)
    if (only is None or "kafka" in only) and kafka.stop():
        stopped.append("kafka")
        say("kafka: stopped")
    if (only is None or "postgres" in only) and pg.stop():
        stopped.append("postgres")
        say("postgres: stopped")
    if wipe:
        if only is None or "kafka" in only:
            kafka.wipe()
        if only is None or "postgres" in only:
            pg.wipe()
        say("data deleted")
    return tuple(stopped)


def status(settings: DevStackSettings) -> StackStatus:
    """Report both services: pid when running, health from a real round trip."""
    pg, kafka = LocalPostgres(settings), LocalKafka(settings)
    services = []
    for name, service, endpoint in (
        ("postgres", pg, f"127.0.0.1:{settings.pg_port}"),
        ("kafka", kafka, settings.kafka_bootstrap),
    ):
        pid = service.running_pid()
        if pid is None:
            services.append(ServiceStatus(name, endpoint, None, False, "not running"))
            continue
        error = service.probe()
        services.append(ServiceStatus(name, endpoint, pid, error is None, error or "ready"))
    return StackStatus(tuple(services))


def run_with_stack(
    settings: DevStackSettings, argv: Sequence[str], progress: Progress | None = None
) -> int:
    """Bring the stack up, run ``argv`` with the service variables set, stop what was started.

    Returns the command's exit code. Services that were already running are left running.
    SIGTERM and SIGINT still stop what this call started.
    """
    result = up(settings, progress)
    env = {**os.environ, **settings.service_env()}

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return subprocess.run(list(argv), env=env, check=False).returncode
    finally:
        signal.signal(signal.SIGTERM, previous)
        if "kafka" in result.started:
            LocalKafka(settings).stop()
        if "postgres" in result.started:
            LocalPostgres(settings).stop()
