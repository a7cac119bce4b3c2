"""The one source of truth for every table and file this project writes.

The engine writes Parquet with `arrow_schema(RESULTS)`, the DuckDB warehouse creates its tables from
`duckdb_columns(...)`, and the BigQuery loads send `bigquery_schema(...)`. Nothing else declares a column.
This module imports neither torch nor Airflow, so both sides of the project can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class Field:
    """A column, in BigQuery's vocabulary (type and mode), which maps onto Arrow and DuckDB without loss."""

    name: str
    type: str  # STRING | INT64 | FLOAT64 | BOOL | TIMESTAMP | DATE | RECORD
    mode: str = "NULLABLE"  # NULLABLE | REQUIRED | REPEATED
    description: str = ""
    fields: tuple[Field, ...] = ()


def _f(name: str, type_: str, mode: str = "NULLABLE", description: str = "", fields=()) -> Field:
    return Field(name, type_, mode, description, tuple(fields))


DETECTION = (
    _f("label_id", "INT64", "REQUIRED", "Category id of the model's label set"),
    _f("label", "STRING", "NULLABLE", "Category name from the weights' metadata"),
    _f("score", "FLOAT64", "REQUIRED", "Detection confidence"),
    _f("box", "FLOAT64", "REPEATED", "[x1, y1, x2, y2] in pixels of the original image"),
)

RESULTS: tuple[Field, ...] = (
    _f("run_id", "STRING", "REQUIRED", "Airflow run id"),
    _f("run_date", "DATE", "REQUIRED", "Logical date of the run; the results table's partition"),
    _f("shard_index", "INT64", "REQUIRED"),
    _f("image_uri", "STRING", "REQUIRED", "Normalised URI of the input image"),
    _f("status", "STRING", "REQUIRED", "'ok' or 'error'"),
    _f("error", "STRING", "NULLABLE", "Why the image failed, when status is 'error'"),
    _f("width", "INT64", "NULLABLE", "Decoded width after EXIF orientation"),
    _f("height", "INT64", "NULLABLE", "Decoded height after EXIF orientation"),
    _f("num_detections", "INT64", "REQUIRED"),
    _f("detections", "RECORD", "REPEATED", "Detections above the score threshold", DETECTION),
    _f("fetch_ms", "FLOAT64", "NULLABLE"),
    _f("decode_ms", "FLOAT64", "NULLABLE"),
    _f("infer_ms", "FLOAT64", "NULLABLE", "The image's share of its batch's inference time"),
    _f("model_name", "STRING", "REQUIRED"),
    _f("weights_id", "STRING", "REQUIRED", "Weights enum, file URI, or 'none'"),
    _f("random_weights", "BOOL", "REQUIRED", "True when the model ran with random weights"),
    _f("processed_at", "TIMESTAMP", "REQUIRED"),
)

