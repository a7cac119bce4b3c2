"""Build a run's manifest: every unique input image once, sorted by URI, with the shard that processes it.

    list -> normalise -> keep images -> [drop already processed] -> sort, dedupe by URI -> [dedupe by content]
         -> write {run_prefix}/manifest.parquet  (image_uri, shard_index [, content_sha1])

Sources (input_uri):

- a local or gs:// prefix, listed recursively; only image files count (by extension, any case: IMAGE_EXTENSIONS),
  the rest (sidecar JSON, _SUCCESS markers, ...) are counted as `skipped_not_image`;
- a manifest file (.txt one URI per line, blank lines and '#' comments ignored; .csv with an `image_uri` or
  `uri` column, or a single column without header; .parquet with `image_uri` or `uri`: `manifest_files`),
  local, gs:// or http(s). Its entries were named on purpose, so only those with another extension
  (`notes.txt`, `scan.pdf`) are counted as `skipped_not_image`; names without an extension
  (`gs://b/raw-0001`, `https://cdn/img?id=3`) are kept, and one that does not decode becomes an error row
  for that image, never a silent drop. An entry that is not a usable URI (relative path, other scheme,
  '..', control character) or a malformed CSV row is counted as `rejected` with a few examples, like a
  listed name below: one bad line never fails a run, and the count says the file needs fixing.
  The file is read through `detection_engine.storage` (regular files only, a byte cap, the run's
  connect and read timeouts, a deadline: `FileBounds`), so a FIFO, a device, an oversize file, an endless
  body or a silent server fails the run at once with a ManifestError instead of hanging the task (a store
  that answers with an error, HTTP 5xx or a reset connection, is ManifestUnavailable: retried).

A listed name is the object's own, so it is used exactly as the store returned it, never trimmed or
rewritten (the normalisation below is for lines of a manifest file). One that cannot be used as it is (a
control character, bytes that are not UTF-8 in a local folder, a '..' segment or '//' in a gs:// key) is
counted as `rejected`, with a few examples, and the listing goes on: one odd name never fails a folder.

URIs are normalised by `uris.normalize`'s rules, so one image has one spelling everywhere. Order is by URI
(code point order), so a re-run over the same input writes the same manifest and the same shards. With
dedup_mode=content the first URI (in that order) of each set of identical files is kept; files that cannot be
read are kept too (their read error becomes their result row). Content is hashed after the incremental
filter, so a daily incremental run hashes only its new images.

The work is columnar and bounded in memory: batches of URIs are normalised and checked with Arrow kernels
and appended to a DuckDB table; DuckDB sorts it (spilling to disk past `DUCKDB_MEMORY_LIMIT`); the sorted
stream is deduplicated batch by batch into a scratch file, and a last pass adds each row's shard. Python
touches single rows only to hash file contents, which is I/O.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection_engine import layout, schema, storage
from detection_engine.redaction import redact_text
from detection_pipeline import manifest_files, settings, sharding, uri_columns, uris
from detection_pipeline.config import RunConfig
from detection_pipeline.errors import ManifestError

log = logging.getLogger(__name__)

HASH_WORKERS = 16  # concurrent reads when hashing contents (I/O bound)
DUCKDB_MEMORY_LIMIT = "1GB"  # beyond this DuckDB sorts on disk, which keeps 10M URIs under 2 GB of RSS
BATCH_ROWS = manifest_files.BATCH_ROWS  # sorted URIs per batch
_EXAMPLES = 5

ProcessedURIs = pa.Array | pa.ChunkedArray | Collection[str]


@dataclass(frozen=True)
class ManifestStats:
    listed: int  # image URIs found before dedup (a manifest file: its non-blank entries)
    duplicates: int  # repeated URIs, plus (dedup_mode=content) URIs whose bytes an earlier URI has
    skipped_not_image: int  # listed files, or manifest entries, that are not images by their extension
    skipped_incremental: int  # unique images this model and weights already processed in earlier runs
    unique: int  # images in the manifest: listed - duplicates - skipped_incremental
    manifest_uri: str
    rejected: int = 0  # names and entries that cannot be used (control characters, not UTF-8, relative, ...)
    rejected_examples: tuple[str, ...] = ()  # a few of them, as Python reprs (escapes, never raw bytes)


class ManifestUnavailable(RuntimeError):
    """The manifest file's store failed to serve it (HTTP 5xx, connection error): retried, not permanent."""


