"""SIGTERM and Ctrl-C for the long-running commands: finish the work in hand, then stop."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("dualwrite.cli")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; the library loops check it between batches."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("signal %d received: finishing the work in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
