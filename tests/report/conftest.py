"""Tiny runs on disk, written the way the engine writes them (schema.arrow_schema, layout.py names)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from detection_engine import layout, schema

RUN_ID = "manual__2026-11-20T00:00:00+00:00"
RUN_DATE = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def _check_keys(row: dict, fields: tuple[schema.Field, ...]) -> dict:
    """Every column of the schema, None where the fixture sets nothing; a key the schema lost fails loudly."""
    columns = schema.column_names(fields)
    unknown = set(row) - set(columns)
    assert not unknown, f"fixture out of step with schema.py: {sorted(unknown)}"
    return {name: row.get(name) for name in columns}


def detection(label_id: int, label: str | None, score: float, box: list[float]) -> dict:
    return {"label_id": label_id, "label": label, "score": score, "box": box}


def result_row(
    image_uri: str,
    *,
    shard_index: int = 0,
    status: str = schema.STATUS_OK,
    error: str | None = None,
    size: tuple[int, int] | None = (64, 48),
    detections: tuple[dict, ...] | list[dict] = (),
    infer_ms: float | None = 20.0,
) -> dict:
    ok = status == schema.STATUS_OK
    return _check_keys(
        {
            "run_id": RUN_ID,
            "run_date": RUN_DATE,
            "shard_index": shard_index,
            "image_uri": image_uri,
            "status": status,
            "error": error,
            "width": size[0] if ok and size else None,
            "height": size[1] if ok and size else None,
            "num_detections": len(detections),
            "detections": list(detections),
            "fetch_ms": 1.0,
            "decode_ms": 2.0,
            "infer_ms": infer_ms if ok else None,
            "model_name": "fasterrcnn_resnet50_fpn",
            "weights_id": "DEFAULT",
            "random_weights": False,
            "processed_at": T0,
        },
        schema.RESULTS,
    )


def shard_metrics(
    shard_index: int, rows: list[dict], started_at: datetime, seconds: float, **overrides
) -> dict:
    ok = sum(r["status"] == schema.STATUS_OK for r in rows)
    metrics = {
        "run_id": RUN_ID,
        "run_date": RUN_DATE.isoformat(),
        "shard_index": shard_index,
        "images": len(rows),
        "ok": ok,
        "failed": len(rows) - ok,
        "started_at": started_at.isoformat(),
        "finished_at": (started_at + timedelta(seconds=seconds)).isoformat(),
        "wall_s": seconds,
        "model_load_s": 1.0,
        "fetch_s": 0.1,
        "decode_s": 0.1,
        "infer_s": seconds - 1.5,
        "model_busy_fraction": 0.8,
        "batches": 1,
        "batch_size": 8,
        "batch_latency_p50_ms": 150.0,
        "batch_latency_p95_ms": 180.0,
        "batch_latency_max_ms": 190.0,
        "images_per_s": len(rows) / seconds,
        "device": "cpu",
        "device_name": "cpu",
        "device_memory_gb": None,
        "peak_memory_mb": 512.0,
        "gpu_utilization": None,
        "precision": "fp32",
        "python_version": "3.11.9",
        "torch_version": "2.14.1",
        "torchvision_version": "0.29.1",
        "cuda_version": None,
        "container_image": "detection-engine:test",
        "hostname": f"pod-{shard_index}",
        "model_name": "fasterrcnn_resnet50_fpn",
        "weights_id": "DEFAULT",
        "weights_sha256": None,
        "random_weights": False,
        "error_counts": "{}",
        "attempt": 1,
        "resumed_images": 0,
        "preemptions": 0,
        "earlier_attempts_s": 0.0,
        "devices": "[]",
        "fast_paths": "{}",
    }
    metrics.update(overrides)
    return _check_keys(metrics, schema.SHARD_METRICS)


def write_shard(
    run_prefix: str, shard_index: int, rows: list[dict], *, start_offset_s: float = 0.0, seconds: float = 10.0
) -> None:
    """Write a shard's results Parquet and metrics JSON, to a local path or any fsspec URI."""
    table = pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RESULTS))
    with fsspec.open(layout.shard_results_uri(run_prefix, shard_index), "wb", auto_mkdir=True) as f:
        pq.write_table(table, f)
    metrics = shard_metrics(shard_index, rows, T0 + timedelta(seconds=start_offset_s), seconds)
    with fsspec.open(layout.shard_metrics_uri(run_prefix, shard_index), "w", auto_mkdir=True) as f:
        json.dump(metrics, f)


