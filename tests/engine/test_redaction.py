"""redact_logs: library log lines and logged tracebacks lose URL tokens, whatever logger or handler they use."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import fsspec
import pytest
from fsspec.utils import setup_logging

from detection_engine.redaction import redact_logs
from tests.hostile_servers import fixed_http_server


@pytest.fixture
def redacting() -> Iterator[None]:
    """redact_logs() for one test; the process's record factory is restored afterwards."""
    previous = logging.getLogRecordFactory()
    redact_logs()
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


@pytest.fixture
def fsspec_debug() -> Iterator[logging.Logger]:
    """fsspec's http logger at DEBUG with a handler of its own, as GCSFS_DEBUG does for gcsfs."""
    logger = logging.getLogger("fsspec.http")
    level, handlers = logger.level, list(logger.handlers)
    setup_logging(logger=logger, level="DEBUG")  # a StreamHandler on the (captured) stderr
    try:
        yield logger
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.mark.timeout(60)
def test_fsspec_debug_lines_lose_the_token_of_the_url(capsys, redacting, fsspec_debug):
    with fixed_http_server(200, b"jpeg bytes") as url:
        data = fsspec.filesystem("http", skip_instance_cache=True).cat_file(f"{url}/a.jpg?token=SECRET")

    logged = capsys.readouterr().err
    assert data == b"jpeg bytes"
    assert f"{url}/a.jpg" in logged  # the line is there: fsspec logged the URL ...
    assert "SECRET" not in logged and "token" not in logged  # ... without its query


def test_a_logged_traceback_loses_the_token(capsys, redacting):
    log = logging.getLogger("detection_engine.test")
    log.addHandler(handler := logging.StreamHandler())
    try:
        try:
            raise OSError("GET https://cdn.example/a.jpg?X-Goog-Signature=SECRET failed; key=SECRET2")
        except OSError:
            log.exception("fetch of %s failed", "https://u:pw@cdn.example/a.jpg?sig=SECRET3")
    finally:
        log.removeHandler(handler)

    logged = capsys.readouterr().err
    assert "fetch of https://cdn.example/a.jpg failed" in logged and "Traceback" in logged
    assert "OSError: GET https://cdn.example/a.jpg failed; key=<redacted>" in logged
    assert not any(secret in logged for secret in ("SECRET", "pw@"))


def test_installing_twice_wraps_the_factory_once(redacting):
    factory = logging.getLogRecordFactory()
    redact_logs()
    assert logging.getLogRecordFactory() is factory
    record = factory("x", logging.INFO, __file__, 1, "%s", ("https://h/p?token=T",), None)
    assert record.getMessage() == "https://h/p"
