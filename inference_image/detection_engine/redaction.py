"""Credentials out of free text: the one redactor for messages on both sides (engine rows, task logs, records).

Exception texts from fsspec, aiohttp (`ClientResponseError` prints the URL with its `?token=`), gcsfs and the
Google client hold whole URLs; this removes what could let a reader fetch what the run fetched: a URL's
`user:pass@` and its query or fragment (signed-URL tokens), `token=`/`key=`-style parameters anywhere, and
`Bearer`/`Basic` credentials. Pure Python, so the Airflow side can import it when DAG files are parsed.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_URL_QUERY = re.compile(r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s?#]*)[?#][^\s'\"<>)\]]*")
_SECRET_PARAM = re.compile(
    r"(?i)\b(?P<key>access_token|token|key|sig|signature|password|secret|credential)s?=[^&\s'\"]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\"]+")


def redact_text(text: str) -> str:
    """`text` with URL credentials, URL queries, secret parameters and bearer/basic credentials removed."""
    text = _URL_USERINFO.sub(r"\g<scheme>", text)
    text = _URL_QUERY.sub(r"\g<url>", text)
    text = _SECRET_PARAM.sub(r"\g<key>=<redacted>", text)
    return _BEARER.sub(r"\1 <redacted>", text)


_SPACE = re.compile(r"\s+")


def redact_line(text: str, max_chars: int = 200) -> str:
    """`redact_text` as one short line (whitespace collapsed, cut at `max_chars`), for an error row's detail."""
    text = _SPACE.sub(" ", redact_text(text)).strip()
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
