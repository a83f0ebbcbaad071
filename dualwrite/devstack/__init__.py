"""Local PostgreSQL 15 and Apache Kafka (KRaft) for development, tests, CI and the demo.

No Docker needed: PostgreSQL runs from the machine's server binaries, Kafka from its own jars
fetched from Maven Central. The CLI's ``dualwrite dev up | down | status | env | run`` are thin
layers over these functions.
"""

from dualwrite.devstack._settings import DevStackSettings
from dualwrite.devstack._smoke import SmokeResult, smoke
from dualwrite.devstack._stack import ServiceStatus, StackStatus, down, run_with_stack, status, up

__all__ = [
    "DevStackSettings",
    "ServiceStatus",
    "SmokeResult",
    "StackStatus",
    "down",
    "run_with_stack",
    "smoke",
    "status",
    "up",
]