SHARD_METRICS: tuple[Field, ...] = (
    _f("run_id", "STRING", "REQUIRED"),
    _f("run_date", "DATE", "REQUIRED"),
    _f("shard_index", "INT64", "REQUIRED"),
    _f("images", "INT64", "REQUIRED"),
    _f("ok", "INT64", "REQUIRED"),
    _f("failed", "INT64", "REQUIRED"),
    _f("started_at", "TIMESTAMP", "REQUIRED"),
    _f("finished_at", "TIMESTAMP", "REQUIRED"),
    _f("wall_s", "FLOAT64", "REQUIRED", "Process wall time, model load included"),
    _f("model_load_s", "FLOAT64", "REQUIRED"),
    _f("fetch_s", "FLOAT64", "REQUIRED", "Summed over fetch threads"),
    _f("decode_s", "FLOAT64", "REQUIRED", "Summed over decode threads"),
    _f("infer_s", "FLOAT64", "REQUIRED", "Time the model was busy"),
    _f("model_busy_fraction", "FLOAT64", "NULLABLE", "infer_s / ((wall_s - model_load_s) x replicas)"),
    _f("batches", "INT64", "REQUIRED"),
    _f("batch_size", "INT64", "REQUIRED"),
    _f("batch_latency_p50_ms", "FLOAT64", "NULLABLE"),
    _f("batch_latency_p95_ms", "FLOAT64", "NULLABLE"),
    _f("batch_latency_max_ms", "FLOAT64", "NULLABLE"),
    _f("images_per_s", "FLOAT64", "NULLABLE"),
    _f("device", "STRING", "REQUIRED", "cpu | cuda"),
    _f("device_name", "STRING", "NULLABLE"),
    _f("device_memory_gb", "FLOAT64", "NULLABLE", "Total memory of the device"),
    _f("peak_memory_mb", "FLOAT64", "NULLABLE", "Peak CUDA memory, or peak RSS on CPU"),
    _f("gpu_utilization", "FLOAT64", "NULLABLE", "Mean GPU utilisation percent, when CUDA"),
    _f("precision", "STRING", "REQUIRED"),
    _f("python_version", "STRING", "REQUIRED"),
    _f("torch_version", "STRING", "REQUIRED"),
    _f("torchvision_version", "STRING", "REQUIRED"),
    _f("cuda_version", "STRING", "NULLABLE"),
    _f("container_image", "STRING", "NULLABLE"),
    _f("hostname", "STRING", "NULLABLE"),
    _f("model_name", "STRING", "REQUIRED"),
    _f("weights_id", "STRING", "REQUIRED"),
    _f("weights_sha256", "STRING", "NULLABLE"),
    _f("random_weights", "BOOL", "REQUIRED"),
    _f("error_counts", "STRING", "NULLABLE", "JSON object: error reason -> count"),
    # Appended: shards that commit as they go (detection_engine.parts) and resume where an attempt stopped.
    _f("attempt", "INT64", "NULLABLE", "Which attempt finished the shard (1: the first)"),
    _f("resumed_images", "INT64", "NULLABLE", "Images whose rows earlier attempts had committed as parts"),
    _f("preemptions", "INT64", "NULLABLE", "Earlier attempts that stopped cleanly on SIGTERM (preempted)"),
    _f(
        "earlier_attempts_s",
        "FLOAT64",
        "NULLABLE",
        "Pod seconds of the earlier attempts, up to each one's last commit",
    ),
    # Appended (additive): one model replica per device (--devices).
    _f(
        "devices",
        "STRING",
        "NULLABLE",
        "JSON list, one object per model replica: device, images, batches, busy_fraction (of the data path)",
    ),
    # Appended (additive): the fast-path switches, as they ran (detection_engine.fast_paths).
    _f(
        "fast_paths",
        "STRING",
        "NULLABLE",
        'JSON object: channels_last (bool), compile ("on", "off" or "eager fallback: <why>")',
    ),
)

