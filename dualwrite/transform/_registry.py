"""The transform registry: how a source change becomes target row operations.

A transform module (``[transform] module`` in the migration file) defines
``make_transforms(config)`` returning a ``Transforms`` (or a module-level ``transforms``)
and registers one function per source table::

    transforms = Transforms()
    transforms.target("shop.customers", key=["id"],
                      owners={"legacy.customers": [...], "legacy.customer_profiles": [...]},
)

    @transforms.source("legacy.customers", targets={"shop.customers": {"id": "id"}})
    def customers(row):
        return {"shop.customers": {"id": row["id"], "full_name": ...}}

The function receives the source row (typed values) and returns, per target table, the
target row's values, or nothing for a target to mean "this source row has no row there"
(filtering). ``targets`` maps each target table to ``{target key column: source key
column}``, which is how a delete (which carries only the source key) finds its target rows,
and how an update that filters a row out deletes what an earlier version produced.

The same registry serves the stream, the backfill and reconcile; ``inverse`` registers the
reverse mapping for rollback. Thread-safe once built (read-only).
"""

from __future__ import annotations

import importlib
import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dualwrite.config import MigrationConfig, TableConfig, parse_qualified_name
from dualwrite.errors import DualwriteError
from dualwrite.transform._declared import declared_transform
from dualwrite.transform._model import ReadBatch, ReadGroup, TargetOp, TargetSpec, key_text

RowFunction = Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]] | None]


class TransformError(DualwriteError):
    """A transform is missing, misdeclared, or failed on a row (the message names which)."""


@dataclass(frozen=True)
class SourceTransform:
    source: str
    function: RowFunction
    targets: Mapping[str, Mapping[str, str]]  # target table -> {target key col: source key col}


def _name(text: str) -> str:
    return str(parse_qualified_name(text))


