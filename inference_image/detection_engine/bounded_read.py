"""Read the bytes at a URI with bounds: only regular files, a byte cap enforced while streaming, timeouts.

Everything that reads bytes a user named (engine fetch, content hashing, manifest files, ground truth) comes
through here, so that no input can block a thread forever or fill memory:

- local paths are `stat`ed first (following symlinks; a loop is refused) and only regular files are opened,
  with O_NONBLOCK so a FIFO swapped in between the check and the open cannot block either; `/dev/zero`, FIFOs,
  sockets and devices are `not_a_regular_file`;
- at most `max_bytes` are read: a known size over the cap is refused before reading, a stream that does
  not say its size is cut off at the first chunk past the cap, and a gs:// object is read in ranged GETs
  of up to 64 MiB, one byte past the cap at most (`too_large`);
- http(s) and gs:// get connect / socket-read / total timeouts (aiohttp `ClientTimeout`, which gcsfs also
  takes), and the whole read has a deadline `timeout_s`, checked between chunks (`timeout`).

A refusal is `ReadRefused(code, detail)`; the codes are the fetch codes of `detection_engine.decode`, and
details are redacted. Imports neither torch, Pillow nor Airflow, and changes no environment at import.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from fsspec.core import split_protocol, strip_protocol, url_to_fs
from fsspec.spec import AbstractFileSystem

from detection_engine.redaction import redact_line

FETCH_CODES = (
    "not_found",
    "permission_denied",
    "is_directory",
    "empty_file",
    "fetch_error",
    "not_a_regular_file",
    "too_large",
    "timeout",
)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 100 MP JPEG is ~30 MiB; a 64 MiB cap passes every real photo
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 120.0

CHUNK = 1 << 20
GCS_GET_BYTES = 64 << 20  # one ranged GET reads this much at most: a whole image at the default cap
_LOCAL_PROTOCOLS = ("file", "local")
_HTTP_PROTOCOLS = ("http", "https")
_GCS_PROTOCOLS = ("gs", "gcs")


class ReadRefused(Exception):
    """The bytes at a URI cannot be had within the bounds; `code` is one of `FETCH_CODES`."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in FETCH_CODES:
            raise ValueError(f"unknown read refusal code {code!r}")
        self.code = code
        self.detail = redact_line(detail)
        self.reason = f"{code}: {self.detail}"
        super().__init__(self.reason)

    def __reduce__(self):  # picklable across process pools despite the two-argument constructor
        return (type(self), (self.code, self.detail))


# -- filesystems ---------------------------------------------------------------------------------


def storage_options(protocol: str, connect_timeout_s: float, read_timeout_s: float, total_s: float) -> dict:
    """fsspec storage options that bound every request of `protocol` (http(s), gs); {} for the others."""
    if protocol not in _HTTP_PROTOCOLS + _GCS_PROTOCOLS:
        return {}
    import aiohttp  # only needed (and installed) where http(s) or gs:// is used

    timeout = aiohttp.ClientTimeout(
        total=total_s, connect=connect_timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
    )
    if protocol in _HTTP_PROTOCOLS:
        return {"client_kwargs": {"timeout": timeout}}
    return {"requests_timeout": timeout, "timeout": total_s}


_filesystems: dict[tuple, AbstractFileSystem] = {}
_filesystems_lock = threading.Lock()


def bounded_filesystem(
    uri: str,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    total_s: float = DEFAULT_TIMEOUT_S,
    extra_options: dict | None = None,
) -> tuple[AbstractFileSystem, str]:
    """The shared filesystem for `uri` with these bounds, and the path to pass to it.

    Built once per protocol and options and shared by all threads: gcsfs and fsspec's http filesystem keep
    their event loop and connection pool, which rebuilding per read would throw away."""
    if "::" in uri:  # chained URLs (simplecache::gs://...) carry their own options: build each time
        return url_to_fs(uri)
    protocol = split_protocol(uri)[0] or "file"
    extra = dict(extra_options or {})
    key = (protocol, connect_timeout_s, read_timeout_s, total_s, tuple(sorted(extra.items())))
    fs = _filesystems.get(key)
    if fs is None:
        with _filesystems_lock:
            fs = _filesystems.get(key)
            if fs is None:
                options = storage_options(protocol, connect_timeout_s, read_timeout_s, total_s)
                fs, _ = url_to_fs(uri, **options, **extra)
                _filesystems[key] = fs
    return fs, strip_protocol(uri)


# A forked child must not reuse its parent's clients: their event loop and sockets stay with the parent.
os.register_at_fork(after_in_child=_filesystems.clear)


# -- reading -------------------------------------------------------------------------------------


def read_bounded(
    uri: str,
    *,
    max_bytes: int,
    timeout_s: float,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    fs: AbstractFileSystem | None = None,
) -> bytes:
    """All bytes at `uri` (1 to `max_bytes` of them) within `timeout_s`, or `ReadRefused` saying why not."""
    data = b"".join(
        iter_bounded(
            uri,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            fs=fs,
        )
    )
    if not data:
        raise ReadRefused("empty_file", "0 bytes")
    return data


