"""The migration file loader: valid files load, every kind of bad input names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dualwrite import ConfigError, QualifiedName, load_migration, parse_migration
from dualwrite.config import parse_qualified_name

REPO = Path(__file__).resolve().parents[2]

VALID = """
name = "shop"
[source]
url = "postgresql://app:s3cret@db1:5432/source"
[target]
url = "postgres://app:s3cret@db2/target"
[kafka]
bootstrap_servers = ["k1:9092", "k2:9092"]
topic_prefix = "dualwrite.shop"
[transform]
module = "examples.shop.transform"
[thresholds]
max_lag_s = 15
[[tables]]
source = "legacy.customers"
key = ["id"]
target = "shop.customers"
[[tables]]
source = "orders"
target = "shop.orders"
"""


def _error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_migration(text, "m.toml", env or {})
    return info.value


def test_valid_file_loads_into_frozen_dataclasses() -> None:
    cfg = parse_migration(VALID, "m.toml", {})
    assert cfg.name == "shop"
    assert cfg.source.url == "postgresql+psycopg://app:s3cret@db1:5432/source"
    assert cfg.target.url == "postgresql+psycopg://app:s3cret@db2/target"
    assert cfg.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert cfg.tables[0].source == QualifiedName("legacy", "customers")
    assert cfg.tables[0].key == ("id",)
    assert cfg.tables[1].source == QualifiedName("public", "orders")
    assert cfg.tables[1].key == ()
    assert cfg.transform.module == "examples.shop.transform"
    assert cfg.thresholds.max_lag_s == 15.0
    assert cfg.thresholds.max_dead_letters == 0
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]


def test_repr_and_redacted_url_hide_the_password() -> None:
    cfg = parse_migration(VALID, "m.toml", {})
    assert "s3cret" not in repr(cfg)
    assert cfg.source.redacted_url == "postgresql+psycopg://app:***@db1:5432/source"


def test_example_files_are_valid() -> None:
    for path in sorted((REPO / "examples").rglob("*.toml")):
        load_migration(path, env={})


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_migration(tmp_path / "nope.toml")


def test_invalid_toml_names_the_line() -> None:
    err = _error("[source\nurl = 1")
    assert "invalid TOML" in str(err) and "line 1" in str(err)


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (("topic_prefix =", "topic_prefx ="), "kafka.topic_prefx", "unknown key"),
        (('name = "shop"', 'name = "shop"\ncolour = "red"'), "colour", "unknown key"),
        (('key = ["id"]', 'key = ["id"]\nkeys = ["x"]'), "tables[0].keys", "unknown key"),
        (("max_lag_s = 15", 'max_lag_s = "15"'), "thresholds.max_lag_s", "must be a number"),
        (("max_lag_s = 15", "max_lag_s = 0"), "thresholds.max_lag_s", "greater than 0"),
        (('key = ["id"]', "key = [1]"), "tables[0].key[0]", "must be a column name"),
        (('key = ["id"]', 'key = ["id", "id"]'), "tables[0].key", "twice"),
        (
            ('topic_prefix = "dualwrite.shop"', 'topic_prefix = "bad prefix"'),
            "kafka.topic_prefix",
            "letters",
        ),
        (('["k1:9092", "k2:9092"]', '["k1"]'), "kafka.bootstrap_servers[0]", "host:port"),
        (('["k1:9092", "k2:9092"]', "[]"), "kafka.bootstrap_servers", "at least one"),
        (('url = "postgres://app:s3cret@db2/target"', ""), "target.url", "missing"),
        (
            ("postgres://app:s3cret@db2/target", "mysql://app:s3cret@db2/target"),
            "target.url",
            "unsupported scheme",
        ),
        (
            ("postgres://app:s3cret@db2/target", "postgres://app:s3cret@db2"),
            "target.url",
            "names no database",
        ),
        (('source = "orders"', 'source = "legacy.customers"'), "tables[1].source", "listed twice"),
        (('source = "orders"', 'source = "a.b.c"'), "tables[1].source", "3 dot-separated parts"),
        (
            ('source = "orders"', 'source = "bad\\u0000name"'),
            "tables[1].source",
            "control character",
        ),
        (('source = "orders"', f'source = "{"x" * 64}"'), "tables[1].source", "63 bytes"),
        (
            ('module = "examples.shop.transform"', 'module = "../evil"'),
            "transform.module",
            "importable",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_problem(
    edit: tuple[str, str], key: str, problem: str
) -> None:
    assert edit[0] in VALID
    err = _error(VALID.replace(edit[0], edit[1], 1))
    assert err.path == "m.toml"
    assert err.key == key
    assert problem in err.problem
    assert "s3cret" not in str(err)


def test_placeholders_fill_from_env_with_defaults_and_escapes() -> None:
    text = VALID.replace(
        "postgresql://app:s3cret@db1:5432/source", "postgresql://app:${PW}@${HOST:-db9}:5432/source"
    ).replace('topic_prefix = "dualwrite.shop"', 'topic_prefix = "${PREFIX:-p}"')
    cfg = parse_migration(text, "m.toml", {"PW": "pa$$word"})
    url = make_url(cfg.source.url)
    assert (url.password, url.host) == ("pa$$word", "db9")  # values from env are not re-expanded
    assert cfg.kafka.topic_prefix == "p"


def test_missing_environment_variable_names_key_and_variable() -> None:
    err = _error(VALID.replace("s3cret@db1", "${DB_PASSWORD}@db1"))
    assert err.key == "source.url"
    assert "DB_PASSWORD is not set" in err.problem


def test_dollar_dollar_is_a_literal_dollar() -> None:
    cfg = parse_migration(VALID.replace("s3cret@db1", "a$$b@db1"), "m.toml", {})
    assert make_url(cfg.source.url).password == "a$b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customers", QualifiedName("public", "customers")),
        ("legacy.customers", QualifiedName("legacy", "customers")),
        ('"Legacy"."My.Table"', QualifiedName("Legacy", "My.Table")),
        ('x."a""; DROP TABLE t; --"', QualifiedName("x", 'a"; DROP TABLE t; --')),
        ("we;ird.na'me", QualifiedName("we;ird", "na'me")),
    ],
)
def test_qualified_names_keep_hostile_characters_verbatim(
    text: str, expected: QualifiedName
) -> None:
    assert parse_qualified_name(text) == expected


def test_qualified_name_str_quotes_what_needs_quoting() -> None:
    assert str(QualifiedName("public", "orders")) == "public.orders"
    assert str(QualifiedName("x", 'a"b')) == 'x."a""b"'


@pytest.mark.parametrize("text", ['"unterminated', '"a"b.c', "", "a..b", '"a".'])
def test_malformed_qualified_names_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_qualified_name(text)
