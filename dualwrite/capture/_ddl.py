"""SQL text for capture, built only with psycopg.sql so every identifier is quoted.

A table name holding quotes or semicolons is an identifier here, never SQL: the names go
through ``sql.Identifier`` and the strings through ``sql.Literal``. Every function, operator
and type the generated SQL uses is qualified with ``pg_catalog``, so the search_path of the
session that runs it (a writer firing a trigger, an application calling the outbox) cannot
change what it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from dualwrite.config import QualifiedName
from dualwrite.origin import ORIGIN_SETTING, TOOLKIT_ORIGIN

CHANGELOG = "changelog"
REGISTRY = "captured_tables"
RELAY_STATE = "relay_state"

OP_CODES = {"insert": "I", "update": "U", "delete": "D", "read": "R"}


@dataclass(frozen=True)
class TableShape:
    """What install learned about one source table from the catalog."""

    source: QualifiedName
    relid: int
    key: tuple[str, ...]
    types: dict[str, str]  # column -> regtype spelling, in column order

    @property
    def json_columns(self) -> tuple[str, ...]:
        return tuple(c for c, t in self.types.items() if t == "json")

    @property
    def key_types(self) -> tuple[str, ...]:
        return tuple(self.types[c] for c in self.key)


def qualified(name: QualifiedName) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(name.schema), sql.Identifier(name.name))


def in_schema(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def trigger_name(schema: str) -> str:
    return f"{schema}_capture"


def truncate_trigger_name(schema: str) -> str:
    return f"{schema}_no_truncate"


def function_name(relid: int) -> str:
    return f"capture_{relid}"


def source_label(name: QualifiedName) -> str:
    """The table's name as it appears in events: ``schema.table`` (quoted where needed)."""
    return str(name)


def create_schema_sql(schema: str) -> sql.Composed:
    s = sql.Identifier(schema)
    return sql.SQL(
        """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {changelog} (
    seq          bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    source_table text        NOT NULL,
    op           "char"      NOT NULL,
    key          json        NOT NULL,
    msg_key      text        NOT NULL,
    row_image    json,
    origin       "char"      NOT NULL DEFAULT 't',
    captured_at  timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_cost_delay = 0);
CREATE TABLE IF NOT EXISTS {registry} (
    source_table text PRIMARY KEY,
    relid        oid         NOT NULL,
    mode         text        NOT NULL,
    key_columns  text[]      NOT NULL,
    types        json        NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {relay_state} (
    id              int PRIMARY KEY CHECK (id = 1),
    relayed_total   bigint      NOT NULL DEFAULT 0,
    last_seq        bigint,
    last_relayed_at timestamptz
);
INSERT INTO {relay_state} (id) VALUES (1) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION {refuse_truncate}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of %.% is refused: dualwrite captures this table and a TRUNCATE would not reach the new store', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING HINT = 'DELETE the rows instead, or run `dualwrite capture uninstall` first';
END
$fn$;
"""
    ).format(
        s=s,
        changelog=in_schema(schema, CHANGELOG),
        registry=in_schema(schema, REGISTRY),
        relay_state=in_schema(schema, RELAY_STATE),
        refuse_truncate=in_schema(schema, "refuse_truncate"),
    )


def key_object(shape: TableShape, alias: str) -> sql.Composable:
    """``json_build_object('k1', alias.k1, ...)``: the key columns as a JSON object."""
    parts: list[sql.Composable] = []
    for column in shape.key:
        parts += [
            sql.Literal(column),
            sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column)),
        ]
    return sql.SQL("pg_catalog.json_build_object({})").format(sql.SQL(", ").join(parts))


def message_key(shape: TableShape, alias: str) -> sql.Composable:
    """``'schema.table:' || json_build_array(...)::text``: the Kafka key, the same text for one
    row whatever the writer's session settings (timestamptz keys are rendered in UTC)."""
    values: list[sql.Composable] = []
    for column, type_name in zip(shape.key, shape.key_types, strict=True):
        ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))
        if type_name == "timestamp with time zone":
            ref = sql.SQL("({} AT TIME ZONE 'UTC')").format(ref)
        values.append(ref)
    return sql.SQL(
        "{} OPERATOR(pg_catalog.||) pg_catalog.json_build_array({})::pg_catalog.text"
    ).format(sql.Literal(source_label(shape.source) + ":"), sql.SQL(", ").join(values))


