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
from dataclasses import dataclass

# gcsfs otherwise wraps every bucket in its experimental zonal/HNS filesystem, which first probes the
# bucket over gRPC: against an emulator that stalls ~60 s per bucket. Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import split_protocol
from fsspec.spec import AbstractFileSystem

from detection_engine.bounded_read import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    ReadRefused,
    bounded_filesystem,
    iter_bounded,
    read_bounded,
)
from detection_engine.decode import ImageError, redact

MANIFEST_COLUMN = "image_uri"
# The engine's own files, read bounded too, so a FIFO or a stalled store fails the shard instead of hanging it.
SHARD_MANIFEST_MAX_BYTES = 1 << 30  # a 10M-URI shard is ~60 MB as Parquet, ~1 GB as text
SHARD_MANIFEST_TIMEOUT_S = 600.0

_GCS_PROTOCOLS = ("gs", "gcs")


class ManifestError(Exception):
    """The shard manifest cannot be used (missing, unreadable, wrong shape): the shard cannot start."""


@dataclass(frozen=True)
class ReadLimits:
    """The bounds of one image's read: --max-image-bytes, --connect-timeout-s, --read-timeout-s, --image-timeout-s."""

    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    timeout_s: float = DEFAULT_TIMEOUT_S


DEFAULT_LIMITS = ReadLimits()


def filesystem_for(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[AbstractFileSystem, str]:
    """The shared, bounded filesystem that serves `uri`, and the path to pass to it."""
    protocol = split_protocol(uri)[0] or "file"
    return bounded_filesystem(
        uri,
        connect_timeout_s=limits.connect_timeout_s,
        read_timeout_s=limits.read_timeout_s,
        total_s=limits.timeout_s,
        extra_options=_storage_options(protocol),
    )


def _storage_options(protocol: str) -> dict:
    if protocol in _GCS_PROTOCOLS and os.environ.get("STORAGE_EMULATOR_HOST"):
        return {"token": "anon"}
    return {}


# -- image bytes ---------------------------------------------------------------------------------


def fetch_bytes(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """All bytes of the object at `uri` within `limits`, or `ImageError` saying why they cannot be had."""
    try:
        fs, _ = filesystem_for(uri, limits)
    except Exception as exc:  # unknown protocol, missing driver, malformed URI
        raise ImageError("fetch_error", f"{type(exc).__name__}: {exc}") from exc
    try:
        return read_bounded(
            uri,
            max_bytes=limits.max_bytes,
            timeout_s=limits.timeout_s,
            connect_timeout_s=limits.connect_timeout_s,
            read_timeout_s=limits.read_timeout_s,
            fs=fs,
        )
    except ReadRefused as exc:
        raise ImageError(exc.code, exc.detail) from None


def read_file(uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """All bytes (none, for an empty file) of a file the engine itself needs (its shard manifest, a state
    dict), under `bounded_read`'s bounds with the default connect and read timeouts; or `ReadRefused`."""
    limits = ReadLimits(max_bytes=max_bytes, timeout_s=timeout_s)
    try:
        fs, _ = filesystem_for(uri, limits)
    except Exception as exc:  # unknown protocol, missing driver, malformed URI
        raise ReadRefused("fetch_error", f"{type(exc).__name__}: {exc}") from None
    return b"".join(iter_bounded(uri, max_bytes=max_bytes, timeout_s=timeout_s, fs=fs))


# -- shard manifest ------------------------------------------------------------------------------


def read_shard_manifest(uri: str) -> list[str]:
    """The image URIs of one shard, in order: Parquet with column image_uri, or text with one URI per line."""
    try:
        data = read_file(uri, max_bytes=SHARD_MANIFEST_MAX_BYTES, timeout_s=SHARD_MANIFEST_TIMEOUT_S)
    except ReadRefused as exc:
        if exc.code == "not_found":
            raise ManifestError(f"shard manifest not found: {redact(uri)}") from None
        raise ManifestError(f"cannot read shard manifest {redact(uri)}: {exc.reason}") from None
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


__all__ = ["ManifestError", "ReadLimits", "fetch_bytes", "filesystem_for", "read_file", "read_shard_manifest"]
