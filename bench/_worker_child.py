"""One worker process for the benchmarks: ``run_worker`` on a migration file, with a report.

Run by apply_throughput.py and e2e_lag.py (not meant to be run by hand). Modes:

* ``drain``: ``run_worker(until_idle=True)``; prints one JSON line with the result, the time
  of every batch, the process's peak RSS and CPU; with ``--instrument`` also the wall time
  spent in each phase of the worker (wrappers around its functions, ~1 us per call).
* ``e2e``: ``run_worker`` until SIGTERM; after every batch's target commit appends one JSON
  line to ``--out``: the time (``time.time()``), the time its poll returned and, per source
  transaction id in the batch, the number of its events and the newest Kafka timestamp
  among them.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualwrite import apply as apply_mod
from dualwrite import kafka_io, load_migration, make_engine
from dualwrite import worker as worker_mod
from dualwrite.transform import load_transforms
from dualwrite.worker import WorkerSettings, run_worker

TXID = re.compile(rb'"txid" : "(\d+)"')


class Phases:
    """Inclusive wall seconds and call counts per wrapped function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter
        seconds[name] = 0.0
        calls[name] = 0

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - t0
                calls[name] += 1

        return timed


def instrument(phases: Phases, transforms: Any) -> None:
    w, a = worker_mod, apply_mod.Applier
    w._poll = phases.wrap("poll", w._poll)  # type: ignore[attr-defined]
    w._prepare = phases.wrap("prepare", w._prepare)  # type: ignore[attr-defined]
    w._process = phases.wrap("process", w._process)  # type: ignore[attr-defined]
    w.decode_event = phases.wrap("decode_event", w.decode_event)  # type: ignore[attr-defined]
    w._apply_all = phases.wrap("apply_all", w._apply_all)  # type: ignore[attr-defined]
    w._publish_and_commit = phases.wrap("publish_and_commit", w._publish_and_commit)  # type: ignore[attr-defined]
    w._group_caught_up = phases.wrap("group_caught_up", w._group_caught_up)  # type: ignore[attr-defined]
    transforms.apply = phases.wrap("transform", transforms.apply)
    for name in ("apply", "_apply_general", "_claim", "_write", "_stage", "_record_positions"):
        setattr(a, name, phases.wrap(f"Applier.{name}", getattr(a, name)))
    kafka_io.Consumer.commit = phases.wrap("offset_commit", kafka_io.Consumer.commit)  # type: ignore[method-assign]