class Transforms:
    """Registry of source transforms, target specs and inverse transforms."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceTransform] = {}
        self.targets: dict[str, TargetSpec] = {}
        self.inverses: dict[str, RowFunction] = {}
        # target -> {source table: columns its inverse writes}; needed where one source table
        # is rebuilt from several targets (a merge in the rollback direction)
        self.inverse_columns: dict[str, dict[str, tuple[str, ...]]] = {}
        self.renamers: dict[str, Callable[[str], str]] = {}  # declared sources: key inference
        self.sql_forms: dict[
            str, dict[str, dict[str, str]]
        ] = {}  # source -> target -> column -> SQL
        self._lock = threading.Lock()
        self._plans: dict[str, tuple[SourceTransform, list[_TargetPlan]]] = {}

    def target(
        self,
        table: str,
        *,
        key: Sequence[str],
        owners: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Declare a target table's key, and for merges the columns each source owns."""
        owner_map = {_name(s): tuple(cols) for s, cols in (owners or {}).items()} or None
        self.targets[_name(table)] = TargetSpec(parse_qualified_name(table), tuple(key), owner_map)

    def source(
        self, table: str, *, targets: Mapping[str, Mapping[str, str]]
    ) -> Callable[[RowFunction], RowFunction]:
        """Register the transform of source ``table``; ``targets`` maps target key columns."""

        def register(function: RowFunction) -> RowFunction:
            name = _name(table)
            if name in self.sources:
                raise TransformError(f"source {table} has two transforms")
            self.sources[name] = SourceTransform(
                name, function, {_name(t): dict(m) for t, m in targets.items()}
            )
            return function

        return register

    def inverse(
        self, target: str, *, columns: Mapping[str, Sequence[str]] | None = None
    ) -> Callable[[RowFunction], RowFunction]:
        """Register the inverse of ``target``: a target row -> ``{source table: source row}``.

        ``columns`` names, per source table, the non-key columns this inverse writes. It is
        required for a source table that the inverses of several targets rebuild (the rollback
        direction merges them, each owning its columns; see ``docs/rollback.md``).
        """

        def register(function: RowFunction) -> RowFunction:
            self.inverses[_name(target)] = function
            if columns:
                self.inverse_columns[_name(target)] = {
                    _name(s): tuple(cols) for s, cols in columns.items()
                }
            return function

        return register

    def sql_form(self, source: str, target: str, columns: Mapping[str, str]) -> None:
        """Declare the SQL form of ``source``'s transform into ``target`` for reconcile:
        ``{target column: SQL expression over the source table's columns}``, one entry per
        column the Python function produces. Reconcile then checksums the table inside both
        databases; it checks the SQL form against the Python function on a sample of rows
        first and ignores it (comparing in Python) when they disagree."""
        self.sql_forms.setdefault(_name(source), {})[_name(target)] = dict(columns)

    # --- use ---------------------------------------------------------------------------

    def _learn_key(self, st: SourceTransform, key: Mapping[str, Any]) -> SourceTransform:
        return _learn_key_impl(self, st, key)

    def check(self) -> None:
        """Every target a source writes is declared, and every key column is mapped."""
        for st in self.sources.values():
            for target, mapping in st.targets.items():
                spec = self.targets.get(target)
                if spec is None:
                    raise TransformError(
                        f"source {st.source} writes {target}, which has no transforms.target(...)"
                    )
                if spec.key and set(mapping) != set(spec.key):
                    raise TransformError(
                        f"source {st.source} -> {target}: targets mapping must name exactly the key "
                        f"columns {', '.join(spec.key)}"
                    )
                if spec.owners is not None and st.source not in spec.owners:
                    raise TransformError(
                        f"source {st.source} writes merged target {target} but owns no columns"
                    )

    def apply(
        self,
        source: str,
        op: str,
        key: Mapping[str, Any],
        row: Mapping[str, Any] | None,
        version: int,
    ) -> list[TargetOp]:
        """The target operations for one source change (insert, update, delete or read).

        Raises :class:`TransformError` for an unknown source table or a failing transform
        (the message names the source, the key and the exception).
        """
        st = self.sources.get(source)
        if st is None:
            raise TransformError(f"no transform for source table {source}")
        if source in self.renamers and any(not self.targets[t].key for t in st.targets):
            st = self._learn_key(st, key)
        plan = self._plan(st)
        produced: Mapping[str, Mapping[str, Any]] = {}
        if op != "delete":
            assert row is not None
            try:
                produced = st.function(row) or {}
            except Exception as exc:
                raise TransformError(
                    f"transform of {source} failed for key {dict(key)}: {type(exc).__name__}: {exc}"
                ) from exc
            if not produced.keys() <= st.targets.keys():
                unknown = set(produced) - set(st.targets)
                raise TransformError(
                    f"transform of {source} produced undeclared targets {sorted(unknown)}"
                )
        ops: list[TargetOp] = []
        for target, spec, allowed, source_key_of, target_key_of in plan:
            values = produced.get(target)
            if values is None:
                ops.append(TargetOp(spec.table, source_key_of(key), None, source, version))
                continue
            try:
                target_key = target_key_of(values)
            except KeyError:
                missing = [c for c in spec.key if c not in values]
                raise TransformError(
                    f"transform of {source} -> {target} left out key column(s) {missing}"
                ) from None
            if allowed is not None and not values.keys() <= allowed:
                extra = set(values) - allowed
                raise TransformError(
                    f"{source} writes {sorted(extra)} of {target}, which it does not own"
                )
            ops.append(TargetOp(spec.table, target_key, dict(values), source, version))
        return ops

    def apply_reads(
        self, source: str, key_columns: Sequence[str], records: Sequence[Mapping[str, Any]]
    ) -> ReadBatch:
        """The target writes of a chunk of snapshot reads of ``source`` (the backfill),
        grouped for writing: what :meth:`apply` gives for each record with ``op="read"`` and
        version 0, with the same checks and errors, but the plan resolved once per chunk and
        the ownership and key checks once per group of rows writing the same columns, not per
        row (no :class:`TargetOp` per row). ``key_columns`` are the source key's columns."""
        st = self.sources.get(source)
        if st is None:
            raise TransformError(f"no transform for source table {source}")
        if records and source in self.renamers and any(not self.targets[t].key for t in st.targets):
            st = self._learn_key(st, {c: records[0][c] for c in key_columns})
        plan = self._plan(st)
        function, declared = st.function, st.targets.keys()
        groups: dict[tuple[str, tuple[str, ...] | None], tuple[ReadGroup, KeyGetter]] = {}
        general: list[TargetOp] = []
        # per target: the columns of its last row, their group's rows and key getter (rows
        # of a chunk mostly write the same columns: no group lookup per row)
        entries = [(t, spec, allowed, of, _no_group()) for t, spec, allowed, of, _ in plan]
        for record in records:
            try:
                produced = function(record) or _NOTHING
            except Exception as exc:
                failed = {c: record[c] for c in key_columns}
                raise TransformError(
                    f"transform of {source} failed for key {failed}: {type(exc).__name__}: {exc}"
                ) from exc
            if not produced.keys() <= declared:
                unknown = set(produced) - set(declared)
                raise TransformError(
                    f"transform of {source} produced undeclared targets {sorted(unknown)}"
                )
            for target, spec, allowed, source_key_of, state in entries:
                values = produced.get(target)
                if values is None:
                    key = source_key_of(record)
                    if spec.owners:  # whether a merged row lives on depends on its other owners
                        general.append(TargetOp(spec.table, key, None, source, 0))
                        continue
                    slot = groups.get((target, None))
                    if slot is None:
                        slot = groups[target, None] = _read_group(spec, source, None, allowed)
                    slot[0].rows.setdefault(key_text(key), key)
                    continue
                columns = tuple(values)
                if columns != state[0]:
                    slot = groups.get((target, columns))
                    if slot is None:
                        slot = groups[target, columns] = _read_group(spec, source, columns, allowed)
                    state[:] = columns, slot[0].rows, slot[1]
                row = tuple(values.values())  # in ``columns`` order
                state[1].setdefault(key_text(state[2](row)), row)
        return ReadBatch([g for g, _ in groups.values()], general)

    def _plan(self, st: SourceTransform) -> list[_TargetPlan]:
        """Per target of ``st``: its spec, the source key columns of its key, and (for a
        merge) the columns ``st`` may write; resolved once per registry state, not per row."""
        cached = self._plans.get(st.source)
        if cached is not None and cached[0] is st:
            targets = self.targets
            for entry in cached[1]:
                if targets.get(entry[0]) is not entry[1]:
                    break
            else:
                return cached[1]
        plan: list[_TargetPlan] = []
        for target, mapping in st.targets.items():
            spec = self.targets[target]
            owned = spec.owned_by(st.source)
            allowed = None if owned is None else frozenset(owned) | frozenset(spec.key)
            source_key = tuple(mapping[c] for c in spec.key)
            plan.append((target, spec, allowed, _key_getter(source_key), _key_getter(spec.key)))
        self._plans[st.source] = (st, plan)
        return plan