@dataclass(frozen=True)
class FileBounds:
    """How much of an input manifest file is read, and for how long (DETECTION_MAX_MANIFEST_BYTES and
    DETECTION_MANIFEST_TIMEOUT_S; the connect and read timeouts are the run config's)."""

    max_bytes: int = settings.MAX_MANIFEST_BYTES
    timeout_s: float = settings.MANIFEST_TIMEOUT_S

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any]) -> FileBounds:
        """From a run's `Settings.for_tasks()` snapshot."""
        return cls(deployment["max_manifest_bytes"], deployment["manifest_timeout_s"])


DEFAULT_FILE_BOUNDS = FileBounds()


def build_manifest(
    config: RunConfig,
    run_prefix: str,
    already_processed: Callable[[], ProcessedURIs] | None = None,
    bounds: FileBounds = DEFAULT_FILE_BOUNDS,
) -> ManifestStats:
    """List, normalise, filter and deduplicate the run's input; write its manifest atomically.

    `already_processed` is called only for incremental runs and returns the URIs to skip (an Arrow array of
    strings or any collection of str); it is a callable so that other runs never query the warehouse.
    A manifest file is read within `bounds`; one that cannot be (a FIFO, a device, too large, a silent or
    endless server) is a ManifestError, which fails the run at once.
    """
    if config.incremental and already_processed is None:
        raise ValueError("an incremental run needs already_processed")
    target = layout.manifest_uri(run_prefix)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="detection-manifest-")))
        con = _connect(scratch)
        stack.callback(con.close)
        rejected = _Rejected()
        batches, listing = _source(config, bounds, stack, rejected)
        listed, not_image = _load(con, batches, listing, rejected)
        incremental = _drop_processed(con, already_processed()) if config.incremental else 0
        sorted_uris = scratch / "sorted.parquet"
        distinct = _sort_unique(con, sorted_uris)
        con.close()  # frees DuckDB's memory before the last pass
        unique = _write_manifest(sorted_uris, target, config)
    stats = ManifestStats(
        listed=listed,
        duplicates=listed - incremental - unique,
        skipped_not_image=not_image,
        skipped_incremental=incremental,
        unique=unique,
        manifest_uri=target,
        rejected=rejected.count,
        rejected_examples=tuple(rejected.examples),
    )
    log.info("manifest of %s: %s (%d distinct URIs)", uris.redact(config.input_uri), stats, distinct)
    if rejected.count:
        log.warning(
            "%d input name(s) or entries are not usable and were left out (not an absolute local path, gs:// "
            "or http(s) URL; a '..' segment or control character; not UTF-8; a malformed CSV row), e.g. %s",
            rejected.count,
            ", ".join(rejected.examples),
        )
    return stats


@dataclass
class _Rejected:
    """Names and entries left out because they cannot be used as they are: how many, and the first few
    (reprs, redacted: an entry such as `ftp://user:pass@host/a.jpg` reaches the run record and report)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, names: list[str], count: int | None = None) -> None:
        self.count += len(names) if count is None else count
        self.examples.extend(redact_text(repr(name)) for name in names[: _EXAMPLES - len(self.examples)])


# -- sources: batches of raw URI strings ---------------------------------------------------------


def _source(
    config: RunConfig, bounds: FileBounds, stack: ExitStack, rejected: _Rejected
) -> tuple[Iterator[pa.Array], bool]:
    """Batches of the input's raw URIs, and whether they come from listing a prefix (images filtered)."""
    input_uri = config.input_uri
    kind = uris.extension(input_uri)
    if kind not in uris.MANIFEST_EXTENSIONS:
        return manifest_files.slices(_list_prefix(input_uri, rejected)), True
    file = stack.enter_context(_open_manifest_file(config, bounds))
    return manifest_files.read_entries(file, kind, input_uri, bounds.max_bytes, rejected.add), False


