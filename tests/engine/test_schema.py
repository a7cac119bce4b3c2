"""The one schema, derived three ways, must describe the same table."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest

from detection_engine import schema


@pytest.mark.parametrize("fields", schema.TABLES.values(), ids=schema.TABLES.keys())
def test_every_derivation_names_the_same_columns_in_order(fields):
    names = schema.column_names(fields)
    assert len(names) == len(set(names))
    assert schema.arrow_schema(fields).names == names
    assert [f["name"] for f in schema.bigquery_schema(fields)] == names
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({schema.duckdb_columns(fields)})")
    assert [row[0] for row in con.execute("DESCRIBE t").fetchall()] == names


def test_detections_are_a_repeated_record_not_a_string():
    bq = {f["name"]: f for f in schema.bigquery_schema(schema.RESULTS)}["detections"]
    assert (bq["type"], bq["mode"]) == ("RECORD", "REPEATED")
    assert {f["name"]: (f["type"], f["mode"]) for f in bq["fields"]} == {
        "label_id": ("INT64", "REQUIRED"),
        "label": ("STRING", "NULLABLE"),
        "score": ("FLOAT64", "REQUIRED"),
        "box": ("FLOAT64", "REPEATED"),
    }
    arrow = schema.arrow_schema(schema.RESULTS).field("detections")
    assert pa.types.is_list(arrow.type) and pa.types.is_struct(arrow.type.value_type)
    assert not arrow.nullable


def _row(**overrides):
    row = {
        "run_id": "manual__2026-11-21T00:00:00+00:00",
        "run_date": dt.date(2026, 11, 21),
        "shard_index": 3,
        "image_uri": "gs://bucket/a b/ünï.jpg",
        "status": schema.STATUS_OK,
        "error": None,
        "width": 640,
        "height": 480,
        "num_detections": 1,
        "detections": [{"label_id": 1, "label": "person", "score": 0.9, "box": [1.0, 2.0, 30.5, 40.25]}],
        "fetch_ms": 1.0,
        "decode_ms": 2.0,
        "infer_ms": 3.0,
        "model_name": "fasterrcnn_resnet50_fpn",
        "weights_id": "COCO_V1",
        "random_weights": False,
        "processed_at": dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC),
    }
    row.update(overrides)
    return row


def test_a_parquet_row_loads_into_the_duckdb_table_unchanged(tmp_path):
    rows = [
        _row(),
        _row(image_uri="/x.jpg", status="error", error="corrupt: bad", num_detections=0, detections=[]),
    ]
    table = pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RESULTS))
    path = tmp_path / "shard-00003.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE results ({schema.duckdb_columns(schema.RESULTS)})")
    con.execute(f"INSERT INTO results SELECT * FROM read_parquet('{path}')")
    got = con.execute(
        "SELECT image_uri, detections[1].box, len(detections), processed_at FROM results"
    ).fetchall()
    assert got[0][:3] == ("gs://bucket/a b/ünï.jpg", [1.0, 2.0, 30.5, 40.25], 1)
    assert got[0][3] == dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC)
    assert got[1][2] == 0


def test_required_columns_reject_nulls():
    fields = schema.RESULTS
    schema.check_required(pa.Table.from_pylist([_row()], schema=schema.arrow_schema(fields)), fields)
    table = pa.Table.from_pylist([_row(image_uri=None)], schema=schema.arrow_schema(fields))
    with pytest.raises(ValueError, match="image_uri"):
        schema.check_required(table, fields)