RUNS: tuple[Field, ...] = (
    _f("run_id", "STRING", "REQUIRED"),
    _f("run_date", "DATE", "REQUIRED"),
    _f("logical_date", "TIMESTAMP", "NULLABLE"),
    _f("run_type", "STRING", "REQUIRED", "scheduled | manual | backfill | asset_triggered"),
    _f("started_at", "TIMESTAMP", "NULLABLE"),
    _f("finished_at", "TIMESTAMP", "NULLABLE"),
    _f("config_json", "STRING", "REQUIRED", "The validated run config, as JSON"),
    _f("input_uri", "STRING", "REQUIRED"),
    _f("output_uri", "STRING", "REQUIRED"),
    _f("listed", "INT64", "REQUIRED", "Image URIs found before dedup"),
    _f("duplicates", "INT64", "REQUIRED"),
    _f("skipped_not_image", "INT64", "REQUIRED"),
    _f("skipped_incremental", "INT64", "REQUIRED"),
    _f("processed", "INT64", "REQUIRED"),
    _f("ok", "INT64", "REQUIRED"),
    _f("failed", "INT64", "REQUIRED"),
    _f("shards", "INT64", "REQUIRED"),
    _f("wall_s", "FLOAT64", "NULLABLE", "Seconds at least one shard ran (final attempts; gaps not counted)"),
    _f("shard_wall_s", "FLOAT64", "NULLABLE", "Sum of shard wall times"),
    _f("inference_s", "FLOAT64", "NULLABLE", "Sum of model-busy time"),
    _f("model_load_s", "FLOAT64", "NULLABLE", "Mean model load time per shard"),
    _f("images_per_s", "FLOAT64", "NULLABLE"),
    _f("images_per_s_per_gpu", "FLOAT64", "NULLABLE"),
    _f("batch_latency_p50_ms", "FLOAT64", "NULLABLE"),
    _f("batch_latency_p95_ms", "FLOAT64", "NULLABLE"),
    _f("machine_type", "STRING", "NULLABLE"),
    _f("gpu_type", "STRING", "NULLABLE"),
    _f("gpu_count", "INT64", "NULLABLE"),
    _f("machine_hours", "FLOAT64", "NULLABLE"),
    _f("gpu_hours", "FLOAT64", "NULLABLE"),
    _f("estimated_cost_usd", "FLOAT64", "NULLABLE"),
    _f("cost_per_1000_images_usd", "FLOAT64", "NULLABLE"),
    _f("airflow_version", "STRING", "NULLABLE"),
    _f("google_provider_version", "STRING", "NULLABLE"),
    _f("kubernetes_provider_version", "STRING", "NULLABLE"),
    _f("project_version", "STRING", "NULLABLE"),
    _f("python_version", "STRING", "NULLABLE"),
    _f("torch_version", "STRING", "NULLABLE"),
    _f("torchvision_version", "STRING", "NULLABLE"),
    _f("cuda_version", "STRING", "NULLABLE"),
    _f("container_image", "STRING", "NULLABLE"),
    _f("device_name", "STRING", "NULLABLE"),
    _f("model_name", "STRING", "REQUIRED"),
    _f("weights_id", "STRING", "REQUIRED"),
    _f("weights_sha256", "STRING", "NULLABLE"),
    _f("random_weights", "BOOL", "REQUIRED"),
    _f("precision", "STRING", "NULLABLE"),
    _f("batch_size", "INT64", "NULLABLE"),
    _f("recorded_at", "TIMESTAMP", "REQUIRED"),
    # Accuracy, when the run conf names a COCO ground truth (null otherwise); appended so the change is additive.
    _f("ground_truth_uri", "STRING", "NULLABLE", "COCO annotation file the run was scored against"),
    _f("eval_images", "INT64", "NULLABLE", "Images scored: results rows matched to an annotated image"),
    _f("coco_map", "FLOAT64", "NULLABLE", "COCO box AP, IoU 0.50:0.95"),
    _f("coco_map50", "FLOAT64", "NULLABLE", "COCO box AP at IoU 0.50"),
    _f("coco_map75", "FLOAT64", "NULLABLE", "COCO box AP at IoU 0.75"),
    _f("coco_map_small", "FLOAT64", "NULLABLE", "AP for objects under 32x32 px"),
    _f("coco_map_medium", "FLOAT64", "NULLABLE", "AP for objects 32x32 to 96x96 px"),
    _f("coco_map_large", "FLOAT64", "NULLABLE", "AP for objects over 96x96 px"),
    _f("coco_ar1", "FLOAT64", "NULLABLE", "Recall with 1 detection per image"),
    _f("coco_ar10", "FLOAT64", "NULLABLE", "Recall with 10 detections per image"),
    _f("coco_ar100", "FLOAT64", "NULLABLE", "Recall with 100 detections per image"),
    # Appended (additive, like the accuracy columns): what work the run did, so runs compare like with like.
    _f(
        "workload_id",
        "STRING",
        "NULLABLE",
        "sha256 of the unique inputs, the settings that change the work and the hardware; no versions",
    ),
    # Appended: listed names that could not be used as they are (control characters, not UTF-8, ...).
    _f("rejected", "INT64", "NULLABLE", "Listed names left out because they cannot be used as they are"),
    _f("rejected_examples", "STRING", "NULLABLE", "JSON list of a few of them, as Python reprs"),
    # Appended: spot nodes and shards that resume (detection_engine.parts).
    _f("spot", "BOOL", "NULLABLE", "Shard pods ran on spot (preemptible) nodes, priced as such"),
    _f("preemptions", "INT64", "NULLABLE", "Shard attempts stopped by SIGTERM (node reclaimed) and resumed"),
    _f("resumed_images", "INT64", "NULLABLE", "Images an unfinished attempt had committed: not redone"),
    _f(
        "redone_s",
        "FLOAT64",
        "NULLABLE",
        "Pod seconds of shard attempts that did not finish (up to their last commit); in the cost",
    ),
    # Appended: the engine's fast paths, so runs with and without them are not compared as one.
    _f(
        "fast_paths",
        "STRING",
        "NULLABLE",
        "JSON of the fast paths as the shards ran them (channels_last; compile on, off or eager fallback)",
    ),
)

