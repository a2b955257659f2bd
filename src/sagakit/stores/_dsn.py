"""Keeping a PostgreSQL connection string's password out of error messages.

libpq repeats a piece of a connection string it cannot parse — a percent-encoded
token (``invalid percent-encoded token: "pa%zz"``), the whole URL (``end of string
reached when looking for matching "]" ... in URI: "postgresql://app:pw@[::1/db"``), a
word of a password written unquoted (``missing "=" after "word" ...``) — so a message
built from its error could print the password.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_REDACTED = "***"
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)(.*)", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_QUOTED = re.compile(r"""(["'])(.*?)\1""")


def _passwords(dsn: str) -> list[str]:
    """Every way ``dsn`` may write a password, over-inclusively."""
    found: list[str] = []
    scheme, sep, rest = dsn.partition("://")
    if sep and "@" in rest and scheme.isidentifier():
        # The user info, as libpq reads it (up to the first "@" before any "/"), and as
        # far as the last "@" (a password with an unencoded "/" or "@").
        for userinfo in {rest.split("/", 1)[0].split("@", 1)[0], rest.rsplit("@", 1)[0]}:
            found.append(userinfo.partition(":")[2])
    found += _QUERY_PASSWORD.findall(dsn)
    match = _KEYWORD_PASSWORD.search(dsn)
    if match is not None:
        value, after = match.groups()
        found.append(value)
        if value.startswith("'"):
            found.append(value.strip("'"))
            if not value.endswith("'") or len(value) == 1:
                found.append(after)  # an unterminated quote: all the rest is its value
        # A password written unquoted with a space in it: libpq takes its next words for
        # keywords, and names them ("missing "=" after ...").
        found += [word for word in after.split() if "=" not in word]
    found += [unquote(text) for text in found]
    return [text for text in found if text]


def redacted(text: str, dsn: str) -> str:
    """``text`` (an error message) with any quoted piece of it that is part of ``dsn``'s
    password, or holds it (or the DSN), replaced by ``***`` (libpq and psycopg quote what
    they repeat), and the DSN or a password of 4 characters or more wherever else it
    appears. (A shorter one is too likely to be part of the words around it.)"""
    secrets = _passwords(dsn)
    if not secrets and dsn not in text:
        return text

    def hide(match: re.Match[str]) -> str:
        piece = match[2]
        if piece and (
            dsn in piece or any(piece in s or (len(s) >= 4 and s in piece) for s in secrets)
        ):
            return f"{match[1]}{_REDACTED}{match[1]}"
        return match[0]

    text = _QUOTED.sub(hide, text)
    for secret in sorted({dsn, *secrets}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    return text


__all__ = ["redacted"]
