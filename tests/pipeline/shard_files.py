"""Shard files as the engine writes them (schema.RESULTS Parquet, schema.SHARD_METRICS JSON), for warehouse,
aggregate and verify tests and the warehouse benchmark: real files, written with the schema's Arrow types.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from detection_engine import layout, schema

RUN_DATE = date(2026, 11, 21)
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
LABELS = ["person", "bicycle", "car", "dog", "cat"]


def results_rows(
    run_id: str,
    shard_index: int,
    uris: list[str],
    *,
    run_date: date = RUN_DATE,
    failed: int = 0,
    detections: int = 3,
    model_name: str = "fasterrcnn_resnet50_fpn",
    weights_id: str = "COCO_V1",
    seed: int = 0,
) -> list[dict]:
    """One row per URI; the last `failed` URIs are error rows, the others carry `detections` detections."""
    rng = random.Random(f"{seed}-{shard_index}")
    rows = []
    for i, uri in enumerate(uris):
        ok = i < len(uris) - failed
        dets = []
        if ok:
            for _ in range(detections):
                label_id = rng.randrange(len(LABELS))
                x, y = rng.uniform(0, 500), rng.uniform(0, 300)
                dets.append(
                    {
                        "label_id": label_id,
                        "label": LABELS[label_id],
                        "score": round(rng.uniform(0.5, 1.0), 4),
                        "box": [x, y, x + rng.uniform(5, 140), y + rng.uniform(5, 160)],
                    }
                )
        rows.append(
            {
                "run_id": run_id,
                "run_date": run_date,
                "shard_index": shard_index,
                "image_uri": uri,
                "status": schema.STATUS_OK if ok else schema.STATUS_ERROR,
                "error": None if ok else ("decode_error" if i % 2 else "fetch_error"),
                "width": 640 if ok else None,
                "height": 480 if ok else None,
                "num_detections": len(dets),
                "detections": dets,
                "fetch_ms": rng.uniform(1, 20),
                "decode_ms": rng.uniform(2, 10) if ok else None,
                "infer_ms": rng.uniform(20, 60) if ok else None,
                "model_name": model_name,
                "weights_id": weights_id,
                "random_weights": False,
                "processed_at": T0 + timedelta(seconds=shard_index * 60 + i),
            }
        )
    return rows


def write_results(uri: str, rows: list[dict]) -> str:
    table = pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RESULTS))
    with fsspec.open(uri, "wb") as f:
        pq.write_table(table, f)
    return uri


def shard_metrics(
    run_id: str,
    shard_index: int,
    *,
    images: int,
    failed: int = 0,
    run_date: date = RUN_DATE,
    start_offset_s: float = 0.0,
    wall_s: float = 100.0,
    **overrides,
) -> dict:
    """A metrics object with exactly the keys of schema.SHARD_METRICS, JSON-ready (ISO timestamps)."""
    started = T0 + timedelta(seconds=start_offset_s)
    metrics = {
        "run_id": run_id,
        "run_date": run_date.isoformat(),
        "shard_index": shard_index,
        "images": images,
        "ok": images - failed,
        "failed": failed,
        "started_at": started.isoformat(),
        "finished_at": (started + timedelta(seconds=wall_s)).isoformat(),
        "wall_s": wall_s,
        "model_load_s": 5.0,
        "fetch_s": 10.0,
        "decode_s": 8.0,
        "infer_s": 80.0,
        "model_busy_fraction": 80.0 / 95.0,
        "batches": max(1, images // 8),
        "batch_size": 8,
        "batch_latency_p50_ms": 250.0,
        "batch_latency_p95_ms": 400.0,
        "batch_latency_max_ms": 600.0,
        "images_per_s": images / wall_s,
        "device": "cuda",
        "device_name": "NVIDIA L4",
        "device_memory_gb": 22.5,
        "peak_memory_mb": 3100.0,
        "gpu_utilization": 85.0,
        "precision": "fp32",
        "python_version": "3.11.9",
        "torch_version": "2.14.1",
        "torchvision_version": "0.29.1",
        "cuda_version": "12.8",
        "container_image": "detection-engine:test",
        "hostname": f"pod-{shard_index}",
        "model_name": "fasterrcnn_resnet50_fpn",
        "weights_id": "COCO_V1",
        "weights_sha256": None,
        "random_weights": False,
        "error_counts": json.dumps({"decode_error": failed}) if failed else None,
        "attempt": 1,
        "resumed_images": 0,
        "preemptions": 0,
        "earlier_attempts_s": 0.0,
        "devices": json.dumps([{"device": "cuda:0", "images": images, "batches": 1, "busy_fraction": 0.8}]),
        "fast_paths": json.dumps({"channels_last": False, "compile": "off"}),
    }
    unknown = overrides.keys() - metrics.keys()
    assert not unknown, f"not SHARD_METRICS keys: {unknown}"
    metrics.update(overrides)
    assert list(metrics) == schema.column_names(schema.SHARD_METRICS)
    return metrics


def write_metrics(uri: str, metrics: dict) -> str:
    with fsspec.open(uri, "w") as f:
        f.write(json.dumps(metrics) + "\n")
    return uri


def write_run(
    prefix: str,
    run_id: str,
    shard_sizes: list[int],
    *,
    failed_per_shard: int = 0,
    run_date: date = RUN_DATE,
    uri_base: str = "gs://images/img",
    **row_options,
) -> tuple[list[str], list[str]]:
    """Results and metrics files for every shard of a run; returns (results_uris, metrics_uris).

    Image URIs are unique across shards: `{uri_base}-{shard}-{i}.jpg`.
    """
    results, metrics = [], []
    for index, size in enumerate(shard_sizes):
        uris = [f"{uri_base}-{index:05d}-{i:06d}.jpg" for i in range(size)]
        failed = min(failed_per_shard, size)
        rows = results_rows(run_id, index, uris, run_date=run_date, failed=failed, **row_options)
        results.append(write_results(layout.shard_results_uri(prefix, index), rows))
        m = shard_metrics(run_id, index, images=size, failed=failed, run_date=run_date, start_offset_s=index)
        metrics.append(write_metrics(layout.shard_metrics_uri(prefix, index), m))
    return results, metrics


def run_record(**overrides) -> dict:
    """A complete runs-table record (schema.RUNS keys) of a small two-shard run; overrides replace fields."""
    record = {f.name: None for f in schema.RUNS}
    record.update(
        run_id="manual__2026-11-21T10:00:00+00:00",
        run_date="2026-11-21",
        logical_date="2026-11-21T10:00:00+00:00",
        run_type="manual",
        config_json="{}",
        input_uri="gs://in",
        output_uri="gs://out",
        listed=10,
        duplicates=1,
        skipped_not_image=0,
        skipped_incremental=0,
        processed=9,
        ok=8,
        failed=1,
        shards=2,
        wall_s=12.5,
        model_name="fasterrcnn_resnet50_fpn",
        weights_id="COCO_V1",
        random_weights=False,
        recorded_at="2026-11-21T11:00:00+00:00",
    )
    record.update(overrides)
    return record
