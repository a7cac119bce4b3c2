"""Servers on 127.0.0.1 that misbehave the way real ones do, for the bounded-read tests of both sides.

`silent_server()` accepts connections (the kernel completes the handshake) and never answers;
`endless_http_server()` answers 200 with a body that never ends (no Content-Length, chunk after chunk);
`fixed_http_server(status, body, headers)` answers every GET with one canned response.
Each is a context manager yielding the base URL; everything is closed on exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A listening socket that is never accepted from: connects succeed, no byte ever comes back."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextlib.contextmanager
def _serve(respond) -> Iterator[str]:
    stop = threading.Event()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    part = conn.recv(65536)
                    if not part:
                        return
                    request += part
                respond(conn, request, stop)
            except OSError:
                pass  # the client gave up: that is what the tests want it to do

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@contextlib.contextmanager
def endless_http_server(chunk: bytes = b"\xff\xd8\xff" + b"\x00" * 65533) -> Iterator[str]:
    """200 OK, then the body `chunk` repeated until the client hangs up (HTTP/1.0, no length)."""

    def respond(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        while not stop.is_set():
            conn.sendall(chunk)

    with _serve(respond) as url:
        yield url


@contextlib.contextmanager
def fixed_http_server(status: int, body: bytes = b"", headers: dict | None = None) -> Iterator[str]:
    """Every request gets `status` with `body` (and its Content-Length unless `headers` sets one)."""
    fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}

    def respond(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        conn.sendall(head.encode() + (b"" if request.startswith(b"HEAD") else body))

    with _serve(respond) as url:
        yield url