# The run's manifest ({run}/manifest.parquet, sorted by image_uri) and each shard's ({run}/shards/*.parquet,
# its image_uri column only). Files, not warehouse tables: not in TABLES.
MANIFEST: tuple[Field, ...] = (
    _f("image_uri", "STRING", "REQUIRED", "Normalised URI of a unique input image"),
    _f("shard_index", "INT64", "REQUIRED", "The shard that processes it"),
    _f(
        "content_sha1", "STRING", "NULLABLE", "SHA-1 of its bytes, when dedup_mode=content (null: unreadable)"
    ),
)
SHARD_MANIFEST: tuple[Field, ...] = MANIFEST[:1]

TABLES: dict[str, tuple[Field, ...]] = {"results": RESULTS, "shard_metrics": SHARD_METRICS, "runs": RUNS}

# -- derivations ---------------------------------------------------------------------------------

_ARROW = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
}
_DUCKDB = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATE": "DATE",
}


def _arrow_type(field: Field) -> pa.DataType:
    if field.type == "RECORD":
        base: pa.DataType = pa.struct([_arrow_field(sub) for sub in field.fields])
    else:
        base = _ARROW[field.type]
    return pa.list_(base) if field.mode == "REPEATED" else base


def _arrow_field(field: Field) -> pa.Field:
    # A REPEATED column is a non-null list (possibly empty), as BigQuery reads it.
    return pa.field(field.name, _arrow_type(field), nullable=field.mode == "NULLABLE")


def arrow_schema(fields: tuple[Field, ...]) -> pa.Schema:
    return pa.schema([_arrow_field(f) for f in fields])


def bigquery_schema(fields: tuple[Field, ...]) -> list[dict]:
    """The BigQuery JSON schema (as `schema.fields` of a load job or table resource)."""
    out = []
    for f in fields:
        entry: dict = {"name": f.name, "type": f.type, "mode": f.mode}
        if f.description:
            entry["description"] = f.description
        if f.fields:
            entry["fields"] = bigquery_schema(f.fields)
        out.append(entry)
    return out


def _duckdb_type(field: Field) -> str:
    if field.type == "RECORD":
        inner = ", ".join(f'"{sub.name}" {_duckdb_type(sub)}' for sub in field.fields)
        base = f"STRUCT({inner})"
    else:
        base = _DUCKDB[field.type]
    return f"{base}[]" if field.mode == "REPEATED" else base


def duckdb_columns(fields: tuple[Field, ...]) -> str:
    """Column definitions for `CREATE TABLE t (...)`; REQUIRED becomes NOT NULL."""
    cols = []
    for f in fields:
        not_null = " NOT NULL" if f.mode in ("REQUIRED", "REPEATED") else ""
        cols.append(f'"{f.name}" {_duckdb_type(f)}{not_null}')
    return ",\n  ".join(cols)


def column_names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


def check_required(table: pa.Table, fields: tuple[Field, ...]) -> None:
    """Raise if a REQUIRED column holds a null: Arrow records nullability but does not enforce it."""
    bad = [f.name for f in fields if f.mode != "NULLABLE" and table.column(f.name).null_count]
    if bad:
        raise ValueError(f"null values in required column(s): {', '.join(bad)}")
