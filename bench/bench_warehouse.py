"""Benchmark: load a run's shard files into the DuckDB warehouse, and load them again (the retry/re-run case).

Generates one run of 200 shards x 1,000 results rows (schema.RESULTS Parquet as the engine writes it, with
realistic detections: 0-20 per image, ~6 on average, 2% error rows) plus its 200 metrics JSON files, then for
each repetition, in a fresh warehouse file:

- first load: `load_run` into empty tables;
- second, identical load: `load_run` again, which must replace the run's slice and leave the same counts;
- replace among others: `load_run` once more after `--other-runs` other runs of the same size were loaded,
  so the DELETE of the run's slice scans a bigger table;
- `run_counts` (what verify reads) and `processed_uris` (the incremental lookup) on that bigger table.

    .venv/bin/python bench/bench_warehouse.py                  # 200 x 1,000 rows, 3 repetitions, medians
    .venv/bin/python bench/bench_warehouse.py --shards 20 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "inference_image")]

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from detection_engine import layout, schema  # noqa: E402
from detection_pipeline.warehouse import open_warehouse  # noqa: E402

RUN_DATE = date(2026, 11, 21)
LABELS = ["person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "dog", "cat", "bird"]
MAX_DETECTIONS = 20
ERROR_FRACTION = 0.02


def shard_table(run_id: str, shard_index: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """One shard's results, built column by column (no per-row Python), typed by schema.arrow_schema."""
    failed = rng.random(rows) < ERROR_FRACTION
    counts = np.where(failed, 0, rng.poisson(6, rows).clip(0, MAX_DETECTIONS))
    total = int(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    label_ids = rng.integers(0, len(LABELS), total)
    xy = rng.uniform(0, 600, (total, 2))
    wh = rng.uniform(4, 300, (total, 2))
    boxes = np.column_stack([xy, xy + wh]).ravel()
    box = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * total + 1, 4, dtype=np.int32)), pa.array(boxes))
    detection_type = schema.arrow_schema(schema.RESULTS).field("detections").type
    structs = pa.StructArray.from_arrays(
        [
            pa.array(label_ids, pa.int64()),
            pa.array(np.array(LABELS)[label_ids]),
            pa.array(rng.uniform(0.5, 1.0, total)),
            box,
        ],
        fields=list(detection_type.value_type),
    )
    detections = pa.ListArray.from_arrays(pa.array(offsets), structs, type=detection_type)
    ok = ~failed
    start = datetime(2026, 11, 21, 10, tzinfo=UTC) + timedelta(minutes=shard_index)
    columns = {
        "run_id": pa.array([run_id] * rows),
        "run_date": pa.array([RUN_DATE] * rows, pa.date32()),
        "shard_index": pa.array(np.full(rows, shard_index), pa.int64()),
        "image_uri": pa.array(
            [f"gs://bench-images/camera-{shard_index:04d}/2026-11-21/frame-{i:010d}.jpg" for i in range(rows)]
        ),
        "status": pa.array(np.where(failed, schema.STATUS_ERROR, schema.STATUS_OK)),
        "error": pa.array(
            [None if o else "decode_error: cannot identify image file" for o in ok], pa.string()
        ),
        "width": pa.array(np.where(ok, 1280, 0), pa.int64(), mask=failed),
        "height": pa.array(np.where(ok, 720, 0), pa.int64(), mask=failed),
        "num_detections": pa.array(counts, pa.int64()),
        "detections": detections,
        "fetch_ms": pa.array(rng.uniform(2, 40, rows)),
        "decode_ms": pa.array(rng.uniform(3, 12, rows), mask=failed),
        "infer_ms": pa.array(rng.uniform(15, 40, rows), mask=failed),
        "model_name": pa.array(["fasterrcnn_resnet50_fpn"] * rows),
        "weights_id": pa.array(["COCO_V1"] * rows),
        "random_weights": pa.array(np.zeros(rows, bool)),
        "processed_at": pa.array([start] * rows, pa.timestamp("us", tz="UTC")),
    }
    return pa.Table.from_pydict(columns, schema=schema.arrow_schema(schema.RESULTS))


def metrics_object(run_id: str, shard_index: int, table: pa.Table) -> dict:
    failed = table.column("status").to_pylist().count(schema.STATUS_ERROR)
    start = datetime(2026, 11, 21, 10, tzinfo=UTC) + timedelta(minutes=shard_index)
    values = {
        "run_id": run_id, "run_date": RUN_DATE.isoformat(), "shard_index": shard_index,
        "images": table.num_rows, "ok": table.num_rows - failed, "failed": failed,
        "started_at": start.isoformat(), "finished_at": (start + timedelta(seconds=95)).isoformat(),
        "wall_s": 95.0, "model_load_s": 4.0, "fetch_s": 20.0, "decode_s": 8.0, "infer_s": 80.0,
        "model_busy_fraction": 0.88, "batches": table.num_rows // 8, "batch_size": 8,
        "batch_latency_p50_ms": 210.0, "batch_latency_p95_ms": 260.0, "batch_latency_max_ms": 400.0,
        "images_per_s": table.num_rows / 95.0, "device": "cuda", "device_name": "NVIDIA L4",
        "device_memory_gb": 22.5, "peak_memory_mb": 3100.0, "gpu_utilization": 86.0, "precision": "fp32",
        "python_version": "3.11.9", "torch_version": "2.14.1", "torchvision_version": "0.29.1",
        "cuda_version": "12.8", "container_image": "detection-engine:bench", "hostname": f"pod-{shard_index}",
        "model_name": "fasterrcnn_resnet50_fpn", "weights_id": "COCO_V1", "weights_sha256": None,
        "random_weights": False, "error_counts": json.dumps({"decode_error": failed}),
        "attempt": 1, "resumed_images": 0, "preemptions": 0, "earlier_attempts_s": 0.0,
        "devices": json.dumps([{"device": "cuda:0", "images": table.num_rows, "batches": 1, "busy_fraction": 0.88}]),
        "fast_paths": json.dumps({"channels_last": False, "compile": "off"}),
    }  # fmt: skip
    assert list(values) == schema.column_names(schema.SHARD_METRICS)
    return values


