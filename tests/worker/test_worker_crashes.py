"""Workers killed mid-batch, and two workers rebalancing under load: the final state is exact."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import IO

import pytest

from dualwrite.relay import run_relay
from dualwrite.worker import run_worker
from tests.conftest import REPO
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


def _expected(p: Pipeline) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The transform of the source, computed independently of the worker."""
    with p.source.connect() as conn:
        from sqlalchemy import text

        persons = {
            r[0]: r
            for r in conn.execute(text(f'SELECT id, name, email, city FROM "{p.src}".person'))
        }
        tiers = dict(conn.execute(text(f'SELECT person_id, tier FROM "{p.src}".profile')).all())
    # a merged row exists while the person or the profile exists (the union of the owners)
    person_rows = sorted(
        (
            i,
            persons[i][1] if i in persons else None,
            ((persons[i][2] or "").lower() or None) if i in persons else None,
            tiers.get(i),
        )
        for i in set(persons) | set(tiers)
    )
    address_rows = sorted((i, city) for i, _n, _e, city in persons.values() if city is not None)
    return person_rows, address_rows


def _assert_exact(p: Pipeline) -> None:
    want_person, want_address = _expected(p)
    got_person, got_address = p.target_rows("person"), p.target_rows("address")
    assert (
        sorted(set(got_person) - set(want_person)) == []
        and sorted(set(want_person) - set(got_person)) == []
    )
    assert (
        sorted(set(got_address) - set(want_address)) == []
        and sorted(set(want_address) - set(got_address)) == []
    )


def _write_load(p: Pipeline, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        i = rng.randint(1, 300)
        choice = rng.random()
        if choice < 0.5:
            p.source_sql(
                "INSERT INTO {s}.person VALUES (:i, :n, :e, :c) ON CONFLICT (id) DO UPDATE SET name = :n, city = :c",
                i=i,
                n=f"n{n}",
                e=f"E{n}@X",
                c=rng.choice([None, "Oslo", "Rome"]),
            )
            p.source_sql(
                "INSERT INTO {s}.profile VALUES (:i, :t) ON CONFLICT (person_id) DO UPDATE SET tier = :t",
                i=i,
                t=f"t{n}",
            )
        elif choice < 0.85:
            p.source_sql("UPDATE {s}.person SET email = :e WHERE id = :i", i=i, e=f"U{n}@Y")
        elif choice < 0.93:
            p.source_sql("DELETE FROM {s}.profile WHERE person_id = :i", i=i)
        else:
            p.source_sql("DELETE FROM {s}.person WHERE id = :i", i=i)
            p.source_sql("DELETE FROM {s}.profile WHERE person_id = :i", i=i)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(port: int, timeout_s: float = 120.0) -> None:
    """The worker serves metrics only after installing its signal handlers: once this answers,
    SIGTERM means "finish the batch and leave", not "die"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"worker metrics on port {port} never answered")


def _worker_process(p: Pipeline, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "cli.main",
        "worker",
        p.config.path,
        "--batch-size",
        "200",
        "--linger-ms",
        "50",
    ]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (read back by _stopped_cleanly)
    proc = subprocess.Popen(
        [*args, "--metrics-port", str(metrics_port)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    _LOGS[proc.pid] = log
    _PROCS.append(proc)
    return proc


_LOGS: dict[int, IO[bytes]] = {}  # worker pid -> its stderr
_PROCS: list[subprocess.Popen[bytes]] = []  # every worker a test started
_THREADS: list[tuple[threading.Thread, threading.Event | None]] = []  # (thread, its stop)


@pytest.fixture(autouse=True)
def _nothing_outlives_the_test() -> Iterator[None]:
    """A failed assertion must not leave a worker or the relay running against the schemas
    the pipeline fixture drops (their errors would be reported against the next tests)."""
    yield
    for proc in _PROCS:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for thread, stop in _THREADS:
        if stop is not None:
            stop.set()
        thread.join()
    for log in _LOGS.values():
        log.close()
    _PROCS.clear()
    _THREADS.clear()
    _LOGS.clear()


def _writer_in_background(p: Pipeline, seconds: float, seed: int) -> threading.Thread:
    thread = threading.Thread(target=_write_load, args=(p, seconds, seed))
    thread.start()
    _THREADS.append((thread, None))
    return thread


def _stopped_cleanly(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` and assert it exits 0, with the end of its log as the evidence."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log = _LOGS.pop(proc.pid)
    log.seek(0)
    assert code == 0, log.read().decode(errors="replace")[-3000:]


def _relay_in_background(p: Pipeline) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_relay, args=(p.source, p.config), kwargs={"stop": stop})
    thread.start()
    _THREADS.append((thread, stop))
    return thread, stop


def test_sigkilled_worker_restarts_to_an_exact_state(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    relay, stop_relay = _relay_in_background(p)
    writer = _writer_in_background(p, 8, 1)
    kills = 0
    rng = random.Random(2)
    while writer.is_alive():
        proc = _worker_process(p)
        time.sleep(rng.uniform(1.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    writer.join()
    stop_relay.set()
    relay.join()
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())
    assert kills >= 2
    _assert_exact(p)


def test_two_workers_rebalancing_under_load_reach_the_exact_state(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    relay, stop_relay = _relay_in_background(p)
    writer = _writer_in_background(p, 8, 3)
    first_port, second_port = _free_port(), _free_port()
    first = _worker_process(p, first_port)
    _wait_serving(first_port)
    time.sleep(1.5)
    second = _worker_process(p, second_port)  # joins the group: partitions move under load
    _wait_serving(second_port)
    time.sleep(2)
    _stopped_cleanly(first)  # leaves the group: another rebalance
    writer.join()
    stop_relay.set()
    relay.join()
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    deadline = time.monotonic() + 60
    expected = _expected(p)
    while (
        p.target_rows("person"),
        p.target_rows("address"),
    ) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    _wait_serving(second_port)
    _stopped_cleanly(second)
    _assert_exact(p)
