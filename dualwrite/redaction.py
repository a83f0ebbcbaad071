"""Removing secrets from connection URLs and from text that may contain them.

Every URL that reaches a log line, a report or an error message goes through
:func:`redact_url` first (invariant 9). Pure functions, thread-safe.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

# user:password@ inside any scheme://... URL; the password may contain anything but '@' and '/'.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<k>[?&](?:password|passwd|pwd|sslpassword)=)[^&\s]*")
_KEYWORD_SECRET = re.compile(r"(?i)(?P<k>\bpassword\s*=\s*)('[^']*'|\S+)")


def redact_url(url: str) -> str:
    """Return ``url`` with any password (in the userinfo or the query) replaced by ``***``.

    A string that is not a URL is returned with any ``password=...`` fragment masked.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.scheme or not parts.netloc:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hostport}" if sep else f"{user}@{hostport}"
    query = _QUERY_SECRET.sub(lambda m: m.group("k") + REDACTED, "?" + parts.query)[1:]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask URL passwords, ``password=`` keywords and each literal in ``secrets`` in ``text``.

    Used on driver error messages, which sometimes echo the connection string.
    """
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", text)
    out = _QUERY_SECRET.sub(lambda m: m.group("k") + REDACTED, out)
    out = _KEYWORD_SECRET.sub(lambda m: m.group("k") + REDACTED, out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, REDACTED)
    return out
