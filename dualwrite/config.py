"""The migration file: one TOML document describing a whole migration.

:func:`load_migration` reads it into frozen dataclasses and validates everything it can
without touching a service: unknown keys, missing keys, wrong types, unsafe identifiers,
unresolvable ``${VAR}`` placeholders. Every problem raises :class:`ConfigError` naming the
file, the dotted key and what is wrong. URLs are redacted in every ``repr`` and message.

Example::

    name = "shop"

    [source]
    url = "${DUALWRITE_SOURCE_URL}"

    [target]
    url = "postgresql://dualwrite:${PGPASSWORD}@db.internal:5432/target"

    [kafka]
    bootstrap_servers = ["127.0.0.1:59092"]
    topic_prefix = "dualwrite.shop"

    [transform]
    module = "examples.shop.transform"

    [thresholds]
    max_lag_s = 30

    [[tables]]
    source = "public.customers"
    key = ["id"]
    target = "shop.customers"
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dualwrite.errors import ConfigError
from dualwrite.redaction import redact_url

__all__ = [
    "CaptureConfig",
    "DatabaseConfig",
    "KafkaConfig",
    "MigrationConfig",
    "QualifiedName",
    "RelayConfig",
    "TableConfig",
    "Thresholds",
    "TransformConfig",
    "load_migration",
    "parse_migration",
]

_PLACEHOLDER = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,180}$")
_MIGRATION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}

_ROOT_KEYS = frozenset(
    {"name", "source", "target", "kafka", "tables", "transform", "thresholds", "capture", "relay"}
)
_CAPTURE_KEYS = frozenset({"schema"})
_RELAY_KEYS = frozenset({"batch_size", "idle_poll_ms", "topic_partitions", "metrics_port"})
_CAPTURE_MODES = ("trigger", "outbox")
_DATABASE_KEYS = frozenset({"url"})
_KAFKA_KEYS = frozenset({"bootstrap_servers", "topic_prefix", "client_id"})
_TABLE_KEYS = frozenset(
    {"source", "target", "key", "capture", "rename", "drop", "constants", "convert"}
)
_TRANSFORM_KEYS = frozenset({"module"})
_THRESHOLD_KEYS = frozenset({"max_lag_s", "max_reconcile_age_s", "max_dead_letters"})


@dataclass(frozen=True)
class QualifiedName:
    """A schema-qualified PostgreSQL object name, kept unquoted; always quote it in SQL."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{_show_ident(self.schema)}.{_show_ident(self.name)}"


@dataclass(frozen=True)
class DatabaseConfig:
    """A PostgreSQL database, as a SQLAlchemy URL using the psycopg 3 driver."""

    url: str

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def libpq_url(self) -> str:
        """The same URL without the SQLAlchemy driver suffix, for psycopg and libpq tools."""
        return self.url.replace("postgresql+psycopg://", "postgresql://", 1)

    def __repr__(self) -> str:
        return f"DatabaseConfig(url={self.redacted_url!r})"


@dataclass(frozen=True)
class KafkaConfig:
    """The Kafka cluster and the prefix of every topic this migration creates."""

    bootstrap_servers: tuple[str, ...]
    topic_prefix: str
    client_id: str = "dualwrite"


@dataclass(frozen=True)
class TableConfig:
    """One captured source table and the target table it feeds.

    ``key`` is empty when the source table's primary key is to be used.
    """

    source: QualifiedName
    target: QualifiedName
    key: tuple[str, ...] = ()
    capture: str = "trigger"  # "trigger": row triggers; "outbox": the application records changes
    # declared transform (used when the transform module does not cover this table)
    rename: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    convert: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CaptureConfig:
    """Where capture keeps its changelog and triggers on the source database."""

    schema: str = "dualwrite"


@dataclass(frozen=True)
class RelayConfig:
    """How the relay moves the changelog to Kafka."""

    batch_size: int = 5000
    idle_poll_ms: int = 50
    topic_partitions: int = 8
    metrics_port: int = 0  # 0: no Prometheus endpoint


@dataclass(frozen=True)
class TransformConfig:
    """Where the user's transforms live: an importable module, or none for identity copies."""

    module: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """Limits the readiness report and alerts compare against."""

    max_lag_s: float = 60.0
    max_reconcile_age_s: float = 86_400.0
    max_dead_letters: int = 0


