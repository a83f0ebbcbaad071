"""dualwrite: migrate live data from an old PostgreSQL schema to a new one through Kafka.

The public surface of the write path. Submodules not re-exported here are internal.
"""

import logging
from typing import TYPE_CHECKING, Any

from dualwrite.config import (
    DatabaseConfig,
    KafkaConfig,
    MigrationConfig,
    QualifiedName,
    TableConfig,
    Thresholds,
    TransformConfig,
    load_migration,
    parse_migration,
)
from dualwrite.db import make_engine
from dualwrite.errors import ConfigError, DevStackError, DualwriteError, ServiceUnavailableError
from dualwrite.redaction import redact_text, redact_url

if TYPE_CHECKING:
    from dualwrite.connectivity import ServiceCheck, check_database, check_kafka

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {"ServiceCheck", "check_database", "check_kafka"}
"""Names imported on first use: ``dualwrite.connectivity`` imports kafka-python, which
commands that never talk to Kafka (reconcile without differences) need not pay for."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from dualwrite import connectivity

        return getattr(connectivity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DatabaseConfig",
    "DevStackError",
    "DualwriteError",
    "KafkaConfig",
    "MigrationConfig",
    "QualifiedName",
    "ServiceCheck",
    "ServiceUnavailableError",
    "TableConfig",
    "Thresholds",
    "TransformConfig",
    "__version__",
    "check_database",
    "check_kafka",
    "load_migration",
    "make_engine",
    "parse_migration",
    "redact_text",
    "redact_url",
]
