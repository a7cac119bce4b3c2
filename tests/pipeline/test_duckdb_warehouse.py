"""What is DuckDB's own about the DuckDB warehouse: its URIs, file, errors and locks (local and GCS files).

The behaviour both warehouses promise (loads replacing a run's slice, run records, incremental and report
reads, schema evolution) is tested once for both in test_warehouse_contract.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import duckdb
import pytest

from detection_engine import layout, schema
from detection_pipeline.warehouse import WarehouseError, open_warehouse
from detection_pipeline.warehouse.duckdb_warehouse import DuckDBWarehouse
from tests.pipeline.shard_files import (
    results_rows,
    run_record,
    shard_metrics,
    write_metrics,
    write_results,
    write_run,
)

RUN = "manual__2026-11-21T10:00:00+00:00"
OTHER = "scheduled__2026-11-21T00:00:00+00:00"
MODEL, WEIGHTS = "fasterrcnn_resnet50_fpn", "COCO_V1"


@pytest.fixture
def warehouse(tmp_path) -> DuckDBWarehouse:
    warehouse = open_warehouse(f"duckdb://{tmp_path}/wh/warehouse.duckdb")
    warehouse.ensure_tables()
    return warehouse


def _prefix(tmp_path, run_id: str = RUN) -> str:
    return layout.run_prefix(str(tmp_path / "out"), run_id)


def _rows(warehouse: DuckDBWarehouse, sql: str, params=None) -> list[dict]:
    with duckdb.connect(str(warehouse.path), read_only=True) as con:
        return con.sql(sql, params=params).to_arrow_table().to_pylist()


# -- URIs ----------------------------------------------------------------------------------------


def test_open_warehouse_gives_a_duckdb_file(tmp_path):
    warehouse = open_warehouse(f"duckdb://{tmp_path}/a b/w.duckdb")
    assert isinstance(warehouse, DuckDBWarehouse)
    assert warehouse.path == tmp_path / "a b" / "w.duckdb"
    assert warehouse.uri == f"duckdb://{tmp_path}/a b/w.duckdb"


@pytest.mark.parametrize(
    "uri",
    [
        "duckdb://relative/path.duckdb",  # two slashes: a host, not an absolute path
        "duckdb:///tmp/warehouse.db",
        "duckdb:///tmp/warehouse.duckdb?mode=ro",
        "duckdb:///tmp/.duckdb/",
        "duckdb:///:memory:",
        "duckdb:",
    ],
)
def test_open_warehouse_refuses_bad_duckdb_uris(uri):
    with pytest.raises(ValueError, match=re.escape(f"invalid DuckDB warehouse URI {uri!r}")):
        open_warehouse(uri)


@pytest.mark.parametrize("uri", ["", "/tmp/w.duckdb", "postgres://x/y", None])
def test_open_warehouse_refuses_what_is_not_a_warehouse_uri(uri):
    with pytest.raises(ValueError, match="warehouse URI"):
        open_warehouse(uri)


# -- tables --------------------------------------------------------------------------------------


def test_ensure_tables_creates_the_schemas_tables_and_is_idempotent(warehouse):
    warehouse.ensure_tables()
    for table, fields in schema.TABLES.items():
        columns = _rows(
            warehouse,
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = $t"
            " ORDER BY ordinal_position",
            {"t": table},
        )
        assert [c["column_name"] for c in columns] == schema.column_names(fields)
        assert [c["is_nullable"] == "YES" for c in columns] == [f.mode == "NULLABLE" for f in fields]


def test_ensure_tables_appends_columns_the_schema_gained(tmp_path):
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE TABLE runs ({schema.duckdb_columns(schema.RUNS[:-3])})")
    warehouse = DuckDBWarehouse(path)
    warehouse.ensure_tables()
    columns = _rows(warehouse, "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'")
    assert [c["column_name"] for c in columns] == schema.column_names(schema.RUNS)


def test_ensure_tables_refuses_a_table_that_diverged_from_the_schema(tmp_path):
    path = tmp_path / "odd.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE results (image_uri VARCHAR, run_id VARCHAR)")
    with pytest.raises(WarehouseError, match="not a prefix of schema.py"):
        DuckDBWarehouse(path).ensure_tables()


# -- loads ---------------------------------------------------------------------------------------


def _assert_untouched(warehouse, before):
    assert warehouse.run_counts(RUN) == before


def test_rows_of_another_run_are_counted_in_the_error(warehouse, tmp_path):
    """The refusal itself is in the contract suite; DuckDB's message also says how many rows were foreign."""
    results, metrics = write_run(_prefix(tmp_path), RUN, [3, 3])
    write_results(results[1], results_rows(OTHER, 1, ["gs://b/x.jpg", "gs://b/y.jpg"]))
    with pytest.raises(WarehouseError, match=r"results: 2 of 5 rows .* belong to another run id or run date"):
        warehouse.load_run(RUN, "2026-11-21", results, metrics)


