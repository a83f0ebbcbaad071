"""Capture: every committed write to the captured source tables becomes a change record.

Row triggers (``install``) or the application itself (:class:`Outbox`) write the record in
the same transaction as the business write, into the changelog the relay publishes.
"""

from dualwrite.capture._ddl import TableShape
from dualwrite.capture._install import (
    CaptureError,
    CaptureStatus,
    TableCaptureStatus,
    inspect_table,
    install,
    status,
    uninstall,
)
from dualwrite.capture.outbox import Outbox

__all__ = [
    "CaptureError",
    "CaptureStatus",
    "Outbox",
    "TableCaptureStatus",
    "TableShape",
    "inspect_table",
    "install",
    "status",
    "uninstall",
]