def exclusive(ph: dict[str, float], run_s: float) -> dict[str, float]:
    """The inclusive timers turned into exclusive phases: the main thread's add up to the run;
    the apply thread's (``apply thread:``) run at the same time as the main thread's."""
    g = ph.get
    main = g("poll", 0) + g("prepare", 0) + g("publish_and_commit", 0) + g("group_caught_up", 0)
    out = {
        "Kafka poll (fetch, record decoding, Message objects; group join)": g("poll", 0),
        "envelope decode (JSON parse + typed values + validation)": g("decode_event", 0),
        "transform (registry + shop functions)": g("transform", 0),
        "prepare loop (keys, results)": g("prepare", 0) - g("decode_event", 0) - g("transform", 0),
        "dead letters + Kafka offset commit": g("publish_and_commit", 0),
        "idle check (group_lag)": g("group_caught_up", 0),
        "waiting for the apply thread (+ start-up, close)": run_s - main,
        "apply thread: quarantine SELECT + commit, parking": g("process", 0) - g("apply_all", 0),
        "apply thread: collapse/group ops (Python)": g("Applier._apply_general", 0)
        - g("Applier._claim", 0)
        - g("Applier._write", 0),
        "apply thread: bookkeeping COPY _dw_ops + upsert RETURNING": g("Applier._claim", 0),
        "apply thread: COPY into staging": g("Applier._stage", 0),
        "apply thread: INSERT ... ON CONFLICT / DELETE statements": g("Applier._write", 0)
        - g("Applier._stage", 0),
        "apply thread: source_positions upsert": g("Applier._record_positions", 0),
        "apply thread: savepoint": g("Applier.apply", 0)
        - g("Applier._apply_general", 0)
        - g("Applier._record_positions", 0),
        "apply thread: target COMMIT (+ op list)": g("apply_all", 0) - g("Applier.apply", 0),
        "apply thread: idle (waiting for the next batch)": run_s - g("process", 0),
    }
    return {k: round(v, 3) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("migration")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--linger-ms", type=int, default=100)
    p.add_argument("--mode", choices=["drain", "e2e"], default="drain")
    p.add_argument("--out")
    p.add_argument("--instrument", action="store_true")
    args = p.parse_args()

    config = load_migration(args.migration)
    transforms = load_transforms(config)
    engine = make_engine(config.target)
    settings = WorkerSettings(batch_size=args.batch_size, linger_ms=args.linger_ms)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    phases = Phases()
    if args.instrument:
        instrument(phases, transforms)

    clock = time.perf_counter
    batch_times: list[float] = []
    batch_sizes: list[int] = []
    out_file = open(args.out, "a", buffering=1) if args.out else None  # noqa: SIM115

    if args.mode == "e2e":
        process, poll = worker_mod._process, worker_mod._poll
        polled_at = [0.0]

        def timed_poll(*a: Any, **kw: Any) -> Any:
            got = poll(*a, **kw)
            polled_at[0] = time.time()
            return got

        worker_mod._poll = timed_poll  # type: ignore[attr-defined]

        def traced(*a: Any, **kw: Any) -> Any:  # on the apply thread, after the target commit
            messages = a[4]
            result = process(*a, **kw)
            now = time.time()
            per_tx: dict[str, list[int]] = {}
            for m in messages:
                found = TXID.search(m.value or b"")
                txid = found.group(1).decode() if found else "?"
                entry = per_tx.get(txid)
                if entry is None:
                    per_tx[txid] = [1, m.timestamp_ms]
                else:
                    entry[0] += 1
                    entry[1] = max(entry[1], m.timestamp_ms)
            assert out_file is not None
            record = {"t": now, "tp": polled_at[0], "n": len(messages), "tx": per_tx}
            out_file.write(json.dumps(record) + "\n")
            return result

        worker_mod._process = traced  # type: ignore[attr-defined]

    def on_batch(n: int) -> None:
        batch_times.append(clock())
        batch_sizes.append(n)

    t0 = clock()
    result = run_worker(
        engine,
        config,
        transforms,
        settings=settings,
        until_idle=args.mode == "drain",
        stop=stop,
        on_batch=on_batch,
    )
    run_s = clock() - t0
    engine.dispose()
    if out_file is not None:
        out_file.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gaps = sorted(b - a for a, b in itertools.pairwise(batch_times))
    report: dict[str, Any] = {
        "consumed": result.consumed,
        "applied": result.applied,
        "dead_lettered": result.dead_lettered,
        "parked": result.parked,
        "batches": result.batches,
        "worker_elapsed_s": round(result.elapsed_s, 3),
        "run_s": round(run_s, 3),
        "first_batch_s": round(batch_times[0] - t0, 3) if batch_times else None,
        "last_batch_s": round(batch_times[-1] - t0, 3) if batch_times else None,
        "first_batch_events": batch_sizes[0] if batch_sizes else 0,
        "mean_batch_events": round(sum(batch_sizes) / len(batch_sizes), 1) if batch_sizes else 0,
        "batch_gap_ms_p50": round(gaps[len(gaps) // 2] * 1000, 1) if gaps else None,
        "batch_gap_ms_p95": round(gaps[int(0.95 * (len(gaps) - 1))] * 1000, 1) if gaps else None,
        "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_user_s": round(usage.ru_utime, 2),
        "cpu_sys_s": round(usage.ru_stime, 2),
    }
    if args.instrument:
        report["phases_inclusive_s"] = {k: round(v, 3) for k, v in phases.seconds.items()}
        report["phase_calls"] = phases.calls
        report["phases_s"] = exclusive(phases.seconds, run_s)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