def run_record(**overrides) -> dict:
    record = {
        "run_id": RUN_ID,
        "run_date": RUN_DATE,
        "logical_date": datetime(2026, 11, 20, tzinfo=UTC),
        "run_type": "manual",
        "started_at": T0,
        "finished_at": T0 + timedelta(minutes=5),
        "config_json": json.dumps(
            {"input_uri": "/data/in", "batch_size": 8, "model": "fasterrcnn_resnet50_fpn"}
        ),
        "input_uri": "/data/in",
        "output_uri": "/data/out",
        "listed": 7,
        "duplicates": 1,
        "skipped_not_image": 0,
        "skipped_incremental": 0,
        "processed": 6,
        "ok": 4,
        "failed": 2,
        "shards": 2,
        "wall_s": 25.0,
        "shard_wall_s": 40.0,
        "inference_s": 30.0,
        "model_load_s": 1.0,
        "images_per_s": 12.345,
        "images_per_s_per_gpu": 6.17,
        "batch_latency_p50_ms": 150.0,
        "batch_latency_p95_ms": 180.0,
        "machine_type": "g2-standard-8",
        "gpu_type": "nvidia-l4",
        "gpu_count": 1,
        "machine_hours": 0.011,
        "gpu_hours": 0.011,
        "estimated_cost_usd": 0.0123,
        "cost_per_1000_images_usd": 2.0502,
        "airflow_version": "3.3.2",
        "google_provider_version": "22.8.0",
        "kubernetes_provider_version": "10.25.0",
        "project_version": "0.1.0",
        "python_version": "3.11.9",
        "torch_version": "2.14.1",
        "torchvision_version": "0.29.1",
        "cuda_version": None,
        "container_image": "detection-engine:test",
        "device_name": "cpu",
        "model_name": "fasterrcnn_resnet50_fpn",
        "weights_id": "DEFAULT",
        "weights_sha256": None,
        "random_weights": False,
        "precision": "fp32",
        "batch_size": 8,
        "recorded_at": T0 + timedelta(minutes=6),
    }
    record.update(overrides)
    return _check_keys(record, schema.RUNS)


def png(path: Path, size: tuple[int, int], color: tuple[int, int, int] = (128, 128, 128)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return str(path)


@pytest.fixture
def mixed_run(tmp_path: Path) -> tuple[str, dict]:
    """Two shards: ok images with and without detections, a decode error and a fetch error with hostile text.

    Shard 0: a.png (640x480, person + dog), b<i>"x".png (person), bad.png (decode_error)
    Shard 1: c.png (no detections), d.png (unnamed label id 91), EVIL-named URI (fetch_error with EVIL text)
    """
    images = tmp_path / "images"
    a = png(images / "a.png", (640, 480))
    b = png(images / 'b<i>"x".png', (64, 48))  # hostile characters in a URI that reaches the gallery
    c = png(images / "c.png", (64, 48))
    d = png(images / "d.png", (64, 48))
    prefix = str(tmp_path / "out" / layout.safe_run_id(RUN_ID))
    write_shard(
        prefix,
        0,
        [
            result_row(
                a,
                size=(640, 480),
                detections=[
                    detection(1, "person", 0.97, [64.0, 48.0, 320.0, 240.0]),
                    detection(18, "dog", 0.81, [400.0, 300.0, 600.0, 460.0]),
                ],
                infer_ms=30.0,
            ),
            result_row(b, detections=[detection(1, "person", 0.66, [1.0, 1.0, 30.0, 40.0])], infer_ms=35.0),
            result_row(
                str(images / "bad.png"), status="error", error="decode_error: cannot identify image file"
            ),
        ],
    )
    write_shard(
        prefix,
        1,
        [
            result_row(c, shard_index=1, infer_ms=40.0),
            result_row(
                d, shard_index=1, detections=[detection(91, None, 0.7, [2.0, 2.0, 20.0, 20.0])], infer_ms=45.0
            ),
            result_row(
                f"{images}/{EVIL}.png",
                shard_index=1,
                status="error",
                error=f"fetch_error: {EVIL}",
            ),
        ],
        start_offset_s=2.0,
        seconds=15.0,
    )
    return prefix, run_record(output_uri=str(tmp_path / "out"))
