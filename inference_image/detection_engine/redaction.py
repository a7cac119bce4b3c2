"""Credentials out of free text: the one redactor for messages on both sides (engine rows, task logs, records).

Exception texts from fsspec, aiohttp (`ClientResponseError` prints the URL with its `?token=`), gcsfs and the
Google client hold whole URLs; this removes what could let a reader fetch what the run fetched: a URL's
`user:pass@` and its query or fragment (signed-URL tokens), `token=`/`key=`-style parameters anywhere, and
`Bearer`/`Basic` credentials. Pure Python, so the Airflow side can import it when DAG files are parsed.

`redact_logs()` applies it to every log record the process creates, so a library's own log lines (fsspec's
`fsspec.http` logs each URL at DEBUG; gcsfs installs a DEBUG handler of its own under GCSFS_DEBUG) and
logged tracebacks are redacted whatever logger, level or handler they go to.
"""

from __future__ import annotations

import logging
import re
import traceback

# A `***` already put in place of credentials or a query (`uris.redact`, for records) is left as it is, so that
# text redacted once keeps its mask when a log record of it is redacted again.
_MASKED = r"\*\*\*(?=[:,;.]?(?:$|[\s'\"<>)\]]))"
# Userinfo runs to the last '@' before the path, as HTTP clients split it: a password may hold a raw '@'.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?!\*\*\*@)[^/?#\s]*@")
_URL_QUERY = re.compile(rf"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s?#]*)(?!\?{_MASKED})[?#][^\s'\"<>)\]]*")
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


def redact_logs() -> None:
    """Redact every log record created from now on in this process: message, traceback and stack.

    Done in the record factory rather than in a filter on some handler: handlers that libraries add
    themselves (gcsfs's under GCSFS_DEBUG) and records that propagate are covered too. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        return _redacted(previous(*args, **kwargs))

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


def _redacted(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it itself when the record is emitted
        return record
    record.msg, record.args = redact_text(message), None
    if record.exc_info and record.exc_info[0] is not None:  # rendered as Formatter.formatException does
        record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    return record