def test_a_missing_or_malformed_file_fails_the_load_and_keeps_the_previous_rows(warehouse, tmp_path):
    prefix = _prefix(tmp_path)
    results, metrics = write_run(prefix, RUN, [3, 3])
    warehouse.load_run(RUN, "2026-11-21", results, metrics)
    before = warehouse.run_counts(RUN)

    ghost = layout.shard_results_uri(prefix, 9)
    with pytest.raises(duckdb.IOException, match="shard-00009.parquet"):
        warehouse.load_run(RUN, "2026-11-21", [*results, ghost], metrics)
    _assert_untouched(warehouse, before)

    # BigQuery loads newline-delimited JSON only; a pretty-printed metrics file fails here as it would there.
    with open(metrics[0], "w") as f:
        json.dump(shard_metrics(RUN, 0, images=3), f, indent=2)
    with pytest.raises(duckdb.InvalidInputException, match="Malformed JSON"):
        warehouse.load_run(RUN, "2026-11-21", results, metrics)
    _assert_untouched(warehouse, before)

    # A metrics file without a required key.
    incomplete = shard_metrics(RUN, 0, images=3)
    del incomplete["images"]
    write_metrics(metrics[0], incomplete)
    with pytest.raises(duckdb.ConstraintException, match="images"):
        warehouse.load_run(RUN, "2026-11-21", results, metrics)
    _assert_untouched(warehouse, before)


def test_bad_run_ids_and_dates_are_refused(warehouse):
    with pytest.raises(ValueError, match="invalid run date"):
        warehouse.load_run(RUN, "2026-13-01", [], [])
    with pytest.raises(ValueError, match="must be a date, not a timestamp"):
        warehouse.load_run(RUN, datetime(2026, 11, 21, tzinfo=UTC), [], [])
    with pytest.raises(ValueError, match="invalid run id"):
        warehouse.load_run("bad\nid", "2026-11-21", [], [])


def test_loads_read_shard_files_on_gcs(warehouse, gcs_bucket):
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN)
    results, metrics = write_run(prefix, RUN, [4, 2], failed_per_shard=1)
    assert results[0].startswith("gs://")
    stats = warehouse.load_run(RUN, "2026-11-21", results, metrics)
    assert (stats.results_rows, stats.shard_metrics_rows) == (6, 2)
    assert warehouse.run_counts(RUN)["failed"] == 2


# -- records and reads ---------------------------------------------------------------------------


def _record(**overrides) -> dict:
    return run_record(
        **{"run_id": RUN, "wall_s": 12, "model_name": MODEL, "weights_id": WEIGHTS, **overrides}
    )


def test_reads_of_a_warehouse_that_does_not_exist(tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "none.duckdb")
    assert warehouse.processed_uris(MODEL, WEIGHTS).to_pylist() == []  # the first incremental run
    with pytest.raises(WarehouseError, match="no DuckDB warehouse at"):
        warehouse.runs()
    assert not (tmp_path / "none.duckdb").exists()


# -- concurrency ---------------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("BEGIN TRANSACTION")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_a_call_waits_for_another_process_holding_the_file(warehouse, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(warehouse.path), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        warehouse.write_run_record(_record())
        assert time.monotonic() - started > 0.5  # it waited for the lock rather than failing
        assert warehouse.run_counts(RUN)["run_records"] == 1
    finally:
        holder.wait(timeout=30)


def test_a_lock_held_too_long_is_a_clear_error(warehouse):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(warehouse.path), "5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        impatient = DuckDBWarehouse(warehouse.path, lock_timeout_s=0.3)
        with pytest.raises(WarehouseError, match="cannot open DuckDB warehouse"):
            impatient.run_counts(RUN)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# -- concurrent writers (a backfill's runs loading at once) ---------------------------------------

