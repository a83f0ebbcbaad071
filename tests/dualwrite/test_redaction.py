"""No secret survives redaction, whatever the password looks like."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from dualwrite.redaction import redact_text, redact_url


def test_redact_url_masks_userinfo_password_and_keeps_the_rest() -> None:
    url = "postgresql+psycopg://app:hunter2@db.internal:5432/source?sslmode=require"
    assert redact_url(url) == "postgresql+psycopg://app:***@db.internal:5432/source?sslmode=require"


def test_redact_url_masks_password_in_the_query() -> None:
    assert (
        redact_url("postgresql://db/x?user=a&password=hunter2")
        == "postgresql://db/x?user=a&password=***"
    )


def test_url_without_password_is_unchanged() -> None:
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"


def test_redact_text_masks_urls_keywords_and_literal_secrets() -> None:
    text = 'failed for postgresql://u:pw1@h/db (password=pw2) token "pw3"'
    out = redact_text(text, ("pw3",))
    assert "pw1" not in out and "pw2" not in out and "pw3" not in out


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and len(s) >= 4))
def test_no_password_survives_in_a_url(password: str) -> None:
    url = f"postgresql://app:{quote(password, safe='')}@db:5432/source"
    redacted = redact_url(url)
    assert quote(password, safe="") not in redacted
    assert redacted == "postgresql://app:***@db:5432/source"
    assert quote(password, safe="") not in redact_text(f"error: cannot connect to {url}")
