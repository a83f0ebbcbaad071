"""Where the local services live and which ports they use, read from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dualwrite.errors import DevStackError

POM_PATH = Path(__file__).with_name("pom.xml")

# Defaults chosen not to collide with a PostgreSQL (5432) or Kafka (9092/9093) already running.
DEFAULT_PG_PORT = 55432
DEFAULT_KAFKA_PORT = 59092
DEFAULT_KAFKA_CONTROLLER_PORT = 59093


@dataclass(frozen=True)
class DevStackSettings:
    """Settings of the local PostgreSQL and Kafka used for development, tests and the demo.

    Every field can be set from an environment variable (see :meth:`from_env`).
    """

    state_dir: Path
    cache_dir: Path
    pg_bin: Path
    pg_port: int = DEFAULT_PG_PORT
    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    pg_user: str = "dualwrite"
    pg_password: str = "dualwrite"  # noqa: S105  (local dev cluster on 127.0.0.1 only)
    kafka_heap_mb: int = 512
    start_timeout_s: float = 120.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> DevStackSettings:
        """Build settings from ``DUALWRITE_*`` variables; relative folders resolve from ``cwd``.

        ``DUALWRITE_DEV_DIR`` (default ``./.dualwrite-dev``), ``DUALWRITE_CACHE_DIR`` (default
        ``./.dualwrite-cache``), ``DUALWRITE_PG_BIN`` (default ``/usr/lib/postgresql/15/bin``),
        ``DUALWRITE_PG_PORT`` (55432), ``DUALWRITE_KAFKA_PORT`` (59092),
        ``DUALWRITE_KAFKA_CONTROLLER_PORT`` (59093), ``DUALWRITE_KAFKA_HEAP_MB`` (512).
        Raises :class:`DevStackError` naming the variable when a value is invalid.
        """
        env = os.environ if env is None else env
        base = cwd or Path.cwd()

        def folder(var: str, default: str) -> Path:
            return (base / env.get(var, default)).resolve()

        ports = {
            "DUALWRITE_PG_PORT": _int(env, "DUALWRITE_PG_PORT", DEFAULT_PG_PORT, 1, 65535),
            "DUALWRITE_KAFKA_PORT": _int(env, "DUALWRITE_KAFKA_PORT", DEFAULT_KAFKA_PORT, 1, 65535),
            "DUALWRITE_KAFKA_CONTROLLER_PORT": _int(
                env, "DUALWRITE_KAFKA_CONTROLLER_PORT", DEFAULT_KAFKA_CONTROLLER_PORT, 1, 65535
            ),
        }
        if len(set(ports.values())) != len(ports):
            raise DevStackError(f"the three service ports must differ, got {ports}")
        return cls(
            state_dir=folder("DUALWRITE_DEV_DIR", ".dualwrite-dev"),
            cache_dir=folder("DUALWRITE_CACHE_DIR", ".dualwrite-cache"),
            pg_bin=Path(env.get("DUALWRITE_PG_BIN", "/usr/lib/postgresql/15/bin")),
            pg_port=ports["DUALWRITE_PG_PORT"],
            kafka_port=ports["DUALWRITE_KAFKA_PORT"],
            kafka_controller_port=ports["DUALWRITE_KAFKA_CONTROLLER_PORT"],
            kafka_heap_mb=_int(env, "DUALWRITE_KAFKA_HEAP_MB", 512, 128, 65536),
        )

    def database_url(self, database: str) -> str:
        """SQLAlchemy URL of one database of the local cluster (``source`` or ``target``)."""
        return (
            f"postgresql+psycopg://{self.pg_user}:{self.pg_password}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def service_env(self) -> dict[str, str]:
        """The variables that point the test suite, the examples and the demo at this stack."""
        return {
            "DUALWRITE_SOURCE_URL": self.database_url("source"),
            "DUALWRITE_TARGET_URL": self.database_url("target"),
            "DUALWRITE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
        }

    @property
    def kafka_version(self) -> str:
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM_PATH.read_text())
        if not match:
            raise DevStackError(f"{POM_PATH} does not declare <kafka.version>")
        return match.group(1).strip()


def _int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    raw = env.get(var)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DevStackError(f"{var}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise DevStackError(f"{var}={value} is outside {low}..{high}")
    return value
