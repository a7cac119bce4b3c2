"""Files by URI for both sides (the engine in its pod, the DAG's tasks): every read, listing and write.

Local paths, file://, gs:// (gcsfs) and http(s):// all go through `filesystem_for`, so there is one client per
protocol and bounds, shared by all threads: gcsfs and fsspec's http filesystem run their requests on one event
loop and keep their connection pools, which rebuilding per file would throw away. When STORAGE_EMULATOR_HOST is
set (tests, local development), gs:// talks to that emulator anonymously.

Reads are bounded (`bounded_read`: regular files only, a byte cap, timeouts) and refuse with `ReadRefused`.

Every write is atomic: a reader, or a retried task, sees the previous file or the new one, never a part of
one. Locally the bytes go to a temporary file beside the target, are fsynced, and the file is renamed over
the target (`os.replace`); an object store (gs://) gets one upload, which it publishes whole.

URIs are taken as fsspec takes them: local paths and file:// URIs are literal (no percent-decoding).

Imports neither torch, Pillow nor Airflow, and changes no environment at import (see `_before_gcsfs`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fsspec.core import split_protocol, strip_protocol
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from detection_engine import bounded_read
from detection_engine.bounded_read import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    ReadRefused,
)

TMP_SUFFIX = ".tmp"  # what a local write leaves beside its target until the rename (or a kill)
_GCS_PROTOCOLS = ("gs", "gcs")


@dataclass(frozen=True)
class ReadLimits:
    """The bounds of one read: --max-image-bytes, --connect-timeout-s, --read-timeout-s, --image-timeout-s."""

    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    timeout_s: float = DEFAULT_TIMEOUT_S


DEFAULT_LIMITS = ReadLimits()


# -- filesystems ---------------------------------------------------------------------------------


def filesystem_for(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[AbstractFileSystem, str]:
    """The shared, bounded filesystem that serves `uri`, and the path to pass to it."""
    protocol = split_protocol(uri)[0] or "file"
    if protocol in _GCS_PROTOCOLS:
        _before_gcsfs()
    return bounded_read.bounded_filesystem(
        uri,
        connect_timeout_s=limits.connect_timeout_s,
        read_timeout_s=limits.read_timeout_s,
        total_s=limits.timeout_s,
        extra_options=_storage_options(protocol),
    )


def _before_gcsfs() -> None:
    """gcsfs otherwise wraps every bucket in its experimental zonal/HNS filesystem, which first probes the
    bucket over gRPC: against an emulator that stalls ~60 s per bucket. gcsfs reads the variable when it is
    imported, so it is set here, before the first gs:// filesystem, and not as a side effect of importing
    this module; an explicit setting is kept."""
    if "gcsfs" not in sys.modules:
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _storage_options(protocol: str) -> dict:
    if protocol in _GCS_PROTOCOLS and os.environ.get("STORAGE_EMULATOR_HOST"):
        return {"token": "anon"}
    return {}


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def path_of(uri: str) -> str:
    """The path fsspec's filesystem for `uri` takes (bucket/key for gs://, an absolute path locally)."""
    return strip_protocol(uri)


# -- reading -------------------------------------------------------------------------------------


