"""A local HTTP server that serves a folder only with the right basic-auth credentials and `?token=`, the way
a private image host or a signed-URL endpoint does; the reliability tests check those secrets never leak."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD, TOKEN = "detector", "pa55-w0rd-SECRET", "tok-SECRET-0123"
SECRETS = (PASSWORD, TOKEN)


class _AuthenticatedFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder only to requests with the right basic-auth user and password and `?token=`."""

    expected_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if self.headers.get("Authorization") != self.expected_auth or f"token={TOKEN}" not in query:
            self.send_error(401)
            return
        self.path = path
        super().do_GET()

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, *args) -> None:  # the test log is for the pipeline's lines
        pass


@dataclass(frozen=True)
class HttpFiles:
    root: Path
    port: int

    def url(self, name: str, *, password: str = PASSWORD) -> str:
        """The URL of a served file, credentials and token included, as a user would paste it."""
        return f"http://{USER}:{password}@127.0.0.1:{self.port}/{name}?token={TOKEN}"


@contextlib.contextmanager
def serve_files(root: Path) -> Iterator[HttpFiles]:
    handler = functools.partial(_AuthenticatedFiles, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpFiles(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