@contextmanager
def _open_manifest_file(config: RunConfig, bounds: FileBounds) -> Iterator[BinaryIO]:
    """The input manifest file, opened within `bounds`; ManifestError (permanent) when it cannot be."""
    shown = uris.redact(config.input_uri)
    try:
        with storage.open_bounded(
            config.input_uri,
            storage.ReadLimits(
                max_bytes=bounds.max_bytes,
                connect_timeout_s=config.connect_timeout_s,
                read_timeout_s=config.read_timeout_s,
                timeout_s=bounds.timeout_s,
            ),
        ) as file:
            yield file
    except storage.ReadRefused as refused:
        if refused.code == "not_found":
            raise ManifestError(f"input manifest {shown} does not exist") from None
        if refused.code == "fetch_error":  # a 5xx, a reset connection: the store's, so worth a retry
            raise ManifestUnavailable(f"cannot read input manifest {shown}: {refused.reason}") from None
        hint = " (DETECTION_MAX_MANIFEST_BYTES)" if refused.code == "too_large" else ""
        raise ManifestError(f"cannot read input manifest {shown}: {refused.reason}{hint}") from None


def _list_prefix(input_uri: str, rejected: _Rejected) -> pa.Array:
    fs, path = storage.filesystem_for(input_uri)
    if storage.is_local(fs) and not os.path.isdir(path):
        raise ManifestError(f"input prefix {input_uri} is not a directory")
    if not storage.is_local(fs):
        fs.invalidate_cache(path)  # the client is shared by the process: list the bucket as it is now
    try:
        found = fs.find(path)
    except FileNotFoundError:
        raise ManifestError(f"input prefix {uris.redact(input_uri)} does not exist") from None
    listed = _utf8_names(found, rejected)
    if storage.is_local(fs):
        return listed
    return pc.binary_join_element_wise("gs://", listed, "")  # gcsfs lists bucket/key


