"""Building SQLAlchemy engines for the migration's databases.

Only the CLI (and test fixtures) build engines; library functions receive them. Every engine
pins the session settings later comparisons depend on (UTC, ISO dates) and never echoes SQL.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from dualwrite.config import DatabaseConfig

__all__ = ["make_engine"]


def make_engine(db: DatabaseConfig, *, connect_timeout_s: int = 10, pool_size: int = 5) -> Engine:
    """An engine for ``db`` with pinned session settings; connections are made lazily."""
    return create_engine(
        db.url,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": connect_timeout_s,
            "options": "-c timezone=UTC -c datestyle=ISO,YMD -c intervalstyle=iso_8601",
            "application_name": "dualwrite",
        },
    )
