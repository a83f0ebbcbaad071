"""The comparison in Python, for targets whose transform has no SQL form: both sides are
streamed once in chunks and compared by hashed partitions of the target key.

Why partitions and not a key-ordered merge: the expected side is the transform of the source,
read in *source* key order; a transform may rename, reorder, retype or compute target keys,
and several sources may merge into one target row, so the expected rows need not arrive in
target key order; and even for identical keys two databases (and Python) may order text
differently. Equality of key text (:func:`dualwrite.transform.key_text`, what the pipeline's
version bookkeeping already relies on) is the only thing both sides are sure to agree on, so
each side's rows are spilled to ``partitions`` files by a hash of that text, in one pass, and
each partition is then compared in memory. A row and its counterpart always meet in the same
partition, whatever order they came in. Memory is bounded by one partition (about
``bucket_rows`` rows per side; the count comes from the planner's estimate, so a wildly stale
estimate makes partitions larger, never wrong) plus one chunk; disk holds one copy of each
side. A table small enough for one partition is compared without spilling.
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dualwrite.capture._ddl import TableShape, qualified
from dualwrite.snapshot import iter_rows
from dualwrite.transform import Transforms, key_text
from reconcile._rows import Expected, add_expected, blank, classify
from reconcile._segments import estimate_rows
from reconcile._types import Difference


class _Spill:
    """Rows per (target, side, partition): in memory for one partition, else in files."""

    def __init__(self, partitions: int, directory: Path | None) -> None:
        self.partitions = partitions
        self._dir = directory
        self._memory: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
        self._files: dict[tuple[str, str, int], Path] = {}
        self._created = 0  # names files; never reused, though take() forgets taken files

    def part(self, key: str) -> int:
        return hash(key) % self.partitions if self.partitions > 1 else 0

    def add(self, items: Mapping[tuple[str, str, int], list[Any]]) -> None:
        for where, rows in items.items():
            if self._dir is None:
                self._memory[where].extend(rows)
                continue
            path = self._files.get(where)
            if path is None:
                path = self._dir / f"{self._created}.pickle"
                self._created += 1
                self._files[where] = path
            with path.open("ab") as fh:
                pickle.dump(rows, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def take(self, target: str, side: str, part: int) -> Iterator[Any]:
        if self._dir is None:
            yield from self._memory.pop((target, side, part), [])
            return
        path = self._files.pop((target, side, part), None)
        if path is None:
            return
        with path.open("rb") as fh:
            while True:
                try:
                    rows = pickle.load(fh)  # noqa: S301 (our own spill file)
                except EOFError:
                    break
                yield from rows
        path.unlink()


def stream_diff(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    targets: Mapping[str, Mapping[str, str]],
    chunk_rows: int,
    bucket_rows: int,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[list[Difference], dict[str, tuple[int, int]]]:
    """Compare ``targets`` (name -> column types) with the transform of every source that
    feeds them. Returns the differences and, per target, (expected rows, target rows)."""
    labels = [
        label
        for label, st in transforms.sources.items()
        if label in shapes and any(t in targets for t in st.targets)
    ]
    rows = max(
        [sum(estimate_rows(src, qualified(shapes[label].source)) for label in labels)]
        + [estimate_rows(dst, qualified(transforms.targets[t].table)) for t in targets]
    )
    partitions = max(1, math.ceil(rows / bucket_rows))
    with tempfile.TemporaryDirectory(prefix="dualwrite-reconcile-") as tmp:
        spill = _Spill(partitions, Path(tmp) if partitions > 1 else None)
        diffs: list[Difference] = []
        columns: dict[str, dict[str, None]] = {
            t: dict.fromkeys(transforms.targets[t].key) for t in targets
        }
        for label in labels:
            diffs.extend(
                _read_source(
                    src,
                    transforms,
                    shapes[label],
                    label,
                    targets,
                    chunk_rows,
                    spill,
                    columns,
                    progress,
                )
            )
        counts: dict[str, tuple[int, int]] = {}
        for target, types in targets.items():
            spec = transforms.targets[target]
            wanted = [c for c in columns[target] if c in types]
            for cols in (spec.owners or {}).values():
                wanted += [c for c in cols if c in types and c not in wanted]
            target_rows = _read_target(
                dst,
                target,
                spec.table,
                spec.key or tuple(columns[target]),
                wanted,
                chunk_rows,
                spill,
            )
            expected_rows = 0
            for part in range(partitions):
                expected: Expected = {}
                for key, values in spill.take(target, "e", part):
                    expected.setdefault(key, blank(spec)).update(values)
                expected_rows += len(expected)
                got: dict[str, dict[str, Any]] = {}
                for key, record in spill.take(target, "t", part):
                    got[key] = dict(zip(wanted, record, strict=True))
                for key in expected.keys() | got.keys():
                    d = classify(target, key, expected.get(key), got.get(key), types)
                    if d is not None:
                        diffs.append(d)
            counts[target] = (expected_rows, target_rows)
    return diffs, counts


def _read_source(
    src: psycopg.Connection[Any],
    transforms: Transforms,
    shape: TableShape,
    label: str,
    targets: Mapping[str, Mapping[str, str]],
    chunk_rows: int,
    spill: _Spill,
    columns: dict[str, dict[str, None]],
    progress: Callable[[str, int], None] | None,
) -> list[Difference]:
    errors: list[Difference] = []
    done = 0
    for chunk in iter_rows(src, shape, chunk_rows):
        expected: dict[str, Expected] = {t: {} for t in targets}
        for key_json, image in chunk:
            error = add_expected(
                expected, transforms, label, shape.key, key_json, image, shape.types, merge=False
            )
            if error is not None:
                errors.append(error)
        batch: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
        for target, rows in expected.items():
            seen = columns[target]
            for key, values in rows.items():
                for c in values:
                    if c not in seen:
                        seen[c] = None
                batch[(target, "e", spill.part(key))].append((key, values))
        spill.add(batch)
        done += len(chunk)
        if progress is not None:
            progress(label, done)
    return errors


def _read_target(
    dst: psycopg.Connection[Any],
    target: str,
    table: Any,
    key: Sequence[str],
    columns: Sequence[str],
    chunk_rows: int,
    spill: _Spill,
) -> int:
    positions = [columns.index(c) for c in key]
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), qualified(table)
    )
    rows = 0
    with dst.transaction(), dst.cursor(name="dualwrite_reconcile") as cur:
        cur.itersize = chunk_rows
        cur.execute(query)
        while True:
            records = cur.fetchmany(chunk_rows)
            if not records:
                break
            batch: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
            for record in records:
                k = key_text(tuple(record[i] for i in positions))
                batch[(target, "t", spill.part(k))].append((k, record))
            spill.add(batch)
            rows += len(records)
    return rows
