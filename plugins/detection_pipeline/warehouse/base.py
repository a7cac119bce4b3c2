"""What every warehouse backend offers the pipeline, and the record handling they share.

Both backends keep the same semantics, so the DAG never branches on the backend:

- `load_run` REPLACES the run's slice of `results` and `shard_metrics` (a retried task, a cleared run or a
  backfill never appends duplicates), in one atomic step per table;
- `write_run_record` replaces the run's row in `runs`;
- no table declares a primary key: the exactly-once invariants are checked by `verify` with `run_counts`,
  the same way on DuckDB and on BigQuery (which cannot enforce keys).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd

from detection_engine import schema
from detection_pipeline.errors import PermanentError

# The keys of `run_counts`, which `verify` reads.
RUN_COUNT_KEYS = (
    "rows",  # results rows of the run
    "distinct_uris",  # distinct image URIs among them
    "duplicate_uri_rows",  # rows - distinct_uris
    "ok",
    "failed",
    "other_status",  # rows whose status is neither ok nor error
    "shard_metrics_rows",
    "shard_metrics_images",  # sum of `images` over the run's shard metrics
    "run_records",  # rows in `runs` for the run id
)

_RUN_ID = re.compile(r"^[^\x00-\x1f]{1,250}$")
# Table names are checked before they are ever put into SQL (identifiers cannot be query parameters); project,
# dataset and location follow the warehouse URI grammar in `uris`.
TABLE_ID = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


class WarehouseError(RuntimeError):
    """A load or query that did not do what the run needs (the message says which run and files)."""


class SchemaDivergedError(WarehouseError, PermanentError):
    """A table whose columns differ from schema.py's beyond what may be migrated by itself: no retry helps."""


@dataclass(frozen=True)
class LoadStats:
    run_id: str
    results_files: int
    results_rows: int
    shard_metrics_rows: int


class Warehouse(ABC):
    """Three tables (`schema.TABLES`): per-image results, per-shard metrics, one record per run."""

    uri: str

    @abstractmethod
    def ensure_tables(self) -> None:
        """Create the tables from `schema` if missing; never alter or empty an existing one."""

    @abstractmethod
    def load_run(
        self, run_id: str, run_date: str | date, results_uris: list[str], metrics_uris: list[str]
    ) -> LoadStats:
        """Replace the run's rows with exactly these shard files (results Parquet, metrics JSON)."""

    @abstractmethod
    def write_run_record(self, record: dict) -> None:
        """Replace the run's row in `runs`; `record` has exactly the keys of `schema.RUNS`."""

    @abstractmethod
    def processed_uris(
        self, model_name: str, weights_id: str, *, exclude_run_id: str | None = None
    ) -> pa.Array:
        """Distinct image URIs that this model version processed with status ok (for incremental runs).

        Pass the current run's id as `exclude_run_id`: a re-run must not skip the images its own earlier
        attempt processed, or the re-run would replace its slice with nothing.
        """

    @abstractmethod
    def run_counts(self, run_id: str) -> dict[str, int]:
        """The counts `verify` checks (keys: `RUN_COUNT_KEYS`)."""

    # -- what the report and dashboard read ------------------------------------------------------

    @abstractmethod
    def run_record(self, run_id: str) -> dict | None:
        """The run's record, or None when it has none."""

    @abstractmethod
    def runs(self) -> list[dict]:
        """Every run record, oldest run date first."""

    @abstractmethod
    def runs_frame(self) -> pd.DataFrame:
        """`runs()` as a DataFrame, one column per `schema.RUNS` field, made by the engine's own DataFrame
        export (DuckDB `.df()`, BigQuery `to_dataframe()`): the dashboard's input."""

    @abstractmethod
    def shard_metrics(self, run_id: str) -> pa.Table:
        """The run's shard metrics rows, by shard index."""

    @abstractmethod
    def detections_per_class(self, run_id: str) -> pa.Table:
        """Columns label_id, label, detections, images: one row per class, most detections first."""

    @abstractmethod
    def top_errors(self, run_id: str, limit: int = 10) -> pa.Table:
        """Columns error, images: the most frequent error reasons of the run."""

    @abstractmethod
    def latency_quantiles(self, run_id: str) -> pa.Table:
        """Columns stage, images, p50_ms, p95_ms, p99_ms, max_ms for fetch, decode and infer of ok images."""


