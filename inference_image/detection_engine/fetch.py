"""Read one image's bytes, or one shard's list of URIs, from any URI fsspec understands (through `storage`).

A failed image read becomes a `decode.ImageError` with one of the fetch reason codes (not_found,
permission_denied, is_directory, empty_file, fetch_error, ...), so a bad object is one error row and never
stops the shard. A shard manifest that cannot be used is a `ShardManifestError`: the shard cannot start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from detection_engine import storage
from detection_engine.bounded_read import ReadRefused
from detection_engine.decode import ImageError, redact
from detection_engine.storage import DEFAULT_LIMITS, ReadLimits

MANIFEST_COLUMN = "image_uri"
# The engine's own files, read bounded too, so a FIFO or a stalled store fails the shard instead of hanging it.
SHARD_MANIFEST_LIMITS = ReadLimits(max_bytes=1 << 30, timeout_s=600.0)  # a 10M-URI shard: ~60 MB Parquet


class ShardManifestError(Exception):
    """The shard manifest cannot be used (missing, unreadable, wrong shape): the shard cannot start."""


# -- image bytes ---------------------------------------------------------------------------------


def fetch_bytes(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """All bytes of the object at `uri` within `limits`, or `ImageError` saying why they cannot be had."""
    try:
        return storage.read_bytes(uri, limits)
    except ReadRefused as exc:
        raise ImageError(exc.code, exc.detail) from None


# -- shard manifest ------------------------------------------------------------------------------


def read_shard_manifest(uri: str) -> list[str]:
    """The image URIs of one shard, in order: Parquet with column image_uri, or text with one URI per line."""
    try:
        data = storage.read_file(uri, SHARD_MANIFEST_LIMITS)
    except ReadRefused as exc:
        if exc.code == "not_found":
            raise ShardManifestError(f"shard manifest not found: {redact(uri)}") from None
        raise ShardManifestError(f"cannot read shard manifest {redact(uri)}: {exc.reason}") from None
    if data[:4] == b"PAR1":
        return _parquet_uris(data, uri)
    return _text_uris(data, uri)


def _parquet_uris(data: bytes, uri: str) -> list[str]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        if MANIFEST_COLUMN not in names:
            raise ShardManifestError(
                f"shard manifest {redact(uri)} has no column {MANIFEST_COLUMN!r} (columns: {names})"
            )
        column = parquet.read(columns=[MANIFEST_COLUMN]).column(MANIFEST_COLUMN)
    except ShardManifestError:
        raise
    except Exception as exc:
        raise ShardManifestError(
            f"shard manifest {redact(uri)} is not readable Parquet: {redact(str(exc))}"
        ) from exc
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ShardManifestError(
            f"shard manifest {redact(uri)}: column {MANIFEST_COLUMN!r} is {column.type}, not string"
        )
    uris = column.to_pylist()
    _check_no_blank(uris, uri)
    return uris


def _text_uris(data: bytes, uri: str) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ShardManifestError(f"shard manifest {redact(uri)} is neither Parquet nor UTF-8 text") from None
    if "\x00" in text:
        raise ShardManifestError(
            f"shard manifest {redact(uri)} is neither Parquet nor text (contains NUL bytes)"
        )
    lines = (
        line.strip() for line in text.split("\n")
    )  # "\n" only: str.splitlines also splits on U+2028 etc.
    return [line for line in lines if line]


def _check_no_blank(uris: list, uri: str) -> None:
    for row, value in enumerate(uris):
        if value is None or not value.strip():
            raise ShardManifestError(
                f"shard manifest {redact(uri)}: row {row} has an empty {MANIFEST_COLUMN}"
            )


__all__ = ["ShardManifestError", "fetch_bytes", "read_shard_manifest"]
