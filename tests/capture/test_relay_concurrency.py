"""Many writers, rollbacks, a long transaction, a relay running throughout: exactly the
committed changes reach Kafka, and each row's events arrive in commit order."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import pytest
from sqlalchemy import Engine, text

from dualwrite import capture
from dualwrite.envelope import decode_event
from dualwrite.relay import run_relay
from tests.capture.helpers import drain, messages

pytestmark = pytest.mark.integration

KEYS = 20
WRITERS = 6
TRANSACTIONS = 30
LONG_KEY = 1000


def test_concurrent_writers_lose_nothing_and_keep_per_key_commit_order(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    table = f'"{source_schema}".acct'
    with source_engine.begin() as conn:
        conn.execute(
            text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL, tag text NOT NULL)")
        )
    config = make_config(
        [f"{source_schema}.acct"], batch_size=25, idle_poll_ms=10, topic_partitions=4
    )
    capture.install(source_engine, config)

    committed: dict[int, dict[int, str]] = defaultdict(dict)  # key -> n -> tag that committed it
    deleted: set[int] = set()
    lock = threading.Lock()
    with source_engine.begin() as conn:
        for k in range(KEYS):
            conn.execute(text(f"INSERT INTO {table} VALUES (:k, 0, 'init')"), {"k": k})
            committed[k][0] = "init"

    stop_relay = threading.Event()
    relay = threading.Thread(
        target=run_relay, args=(source_engine, config), kwargs={"stop": stop_relay}
    )
    relay.start()

    long_started = threading.Event()

    def long_transaction() -> None:
        # inserts a row first, then holds the transaction open while everyone else commits
        with source_engine.connect() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (:k, 0, 'long')"), {"k": LONG_KEY})
            long_started.set()
            time.sleep(4)
            conn.commit()
        with lock:
            committed[LONG_KEY][0] = "long"

    def writer(w: int) -> None:
        rng = random.Random(w)
        for t in range(TRANSACTIONS):
            tag = f"w{w}t{t}"
            keys = sorted(rng.sample(range(KEYS), rng.randint(1, 3)))  # sorted: no deadlocks
            with source_engine.connect() as conn:
                results = [
                    (
                        k,
                        conn.execute(
                            text(
                                f"UPDATE {table} SET n = n + 1, tag = :tag WHERE id = :k RETURNING n"
                            ),
                            {"k": k, "tag": tag},
                        ).scalar_one(),
                    )
                    for k in keys
                ]
                time.sleep(rng.uniform(0, 0.02))
                if rng.random() < 0.2:
                    conn.rollback()
                    continue
                conn.commit()
            with lock:
                for k, n in results:
                    committed[k][n] = tag

    long_thread = threading.Thread(target=long_transaction)
    long_thread.start()
    assert long_started.wait(10)
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for th in writers:
        th.start()
    for th in writers:
        th.join()
    with source_engine.begin() as conn:
        for k in (0, 1, 2):
            conn.execute(text(f"DELETE FROM {table} WHERE id = :k"), {"k": k})
            deleted.add(k)
    long_thread.join()
    stop_relay.set()
    relay.join()
    drain(source_engine, config)

    per_key: dict[int, list[tuple[str, int | None, str | None, int]]] = defaultdict(list)
    for message in messages(config):  # partition order; one key lives on one partition
        event = decode_event(message.value or b"")
        row = event.row
        per_key[event.key["id"]].append(
            (
                event.op,
                None if row is None else row["n"],
                None if row is None else row["tag"],
                event.version,
            )
        )

    assert set(per_key) == set(committed)
    for key, seen in per_key.items():
        expected = [("insert", 0, committed[key][0])] + [
            ("update", n, committed[key][n]) for n in range(1, max(committed[key]) + 1)
        ]
        if key in deleted:
            expected.append(("delete", None, None))
        assert [(op, n, tag) for op, n, tag, _v in seen] == expected, f"key {key}"
        versions = [v for *_rest, v in seen]
        assert versions == sorted(versions) and len(set(versions)) == len(versions), f"key {key}"