def iter_bytes(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """The bytes at `uri` in chunks (for hashing without holding them) within `limits`, or `ReadRefused`."""
    fs, _ = _bounded_filesystem(uri, limits)
    return _chunks(uri, fs, limits)


def read_bytes(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """All bytes (1 to `limits.max_bytes` of them) at `uri`, or `ReadRefused` (`empty_file` for none)."""
    data = read_file(uri, limits)
    if not data:
        raise ReadRefused("empty_file", "0 bytes")
    return data


def read_file(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """All bytes (none, for an empty file) of a file at `uri` within `limits`, or `ReadRefused`."""
    return b"".join(iter_bytes(uri, limits))


@contextmanager
def open_bounded(uri: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[BinaryIO]:
    """A seekable binary file with the bytes at `uri`, read within `limits`, or `ReadRefused`.

    A local regular file is opened in place; anything else is streamed into a temporary file first, so a
    FIFO, a device, an oversize object, an endless body or a silent server is refused within the bounds
    instead of blocking the task or filling its disk."""
    fs, path = _bounded_filesystem(uri, limits)
    if is_local(fs):
        with bounded_read.open_regular_file(path, max_bytes=limits.max_bytes) as handle:
            yield handle
        return
    with tempfile.TemporaryFile(prefix="detection-download-") as handle:
        for chunk in _chunks(uri, fs, limits):
            handle.write(chunk)
        handle.seek(0)
        yield handle


def _bounded_filesystem(uri: str, limits: ReadLimits) -> tuple[AbstractFileSystem, str]:
    try:
        return filesystem_for(uri, limits)
    except Exception as exc:  # unknown protocol, missing driver, malformed URI
        raise ReadRefused("fetch_error", f"{type(exc).__name__}: {exc}") from None


def _chunks(uri: str, fs: AbstractFileSystem, limits: ReadLimits) -> Iterator[bytes]:
    return bounded_read.iter_bounded(
        uri,
        max_bytes=limits.max_bytes,
        timeout_s=limits.timeout_s,
        connect_timeout_s=limits.connect_timeout_s,
        read_timeout_s=limits.read_timeout_s,
        fs=fs,
    )


# -- listing -------------------------------------------------------------------------------------


def glob(uri_glob: str) -> list[str]:
    """The URIs (sorted) of the files matching `uri_glob`, as the store lists them now."""
    fs, path = filesystem_for(uri_glob)
    if not is_local(fs):
        fs.invalidate_cache()  # the client is shared by the process: list the store as it is now
    return [fs.unstrip_protocol(p) for p in sorted(fs.glob(path))]


# -- writing -------------------------------------------------------------------------------------


def write_atomic(uri: str, data: bytes, *, sweep_stale: bool = False) -> None:
    """Replace the file at `uri` with `data` in one step.

    `sweep_stale` first removes the temporary files a killed earlier write of `uri` left beside it: only for a
    target that one writer owns (a shard's files), since it would also remove a concurrent writer's."""
    fs, path = filesystem_for(uri)
    if not is_local(fs):
        fs.pipe_file(path, data)  # one object upload: published whole or not at all
        return
    target = Path(path)
    if sweep_stale and target.parent.is_dir():
        for stale in target.parent.glob(f"{_tmp_prefix(target)}*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
    tmp = _local_tmp(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish_local(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_local_path(uri: str) -> Iterator[str]:
    """A local path to write the file for `uri` to (for writers that want a path: Parquet, DuckDB COPY);
    published at `uri` only when the block succeeds: renamed over a local target, one upload to a store."""
    fs, path = filesystem_for(uri)
    if is_local(fs):
        tmp = _local_tmp(Path(path))
    else:
        fd, tmp = tempfile.mkstemp(prefix="detection-upload-", suffix=TMP_SUFFIX)
        os.close(fd)
    try:
        yield tmp
        if is_local(fs):
            with open(tmp, "rb+") as fh:  # the caller's writer has closed it; its bytes must be on disk
                os.fsync(fh.fileno())
            _publish_local(tmp, Path(path))
        else:
            fs.put_file(tmp, path)  # one object upload
    finally:
        Path(tmp).unlink(missing_ok=True)


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}."


def _local_tmp(target: Path) -> str:
    """An empty temporary file beside `target` (same filesystem, so the rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_tmp_prefix(target), suffix=TMP_SUFFIX)
    os.close(fd)
    return tmp


def _publish_local(tmp: str, target: Path) -> None:
    """Rename the written and fsynced temporary file over `target`: after a crash the target holds the old
    bytes or all of the new ones."""
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from a reader running as another user
    os.replace(tmp, target)


__all__ = [
    "DEFAULT_LIMITS",
    "TMP_SUFFIX",
    "ReadLimits",
    "ReadRefused",
    "atomic_local_path",
    "filesystem_for",
    "glob",
    "is_local",
    "iter_bytes",
    "open_bounded",
    "path_of",
    "read_bytes",
    "read_file",
    "write_atomic",
]
