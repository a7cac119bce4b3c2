"""A shard that commits as it goes, so a pod killed or preempted part-way loses at most its last part.

Finished images' rows (schema.RESULTS) are written as parts under the shard's parts prefix (layout.py); an
attempt that starts reads the committed parts and runs only the images none of them holds; the finished shard
writes the union as its results file and then removes the parts. Exactly once holds for a kill at any point:

- a part is written atomically (writer.write_atomic), so it is whole or absent, and holds each image once;
- an attempt keeps each URI of its manifest once (from the first part that holds it; rows of URIs the manifest
  no longer lists, or of another run, shard, model or weights, are dropped) and runs only the other URIs;
- the results file is written atomically before the parts are removed; a kill in between leaves parts the next
  attempt resumes from, and their union with what it runs again holds each URI once.

Each attempt keeps a small record beside its parts (`attempt-NNN.json`: started at, wall time up to its last
commit, and `stopped: "preempted"` after a clean stop), so the attempt that finishes can say which attempt it
is, how many before it were preempted, and how much pod time they spent (the run record adds it to the cost).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection_engine import layout
from detection_engine.pipeline import ImageResult
from detection_engine.storage import filesystem_for
from detection_engine.writer import (
    RESULTS_SCHEMA,
    OutputError,
    RowContext,
    json_bytes,
    parquet_bytes,
    results_table,
    write_atomic,
)

log = logging.getLogger(__name__)

PREEMPTED = "preempted"


@dataclass(frozen=True)
class CommitPolicy:
    """When finished images are committed as a part: every `every_images` images or every `every_s` seconds,
    whichever comes first (0 turns either off; with both off, parts are written only on a clean stop)."""

    every_images: int = 1000
    every_s: float = 60.0

    def due(self, pending: int, since_s: float) -> bool:
        if not pending:
            return False
        by_count = self.every_images > 0 and pending >= self.every_images
        by_time = self.every_s > 0 and since_s >= self.every_s
        return by_count or by_time


@dataclass(frozen=True)
class EarlierAttempts:
    """What the attempts before this one did, from their records."""

    count: int = 0
    preempted: int = 0
    wall_s: float = 0.0  # pod seconds up to each attempt's last commit (after it: unknown)


@dataclass(frozen=True)
class Resumed:
    """The rows earlier attempts committed (each manifest URI at most once) and the number of this attempt."""

    table: pa.Table
    attempt: int = 1
    earlier: EarlierAttempts = field(default_factory=EarlierAttempts)

    @property
    def uris(self) -> frozenset[str]:
        return frozenset(self.table.column("image_uri").to_pylist())

    @property
    def errors(self) -> list[str | None]:
        return self.table.column("error").to_pylist()


def read_committed(output_prefix: str, shard_index: int, uris: Sequence[str], ctx: RowContext) -> Resumed:
    """The shard's committed parts and attempt records; a part that cannot be used is skipped (its images run
    again), never trusted."""
    uri = layout.shard_parts_prefix(output_prefix, shard_index)
    try:
        fs, root = filesystem_for(uri)
        names = sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False))
    except FileNotFoundError:
        names = []
    except Exception as exc:  # the output prefix is unusable: the same failure as an unwritable results file
        raise OutputError(f"cannot write the parts under {uri}: {type(exc).__name__}: {exc}") from None
    attempts, tables = [], []
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        if match := layout.ATTEMPT_NAME.fullmatch(name):
            record = _read_record(fs, path)
            attempts.append((int(match["attempt"]), record))
        elif layout.PART_NAME.fullmatch(name):
            table = _read_part(fs, path, ctx)
            if table is not None:
                tables.append(table)
    seen = [number for number, _ in attempts] + [
        int(m["attempt"]) for name in names if (m := layout.PART_NAME.fullmatch(name))
    ]
    earlier = EarlierAttempts(
        count=len(set(seen)),
        preempted=sum(record.get("stopped") == PREEMPTED for _, record in attempts),
        wall_s=sum(float(record.get("wall_s") or 0.0) for _, record in attempts),
    )
    table = _once_per_uri(tables, uris)
    return Resumed(table=table, attempt=max(seen, default=0) + 1, earlier=earlier)


def _read_record(fs, path: str) -> dict:
    try:
        record = json.loads(fs.cat_file(path))
        return record if isinstance(record, dict) else {}
    except Exception as exc:  # a record only informs the metrics; the rows are in the parts
        log.warning("ignoring unreadable attempt record %s: %s", path, exc)
        return {}


def _read_part(fs, path: str, ctx: RowContext) -> pa.Table | None:
    try:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except Exception as exc:
        log.warning("ignoring unreadable part %s (its images run again): %s", path, exc)
        return None
    if table.schema.remove_metadata() != RESULTS_SCHEMA:
        log.warning("ignoring part %s written with another results schema (its images run again)", path)
        return None
    expected = {
        "run_id": ctx.run_id,
        "shard_index": ctx.shard_index,
        "model_name": ctx.model_name,
        "weights_id": ctx.weights_id,
    }
    for column, value in expected.items():
        found = set(table.column(column).to_pylist())
        if found and found != {value}:
            log.warning(
                "ignoring part %s: %s is %s, not %r (its images run again)", path, column, found, value
            )
            return None
    return table


def _once_per_uri(tables: list[pa.Table], uris: Sequence[str]) -> pa.Table:
    if not tables:
        return RESULTS_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table.column("image_uri"), value_set=pa.array(list(uris), pa.string())))
    first: dict[str, int] = {}
    for row, uri in enumerate(table.column("image_uri").to_pylist()):
        first.setdefault(uri, row)
    return table.take(pa.array(sorted(first.values()), pa.int64()))


def union_in_manifest_order(resumed: pa.Table, fresh: pa.Table, uris: Sequence[str]) -> pa.Table:
    """The shard's results: committed and fresh rows, one per URI, in manifest order."""
    table = pa.concat_tables([resumed, fresh])
    position = {uri: i for i, uri in enumerate(uris)}
    order = np.argsort([position[uri] for uri in table.column("image_uri").to_pylist()], kind="stable")
    return table.take(pa.array(order, pa.int64()))


