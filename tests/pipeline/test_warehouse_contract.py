"""The warehouse contract, one suite run against both backends with the same assertions.

DuckDB runs on a real DuckDB file with shard files on local disk (the embedded default). BigQuery runs its
real `BigQueryWarehouse` code through the provider's hook with BigQuery's server replaced by
`bigquery_double.DuckDBBigQueryHook`: every statement parsed as BigQuery SQL, transpiled and run against
tables created from schema.py, load jobs reading the shard files from the GCS emulator (real generations,
so real job ids). Where the engines differ the mapping is explicit, in `Backend` and the double's docstring:
- an aborted load raises the backend's own error (`refused`): DuckDB's WarehouseError, BigQuery's BadRequest
  from ERROR() in the MERGE; the message and the untouched rows are asserted the same way;
- partition pruning has no DuckDB counterpart: the double fails a DML statement that does not pin run_date.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.api_core.exceptions import BadRequest

from detection_engine import layout, schema
from detection_pipeline.warehouse import LoadStats, Warehouse, WarehouseError, open_warehouse
from detection_pipeline.warehouse.base import normalise_record
from detection_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse
from tests.pipeline.bigquery_double import DuckDBBigQueryHook, UnprunedPartitionError
from tests.pipeline.shard_files import results_rows, run_record, write_results, write_run

RUN = "manual__2026-11-21T10:00:00+00:00"
OTHER = "scheduled__2026-11-21T00:00:00+00:00"
EARLIER = "scheduled__2026-11-20T00:00:00+00:00"
MODEL, WEIGHTS = "fasterrcnn_resnet50_fpn", "COCO_V1"
PROJECT, DATASET = "test-project", "detections"


@dataclass
class Backend:
    name: str
    warehouse: Warehouse
    base: str  # where the run's shard files are written
    refused: type[Exception]  # what a load that must not happen raises (see the module docstring)
    rows: Callable[..., list[dict]]  # rows(table, where, params): a table's raw rows
    old_table: Callable[[str, tuple[schema.Field, ...], list[dict]], None]  # a table of an older schema
    hook: DuckDBBigQueryHook | None = None  # BigQuery's server, for what a test asks of it directly

    def prefix(self, run_id: str = RUN) -> str:
        return layout.run_prefix(f"{self.base}/out", run_id)


def _duckdb_backend(tmp_path) -> Backend:
    warehouse = open_warehouse(f"duckdb://{tmp_path}/wh/warehouse.duckdb")

    def rows(table, where="TRUE", params=None):
        with duckdb.connect(str(warehouse.path), read_only=True) as con:
            return (
                con.sql(f'SELECT * FROM "{table}" WHERE {where}', params=params).to_arrow_table().to_pylist()
            )

    def old_table(table, fields, records):
        warehouse.path.parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(warehouse.path)) as con:
            con.execute(f'CREATE TABLE "{table}" ({schema.duckdb_columns(fields)})')
            con.register("old", pa.Table.from_pylist(records, schema=schema.arrow_schema(fields)))
            con.execute(f'INSERT INTO "{table}" SELECT * FROM old')

    return Backend("duckdb", warehouse, str(tmp_path), WarehouseError, rows, old_table)


def _bigquery_backend(gcs_bucket, monkeypatch) -> Backend:
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": PROJECT}}),
    )
    hook = DuckDBBigQueryHook(PROJECT)
    warehouse = BigQueryWarehouse(PROJECT, DATASET, hook=hook)

    def old_table(table, fields, records):
        resource = warehouse.table_resource(table) | {"schema": {"fields": schema.bigquery_schema(fields)}}
        hook.create_table(dataset_id=DATASET, table_id=table, table_resource=resource, project_id=PROJECT)
        hook.con.register("old", pa.Table.from_pylist(records, schema=schema.arrow_schema(fields)))
        hook.con.execute(f'INSERT INTO "{PROJECT}"."{DATASET}"."{table}" SELECT * FROM old')

    return Backend("bigquery", warehouse, gcs_bucket, BadRequest, hook.rows, old_table, hook)


@pytest.fixture(params=["duckdb", "bigquery"])
def fresh(request, tmp_path, monkeypatch) -> Backend:
    """A backend with no tables yet."""
    if request.param == "duckdb":
        return _duckdb_backend(tmp_path)
    return _bigquery_backend(request.getfixturevalue("gcs_bucket"), monkeypatch)


@pytest.fixture
def backend(fresh) -> Backend:
    fresh.warehouse.ensure_tables()
    return fresh


def _results(backend: Backend, run_id: str) -> list[dict]:
    rows = backend.rows("results", "run_id = $run_id", {"run_id": run_id})
    return sorted(rows, key=lambda r: (r["shard_index"], r["image_uri"]))


def _read_results(uris: list[str]) -> list[dict]:
    rows = []
    for uri in uris:
        with fsspec.open(uri, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return sorted(rows, key=lambda r: (r["shard_index"], r["image_uri"]))


# -- tables --------------------------------------------------------------------------------------


def test_ensure_tables_is_idempotent_and_empty(backend):
    backend.warehouse.ensure_tables()
    for table in schema.TABLES:
        assert backend.rows(table) == []
    assert backend.warehouse.runs() == []


def test_ensure_tables_appends_the_nullable_columns_the_schema_gained(fresh):
    old_fields = schema.RUNS[:-3]
    old_names = schema.column_names(old_fields)
    old = normalise_record(old_fields, {k: v for k, v in _record(run_id=EARLIER).items() if k in old_names})
    fresh.old_table("runs", old_fields, [old])

    fresh.warehouse.ensure_tables()
    fresh.warehouse.ensure_tables()  # nothing more to add the second time

    earlier = fresh.warehouse.run_record(EARLIER)
    assert list(earlier) == schema.column_names(schema.RUNS)
    assert [earlier[f.name] for f in schema.RUNS[-3:]] == [None, None, None]  # old rows read NULL
    assert earlier["ok"] == old["ok"] and earlier["run_date"] == old["run_date"]
    sample = {"STRING": "new", "INT64": 3, "FLOAT64": 0.5, "BOOL": True, "DATE": date(2026, 11, 21)}
    newest = {f.name: sample[f.type] for f in schema.RUNS[-3:]}
    fresh.warehouse.write_run_record(_record(**newest))
    assert {k: fresh.warehouse.run_record(RUN)[k] for k in newest} == newest
    assert fresh.warehouse.run_counts(EARLIER)["run_records"] == 1


# -- loads ---------------------------------------------------------------------------------------


def test_a_first_load_loads_every_row_with_its_detections(backend):
    results, metrics = write_run(backend.prefix(), RUN, [4, 3], failed_per_shard=1)
    stats = backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    assert stats == LoadStats(RUN, results_files=2, results_rows=7, shard_metrics_rows=2)

    loaded = _results(backend, RUN)
    assert loaded == _read_results(results)  # every column, detections with their box, round trips
    assert loaded[0]["detections"][0].keys() == {"label_id", "label", "score", "box"}
    assert len(loaded[0]["detections"][0]["box"]) == 4

    metrics_rows = backend.warehouse.shard_metrics(RUN).to_pylist()
    assert [m["shard_index"] for m in metrics_rows] == [0, 1]
    with fsspec.open(metrics[1], "r") as f:
        expected = json.loads(f.read())
    assert metrics_rows[1]["finished_at"] == datetime.fromisoformat(expected["finished_at"])
    assert metrics_rows[1]["run_date"] == date(2026, 11, 21)
    assert metrics_rows[1]["torch_version"] == expected["torch_version"]
    assert list(metrics_rows[1]) == schema.column_names(schema.SHARD_METRICS)


def test_an_identical_reload_leaves_the_same_rows(backend):
    results, metrics = write_run(backend.prefix(), RUN, [5, 5, 2], failed_per_shard=2)
    first = backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    counts, rows = backend.warehouse.run_counts(RUN), _results(backend, RUN)
    second = backend.warehouse.load_run(RUN, date(2026, 11, 21), results, metrics)
    assert second == first
    assert _results(backend, RUN) == rows
    assert (
        backend.warehouse.run_counts(RUN)
        == counts
        == {
            "rows": 12,
            "distinct_uris": 12,
            "duplicate_uri_rows": 0,
            "ok": 6,
            "failed": 6,
            "other_status": 0,
            "shard_metrics_rows": 3,
            "shard_metrics_images": 12,
            "run_records": 0,
        }
    )


def reload_with_fewer_shards(backend: Backend) -> None:
    """The scenario of the test below, also run with planted bugs."""
    other_results, other_metrics = write_run(backend.prefix(OTHER), OTHER, [3], uri_base="gs://b/other")
    backend.warehouse.load_run(OTHER, "2026-11-21", other_results, other_metrics)
    earlier_results, earlier_metrics = write_run(
        backend.prefix(EARLIER), EARLIER, [2, 2], run_date=date(2026, 11, 20), uri_base="gs://b/earlier"
    )
    backend.warehouse.load_run(EARLIER, "2026-11-20", earlier_results, earlier_metrics)
    untouched = {run: (_results(backend, run), backend.warehouse.run_counts(run)) for run in (OTHER, EARLIER)}
    results, metrics = write_run(backend.prefix(), RUN, [4, 4, 4])
    backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)

    # The re-run plans fewer shards: the stale third shard's files are still there but not named.
    results, metrics = write_run(backend.prefix(), RUN, [6, 2])
    stats = backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)

    assert stats.results_rows == 8
    assert _results(backend, RUN) == _read_results(results)
    counts = backend.warehouse.run_counts(RUN)
    assert (counts["rows"], counts["distinct_uris"], counts["shard_metrics_rows"]) == (8, 8, 2)
    for run, (rows, run_counts) in untouched.items():  # another run of the date, a run of another date
        assert _results(backend, run) == rows, run
        assert backend.warehouse.run_counts(run) == run_counts, run
    assert len(backend.rows("results")) == 8 + 3 + 4
    assert len(backend.rows("shard_metrics")) == 2 + 1 + 2


def test_a_reload_with_fewer_shards_replaces_only_its_own_slice(backend):
    reload_with_fewer_shards(backend)


def test_a_run_id_reloaded_under_another_run_date_keeps_one_copy_of_its_rows(backend, request):
    if backend.name == "bigquery":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="known divergence: BigQuery's MERGE deletes only the run's (run_id, run_date) partition "
                "so that it prunes; a run id loaded again under another date keeps its earlier rows (verify then "
                "fails the run on duplicate URIs). DuckDB deletes the run id's rows of every date.",
            )
        )
    earlier, earlier_metrics = write_run(backend.prefix(), RUN, [3], run_date=date(2026, 11, 20))
    backend.warehouse.load_run(RUN, "2026-11-20", earlier, earlier_metrics)
    results, metrics = write_run(backend.prefix(), RUN, [3])
    backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    counts = backend.warehouse.run_counts(RUN)
    assert (counts["rows"], counts["duplicate_uri_rows"], counts["shard_metrics_rows"]) == (3, 0, 1)


def test_a_shard_row_of_another_run_or_date_aborts_the_load_and_keeps_the_previous_rows(backend):
    results, metrics = write_run(backend.prefix(), RUN, [3, 3])
    backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    before, rows = backend.warehouse.run_counts(RUN), _results(backend, RUN)

    for bad in (
        results_rows(OTHER, 1, ["gs://b/x.jpg", "gs://b/y.jpg"]),
        results_rows(RUN, 1, ["gs://b/x.jpg"], run_date=date(2026, 11, 20)),
    ):
        write_results(results[1], bad)
        with pytest.raises(backend.refused, match="another run id or run date"):
            backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
        assert backend.warehouse.run_counts(RUN) == before
        assert _results(backend, RUN) == rows
        assert backend.warehouse.run_counts(OTHER)["rows"] == 0


def test_an_empty_run_replaces_its_rows_with_none(backend):
    results, metrics = write_run(backend.prefix(), RUN, [3])
    backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    other_results, other_metrics = write_run(backend.prefix(OTHER), OTHER, [2], uri_base="gs://b/other")
    backend.warehouse.load_run(OTHER, "2026-11-21", other_results, other_metrics)
    assert backend.warehouse.load_run(RUN, "2026-11-21", [], []) == LoadStats(RUN, 0, 0, 0)
    assert backend.warehouse.run_counts(RUN)["rows"] == 0
    assert backend.warehouse.run_counts(RUN)["shard_metrics_rows"] == 0
    assert backend.warehouse.run_counts(OTHER)["rows"] == 2


def test_the_same_files_loaded_again_after_another_load_replace_the_slice_again(backend):
    results, metrics = write_run(backend.prefix(), RUN, [3, 2])
    first = backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    rows = _results(backend, RUN)
    backend.warehouse.load_run(RUN, "2026-11-21", [], [])
    assert backend.warehouse.load_run(RUN, "2026-11-21", results, metrics) == first
    assert _results(backend, RUN) == rows
    assert backend.warehouse.run_counts(RUN)["shard_metrics_rows"] == 2


def test_duplicate_uris_across_shards_are_counted_not_hidden(backend):
    prefix = backend.prefix()
    uris = ["gs://b/1.jpg", "gs://b/2.jpg", "gs://b/3.jpg"]
    results = [
        write_results(layout.shard_results_uri(prefix, 0), results_rows(RUN, 0, uris)),
        write_results(layout.shard_results_uri(prefix, 1), results_rows(RUN, 1, uris[1:], failed=1)),
    ]
    backend.warehouse.load_run(RUN, "2026-11-21", results, [])
    counts = backend.warehouse.run_counts(RUN)
    assert (counts["rows"], counts["distinct_uris"], counts["duplicate_uri_rows"]) == (5, 3, 2)
    assert (counts["ok"], counts["failed"], counts["other_status"]) == (4, 1, 0)


# -- run record ----------------------------------------------------------------------------------


def _record(**overrides) -> dict:
    return run_record(
        **{"run_id": RUN, "wall_s": 12, "model_name": MODEL, "weights_id": WEIGHTS, **overrides}
    )


def test_the_run_record_is_replaced_not_appended(backend):
    backend.warehouse.write_run_record(_record(run_id=OTHER))
    backend.warehouse.write_run_record(_record())
    backend.warehouse.write_run_record(_record(ok=7, failed=2, recorded_at="2026-11-21T12:00:00Z"))
    assert backend.warehouse.run_counts(RUN)["run_records"] == 1
    record = backend.warehouse.run_record(RUN)
    assert (record["ok"], record["failed"]) == (7, 2)
    assert record["run_date"] == date(2026, 11, 21)
    assert record["recorded_at"] == datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert record["logical_date"] == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert record["wall_s"] == 12.0 and record["random_weights"] is False and record["gpu_type"] is None
    assert list(record) == schema.column_names(schema.RUNS)
    assert backend.warehouse.run_record("no-such-run") is None
    assert backend.warehouse.run_counts(OTHER)["run_records"] == 1


def test_a_bad_run_record_is_refused_and_nothing_is_written(backend):
    with pytest.raises(ValueError) as info:
        backend.warehouse.write_run_record(_record(model_name=None, ok=1.5))
    assert "model_name: is required" in str(info.value)
    assert "ok: expected an integer, got 1.5" in str(info.value)
    with pytest.raises(ValueError, match=r"missing columns \['shards'\]"):
        backend.warehouse.write_run_record({k: v for k, v in _record().items() if k != "shards"})
    with pytest.raises(ValueError, match="invalid timestamp"):
        backend.warehouse.write_run_record(_record(started_at="yesterday"))
    assert backend.warehouse.runs() == []


def test_runs_are_listed_oldest_first(backend):
    backend.warehouse.write_run_record(_record(run_id="b", run_date="2026-11-22"))
    backend.warehouse.write_run_record(_record(run_id="a", run_date="2026-11-21"))
    assert [r["run_id"] for r in backend.warehouse.runs()] == ["a", "b"]


def test_runs_read_as_a_dataframe_hold_the_same_records_in_the_same_order(backend):
    backend.warehouse.write_run_record(_record(run_id="b", run_date="2026-11-22", coco_map=0.25))
    backend.warehouse.write_run_record(_record(run_id="a", run_date="2026-11-21"))
    frame = backend.warehouse.runs_frame()
    assert list(frame.columns) == schema.column_names(schema.RUNS)
    as_records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for row, record in zip(as_records, backend.warehouse.runs(), strict=True):
        assert {k: _plain(v) for k, v in row.items()} == {k: _plain(v) for k, v in record.items()}


def test_no_runs_read_as_an_empty_dataframe_with_every_column(backend):
    frame = backend.warehouse.runs_frame()
    assert frame.empty and list(frame.columns) == schema.column_names(schema.RUNS)


def _plain(value):
    """A DataFrame cell as the record's Python value: pandas' Timestamps are datetimes (dates at midnight)."""
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
        return (
            value.date()
            if value.tzinfo is None and value == datetime.combine(value.date(), datetime.min.time())
            else value
        )
    return value


# -- incremental and report reads ----------------------------------------------------------------


def test_processed_uris_are_ok_rows_of_this_model_version_in_other_runs(backend):
    results, metrics = write_run(backend.prefix(OTHER), OTHER, [3], failed_per_shard=1, uri_base="gs://b/i")
    backend.warehouse.load_run(OTHER, "2026-11-21", results, metrics)
    prefix = backend.prefix("v2")
    v2 = write_results(
        layout.shard_results_uri(prefix, 0), results_rows("v2", 0, ["gs://b/v2.jpg"], weights_id="file.pth")
    )
    backend.warehouse.load_run("v2", "2026-11-21", [v2], [])

    processed = backend.warehouse.processed_uris(MODEL, WEIGHTS)
    assert processed.type == pa.string()
    assert sorted(processed.to_pylist()) == ["gs://b/i-00000-000000.jpg", "gs://b/i-00000-000001.jpg"]
    assert backend.warehouse.processed_uris(MODEL, "file.pth").to_pylist() == ["gs://b/v2.jpg"]
    assert backend.warehouse.processed_uris(MODEL, WEIGHTS, exclude_run_id=OTHER).to_pylist() == []
    assert len(backend.warehouse.processed_uris(MODEL, WEIGHTS, exclude_run_id="v2")) == 2
    assert backend.warehouse.processed_uris("ssd300_vgg16", WEIGHTS).to_pylist() == []


def test_report_aggregates(backend):
    results, metrics = write_run(backend.prefix(), RUN, [6, 4], failed_per_shard=2, detections=2)
    backend.warehouse.load_run(RUN, "2026-11-21", results, metrics)
    rows = _results(backend, RUN)

    per_class = backend.warehouse.detections_per_class(RUN).to_pylist()
    assert sum(c["detections"] for c in per_class) == sum(len(r["detections"]) for r in rows) == 12
    assert per_class == sorted(per_class, key=lambda c: (-c["detections"], c["label_id"]))
    expected = {}
    for row in rows:
        for d in row["detections"]:
            expected.setdefault(d["label_id"], (d["label"], set()))[1].add(row["image_uri"])
    assert {c["label_id"]: (c["label"], c["images"]) for c in per_class} == {
        k: (label, len(images)) for k, (label, images) in expected.items()
    }

    errors = backend.warehouse.top_errors(RUN, limit=1).to_pylist()
    assert len(errors) == 1 and errors[0]["images"] == 2
    assert sum(e["images"] for e in backend.warehouse.top_errors(RUN).to_pylist()) == 4

    latency = {r["stage"]: r for r in backend.warehouse.latency_quantiles(RUN).to_pylist()}
    assert list(latency) == ["decode", "fetch", "infer"]
    infer = sorted(r["infer_ms"] for r in rows if r["status"] == "ok")
    assert latency["infer"]["images"] == 6
    assert latency["infer"]["max_ms"] == infer[-1]
    assert infer[0] <= latency["infer"]["p50_ms"] <= latency["infer"]["p95_ms"] <= infer[-1]


# -- planted bugs: the suite must catch a MERGE that is wrong ------------------------------------


@pytest.fixture
def bigquery(gcs_bucket, monkeypatch) -> Backend:
    backend = _bigquery_backend(gcs_bucket, monkeypatch)
    backend.warehouse.ensure_tables()
    return backend


def _plant(monkeypatch, remove: str) -> None:
    merge_sql = BigQueryWarehouse.merge_sql

    def planted(self, table, staging):
        sql = merge_sql(self, table, staging)
        assert remove in sql
        return sql.replace(remove, "")

    monkeypatch.setattr(BigQueryWarehouse, "merge_sql", planted)


def test_a_merge_without_the_run_date_predicate_fails_the_suite(bigquery, monkeypatch):
    _plant(monkeypatch, " AND T.run_date = @run_date")
    with pytest.raises(UnprunedPartitionError, match="does not pin run_date"):
        reload_with_fewer_shards(bigquery)


def test_a_merge_without_the_run_id_predicate_fails_the_suite(bigquery, monkeypatch):
    _plant(monkeypatch, " AND T.run_id = @run_id")
    with pytest.raises(AssertionError):  # the other run of the same date is deleted
        reload_with_fewer_shards(bigquery)
    assert bigquery.warehouse.run_counts(OTHER)["rows"] == 0


def test_a_merge_without_its_guard_on_the_staging_rows_fails_the_suite(bigquery, monkeypatch):
    _plant(monkeypatch, "WHERE IF(run_id = @run_id AND run_date = @run_date, TRUE,\n"
                        "           ERROR('a shard file holds rows of another run id or run date'))\n")  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):  # the other run's rows get loaded
        test_a_shard_row_of_another_run_or_date_aborts_the_load_and_keeps_the_previous_rows(bigquery)


def test_every_statement_the_bigquery_warehouse_sent_is_bigquery_sql(bigquery):
    from tests.pipeline.bigquery_double import parse_bigquery

    reload_with_fewer_shards(bigquery)
    bigquery.warehouse.load_run(OTHER, "2026-11-21", [], [])
    bigquery.warehouse.write_run_record(_record())
    bigquery.warehouse.processed_uris(MODEL, WEIGHTS, exclude_run_id=RUN)
    test_report_aggregates(bigquery)
    kinds = {type(parse_bigquery(sql)).__name__ for sql in bigquery.hook.statements}
    # Tables are created and widened through the tables API (create_table, update_table), not DDL.
    assert kinds == {"Merge", "Delete", "Select", "Union"}
