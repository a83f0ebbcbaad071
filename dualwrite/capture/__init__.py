"""Capture: every committed write to the captured source tables becomes a change record.

Row triggers (``install``) or the application itself (:class:`Outbox`) write the record in
the same transaction as the business write, into the changelog the relay publishes.
"""

from typing import TYPE_CHECKING

from dualwrite._lazy import lazy_attributes

if TYPE_CHECKING:
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

_WHERE = {
    "CaptureError": "dualwrite.capture._install",
    "CaptureStatus": "dualwrite.capture._install",
    "Outbox": "dualwrite.capture.outbox",
    "TableCaptureStatus": "dualwrite.capture._install",
    "TableShape": "dualwrite.capture._ddl",
    "inspect_table": "dualwrite.capture._install",
    "install": "dualwrite.capture._install",
    "status": "dualwrite.capture._install",
    "uninstall": "dualwrite.capture._install",
}
"""Where each public name lives. Imported on first use, so that reading table shapes
(``dualwrite.capture._ddl``, used by reconcile, backfill and the worker) does not import the
installer or the outbox, and with it SQLAlchemy's ORM."""


__getattr__ = lazy_attributes(__name__, _WHERE)