KeyGetter = Callable[[Any], tuple[Any, ...]]
_TargetPlan = tuple[str, TargetSpec, frozenset[str] | None, KeyGetter, KeyGetter]


_NOTHING: Mapping[str, Mapping[str, Any]] = {}


def _no_group() -> list[Any]:
    """The per-target state of :meth:`Transforms.apply_reads` before its first row."""
    return [None, {}, None]


def _read_group(
    spec: TargetSpec, source: str, columns: tuple[str, ...] | None, allowed: frozenset[str] | None
) -> tuple[ReadGroup, KeyGetter]:
    """A new :class:`ReadGroup` of ``source``'s reads into ``spec``'s table writing
    ``columns`` (None: deletes), after the checks :meth:`Transforms.apply` makes per row, and
    the getter of a row's target key."""
    if columns is None:
        return ReadGroup(spec.table, source, None, (), {}), _key_getter(())
    missing = [c for c in spec.key if c not in columns]
    if missing:
        raise TransformError(
            f"transform of {source} -> {spec.table} left out key column(s) {missing}"
        )
    if allowed is not None and not allowed.issuperset(columns):
        extra = set(columns) - allowed
        raise TransformError(
            f"{source} writes {sorted(extra)} of {spec.table}, which it does not own"
        )
    positions = tuple(columns.index(c) for c in spec.key)
    return ReadGroup(spec.table, source, columns, positions, {}), _key_getter(positions)


