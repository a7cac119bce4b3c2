"""The embedded default's warehouse: one DuckDB file, replacing a run's slice exactly as BigQuery does.

Every call opens the file and closes it again, so Airflow tasks in other processes (a backfill's parallel
runs, the report command) can take their turn. Writers queue on an OS file lock beside the DuckDB file
(`<file>.duckdb.lock`, fcntl through `filelock`), so concurrent loads run one after the other, each whole,
instead of racing for DuckDB's own lock. Every call, read or write, gives up after `lock_timeout_s` in all
(the lock, then DuckDB's own lock, which a reader or an outside process may hold) with a
`WarehouseLockedError`: a retryable failure, so Airflow retries the task later; nothing is half loaded.

Shard files are read by DuckDB itself (`read_parquet`, `read_json`): local paths and file:// directly,
other schemes (gs://) through the fsspec filesystem registered on the connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import filelock
import pyarrow as pa
from fsspec.core import split_protocol

from detection_engine import schema, storage
from detection_pipeline.warehouse.base import (
    LoadStats,
    Warehouse,
    WarehouseError,
    check_run_id,
    columns_to_add,
    normalise_record,
    to_date,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_LOCAL_PROTOCOLS = {None, "file", "local"}
DEFAULT_LOCK_TIMEOUT_S = 60.0


class WarehouseLockedError(WarehouseError):
    """Another process kept the warehouse busy for longer than the lock timeout: retry later."""


def _columns(fields: tuple[schema.Field, ...], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{name}"' for name in schema.column_names(fields))


class DuckDBWarehouse(Warehouse):
    def __init__(self, path: str | Path, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        if not self.path.is_absolute():
            raise ValueError(f"DuckDB warehouse path must be absolute, got {str(path)!r}")
        if not lock_timeout_s >= 0:
            raise ValueError(f"lock_timeout_s must be at least 0, got {lock_timeout_s!r}")
        self.lock_timeout_s = float(lock_timeout_s)

    @property
    def lock_path(self) -> Path:
        """The file writers lock (never deleted: removing a lock file others wait on would break the lock)."""
        return self.path.with_name(self.path.name + ".lock")

    @property
    def uri(self) -> str:
        return f"duckdb://{self.path}"

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    # -- connections ------------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise WarehouseError(f"no DuckDB warehouse at {self.path}: nothing has been loaded into it yet")
        with self._writer_lock(deadline) if write else nullcontext():
            con = self._open(write, deadline)
            try:
                con.execute("SET TimeZone = 'UTC'")
                yield con
            finally:
                con.close()

    @contextmanager
    def _writer_lock(self, deadline: float) -> Iterator[None]:
        """Hold the writers' lock: wait for the writer before us, up to the deadline."""
        lock = filelock.FileLock(self.lock_path)
        try:
            lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=0.05)
        except filelock.Timeout:
            raise WarehouseLockedError(
                f"DuckDB warehouse {self.path} is being written by another process (lock {self.lock_path}) "
                f"for longer than the lock timeout ({self.lock_timeout_s:g} s); nothing was written, retry later"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _open(self, write: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=not write)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise WarehouseError(f"cannot open DuckDB warehouse {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise WarehouseLockedError(
                        f"cannot open DuckDB warehouse {self.path}: another process kept it locked for longer "
                        f"than the lock timeout ({self.lock_timeout_s:g} s); retry later ({exc})"
                    ) from exc
                log.info("DuckDB warehouse %s is locked by another process; retrying", self.path)
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 1.0)

    # -- writes -----------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Create missing tables; append the NULLABLE columns schema.py gained since a table was created."""
        with self._connect(write=True) as con:
            for name, fields in schema.TABLES.items():
                con.execute(f'CREATE TABLE IF NOT EXISTS "{name}" (\n  {schema.duckdb_columns(fields)}\n)')
                existing = [
                    row[0]
                    for row in con.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = $table"
                        " ORDER BY ordinal_position",
                        {"table": name},
                    ).fetchall()
                ]
                for field in columns_to_add(name, fields, existing):
                    log.info("Adding column %s to %s in %s", field.name, name, self.path)
                    con.execute(f'ALTER TABLE "{name}" ADD COLUMN {schema.duckdb_columns((field,))}')

    def load_run(
        self, run_id: str, run_date: str | date, results_uris: list[str], metrics_uris: list[str]
    ) -> LoadStats:
        """Delete the run's rows and insert the shard files' rows in ONE transaction.

        A second identical load leaves the same rows; a failing file leaves the previous rows untouched.
        """
        check_run_id(run_id)
        day = to_date(run_date)
        results_uris, metrics_uris = list(results_uris), list(metrics_uris)
        params = {"run_id": run_id, "run_date": day}
        with self._connect(write=True) as con:
            # Rows need no order (every read orders explicitly); dropping it lets DuckDB insert in parallel:
            # ~30% faster loads (bench/bench_warehouse.py).
            con.execute("SET preserve_insertion_order = false")
            _register_filesystems(con, [*results_uris, *metrics_uris])
            con.execute("BEGIN TRANSACTION")
            try:
                rows = self._replace(con, "results", schema.RESULTS, _read_parquet(results_uris), params)
                metrics_source = _read_json(con, metrics_uris)
                metrics_rows = self._replace(
                    con, "shard_metrics", schema.SHARD_METRICS, metrics_source, params
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        log.info("Loaded run %s: %d results rows from %d files, %d shard metrics rows",
                 run_id, rows, len(results_uris), metrics_rows)  # fmt: skip
        return LoadStats(run_id, len(results_uris), rows, metrics_rows)

    def _replace(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        fields: tuple[schema.Field, ...],
        source: tuple[str, dict] | None,
        params: dict,
    ) -> int:
        con.execute(f'DELETE FROM "{table}" WHERE run_id = $run_id', {"run_id": params["run_id"]})
        if source is None:
            return 0
        relation, source_params = source
        cols = _columns(fields)
        (inserted,) = con.execute(
            f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM {relation}', source_params
        ).fetchone()
        (own,) = con.execute(
            f'SELECT count(*) FROM "{table}" WHERE run_id = $run_id AND run_date = $run_date', params
        ).fetchone()
        if own != inserted:
            raise WarehouseError(
                f"{table}: {inserted - own} of {inserted} rows in the shard files of run "
                f"{params['run_id']!r} belong to another run id or run date (expected run_date {params['run_date']}); "
                "nothing was loaded"
            )
        return inserted

    def write_run_record(self, record: dict) -> None:
        row = normalise_record(schema.RUNS, record)
        table = pa.Table.from_pylist([row], schema=schema.arrow_schema(schema.RUNS))
        cols = _columns(schema.RUNS)
        with self._connect(write=True) as con:
            con.register("run_record", table)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM runs WHERE run_id = $run_id", {"run_id": row["run_id"]})
                con.execute(f"INSERT INTO runs ({cols}) SELECT {cols} FROM run_record")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # -- reads ------------------------------------------------------------------------------------

    def _table(self, sql: str, params: dict | None = None) -> pa.Table:
        with self._connect(write=False) as con:
            return con.sql(sql, params=params).to_arrow_table()

    def processed_uris(
        self, model_name: str, weights_id: str, *, exclude_run_id: str | None = None
    ) -> pa.Array:
        if not self.path.exists():  # a first incremental run: nothing processed yet
            return pa.array([], pa.string())
        table = self._table(
            "SELECT DISTINCT image_uri FROM results"
            " WHERE model_name = $model_name AND weights_id = $weights_id AND status = $ok AND ($exclude_run_id IS NULL OR run_id <> $exclude_run_id)",
            {
                "model_name": model_name,
                "weights_id": weights_id,
                "ok": schema.STATUS_OK,
                "exclude_run_id": exclude_run_id,
            },
        )
        return table.column("image_uri").combine_chunks().cast(pa.string())

    def run_counts(self, run_id: str) -> dict[str, int]:
        table = self._table(
            """
            SELECT
              count(*) AS rows,
              count(DISTINCT image_uri) AS distinct_uris,
              count(*) - count(DISTINCT image_uri) AS duplicate_uri_rows,
              count(*) FILTER (WHERE status = $ok) AS ok,
              count(*) FILTER (WHERE status = $error) AS failed,
              count(*) FILTER (WHERE status NOT IN ($ok, $error)) AS other_status,
              (SELECT count(*) FROM shard_metrics WHERE run_id = $run_id) AS shard_metrics_rows,
              (SELECT coalesce(sum(images), 0) FROM shard_metrics WHERE run_id = $run_id)
                AS shard_metrics_images,
              (SELECT count(*) FROM runs WHERE run_id = $run_id) AS run_records
            FROM results WHERE run_id = $run_id
            """,
            {"run_id": run_id, "ok": schema.STATUS_OK, "error": schema.STATUS_ERROR},
        )
        return {name: int(value) for name, value in table.to_pylist()[0].items()}

    def run_record(self, run_id: str) -> dict | None:
        rows = self._table("SELECT * FROM runs WHERE run_id = $run_id", {"run_id": run_id}).to_pylist()
        return rows[0] if rows else None

    def runs(self) -> list[dict]:
        return self._table(_RUNS_SQL).to_pylist()

    def runs_frame(self) -> pd.DataFrame:
        with self._connect(write=False) as con:
            return con.sql(_RUNS_SQL).df()

    def shard_metrics(self, run_id: str) -> pa.Table:
        return self._table(
            "SELECT * FROM shard_metrics WHERE run_id = $run_id ORDER BY shard_index", {"run_id": run_id}
        )

    def detections_per_class(self, run_id: str) -> pa.Table:
        return self._table(
            """
            SELECT d.label_id, any_value(d.label) AS label, count(*) AS detections,
                   count(DISTINCT r.image_uri) AS images
            FROM results r, unnest(r.detections) AS u(d)
            WHERE r.run_id = $run_id
            GROUP BY d.label_id ORDER BY detections DESC, d.label_id
            """,
            {"run_id": run_id},
        )

    def top_errors(self, run_id: str, limit: int = 10) -> pa.Table:
        return self._table(
            "SELECT error, count(*) AS images FROM results WHERE run_id = $run_id AND status = $error"
            " GROUP BY error ORDER BY images DESC, error LIMIT $limit",
            {"run_id": run_id, "error": schema.STATUS_ERROR, "limit": int(limit)},
        )

    def latency_quantiles(self, run_id: str) -> pa.Table:
        parts = [
            f"""SELECT '{stage}' AS stage, count({column}) AS images,
                   quantile_cont({column}, 0.5) AS p50_ms, quantile_cont({column}, 0.95) AS p95_ms,
                   quantile_cont({column}, 0.99) AS p99_ms, max({column}) AS max_ms
               FROM results WHERE run_id = $run_id AND status = $ok"""
            for stage, column in _LATENCY_STAGES
        ]
        return self._table(
            " UNION ALL ".join(parts) + " ORDER BY stage", {"run_id": run_id, "ok": schema.STATUS_OK}
        )


# Stage name -> results column; both are constants of this module, never user input.
_LATENCY_STAGES = (("decode", "decode_ms"), ("fetch", "fetch_ms"), ("infer", "infer_ms"))
_RUNS_SQL = "SELECT * FROM runs ORDER BY run_date, recorded_at, run_id"


def _read_parquet(uris: list[str]) -> tuple[str, dict] | None:
    if not uris:
        return None
    # union_by_name=false: every file must have the schema's columns in the schema's order, as the engine
    # writes them with schema.arrow_schema; a file that does not fails the load instead of loading NULLs.
    return "read_parquet($files, union_by_name = false)", {"files": uris}


def _read_json(con: duckdb.DuckDBPyConnection, uris: list[str]) -> tuple[str, dict] | None:
    if not uris:
        return None
    # Column types come from the table, which was created from schema.SHARD_METRICS. Newline-delimited, as
    # BigQuery's load requires, so a file that would fail in production fails here too.
    types = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'shard_metrics' ORDER BY ordinal_position"
    ).fetchall()
    return (
        "read_json($files, format = 'newline_delimited', columns = $columns)",
        {"files": uris, "columns": dict(types)},
    )


def _register_filesystems(con: duckdb.DuckDBPyConnection, uris: list[str]) -> None:
    """Let DuckDB read gs:// (any fsspec scheme) through `storage`'s filesystems, the one way to reach storage."""
    by_protocol = {split_protocol(uri)[0]: uri for uri in uris}
    registered = set()
    for protocol in sorted(set(by_protocol) - _LOCAL_PROTOCOLS):
        fs, _ = storage.filesystem_for(by_protocol[protocol])
        if id(fs) not in registered:  # gs:// and gcs:// share one client
            con.register_filesystem(fs)
            registered.add(id(fs))
