"""Marking the toolkit's own writes, so capture never records them again (no replication loop).

Every transaction in which dualwrite writes user tables (the worker's and the backfill's
:class:`dualwrite.apply.Applier`, repair) runs :data:`MARK_TOOLKIT_WRITE` first. The setting
is transaction-local (``SET LOCAL``): it ends with the transaction, survives connection
pooling in transaction mode, needs no privilege (any role may set a custom ``prefix.name``
parameter) and costs one statement per transaction. The generated capture triggers return
before recording anything when they see it, so a row the forward worker applies to the new
tables is not captured by the reverse triggers installed there, and a row the reverse worker
applies to the old tables is not captured by the forward triggers. Application writes never
set it, so they are captured as before. See ``docs/rollback.md``.

Like pglogical's default (``forward_origins = '{}'``), a change that arrived by replication is
not forwarded again by any dualwrite capture: chaining two dualwrite migrations (old -> new ->
third) through one store would need the middle store's writes captured, which this rules out.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MARK_TOOLKIT_WRITE", "ORIGIN_SETTING", "TOOLKIT_ORIGIN"]

ORIGIN_SETTING: Final = "dualwrite.origin"
"""The custom run-time parameter that carries the origin of a transaction's writes."""

TOOLKIT_ORIGIN: Final = "dualwrite"
"""Its value in transactions that apply replicated changes."""

MARK_TOOLKIT_WRITE: Final = f"SET LOCAL {ORIGIN_SETTING} = '{TOOLKIT_ORIGIN}'"
"""The statement that marks the current transaction as the toolkit's own write."""
