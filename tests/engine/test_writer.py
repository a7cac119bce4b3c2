"""Shard files: the results table is schema.RESULTS exactly, and every write replaces its target atomically."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pyarrow.parquet as pq
import pytest

from detection_engine import schema
from detection_engine.inference import Detections
from detection_engine.pipeline import ImageResult
from detection_engine.writer import (
    OutputError,
    RowContext,
    json_bytes,
    parquet_bytes,
    results_table,
    write_atomic,
)

CONTEXT = RowContext(
    run_id="manual__2026-11-21T10:00:00+00:00",
    run_date=date(2026, 11, 21),
    shard_index=3,
    model_name="fasterrcnn_resnet50_fpn",
    weights_id="FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
    random_weights=False,
    processed_at=datetime(2026, 11, 21, 10, 5, tzinfo=UTC),
    categories=["__background__", "person", "bicycle"],
)


def _results() -> list[ImageResult]:
    two = Detections(
        boxes=np.array([[1.5, 2.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]], dtype=np.float32),
        scores=np.array([0.9, 0.6], dtype=np.float32),
        labels=np.array([1, 57], dtype=np.int64),
    )
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return [
        ImageResult("gs://b/a.jpg", None, 640, 480, two, fetch_s=0.01, decode_s=0.002, infer_s=0.25),
        ImageResult("gs://b/missing.jpg", "not_found: no such file or object", fetch_s=0.003),
        ImageResult(
            "gs://b/empty-scene.jpg", None, 320, 200, none, fetch_s=0.01, decode_s=0.001, infer_s=0.25
        ),
    ]


def test_results_table_has_the_schema_and_one_row_per_image():
    table = results_table(_results(), CONTEXT)

    assert table.schema.equals(schema.arrow_schema(schema.RESULTS))
    rows = table.to_pylist()
    assert [r["image_uri"] for r in rows] == ["gs://b/a.jpg", "gs://b/missing.jpg", "gs://b/empty-scene.jpg"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert [r["num_detections"] for r in rows] == [2, 0, 0]

    ok, error, empty = rows
    assert ok["detections"] == [
        {"label_id": 1, "label": "person", "score": pytest.approx(0.9), "box": [1.5, 2.0, 30.0, 40.0]},
        {"label_id": 57, "label": "57", "score": pytest.approx(0.6), "box": [5.0, 6.0, 7.0, 8.0]},
    ]
    assert (ok["width"], ok["height"], ok["error"]) == (640, 480, None)
    assert ok["infer_ms"] == pytest.approx(250.0) and ok["fetch_ms"] == pytest.approx(10.0)
    assert error["detections"] == [] and error["error"] == "not_found: no such file or object"
    assert error["width"] is None and error["infer_ms"] is None
    assert empty["detections"] == []
    for row in rows:
        assert row["run_id"] == CONTEXT.run_id and row["run_date"] == CONTEXT.run_date
        assert row["shard_index"] == 3 and row["model_name"] == CONTEXT.model_name
        assert row["weights_id"] == CONTEXT.weights_id and row["random_weights"] is False
        assert row["processed_at"] == CONTEXT.processed_at


def test_empty_shard_gives_an_empty_table_with_the_schema():
    table = results_table([], CONTEXT)
    assert table.num_rows == 0 and table.schema.equals(schema.arrow_schema(schema.RESULTS))


def test_parquet_round_trip_through_an_atomic_local_write(tmp_path):
    target = tmp_path / "run" / "results" / "shard-00003.parquet"
    table = results_table(_results(), CONTEXT)

    write_atomic(str(target), parquet_bytes(table))

    assert pq.read_table(target).equals(table)


def test_rewrite_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "metrics" / "shard-00003.json"
    (tmp_path / "metrics").mkdir()
    stale = tmp_path / "metrics" / ".shard-00003.json.k1ll3d.tmp"  # left by an attempt killed mid-write
    stale.write_bytes(b"{half")

    write_atomic(str(target), json_bytes({"attempt": 1}))
    write_atomic(target.as_uri(), json_bytes({"attempt": 2}))

    assert json.loads(target.read_text()) == {"attempt": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["shard-00003.json"]


def test_failed_write_raises_output_error_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "results" / "shard-00000.parquet"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("detection_engine.storage.os.replace", refuse)
    with pytest.raises(OutputError, match="No space left on device"):
        write_atomic(str(target), b"new")

    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["shard-00000.parquet"]


def test_unwritable_location_is_an_output_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run prefix should be")
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(str(blocker / "results" / "shard-00000.parquet"), b"data")


def test_gcs_write_is_one_object_and_a_rewrite_replaces_it(gcs_bucket, gcs_emulator):
    uri = f"{gcs_bucket}/run-1/results/shard-00003.parquet"
    first = parquet_bytes(results_table(_results()[:1], CONTEXT))
    second = parquet_bytes(results_table(_results(), CONTEXT))

    write_atomic(uri, first)
    write_atomic(uri, second)

    assert gcs_emulator.get(uri) == second
    assert gcs_emulator.ls(f"{gcs_bucket}/run-1") == [uri]


def test_json_bytes_writes_dates_as_iso_strings():
    assert json.loads(json_bytes({"d": date(2026, 11, 21), "n": 1})) == {"d": "2026-11-21", "n": 1}