def _key_getter(columns: tuple[str, ...] | tuple[int, ...]) -> KeyGetter:
    """``row -> tuple(row[c] for c in columns)`` without a generator per call (raises
    ``KeyError`` for a missing column, as the generator does); ``columns`` are names of a
    mapping's items or places in a tuple."""
    if len(columns) == 1:
        (column,) = columns
        return lambda row: (row[column],)
    if not columns:
        return lambda row: ()
    return cast(KeyGetter, operator.itemgetter(*columns))  # a tuple for several items


def _learn_key_impl(
    transforms: Transforms, st: SourceTransform, key: Mapping[str, Any]
) -> SourceTransform:
    rename = transforms.renamers[st.source]
    with transforms._lock:
        current = transforms.sources[st.source]
        targets = dict(current.targets)
        for target, mapping in current.targets.items():
            spec = transforms.targets[target]
            if not spec.key:
                transforms.targets[target] = TargetSpec(spec.table, tuple(rename(c) for c in key))
                targets[target] = {rename(c): c for c in key}
            elif not mapping:
                targets[target] = {rename(c): c for c in key}
        updated = SourceTransform(current.source, current.function, targets)
        transforms.sources[st.source] = updated
        return updated


def load_transforms(config: MigrationConfig) -> Transforms:
    """The registry for a migration: the user's module, plus declared transforms for tables
    the module does not cover (identity copies with renames, constants and conversions).

    The module defines either ``make_transforms(config) -> Transforms`` (preferred: schema
    names can come from the migration file) or a module-level ``transforms = Transforms()``.
    Each call returns a new registry; the module's own objects are never modified. For the
    rollback direction (``config.reverse_of`` set) it is the registry of the inverse transforms
    of the forward migration (:func:`dualwrite.transform.inverse_transforms`).
    """
    if config.reverse_of is not None:
        from dualwrite.transform._inverse import inverse_transforms

        return inverse_transforms(load_transforms(config.reverse_of), config.reverse_of)
    transforms = Transforms()
    if config.transform.module:
        try:
            module = importlib.import_module(config.transform.module)
        except ImportError as exc:
            raise TransformError(
                f"cannot import transform module {config.transform.module!r}: {exc}"
            ) from None
        factory = getattr(module, "make_transforms", None)
        found = factory(config) if callable(factory) else getattr(module, "transforms", None)
        if not isinstance(found, Transforms):
            raise TransformError(
                f"transform module {config.transform.module!r} must define make_transforms(config) "
                "returning a Transforms, or `transforms = Transforms()`"
            )
        transforms.sources.update(found.sources)
        transforms.targets.update(found.targets)
        transforms.inverses.update(found.inverses)
        transforms.inverse_columns.update(found.inverse_columns)
        transforms.sql_forms.update(found.sql_forms)
    for table in config.tables:
        if str(table.source) not in transforms.sources:
            _declare(transforms, table)
    transforms.check()
    return transforms


def _declare(transforms: Transforms, table: TableConfig) -> None:
    function, column_name = declared_transform(table)
    target = str(table.target)
    if table.key:
        key = [column_name(c) for c in table.key]
        transforms.target(target, key=key)
        mapping = {column_name(c): c for c in table.key}
    else:
        # Key columns are learnt from the first change (its key lists them in key order).
        transforms.targets[target] = TargetSpec(table.target, ())
        mapping = {}
    transforms.source(str(table.source), targets={target: mapping})(function)
    transforms.renamers[str(table.source)] = column_name
