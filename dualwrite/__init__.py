"""dualwrite: migrate live data from an old PostgreSQL schema to a new one through Kafka.

The public surface of the write path. Submodules not re-exported here are internal.
"""

import logging

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
from dualwrite.connectivity import ServiceCheck, check_database, check_kafka
from dualwrite.db import make_engine
from dualwrite.errors import ConfigError, DevStackError, DualwriteError, ServiceUnavailableError
from dualwrite.redaction import redact_text, redact_url

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

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