# Waits for the start file, then loads its run `times` times into the warehouse (fresh file: no tables yet).
_LOAD = """
import json, os, sys, time
job = json.loads(sys.argv[1])
from detection_pipeline.warehouse import open_warehouse
warehouse = open_warehouse("duckdb://" + job["path"], lock_timeout_s=60)
while not os.path.exists(job["go"]):
    time.sleep(0.005)
for _ in range(job["times"]):
    warehouse.ensure_tables()
    warehouse.load_run(job["run_id"], "2026-11-21", job["results"], job["metrics"])
print("loaded", flush=True)
"""

# Holds the warehouse's writer lock, as a slow load in another process would, until stdin closes.
_HOLD_WRITER_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire(timeout=10)
print("held", flush=True)
sys.stdin.read()
"""


def _subprocess_env() -> dict:
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    paths = [str(root / "plugins"), str(root / "inference_image"), str(root)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def test_concurrent_loads_from_several_processes_are_serialised_and_each_whole(tmp_path):
    path = tmp_path / "shared" / "warehouse.duckdb"  # nothing there yet: the first writer creates it
    go = tmp_path / "go"
    runs = {f"backfill__2026-11-21T10:0{i}:00+00:00": [40 + i, 25, 7 * i + 1] for i in range(4)}
    jobs = []
    for run_id, sizes in runs.items():
        results, metrics = write_run(_prefix(tmp_path, run_id), run_id, sizes, uri_base=f"gs://in/{run_id}")
        job = {"path": str(path), "go": str(go), "run_id": run_id, "results": results, "metrics": metrics}
        jobs.append({**job, "times": 2})  # each loads twice: a retried load replaces, never adds
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD, json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_subprocess_env(),
        )
        for job in jobs
    ]
    try:
        go.touch()  # start them together
        outcomes = [loader.communicate(timeout=120) for loader in loaders]
    finally:
        for loader in loaders:
            loader.kill()
            loader.wait(timeout=30)

    assert [(loader.returncode, out.strip()) for loader, (out, _) in zip(loaders, outcomes, strict=True)] == [
        (0, "loaded")
    ] * len(jobs), [err for _, err in outcomes]
    warehouse = DuckDBWarehouse(path)
    for run_id, sizes in runs.items():
        counts = warehouse.run_counts(run_id)
        assert (counts["rows"], counts["distinct_uris"], counts["shard_metrics_rows"]) == (
            sum(sizes),
            sum(sizes),
            len(sizes),
        ), run_id
    (total,) = _rows(warehouse, "SELECT count(*) AS n FROM results")[0].values()
    assert total == sum(sum(sizes) for sizes in runs.values())


def test_a_load_queues_behind_another_writer_and_then_loads(warehouse, tmp_path):
    results, metrics = write_run(_prefix(tmp_path), RUN, [3, 2])
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITER_LOCK, str(warehouse.lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        release = threading.Timer(1.0, holder.stdin.close)
        release.start()
        started = time.monotonic()
        stats = warehouse.load_run(RUN, "2026-11-21", results, metrics)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert waited >= 0.9  # it waited for the writer before it
    assert stats.results_rows == 5 and warehouse.run_counts(RUN)["rows"] == 5


def test_a_writer_lock_held_past_the_timeout_is_a_retryable_error_and_changes_nothing(warehouse, tmp_path):
    from detection_pipeline.errors import PermanentError
    from detection_pipeline.warehouse.duckdb_warehouse import WarehouseLockedError

    results, metrics = write_run(_prefix(tmp_path), RUN, [3, 2])
    warehouse.load_run(RUN, "2026-11-21", results, metrics)
    again, again_metrics = write_run(_prefix(tmp_path, OTHER), RUN, [4], uri_base="gs://images/other")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITER_LOCK, str(warehouse.lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        impatient = DuckDBWarehouse(warehouse.path, lock_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(WarehouseLockedError, match=r"being written by another process.*0\.5 s") as caught:
            impatient.load_run(RUN, "2026-11-21", again, again_metrics)
        assert 0.4 <= time.monotonic() - started < 5
        assert isinstance(caught.value, WarehouseError) and not isinstance(caught.value, PermanentError)
        assert impatient.run_counts(RUN)["rows"] == 5  # reads need no writer lock; the old slice is intact
    finally:
        holder.kill()
        holder.wait(timeout=30)
