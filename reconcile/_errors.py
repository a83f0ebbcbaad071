"""The exceptions of the reconcile package."""

from __future__ import annotations

from collections.abc import Sequence

from dualwrite.errors import DualwriteError


class ReconcileError(DualwriteError):
    """Root of the errors the reconcile package raises on purpose."""


class RepairError(ReconcileError):
    """A repair was refused before anything was sent: the report cannot be mapped onto this
    migration. ``problems`` lists every entry at fault (the message shows the first few)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        shown = "".join(f"\n  - {p}" for p in self.problems[:10])
        more = f"\n  ... and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        super().__init__(message + shown + more)