def row_image(shape: TableShape, alias: str) -> sql.Composable:
    """``row_to_json(alias.*)``, with json columns carried as their exact text. ``alias.*``,
    not ``alias``: a column named like the alias would be taken for the row."""
    ref = sql.SQL("{}.*").format(sql.Identifier(alias))
    if not shape.json_columns:
        return sql.SQL("pg_catalog.row_to_json({})").format(ref)
    # The text comes from the column itself: json_each would drop surrounding whitespace.
    cases = sql.SQL(" ").join(
        sql.SQL(
            "WHEN e.k OPERATOR(pg_catalog.=) {} THEN pg_catalog.to_json({}.{}::pg_catalog.text)"
        ).format(sql.Literal(c), sql.Identifier(alias), sql.Identifier(c))
        for c in shape.json_columns
    )
    return sql.SQL(
        "(SELECT pg_catalog.json_object_agg(e.k, CASE {cases} ELSE e.v END) "
        "FROM pg_catalog.json_each(pg_catalog.row_to_json({ref})) AS e(k, v))"
    ).format(cases=cases, ref=ref)


def insert_change(
    schema: str, shape: TableShape, op: str, alias: str, with_row: bool, origin: str = "t"
) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {changelog} (source_table, op, key, msg_key, row_image, origin) "
        "VALUES ({label}, {op}, {key}, {msg_key}, {row}, {origin})"
    ).format(
        changelog=in_schema(schema, CHANGELOG),
        label=sql.Literal(source_label(shape.source)),
        op=sql.Literal(op),
        key=key_object(shape, alias),
        msg_key=message_key(shape, alias),
        row=row_image(shape, alias) if with_row else sql.SQL("NULL"),
        origin=sql.Literal(origin),
    )


def key_changed(shape: TableShape) -> sql.Composable:
    """True when an UPDATE changed a key column: ``ROW(OLD.k) IS DISTINCT FROM ROW(NEW.k)`` for
    key columns that are NOT NULL (install requires it), with ``pg_catalog``'s ``=``."""
    equal = sql.SQL(" AND ").join(
        sql.SQL("OLD.{c} OPERATOR(pg_catalog.=) NEW.{c}").format(c=sql.Identifier(c))
        for c in shape.key
    )
    return sql.SQL("({}) IS NOT TRUE").format(equal)


def trigger_function_sql(schema: str, shape: TableShape) -> sql.Composed:
    """The row-trigger function of one table.

    Cheap on the path every write takes: no ``SET search_path`` clause (it costs a GUC save,
    parse and restore on every call; the names are qualified instead), and the branches are
    ordered so that an UPDATE, the commonest operation, evaluates three conditions before its
    one INSERT. The key comparison runs only for UPDATEs. A trigger ``WHEN`` clause would skip
    the function call instead, but PostgreSQL re-reads a ``WHEN`` clause from its stored text
    on every statement, which costs more than it saves for one-row statements.
    """
    return sql.SQL(
        """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF pg_catalog.current_setting({setting}, true) OPERATOR(pg_catalog.=) {toolkit} THEN
        RETURN NULL;  -- applied by a dualwrite worker or backfill: never captured again
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        IF {key_changed} THEN
            -- a key change is the delete of the old key and the insert of the new one
            {delete_old};
            {insert_new};
        ELSE
            {update_new};
        END IF;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        {insert_new};
    ELSE
        {delete_old};
    END IF;
    RETURN NULL;
END
$fn$;
"""
    ).format(
        fn=in_schema(schema, function_name(shape.relid)),
        setting=sql.Literal(ORIGIN_SETTING),
        toolkit=sql.Literal(TOOLKIT_ORIGIN),
        key_changed=key_changed(shape),
        delete_old=insert_change(schema, shape, "D", "old", with_row=False),
        insert_new=insert_change(schema, shape, "I", "new", with_row=True),
        update_new=insert_change(schema, shape, "U", "new", with_row=True),
    )


def create_triggers_sql(schema: str, shape: TableShape) -> sql.Composed:
    table = qualified(shape.source)
    return sql.SQL(
        """
DROP TRIGGER IF EXISTS {trg} ON {table};
CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {fn}();
DROP TRIGGER IF EXISTS {trunc} ON {table};
CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {refuse}();
"""
    ).format(
        trg=sql.Identifier(trigger_name(schema)),
        trunc=sql.Identifier(truncate_trigger_name(schema)),
        table=table,
        fn=in_schema(schema, function_name(shape.relid)),
        refuse=in_schema(schema, "refuse_truncate"),
    )