def iter_bounded(
    uri: str,
    *,
    max_bytes: int,
    timeout_s: float,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    fs: AbstractFileSystem | None = None,
) -> Iterator[bytes]:
    """The bytes at `uri` in chunks (for hashing without holding them), under the same bounds as
    `read_bounded`; raises `ReadRefused` before or between chunks. An empty object yields nothing."""
    budget = _Budget(max_bytes, timeout_s)
    try:
        if fs is None:
            fs, path = bounded_filesystem(
                uri, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s, total_s=timeout_s
            )
        else:
            path = strip_protocol(uri)
    except Exception as exc:  # unknown protocol, missing driver, malformed URI
        raise ReadRefused("fetch_error", f"{type(exc).__name__}: {exc}") from exc
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if any(p in _LOCAL_PROTOCOLS for p in protocols):
        yield from _iter_local(path, budget)
    elif any(p in _HTTP_PROTOCOLS for p in protocols):
        yield from _iter_http(fs, path, budget)
    elif any(p in _GCS_PROTOCOLS for p in protocols):
        yield from _iter_gcs(fs, path, budget)
    else:
        yield from _iter_fs(fs, path, budget)


class _Budget:
    """The byte cap and the deadline of one read."""

    def __init__(self, max_bytes: int, timeout_s: float) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.read = 0

    def remaining_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ReadRefused("timeout", f"not read within {self.timeout_s:g} s ({self.read:,} bytes so far)")
        return left

    def check_size(self, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise ReadRefused("too_large", f"{size:,} bytes, limit {self.max_bytes:,}")

    def take(self, chunk: bytes) -> bytes:
        self.read += len(chunk)
        if self.read > self.max_bytes:
            raise ReadRefused("too_large", f"more than {self.max_bytes:,} bytes")
        self.remaining_s()
        return chunk

    def chunk_size(self) -> int:
        return min(CHUNK, self.max_bytes - self.read + 1)  # one byte past the cap proves it is over


def open_regular_file(path: str, *, max_bytes: int) -> BinaryIO:
    """An open binary file of the local regular file at `path`, at most `max_bytes` long when opened, or
    `ReadRefused`: for readers that need a seekable file (Parquet, CSV) rather than a stream of chunks."""
    return os.fdopen(_open_regular(path, _Budget(max_bytes, math.inf)), "rb")


def _open_regular(path: str, budget: _Budget) -> int:
    """A descriptor of the regular file at `path` within the byte cap; never blocks on what it refuses."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _local_error(exc) from None
    _check_regular(info.st_mode)
    budget.check_size(info.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _local_error(exc) from None
    try:
        info = os.fstat(fd)
        _check_regular(info.st_mode)  # the name may have been replaced since the stat
        budget.check_size(info.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _iter_local(path: str, budget: _Budget) -> Iterator[bytes]:
    fd = _open_regular(path, budget)
    try:
        while True:
            try:
                chunk = os.read(fd, budget.chunk_size())
            except OSError as exc:
                raise _local_error(exc) from None
            if not chunk:
                return
            yield budget.take(chunk)
    finally:
        os.close(fd)


def _check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ReadRefused("is_directory", "a directory, not a file")
    kind = next(
        (
            name
            for test, name in (
                (stat.S_ISFIFO, "a named pipe (FIFO)"),
                (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"),
            )
            if test(mode)
        ),
        "not a regular file",
    )
    raise ReadRefused("not_a_regular_file", kind)


def _local_error(exc: OSError) -> ReadRefused:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ReadRefused("not_found", "no such file or object")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ReadRefused("permission_denied", exc.strerror or "permission denied")
    if exc.errno == errno.EISDIR:
        return ReadRefused("is_directory", "a directory, not a file")
    if exc.errno == errno.ELOOP:
        return ReadRefused("not_a_regular_file", "a symlink loop (too many levels of symbolic links)")
    return ReadRefused("fetch_error", f"{type(exc).__name__}: {exc.strerror or exc}")


def _iter_http(fs, url: str, budget: _Budget) -> Iterator[bytes]:
    """One streaming GET (no HEAD first: a silent server would cost its timeout twice)."""
    from fsspec.asyn import sync

    async def open_response():
        session = await fs.set_session()
        response = await session.get(fs.encode_url(url), **fs.kwargs)
        if response.status >= 400:
            response.release()
        return response

    response = _remote_call(lambda: sync(fs.loop, open_response, timeout=budget.remaining_s()), budget)
    try:
        if response.status >= 400:
            raise _status_error(response.status, response.reason)
        budget.check_size(response.content_length)
        while True:
            size = budget.chunk_size()
            chunk = _remote_call(
                lambda size=size: sync(fs.loop, response.content.read, size, timeout=budget.remaining_s()),
                budget,
            )
            if not chunk:
                return
            yield budget.take(chunk)
    finally:
        fs.loop.call_soon_threadsafe(response.close)


def _iter_gcs(fs: AbstractFileSystem, path: str, budget: _Budget) -> Iterator[bytes]:
    """Ranged GETs of up to GCS_GET_BYTES, so an image is one request (one byte past the cap proves it is over).

    gcsfs's `open` first asks for the object's metadata and lists its prefix, in parallel: two more round
    trips before the first byte, for every image, one of them a list call (a class A operation, priced over ten
    times a read). A prefix or a missing object answers 404; only then is it listed, to tell them apart.
    Larger files (manifests) come GCS_GET_BYTES at a time, so memory stays bounded whatever the cap."""
    if "/" not in path.strip("/"):
        raise ReadRefused("is_directory", "a bucket, not an object")  # gcsfs would ask for it anyway
    while True:
        start = budget.read
        want = min(GCS_GET_BYTES, budget.max_bytes + 1 - start)
        try:
            data = _remote_call(lambda start=start, want=want: _ranged_get(fs, path, start, want), budget)
        except ReadRefused as refused:
            if start == 0 and refused.code == "not_found" and _is_directory(fs, path):
                raise ReadRefused("is_directory", "a directory or prefix, not a file") from None
            raise
        if data:
            yield budget.take(data)
        budget.remaining_s()
        if len(data) < want:
            return


def _ranged_get(fs: AbstractFileSystem, path: str, start: int, length: int) -> bytes:
    try:
        return fs.cat_file(path, start=start, end=start + length)
    except Exception as exc:
        if getattr(exc, "code", None) == 416:  # a range at or past the end (all of a 0-byte object): RFC 9110
            return b""
        raise


def _iter_fs(fs: AbstractFileSystem, path: str, budget: _Budget) -> Iterator[bytes]:
    """Any other fsspec filesystem (memory://, ...): its size first, then chunked reads."""
    handle = _remote_call(lambda: _open_remote(fs, path), budget)
    try:
        budget.check_size(getattr(handle, "size", None))
        while True:
            size = budget.chunk_size()
            chunk = _remote_call(lambda size=size: handle.read(size), budget)
            if not chunk:
                if budget.read == 0 and _is_directory(fs, path):  # stores that open a prefix as 0 bytes
                    raise ReadRefused("is_directory", "a directory or prefix, not a file")
                return
            yield budget.take(chunk)
    finally:
        try:
            handle.close()
        except Exception:  # noqa: S110 - a read-only handle has nothing to flush; closing is best effort
            pass


def _open_remote(fs: AbstractFileSystem, path: str):
    try:
        return fs.open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        if _is_directory(fs, path):
            raise ReadRefused("is_directory", "a directory or prefix, not a file") from None
        raise
    except IsADirectoryError:
        raise ReadRefused("is_directory", "a directory or prefix, not a file") from None


def _is_directory(fs: AbstractFileSystem, path: str) -> bool:
    """Object stores have no directories: a missing object may still be a prefix with objects under it."""
    try:
        return bool(fs.isdir(path))
    except Exception:
        return False


def _remote_call(call, budget: _Budget):
    """Run one remote step, mapping what fsspec, aiohttp and gcsfs raise onto the fetch codes."""
    try:
        return call()
    except ReadRefused:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise ReadRefused("not_found", "no such file or object") from None
    except IsADirectoryError:
        raise ReadRefused("is_directory", "a directory or prefix, not a file") from None
    except PermissionError as exc:
        raise ReadRefused("permission_denied", exc.strerror or type(exc).__name__) from None
    except Exception as exc:
        raise _remote_error(exc, budget) from None


def _remote_error(exc: Exception, budget: _Budget) -> ReadRefused:
    if _is_timeout(exc):
        return ReadRefused(
            "timeout",
            f"{type(exc).__name__} after {budget.timeout_s - max(0.0, budget.deadline - time.monotonic()):.1f} s",
        )
    if type(exc).__name__ == "TooManyRedirects":  # aiohttp's, with status 0 and an empty message
        return ReadRefused("fetch_error", "too many redirects (a redirect loop?)")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    message = str(exc)
    if (isinstance(status, int) and status > 0) or message.startswith("Forbidden"):
        return _status_error(status if isinstance(status, int) else 403, message)
    return ReadRefused("fetch_error", f"{type(exc).__name__}: {message}")


def _is_timeout(exc: BaseException) -> bool:
    import asyncio

    from fsspec.exceptions import FSTimeoutError

    seen = 0
    while exc is not None and seen < 5:  # aiohttp and gcsfs wrap timeouts in their own errors
        if isinstance(exc, TimeoutError | asyncio.TimeoutError | FSTimeoutError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _status_error(status: int, message: str | None) -> ReadRefused:
    if status in (401, 403):
        return ReadRefused("permission_denied", f"HTTP {status}")
    if status in (404, 410):
        return ReadRefused("not_found", f"no such file or object (HTTP {status})")
    return ReadRefused("fetch_error", f"HTTP {status}: {message or ''}")


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "FETCH_CODES",
    "ReadRefused",
    "bounded_filesystem",
    "iter_bounded",
    "open_regular_file",
    "read_bounded",
    "storage_options",
]