@dataclass(frozen=True)
class MigrationConfig:
    """A validated migration file."""

    name: str
    path: str
    source: DatabaseConfig
    target: DatabaseConfig
    kafka: KafkaConfig
    tables: tuple[TableConfig, ...]
    transform: TransformConfig = field(default_factory=TransformConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    reverse_of: MigrationConfig | None = field(default=None, repr=False, compare=False)
    """Set on the rollback direction (:func:`dualwrite.reverse.reverse_config`): the forward
    migration whose inverse transforms this one runs."""

    @property
    def is_reverse(self) -> bool:
        """True for the rollback direction (new tables -> old tables)."""
        return self.reverse_of is not None

    @property
    def changes_topic(self) -> str:
        """The topic every change event of this migration goes to (keyed by table and key)."""
        return f"{self.kafka.topic_prefix}.changes"

    def table(self, source: QualifiedName) -> TableConfig:
        """The table entry for ``source``; ``KeyError`` when it is not part of the migration."""
        for table in self.tables:
            if table.source == source:
                return table
        raise KeyError(str(source))


def load_migration(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> MigrationConfig:
    """Read and validate the migration file at ``path``.

    ``env`` fills ``${VAR}`` and ``${VAR:-default}`` placeholders (``$$`` is a literal ``$``);
    it defaults to ``os.environ``. Raises :class:`ConfigError` on any problem; touches no
    service. Thread-safe.
    """
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read the file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, None, f"not UTF-8 text (byte {exc.start})") from None
    return parse_migration(text, shown, env)


def parse_migration(
    text: str, path: str = "<string>", env: Mapping[str, str] | None = None
) -> MigrationConfig:
    """Validate migration-file ``text``; ``path`` is only used in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    resolved = _resolve_placeholders(doc, path, "", os.environ if env is None else env)
    root = _Section(resolved, path, "", _ROOT_KEYS)
    name = root.take("name", str, default=Path(path).stem if path != "<string>" else "migration")
    if not _MIGRATION_NAME.match(name):
        raise ConfigError(path, "name", "must be 1-63 letters, digits, '_' or '-'")
    source = _database(root.section("source", _DATABASE_KEYS))
    target = _database(root.section("target", _DATABASE_KEYS))
    kafka = _kafka(root.section("kafka", _KAFKA_KEYS))
    tables = _tables(root, path)
    transform = _transform(root.section("transform", _TRANSFORM_KEYS, required=False))
    thresholds = _thresholds(root.section("thresholds", _THRESHOLD_KEYS, required=False))
    capture = _capture(root.section("capture", _CAPTURE_KEYS, required=False))
    relay = _relay(root.section("relay", _RELAY_KEYS, required=False))
    root.finish()
    return MigrationConfig(
        name=name,
        path=path,
        source=source,
        target=target,
        kafka=kafka,
        tables=tables,
        transform=transform,
        thresholds=thresholds,
        capture=capture,
        relay=relay,
    )


def parse_qualified_name(text: str) -> QualifiedName:
    """Parse ``schema.table``, ``table`` (schema ``public``) or double-quoted parts.

    ``"odd.name"`` keeps its dot; ``""`` inside quotes is a literal quote. Raises ``ValueError``
    naming the problem.
    """
    parts = _split_identifier(text)
    if len(parts) == 1:
        return QualifiedName("public", _check_identifier(parts[0]))
    if len(parts) == 2:
        return QualifiedName(_check_identifier(parts[0]), _check_identifier(parts[1]))
    raise ValueError(f"{text!r} has {len(parts)} dot-separated parts; expected schema.table")


# --- sections -----------------------------------------------------------------------------

T = TypeVar("T")

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


class _Section:
    """A TOML table being consumed: every key taken is checked, the rest rejected on finish."""

    def __init__(
        self, data: Mapping[str, Any], path: str, prefix: str, known: frozenset[str] | None = None
    ) -> None:
        self.data = data
        self.path = path
        self.prefix = prefix
        self.seen: set[str] = set()
        if known is not None:
            # Unknown keys first: a misspelt key is the likelier mistake than a missing one.
            self._reject_unknown(known)

    def _reject_unknown(self, known: Iterable[str]) -> None:
        unknown = sorted(set(self.data) - set(known))
        if unknown:
            listed = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                self.path, self.key(unknown[0]), f"unknown key (known keys here: {listed})"
            )

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def take(self, name: str, kind: type[T], *, default: T | None = None) -> T:
        self.seen.add(name)
        if name not in self.data:
            if default is None:
                raise ConfigError(self.path, self.key(name), "missing (required)")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                self.path,
                self.key(name),
                f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(value)}",
            )
        return value

    def section(self, name: str, known: frozenset[str], *, required: bool = True) -> _Section:
        if name not in self.data and not required:
            self.seen.add(name)
            return _Section({}, self.path, self.key(name) + ".", known)
        value = self.take(name, dict)
        return _Section(value, self.path, self.key(name) + ".", known)

    def finish(self) -> None:
        """Reject any key no ``take`` asked for."""
        self._reject_unknown(self.seen)


def _database(sec: _Section) -> DatabaseConfig:
    raw = sec.take("url", str)
    sec.finish()
    try:
        url: URL = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(
            sec.path, sec.key("url"), f"not a database URL: {redact_url(raw)}"
        ) from None
    if url.drivername not in _DRIVERS:
        raise ConfigError(
            sec.path,
            sec.key("url"),
            f"unsupported scheme {url.drivername!r}; use postgresql:// (PostgreSQL via psycopg 3)",
        )
    if not url.database:
        raise ConfigError(sec.path, sec.key("url"), f"names no database: {redact_url(raw)}")
    normalised = url.set(drivername="postgresql+psycopg")
    return DatabaseConfig(normalised.render_as_string(hide_password=False))


def _kafka(sec: _Section) -> KafkaConfig:
    servers_raw = sec.take("bootstrap_servers", list)
    servers: list[str] = []
    for i, item in enumerate(servers_raw):
        if not isinstance(item, str) or not re.match(r"^[^\s:]+:\d{1,5}$", item):
            raise ConfigError(
                sec.path,
                f"{sec.key('bootstrap_servers')}[{i}]",
                f"must be 'host:port', got {item!r}",
            )
        servers.append(item)
    if not servers:
        raise ConfigError(sec.path, sec.key("bootstrap_servers"), "must name at least one broker")
    prefix = sec.take("topic_prefix", str)
    if not _TOPIC_PREFIX.match(prefix):
        raise ConfigError(
            sec.path, sec.key("topic_prefix"), "must be 1-180 of letters, digits, '.', '_' or '-'"
        )
    client_id = sec.take("client_id", str, default="dualwrite")
    sec.finish()
    return KafkaConfig(tuple(servers), prefix, client_id)


def _tables(root: _Section, path: str) -> tuple[TableConfig, ...]:
    items = root.take("tables", list)
    if not items:
        raise ConfigError(path, "tables", "must list at least one table ([[tables]])")
    tables: list[TableConfig] = []
    sources: set[QualifiedName] = set()
    for i, item in enumerate(items):
        prefix = f"tables[{i}]."
        if not isinstance(item, dict):
            raise ConfigError(path, f"tables[{i}]", f"must be a table, got {_describe(item)}")
        sec = _Section(item, path, prefix, _TABLE_KEYS)
        source = _qualified(sec, "source")
        target = _qualified(sec, "target")
        key_raw = sec.take("key", list, default=[])
        key: list[str] = []
        for j, col in enumerate(key_raw):
            where = f"{prefix}key[{j}]"
            if not isinstance(col, str):
                raise ConfigError(path, where, f"must be a column name, got {_describe(col)}")
            try:
                key.append(_check_identifier(col))
            except ValueError as exc:
                raise ConfigError(path, where, str(exc)) from None
        if len(set(key)) != len(key):
            raise ConfigError(path, f"{prefix}key", "lists a column twice")
        rename = _string_map(sec, "rename")
        convert = _string_map(sec, "convert")
        constants = dict(sec.take("constants", dict, default={}) or {})
        drop_raw = sec.take("drop", list, default=[])
        if not all(isinstance(c, str) for c in drop_raw):
            raise ConfigError(path, f"{prefix}drop", "must be an array of column names")
        capture = sec.take("capture", str, default="trigger")
        if capture not in _CAPTURE_MODES:
            raise ConfigError(
                path,
                f"{prefix}capture",
                f"must be one of {', '.join(_CAPTURE_MODES)}, got {capture!r}",
            )
        sec.finish()
        if source in sources:
            raise ConfigError(path, f"{prefix}source", f"{source} is listed twice")
        sources.add(source)
        tables.append(
            TableConfig(
                source=source,
                target=target,
                key=tuple(key),
                capture=capture,
                rename=rename,
                drop=tuple(drop_raw),
                constants=constants,
                convert=convert,
            )
        )
    return tuple(tables)


def _string_map(sec: _Section, name: str) -> dict[str, str]:
    raw = sec.take(name, dict, default={}) or {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise ConfigError(
                sec.path, f"{sec.key(name)}.{k}", f"must be a string, got {_describe(v)}"
            )
    return dict(raw)


def _qualified(sec: _Section, name: str) -> QualifiedName:
    raw = sec.take(name, str)
    try:
        return parse_qualified_name(raw)
    except ValueError as exc:
        raise ConfigError(sec.path, sec.key(name), str(exc)) from None


def _transform(sec: _Section) -> TransformConfig:
    module = sec.take("module", str, default="") or None
    if module is not None and not re.match(
        r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", module
    ):
        raise ConfigError(sec.path, sec.key("module"), f"not an importable module name: {module!r}")
    sec.finish()
    return TransformConfig(module)


def _thresholds(sec: _Section) -> Thresholds:
    defaults = Thresholds()
    max_lag_s = sec.take("max_lag_s", float, default=defaults.max_lag_s)
    max_age = sec.take("max_reconcile_age_s", float, default=defaults.max_reconcile_age_s)
    max_dead = sec.take("max_dead_letters", int, default=defaults.max_dead_letters)
    sec.finish()
    for key, value in (("max_lag_s", max_lag_s), ("max_reconcile_age_s", max_age)):
        if not value > 0:
            raise ConfigError(sec.path, sec.key(key), f"must be greater than 0, got {value}")
    if max_dead < 0:
        raise ConfigError(
            sec.path, sec.key("max_dead_letters"), f"must be 0 or more, got {max_dead}"
        )
    return Thresholds(max_lag_s, max_age, max_dead)


def _capture(sec: _Section) -> CaptureConfig:
    schema = sec.take("schema", str, default="dualwrite")
    try:
        _check_identifier(schema)
    except ValueError as exc:
        raise ConfigError(sec.path, sec.key("schema"), str(exc)) from None
    if len(schema) > 40:
        raise ConfigError(
            sec.path,
            sec.key("schema"),
            "must be at most 40 characters (trigger names derive from it)",
        )
    sec.finish()
    return CaptureConfig(schema)


def _relay(sec: _Section) -> RelayConfig:
    d = RelayConfig()
    values = {
        "batch_size": (sec.take("batch_size", int, default=d.batch_size), 1, 100_000),
        "idle_poll_ms": (sec.take("idle_poll_ms", int, default=d.idle_poll_ms), 1, 60_000),
        "topic_partitions": (
            sec.take("topic_partitions", int, default=d.topic_partitions),
            1,
            10_000,
        ),
        "metrics_port": (sec.take("metrics_port", int, default=d.metrics_port), 0, 65535),
    }
    sec.finish()
    for key, (value, low, high) in values.items():
        if not low <= value <= high:
            raise ConfigError(sec.path, sec.key(key), f"must be within {low}..{high}, got {value}")
    return RelayConfig(**{k: v for k, (v, _lo, _hi) in values.items()})


# --- helpers ------------------------------------------------------------------------------


def _resolve_placeholders(value: Any, path: str, key: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def fill(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group("name")
            if name in env:
                return env[name]
            if match.group("default") is not None:
                return match.group("default")
            raise ConfigError(path, key or None, f"environment variable {name} is not set")

        return _PLACEHOLDER.sub(fill, value)
    if isinstance(value, dict):
        return {
            k: _resolve_placeholders(v, path, f"{key}.{k}" if key else k, env)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve_placeholders(v, path, f"{key}[{i}]", env) for i, v in enumerate(value)]
    return value


def _split_identifier(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    quoted_part = False
    while i < len(text):
        ch = text[i]
        if ch == '"' and not current and not quoted_part:
            end = i + 1
            buf: list[str] = []
            while True:
                if end >= len(text):
                    raise ValueError(f"{text!r} has an unterminated double quote")
                if text[end] == '"':
                    if end + 1 < len(text) and text[end + 1] == '"':
                        buf.append('"')
                        end += 2
                        continue
                    break
                buf.append(text[end])
                end += 1
            current = buf
            quoted_part = True
            i = end + 1
            if i < len(text) and text[i] != ".":
                raise ValueError(f"{text!r}: unexpected {text[i]!r} after a quoted part")
            continue
        if ch == ".":
            parts.append("".join(current))
            current, quoted_part = [], False
        elif quoted_part:
            raise ValueError(f"{text!r}: unexpected {ch!r} after a quoted part")
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _check_identifier(name: str) -> str:
    if not name:
        raise ValueError("empty identifier")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"identifier {name!r} contains a control character")
    if len(name.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"identifier {name!r} is longer than PostgreSQL's {_MAX_IDENTIFIER_BYTES} bytes"
        )
    return name


def _show_ident(name: str) -> str:
    if re.match(r"^[a-z_][a-z0-9_$]*$", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _describe(value: Any) -> str:
    for kind, text in _TYPE_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return f"{text} ({value!r})" if kind in (str, int, float, bool) else text
    return type(value).__name__
