"""dualwrite: migrate live data from an old PostgreSQL schema to a new one through Kafka.

The public surface of the write path. Submodules not re-exported here are internal.
"""

import logging
from typing import TYPE_CHECKING

from dualwrite._lazy import lazy_attributes
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

# Imported on first use: ``dualwrite.connectivity`` imports kafka-python, which commands
# that never talk to Kafka (reconcile without differences) need not pay for.
__getattr__ = lazy_attributes(
    __name__,
    dict.fromkeys(("ServiceCheck", "check_database", "check_kafka"), "dualwrite.connectivity"),
)


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
