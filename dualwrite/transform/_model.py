"""What a transform produces: operations on target rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from dualwrite.config import QualifiedName


def key_text(values: tuple[Any, ...]) -> str:
    """The canonical text of a target key, used by the version bookkeeping.

    JSON array of the key values (``str`` for dates, UUIDs, decimals), so equal keys always
    give equal text and no separator can collide.
    Single ``int`` and ``str`` keys (the common case) take a shortcut that gives the same
    text as :func:`json.dumps` without its per-call encoder set-up.
    """
    if len(values) == 1:
        value = values[0]
        kind = type(value)
        if kind is int:
            return f"[{value}]"
        if kind is str:
            return f"[{encode_basestring(value)}]"
    return json.dumps(list(values), default=str, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class TargetSpec:
    """One target table: its key columns and, for merges, which source owns which columns.

    ``owners`` maps a source table to the columns it writes. A merged row exists while any of
    its owners has a row for that key; each owner's columns hold that owner's latest values,
    or NULL once its row is deleted. This definition depends on each owner's latest change
    only, never on the order the owners' changes arrive in, so it converges exactly.
    """

    table: QualifiedName
    key: tuple[str, ...]
    owners: Mapping[str, tuple[str, ...]] | None = None

    def owned_by(self, source: str) -> tuple[str, ...] | None:
        """The columns ``source`` may write, or None when it writes whole rows."""
        if not self.owners:
            return None
        return self.owners.get(source, ())


@dataclass(frozen=True, init=False)
class TargetOp:
    """Upsert (``values`` set) or delete (``values`` None) of one target row by one source.

    ``version`` is the source version (changelog sequence) of the change it came from.
    """

    target: QualifiedName
    key: tuple[Any, ...]
    values: Mapping[str, Any] | None
    source: str
    version: int

    def __init__(
        self,
        target: QualifiedName,
        key: tuple[Any, ...],
        values: Mapping[str, Any] | None,
        source: str,
        version: int,
    ) -> None:
        # One or more per change event: the fields go straight into the instance dict (the
        # frozen dataclass __init__ calls object.__setattr__ per field, twice the cost).
        d = self.__dict__
        d["target"] = target
        d["key"] = key
        d["values"] = values
        d["source"] = source
        d["version"] = version

    @property
    def is_delete(self) -> bool:
        return self.values is None

    @property
    def key_text(self) -> str:
        return key_text(self.key)


@dataclass
class ReadGroup:
    """The snapshot reads (version 0: the backfill) of one source into one target table that
    write the same ``columns``, or with ``columns`` None, delete (the source rows the
    transform filters out of the target).

    ``rows`` maps each target key's :func:`key_text` to the row's values in ``columns``
    order, or for deletes to the target key; the first read of a key stays, as in
    ``Applier.apply``. ``key_positions`` are the target key columns' places in a row."""

    target: QualifiedName
    source: str
    columns: tuple[str, ...] | None
    key_positions: tuple[int, ...]
    rows: dict[str, tuple[Any, ...]]

    def key_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The target key of one of :attr:`rows`' values."""
        if self.columns is None:
            return row
        return tuple(row[i] for i in self.key_positions)

    def op_of(self, row: tuple[Any, ...]) -> TargetOp:
        """One of :attr:`rows`' values as a :class:`TargetOp` (for the general path)."""
        values = None if self.columns is None else dict(zip(self.columns, row, strict=True))
        return TargetOp(self.target, self.key_of(row), values, self.source, 0)


@dataclass
class ReadBatch:
    """The target writes of a chunk of snapshot reads, grouped as the backfill writes them:
    :class:`ReadGroup` by (target, source, columns), and the operations that need the general
    path (deletes of merged rows: whether the row lives on depends on its other owners)."""

    groups: list[ReadGroup]
    general: list[TargetOp]

    @property
    def operations(self) -> int:
        return sum(len(g.rows) for g in self.groups) + len(self.general)

    @property
    def targets(self) -> set[QualifiedName]:
        return {g.target for g in self.groups} | {op.target for op in self.general}
