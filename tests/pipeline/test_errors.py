"""errors.at_the_boundary: permanent failures fail at once, others retry, and no secret reaches the log.

The secrets come from real clients: an http(s) input manifest on 127.0.0.1 that answers 500, 401 or loops on
redirects, read by build_manifest through fsspec/aiohttp, whose exceptions print the URL with its ?token=.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from detection_engine import layout
from detection_pipeline.config import RunConfig
from detection_pipeline.errors import ConfigError, ManifestError, PermanentError, at_the_boundary
from detection_pipeline.manifest import build_manifest

TOKEN = "tok-SECRET-42"
PASSWORD = "pw-SECRET-43"


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """/500/... answers 500, /401/... answers 401, /loop/... redirects to itself (with the token) forever."""

    def do_GET(self) -> None:
        kind = self.path.split("/")[1]
        if kind == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(int(kind))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["500", "401", "loop"])
def test_an_http_manifest_that_fails_never_puts_its_token_in_the_log_or_the_error(
    tmp_path: Path, server: str, kind: str, caplog
):
    url = f"http://user:{PASSWORD}@{server}/{kind}/inputs.txt?token={TOKEN}"
    config = RunConfig(
        input_uri=url, output_uri=str(tmp_path / "out"), warehouse=f"duckdb://{tmp_path}/w.duckdb"
    )
    task = at_the_boundary(build_manifest)
    with caplog.at_level(logging.INFO), pytest.raises(AirflowException) as caught:
        task(config, layout.run_prefix(config.output_uri, "r1"))
    shown = [str(caught.value), caplog.text]
    for text in shown:
        assert TOKEN not in text
        assert PASSWORD not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert server in str(caught.value)  # the message still says where


def test_a_permanent_error_fails_at_once_and_others_keep_their_retries():
    def fails_with(error: Exception):
        @at_the_boundary
        def body():
            raise error

        return body

    for permanent in (ConfigError("batch_size: no"), ManifestError("bad file"), PermanentError("x")):
        with pytest.raises(AirflowFailException):
            fails_with(permanent)()
    with pytest.raises(AirflowException) as caught:
        fails_with(OSError("https://h/x?sig=abc connection reset"))()
    assert not isinstance(caught.value, AirflowFailException)
    assert str(caught.value) == "OSError: https://h/x connection reset"
    with pytest.raises(AirflowSkipException):  # control flow passes untouched
        fails_with(AirflowSkipException("nothing to do"))()


def test_the_boundary_keeps_the_return_value_and_the_signature():
    @at_the_boundary
    def body(a: int, *, b: int = 2) -> int:
        return a + b

    assert body(1, b=3) == 4
    assert body.__name__ == "body"


def test_log_lines_of_libraries_inside_a_task_lose_their_tokens(caplog):
    @at_the_boundary
    def body() -> None:
        logging.getLogger("fsspec.http").debug("GET https://cdn.example/a.jpg?token=%s", TOKEN)

    previous = logging.getLogRecordFactory()
    try:
        with caplog.at_level(logging.DEBUG, logger="fsspec.http"):
            body()
    finally:
        logging.setLogRecordFactory(previous)

    assert "GET https://cdn.example/a.jpg" in caplog.text and TOKEN not in caplog.text