class PartWriter:
    """Buffers this attempt's finished images and commits them as parts when the policy says so."""

    def __init__(
        self,
        output_prefix: str,
        shard_index: int,
        attempt: int,
        ctx: RowContext,
        policy: CommitPolicy,
        *,
        started: float,
        started_at: datetime,
        clock=time.perf_counter,
    ) -> None:
        self._prefix, self._shard, self.attempt = output_prefix, shard_index, attempt
        self._ctx, self._policy, self._clock = ctx, policy, clock
        self._started, self._started_at = started, started_at
        self._pending: list[ImageResult] = []
        self._last_commit = clock()
        self.parts = 0
        self.committed = 0

    def begin(self) -> None:
        """Record that this attempt started, before any of its parts exists."""
        self._write_record(None)

    def add(self, result: ImageResult) -> None:
        self._pending.append(result)
        if self._policy.due(len(self._pending), self._clock() - self._last_commit):
            self.commit()

    def commit(self) -> None:
        """Publish the buffered images as one part, then this attempt's record with its wall time so far."""
        self._last_commit = self._clock()
        if not self._pending:
            return
        ctx = dataclasses.replace(self._ctx, processed_at=datetime.now(UTC))
        uri = layout.shard_part_uri(self._prefix, self._shard, self.attempt, self.parts)
        write_atomic(uri, parquet_bytes(results_table(self._pending, ctx)))
        self.parts += 1
        self.committed += len(self._pending)
        self._pending = []
        self._write_record(None)

    def stop(self) -> None:
        """A clean stop (SIGTERM): commit what is finished and record the attempt as preempted."""
        self.commit()
        self._write_record(PREEMPTED)

    def remove_parts(self) -> None:
        """Once the results file is written: the parts and records are no longer needed."""
        uri = layout.shard_parts_prefix(self._prefix, self._shard)
        try:
            fs, root = filesystem_for(uri)
            if fs.exists(root):
                fs.rm(root, recursive=True)
        except Exception as exc:
            raise OutputError(f"cannot remove the parts under {uri}: {type(exc).__name__}: {exc}") from None

    def _write_record(self, stopped: str | None) -> None:
        record = {
            "attempt": self.attempt,
            "started_at": self._started_at.isoformat(),
            "wall_s": self._clock() - self._started,
            "committed_images": self.committed,
            "stopped": stopped,
        }
        write_atomic(layout.shard_attempt_uri(self._prefix, self._shard, self.attempt), json_bytes(record))


class Preempted(Exception):
    """The shard stopped cleanly on SIGTERM with its finished images committed; a retry resumes from there."""


class ShardResume:
    """One attempt of a shard: what earlier attempts committed, the images left to run, and this attempt's
    parts. `start` reads the parts; `add` is the pipeline's `on_result`; `union` and `finish` end the shard."""

    def __init__(self, uris: Sequence[str], resumed: Resumed, writer: PartWriter) -> None:
        self.uris, self.resumed, self.writer = list(uris), resumed, writer
        done = resumed.uris
        self.remaining = [uri for uri in self.uris if uri not in done]

    @classmethod
    def start(
        cls,
        output_prefix: str,
        uris: Sequence[str],
        ctx: RowContext,
        policy: CommitPolicy,
        *,
        started: float,
        started_at: datetime,
    ) -> ShardResume:
        resumed = read_committed(output_prefix, ctx.shard_index, uris, ctx)
        writer = PartWriter(
            output_prefix,
            ctx.shard_index,
            resumed.attempt,
            ctx,
            policy,
            started=started,
            started_at=started_at,
        )
        writer.begin()
        if resumed.attempt > 1:
            log.info(
                "shard %d: attempt %d resumes %d of %d images committed by %d earlier attempt(s) "
                "(%d preempted); %d to run",
                ctx.shard_index,
                resumed.attempt,
                resumed.table.num_rows,
                len(uris),
                resumed.earlier.count,
                resumed.earlier.preempted,
                len(uris) - resumed.table.num_rows,
            )
        return cls(uris, resumed, writer)

    def add(self, result: ImageResult) -> None:
        self.writer.add(result)

    def preempted(self) -> Preempted:
        """Commit what is finished, record the stop, and say so (the caller raises it)."""
        self.writer.stop()
        done = self.resumed.table.num_rows + self.writer.committed
        return Preempted(
            f"stopped by SIGTERM after committing {done} of {len(self.uris)} images "
            f"(attempt {self.writer.attempt}); a retry resumes with the other {len(self.uris) - done}"
        )

    def union(self, fresh: pa.Table) -> pa.Table:
        return union_in_manifest_order(self.resumed.table, fresh, self.uris)

    def metrics_fields(self) -> dict:
        """The keyword arguments of metrics.shard_metrics that say what this attempt resumed."""
        return {
            "resumed_errors": self.resumed.errors,
            "attempt": self.resumed.attempt,
            "preemptions": self.resumed.earlier.preempted,
            "earlier_attempts_s": self.resumed.earlier.wall_s,
        }

    def finish(self) -> None:
        self.writer.remove_parts()