# -- shared helpers ------------------------------------------------------------------------------


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: expected 1-250 printable characters")
    return run_id


def to_date(value: str | date) -> date:
    """A run date from XCom (ISO string) or Python; a datetime is refused, its day would be ambiguous."""
    if isinstance(value, datetime):
        raise ValueError(f"run date must be a date, not a timestamp: {value!r}")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid run date {value!r}: expected YYYY-MM-DD") from None


def to_timestamp(value: str | datetime) -> datetime:
    """An aware UTC datetime; naive values are taken as UTC (Airflow's convention)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"invalid timestamp {value!r}: expected ISO 8601") from None
    if not isinstance(value, datetime):
        raise ValueError(f"invalid timestamp {value!r}: expected ISO 8601 or datetime")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalise_record(fields: tuple[schema.Field, ...], record: dict) -> dict:
    """`record` with exactly the given columns, each value converted to its column's Python type.

    Raises ValueError naming every missing, unexpected or mistyped column, so a bad record is never half
    written.
    """
    names = schema.column_names(fields)
    missing = sorted(set(names) - record.keys())
    extra = sorted(record.keys() - set(names))
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    out: dict = {}
    for field in fields:
        if field.name in missing:
            continue
        try:
            out[field.name] = _convert(field, record[field.name])
        except (TypeError, ValueError) as exc:
            problems.append(f"{field.name}: {exc}")
    if problems:
        raise ValueError("invalid record: " + "; ".join(problems))
    return out


def _convert(field: schema.Field, value: object) -> object:
    if value is None:
        if field.mode == "REQUIRED":
            raise ValueError("is required")
        return None
    match field.type:
        case "STRING":
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {type(value).__name__}")
            return value
        case "INT64":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"expected an integer, got {value!r}")
            return value
        case "FLOAT64":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"expected a number, got {value!r}")
            return float(value)
        case "BOOL":
            if not isinstance(value, bool):
                raise TypeError(f"expected a boolean, got {value!r}")
            return value
        case "DATE":
            return to_date(value)
        case "TIMESTAMP":
            return to_timestamp(value)
    raise TypeError(f"unsupported column type {field.type} in a record")


def columns_to_add(
    table: str, fields: tuple[schema.Field, ...], existing: list[str]
) -> tuple[schema.Field, ...]:
    """The schema's columns an existing table lacks, when the difference is the additive kind schema.py allows

    New columns are appended, NULLABLE, at the end of a table's fields, so existing rows read them as NULL and
    positional statements (BigQuery's INSERT ROW) still line up. Anything else needs a deliberate migration.
    """
    names = schema.column_names(fields)
    if existing != names[: len(existing)]:
        raise SchemaDivergedError(
            f"table {table!r} has columns {existing}, which are not a prefix of schema.py's {names}: "
            "its schema changed in a way this pipeline will not migrate by itself"
        )
    added = fields[len(existing) :]
    not_nullable = [f.name for f in added if f.mode != "NULLABLE"]
    if not_nullable:
        raise SchemaDivergedError(
            f"table {table!r} lacks columns {not_nullable} that are not NULLABLE; add them by hand, with a "
            "value for the existing rows"
        )
    return added


def jsonable(record: dict) -> dict:
    """A record with dates and timestamps as ISO strings (XCom, NDJSON)."""
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in record.items()}


def record_hash(*parts: object) -> str:
    """A short stable hash of JSON-able parts: deterministic ids for the same inputs, different otherwise."""
    import hashlib

    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode(), usedforsecurity=False).hexdigest()[:16]