def _utf8_names(names: list[str], rejected: _Rejected) -> pa.Array:
    """The names as an Arrow column; local names that are not UTF-8 (Python holds their bytes as surrogate
    escapes, which Arrow cannot store) are rejected. The check costs a Python pass only when one exists."""
    try:
        return pa.array(names, pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        pass
    good, bad = [], []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(name)
        else:
            good.append(name)
    rejected.add(bad)
    return pa.array(good, pa.string())


# -- normalise, filter, load ---------------------------------------------------------------------


def _connect(scratch: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(
        ":memory:",
        config={
            "threads": os.cpu_count() or 1,
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            "temp_directory": str(scratch / "duckdb"),  # spill here, never into the working directory
            "preserve_insertion_order": False,  # order comes from the explicit sort
        },
    )


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    """Run one statement to completion (DuckDB refuses new work while a result is unread)."""
    return con.execute(sql).fetchall()


def _load(
    con: duckdb.DuckDBPyConnection, batches: Iterator[pa.Array], listing: bool, rejected: _Rejected
) -> tuple[int, int]:
    """Table `candidates(image_uri)`: every usable image URI, canonical, repeats included.

    Returns (listed, skipped_not_image). Unusable names and entries are rejected: counted, left out.
    """
    _query(con, "CREATE TEMP TABLE candidates (image_uri VARCHAR NOT NULL)")
    listed = not_image = 0
    for raw in batches:
        values, bad, written, skipped = _candidates(raw, listing)
        if pc.any(bad).as_py():
            examples = written.filter(bad).slice(0, _EXAMPLES).to_pylist()
            rejected.add([e if listing else e.strip(uris.WHITESPACE) for e in examples], pc.sum(bad).as_py())
            values = values.filter(pc.invert(bad))
        listed += len(values)
        not_image += skipped
        con.register("batch", pa.table({"image_uri": values}))
        _query(con, "INSERT INTO candidates SELECT image_uri FROM batch")
        con.unregister("batch")
    return listed, not_image


def _candidates(raw: pa.Array, listing: bool) -> tuple[pa.Array, pa.BooleanArray, pa.Array, int]:
    """One batch's canonical image URIs, without blanks (and, in manifest files, '#' comments). Returns them,
    which of them are unusable, the same rows as written (for examples a user can find in the file), and
    how many entries were left out for not being images."""
    if raw.null_count:
        raw = raw.drop_null()
    written = raw.cast(pa.string())
    if listing:  # a listed name is used exactly as the store returned it
        values = written
        unusable = uri_columns.unusable_listed(values)
    else:
        values, unusable = uri_columns.canonicalize(written)
    present = pc.greater(pc.binary_length(values), 0)
    if listing:
        images = pc.and_(present, uri_columns.image_array(values))
    else:  # comments are a manifest file's; a listed object may well start with '#'
        present = pc.and_(present, pc.invert(pc.starts_with(values, "#")))
        images = pc.and_(present, pc.invert(uri_columns.other_extension_array(values)))
    not_images = (pc.sum(present).as_py() or 0) - (pc.sum(images).as_py() or 0)
    if not pc.all(images).as_py():
        values, unusable, written = values.filter(images), unusable.filter(images), written.filter(images)
    return values, unusable, written, not_images


def _drop_processed(con: duckdb.DuckDBPyConnection, processed: ProcessedURIs) -> int:
    """Remove the URIs earlier runs processed; returns how many distinct URIs that was."""
    if isinstance(processed, pa.ChunkedArray):
        processed = processed.combine_chunks()
    elif not isinstance(processed, pa.Array):
        processed = pa.array(list(processed), pa.string())
    con.register(
        "done", pa.table({"image_uri": uri_columns.normalize_array(processed.drop_null().cast(pa.string()))})
    )
    [(skipped,)] = _query(
        con,
        "SELECT count(DISTINCT image_uri) FROM candidates WHERE image_uri IN (SELECT image_uri FROM done)",
    )
    _query(con, "DELETE FROM candidates WHERE image_uri IN (SELECT image_uri FROM done)")
    con.unregister("done")
    return int(skipped)


def _sort_unique(con: duckdb.DuckDBPyConnection, out: Path) -> int:
    """Write the distinct candidates, sorted, to `out` (column image_uri); returns how many.

    Sorting then dropping each row equal to its predecessor is cheaper than grouping then sorting. The sort
    key skips the prefix all URIs share (one bucket, one folder): DuckDB sorts strings by a fixed-size key
    prefix first, which a long common prefix would make useless, and carrying less through the sort is
    faster (10M URIs: ~10 s -> ~8 s CPU); the order is the same.
    """
    [(first, last)] = _query(con, "SELECT min(image_uri), max(image_uri) FROM candidates")
    prefix = os.path.commonprefix([first, last]) if first is not None else ""
    # Sort and carry only what follows the shared prefix (SQL substr counts code points, as Python does).
    reader = con.sql(
        f"SELECT substr(image_uri, {len(prefix) + 1}) AS rest FROM candidates ORDER BY rest"
    ).to_arrow_reader(BATCH_ROWS)
    kept = 0
    out_schema = manifest_schema(["image_uri"])
    with pq.ParquetWriter(out, out_schema, **sharding.URI_LIST_PARQUET) as writer:
        for values in _coalesce(_without_repeats(reader, prefix), BATCH_ROWS):  # DuckDB's batches are small
            writer.write_batch(pa.record_batch([values], schema=out_schema))
            kept += len(values)
    return kept


def _without_repeats(sorted_rests: pa.RecordBatchReader, prefix: str) -> Iterator[pa.Array]:
    """The sorted URIs (`prefix` + each rest) without the rows equal to the row before them."""
    shared, nothing, previous = pa.scalar(prefix, pa.string()), pa.scalar("", pa.string()), None
    for batch in sorted_rests:
        values = pc.binary_join_element_wise(shared, batch.column(0).cast(pa.string()), nothing)
        values = _drop_repeats(values, previous)
        if len(values):
            previous = values[-1].as_py()
            yield values


def _coalesce(arrays: Iterator[pa.Array], rows: int) -> Iterator[pa.Array]:
    pending: list[pa.Array] = []
    for array in arrays:
        pending.append(array)
        if sum(map(len, pending)) >= rows:
            yield pa.concat_arrays(pending)
            pending = []
    if pending:
        yield pa.concat_arrays(pending)


def _drop_repeats(values: pa.Array, previous: str | None) -> pa.Array:
    """Sorted `values` without the rows equal to the row before them (`previous` comes before the first)."""
    if len(values) == 0:
        return values
    repeats = pc.equal(values.slice(1), values.slice(0, len(values) - 1)).to_numpy(zero_copy_only=False)
    keep = np.concatenate([[values[0].as_py() != previous], ~repeats])
    return values if keep.all() else values.filter(pa.array(keep))


# -- content dedup -------------------------------------------------------------------------------


def content_sha1(image_uris: list[str], config: RunConfig) -> pa.Array:
    """SHA-1 of each URI's bytes, read concurrently under the run's read bounds (regular files only, byte
    cap, timeouts: a FIFO or an endless body never hangs the build); null where it cannot be read."""
    read = partial(_sha1_or_none, config=config)
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        digests = list(pool.map(read, image_uris))
    unreadable = digests.count(None)
    if unreadable:
        log.warning("%d of %d inputs could not be read to hash; each is kept", unreadable, len(digests))
    return pa.array(digests, pa.string())


def _sha1_or_none(uri: str, config: RunConfig) -> str | None:
    digest = hashlib.sha1(usedforsecurity=False)
    try:
        for chunk in storage.iter_bytes(uri, _image_limits(config)):
            digest.update(chunk)
    except Exception as exc:  # the engine reports the read error as the image's result row
        log.debug("cannot hash %s: %s", uris.redact(uri), redact_text(str(exc)))
        return None
    return digest.hexdigest()


def _image_limits(config: RunConfig) -> storage.ReadLimits:
    """The bounds the engine reads each image under, so hashing refuses what the engine would."""
    return storage.ReadLimits(
        max_bytes=config.max_image_bytes,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        timeout_s=config.image_timeout_s,
    )


def _first_of_each_content(digests: pa.Array) -> np.ndarray:
    """Mask of the rows to keep: the first row of each digest, and every row without one."""
    positions = pa.array(np.arange(len(digests), dtype=np.int64))
    firsts = (
        pa.table({"digest": digests, "position": positions})
        .filter(pc.is_valid(digests))
        .group_by("digest")
        .aggregate([("position", "min")])
        .column("position_min")
        .to_numpy()
    )
    keep = ~pc.is_valid(digests).to_numpy(zero_copy_only=False)
    keep[firsts] = True
    return keep


# -- write ---------------------------------------------------------------------------------------


def manifest_schema(names: list[str] | None = None) -> pa.Schema:
    """The manifest's Arrow schema (schema.MANIFEST), or the subset of it named."""
    fields = schema.MANIFEST if names is None else tuple(f for f in schema.MANIFEST if f.name in names)
    return schema.arrow_schema(fields)


def _write_manifest(sorted_uris: Path, target: str, config: RunConfig) -> int:
    """The manifest from the sorted unique URIs: shard of each row, and content dedup when asked."""
    with_hash = config.dedup_mode == "content"
    out_schema = manifest_schema(
        ["image_uri", "shard_index", "content_sha1"] if with_hash else ["image_uri", "shard_index"]
    )
    source = pq.ParquetFile(sorted_uris)
    if with_hash:
        image_uris = source.read().column("image_uri").combine_chunks()
        digests = content_sha1(image_uris.to_pylist(), config)
        keep = pa.array(_first_of_each_content(digests))
        batches = [
            pa.record_batch(
                [image_uris.filter(keep), digests.filter(keep)], names=["image_uri", "content_sha1"]
            )
        ]
        unique = len(batches[0])
    else:
        batches = source.iter_batches(batch_size=BATCH_ROWS)
        unique = source.metadata.num_rows
    shards = sharding.shard_count(unique, config)
    written = 0
    with (
        storage.atomic_local_path(target) as tmp,
        pq.ParquetWriter(tmp, out_schema, **sharding.URI_LIST_PARQUET) as writer,
    ):
        for batch in batches:
            columns = dict(zip(batch.schema.names, batch.columns, strict=True))
            columns["shard_index"] = pa.array(
                sharding.shard_indices(written, written + batch.num_rows, unique, shards)
            )
            writer.write_batch(pa.record_batch([columns[f.name] for f in out_schema], schema=out_schema))
            written += batch.num_rows
    return written
