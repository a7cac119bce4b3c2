"""Read one image's bytes, or one shard's list of URIs, from any URI fsspec understands.

Local paths, file://, gs:// (gcsfs) and http(s):// all go through the same code. A failed read becomes a
`decode.ImageError` with one of the fetch reason codes (not_found, permission_denied, is_directory,
empty_file, fetch_error), so a bad object is one error row and never stops the shard.

URIs are taken as fsspec takes them: local paths and file:// URIs are literal (no percent-decoding), so
names with spaces or non-ASCII characters are written as they are.

Filesystem objects are built once per protocol and shared by all fetch threads: gcsfs and fsspec's http
filesystem run their requests on one event loop and keep their connection pools, so rebuilding them per
image would throw away both. When STORAGE_EMULATOR_HOST is set (tests, local development), gs:// talks to
that emulator anonymously.
"""

from __future__ import annotations

import os

# gcsfs otherwise wraps every bucket in its experimental zonal/HNS filesystem, which first probes the
# bucket over gRPC: against an emulator that stalls ~60 s per bucket. Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import threading

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import split_protocol, url_to_fs
from fsspec.spec import AbstractFileSystem

from detection_engine.decode import ImageError, redact

MANIFEST_COLUMN = "image_uri"

_GCS_PROTOCOLS = ("gs", "gcs")
_filesystems: dict[tuple, AbstractFileSystem] = {}
_filesystems_lock = threading.Lock()


class ManifestError(Exception):
    """The shard manifest cannot be used (missing, unreadable, wrong shape): the shard cannot start."""


def filesystem_for(uri: str) -> tuple[AbstractFileSystem, str]:
    """The shared filesystem that serves `uri`, and the path to pass to it."""
    if "::" in uri:  # chained URLs (e.g. simplecache::gs://...) carry their own options: build each time
        return url_to_fs(uri)
    protocol = split_protocol(uri)[0] or "file"
    options = _storage_options(protocol)
    key = (protocol, tuple(sorted(options.items())))
    fs = _filesystems.get(key)
    if fs is None:
        with _filesystems_lock:
            fs = _filesystems.get(key)
            if fs is None:
                fs, _ = url_to_fs(uri, **options)
                _filesystems[key] = fs
    return fs, fs._strip_protocol(uri)


def _storage_options(protocol: str) -> dict:
    if protocol in _GCS_PROTOCOLS and os.environ.get("STORAGE_EMULATOR_HOST"):
        return {"token": "anon"}
    return {}


# A forked child must not reuse its parent's clients: their event loop and sockets stay with the parent.
os.register_at_fork(after_in_child=_filesystems.clear)


# -- image bytes ---------------------------------------------------------------------------------


def fetch_bytes(uri: str) -> bytes:
    """All bytes of the object at `uri`, or `ImageError` saying why they cannot be had."""
    try:
        fs, path = filesystem_for(uri)
    except Exception as exc:  # unknown protocol, missing driver, malformed URI
        raise ImageError("fetch_error", f"{type(exc).__name__}: {exc}") from exc
    if _is_bucket(fs, path):  # gcsfs would send a request for it that is never an object
        raise ImageError("is_directory", "a bucket, not an object")
    try:
        data = fs.cat_file(path)
    except IsADirectoryError:
        raise ImageError("is_directory", "a directory, not a file") from None
    except (FileNotFoundError, NotADirectoryError):
        if _is_directory(fs, path):
            raise ImageError("is_directory", "a directory or prefix, not a file") from None
        raise ImageError("not_found", "no such file or object") from None
    except PermissionError as exc:
        raise ImageError("permission_denied", _os_detail(exc)) from None
    except Exception as exc:
        raise _remote_error(exc) from exc
    if not data:
        raise ImageError("empty_file", "0 bytes")
    return data


def _is_bucket(fs: AbstractFileSystem, path: str) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in _GCS_PROTOCOLS for p in protocols) and "/" not in path.strip("/")


def _is_directory(fs: AbstractFileSystem, path: str) -> bool:
    """Object stores have no directories: a missing object may still be a prefix with objects under it."""
    try:
        return bool(fs.isdir(path))
    except Exception:
        return False


def _os_detail(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _remote_error(exc: Exception) -> ImageError:
    """gcsfs and aiohttp report HTTP statuses in their own exception types; map the ones with a code."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    message = str(exc)
    if status in (401, 403) or message.startswith("Forbidden"):
        return ImageError("permission_denied", f"HTTP {status or 403}")
    if status == 404:
        return ImageError("not_found", "no such file or object (HTTP 404)")
    return ImageError("fetch_error", f"{type(exc).__name__}: {message}")


# -- shard manifest ------------------------------------------------------------------------------


def read_shard_manifest(uri: str) -> list[str]:
    """The image URIs of one shard, in order: Parquet with column image_uri, or text with one URI per line."""
    try:
        fs, path = filesystem_for(uri)
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestError(f"shard manifest not found: {redact(uri)}") from None
    except Exception as exc:
        raise ManifestError(
            f"cannot read shard manifest {redact(uri)}: {redact(f'{type(exc).__name__}: {exc}')}"
        ) from exc
    if data[:4] == b"PAR1":
        return _parquet_uris(data, uri)
    return _text_uris(data, uri)


def _parquet_uris(data: bytes, uri: str) -> list[str]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        if MANIFEST_COLUMN not in names:
            raise ManifestError(
                f"shard manifest {redact(uri)} has no column {MANIFEST_COLUMN!r} (columns: {names})"
            )
        column = parquet.read(columns=[MANIFEST_COLUMN]).column(MANIFEST_COLUMN)
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(
            f"shard manifest {redact(uri)} is not readable Parquet: {redact(str(exc))}"
        ) from exc
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ManifestError(
            f"shard manifest {redact(uri)}: column {MANIFEST_COLUMN!r} is {column.type}, not string"
        )
    uris = column.to_pylist()
    _check_no_blank(uris, uri)
    return uris


def _text_uris(data: bytes, uri: str) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"shard manifest {redact(uri)} is neither Parquet nor UTF-8 text") from None
    if "\x00" in text:
        raise ManifestError(f"shard manifest {redact(uri)} is neither Parquet nor text (contains NUL bytes)")
    lines = (
        line.strip() for line in text.split("\n")
    )  # "\n" only: str.splitlines also splits on U+2028 etc.
    return [line for line in lines if line]


def _check_no_blank(uris: list, uri: str) -> None:
    for row, value in enumerate(uris):
        if value is None or not value.strip():
            raise ManifestError(f"shard manifest {redact(uri)}: row {row} has an empty {MANIFEST_COLUMN}")


__all__ = ["ManifestError", "fetch_bytes", "filesystem_for", "read_shard_manifest"]