def generate_run(output: Path, run_id: str, shards: int, rows: int, seed: int) -> tuple[list[str], list[str]]:
    prefix = layout.run_prefix(str(output), run_id)
    rng = np.random.default_rng(seed)
    results, metrics = [], []
    for index in range(shards):
        table = shard_table(run_id, index, rows, rng)
        results.append(layout.shard_results_uri(prefix, index))
        metrics.append(layout.shard_metrics_uri(prefix, index))
        Path(results[-1]).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics[-1]).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, results[-1])
        Path(metrics[-1]).write_text(json.dumps(metrics_object(run_id, index, table)) + "\n")
    return results, metrics


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def one_repetition(workdir: Path, runs: dict[str, tuple[list[str], list[str]]], main_run: str) -> dict:
    path = workdir / f"warehouse-{time.monotonic_ns()}.duckdb"
    warehouse = open_warehouse(f"duckdb://{path}")
    warehouse.ensure_tables()
    results, metrics = runs[main_run]

    first_s, first = timed(warehouse.load_run, main_run, RUN_DATE, results, metrics)
    counts = warehouse.run_counts(main_run)
    second_s, second = timed(warehouse.load_run, main_run, RUN_DATE, results, metrics)
    if second != first or warehouse.run_counts(main_run) != counts:
        raise SystemExit(f"second load changed the run: {first} -> {second}")
    if counts["rows"] != counts["distinct_uris"] or counts["duplicate_uri_rows"]:
        raise SystemExit(f"duplicates after reload: {counts}")

    for run_id, (other_results, other_metrics) in runs.items():
        if run_id != main_run:
            warehouse.load_run(run_id, RUN_DATE, other_results, other_metrics)
    replace_s, _ = timed(warehouse.load_run, main_run, RUN_DATE, results, metrics)
    counts_s, after = timed(warehouse.run_counts, main_run)
    if after != counts:
        raise SystemExit(f"replace among other runs changed the run: {counts} -> {after}")
    uris_s, uris = timed(warehouse.processed_uris, "fasterrcnn_resnet50_fpn", "COCO_V1")
    with duckdb.connect(str(path), read_only=True) as con:
        (table_rows,) = con.execute("SELECT count(*) FROM results").fetchone()
    size = path.stat().st_size
    path.unlink()
    return {
        "rows": first.results_rows,
        "first_s": first_s,
        "second_s": second_s,
        "replace_s": replace_s,
        "table_rows": table_rows,
        "run_counts_s": counts_s,
        "processed_uris_s": uris_s,
        "processed_uris": len(uris),
        "file_mib": size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1000, help="results rows per shard")
    parser.add_argument(
        "--other-runs", type=int, default=4, help="runs loaded before the replace-among-others load"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated shard files here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-warehouse-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_ids = [f"bench__run-{i}" for i in range(1 + args.other_runs)]
    started = time.perf_counter()
    runs = {
        run_id: generate_run(workdir / "out", run_id, args.shards, args.rows, seed)
        for seed, run_id in enumerate(run_ids)
    }
    results_mib = sum(os.path.getsize(p) for p in runs[run_ids[0]][0]) / 2**20
    print(
        f"generated {len(runs)} runs of {args.shards} shards x {args.rows} rows "
        f"({results_mib:.1f} MiB of results Parquet per run) in {time.perf_counter() - started:.1f} s"
    )
    print(
        f"python {platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pa.__version__}, "
        f"{os.cpu_count()} CPUs"
    )

    reps = []
    for i in range(args.repeat):
        rep = one_repetition(workdir, runs, run_ids[0])
        reps.append(rep)
        print(
            f"rep {i + 1}: first {rep['first_s']:.2f} s ({rep['rows'] / rep['first_s']:,.0f} rows/s), "
            f"second {rep['second_s']:.2f} s ({rep['rows'] / rep['second_s']:,.0f} rows/s), "
            f"replace among {rep['table_rows']:,} rows {rep['replace_s']:.2f} s, "
            f"run_counts {rep['run_counts_s']:.3f} s, processed_uris {rep['processed_uris_s']:.3f} s "
            f"({rep['processed_uris']:,}), file {rep['file_mib']:.0f} MiB, "
            f"load average {os.getloadavg()[0]:.1f}"
        )

    def median(key: str) -> float:
        return statistics.median(rep[key] for rep in reps)

    rows = reps[0]["rows"]
    print(
        f"\nmedian of {len(reps)}: {rows:,} rows; first load {median('first_s'):.2f} s "
        f"= {rows / median('first_s'):,.0f} rows/s; second identical load {median('second_s'):.2f} s "
        f"= {rows / median('second_s'):,.0f} rows/s (same counts); "
        f"replace among {reps[0]['table_rows']:,} rows {median('replace_s'):.2f} s "
        f"= {rows / median('replace_s'):,.0f} rows/s; run_counts {median('run_counts_s'):.3f} s; "
        f"processed_uris {median('processed_uris_s'):.3f} s"
    )


if __name__ == "__main__":
    main()
