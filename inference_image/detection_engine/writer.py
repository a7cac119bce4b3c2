"""The shard's files: results Parquet (schema.RESULTS), metrics JSON, summary JSON; every write atomic.

Atomic (`storage.write_atomic`) means a reader (or a retried shard) sees the previous file or the new one,
never a part. A retry replaces the shard's files and, since one writer owns each, also removes the temporary
files a killed attempt left, so nothing else stays behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detection_engine import schema, storage
from detection_engine.pipeline import ImageResult

RESULTS_SCHEMA = schema.arrow_schema(schema.RESULTS)


class OutputError(Exception):
    """A shard file could not be written; the message is the one line the user sees."""


@dataclass(frozen=True)
class RowContext:
    """What every row of a shard shares."""

    run_id: str
    run_date: date
    shard_index: int
    model_name: str
    weights_id: str
    random_weights: bool
    processed_at: datetime
    categories: Sequence[str]


def results_table(results: Sequence[ImageResult], ctx: RowContext) -> pa.Table:
    """Columnar build of the results table: one row per image, detections as a repeated record."""
    n = len(results)
    ok = [r.error is None for r in results]
    counts = [len(r.detections) if r.detections is not None else 0 for r in results]
    columns = {
        "run_id": [ctx.run_id] * n,
        "run_date": [ctx.run_date] * n,
        "shard_index": [ctx.shard_index] * n,
        "image_uri": [r.uri for r in results],
        "status": [schema.STATUS_OK if good else schema.STATUS_ERROR for good in ok],
        "error": [r.error for r in results],
        "width": [r.width for r in results],
        "height": [r.height for r in results],
        "num_detections": counts,
        "detections": _detections_column(results, counts, ctx.categories),
        "fetch_ms": [_ms(r.fetch_s) for r in results],
        "decode_ms": [_ms(r.decode_s) for r in results],
        "infer_ms": [_ms(r.infer_s) for r in results],
        "model_name": [ctx.model_name] * n,
        "weights_id": [ctx.weights_id] * n,
        "random_weights": [ctx.random_weights] * n,
        "processed_at": [ctx.processed_at] * n,
    }
    if list(columns) != RESULTS_SCHEMA.names:
        raise AssertionError(
            f"writer columns {list(columns)} drifted from schema.RESULTS {RESULTS_SCHEMA.names}"
        )
    arrays = [
        value if isinstance(value, pa.Array) else pa.array(value, type=RESULTS_SCHEMA.field(name).type)
        for name, value in columns.items()
    ]
    return pa.Table.from_arrays(arrays, schema=RESULTS_SCHEMA)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _detections_column(
    results: Sequence[ImageResult], counts: list[int], categories: Sequence[str]
) -> pa.Array:
    list_type = RESULTS_SCHEMA.field("detections").type
    record_type = list_type.value_type
    found = [r.detections for r in results if r.detections is not None and len(r.detections)]
    boxes = np.concatenate([d.boxes for d in found]).astype(np.float64) if found else np.zeros((0, 4))
    scores = np.concatenate([d.scores for d in found]).astype(np.float64) if found else np.zeros(0)
    labels = np.concatenate([d.labels for d in found]).astype(np.int64) if found else np.zeros(0, np.int64)
    names = [categories[i] if 0 <= i < len(categories) else str(i) for i in labels.tolist()]
    box_offsets = pa.array(np.arange(0, 4 * len(boxes) + 1, 4, dtype=np.int32))
    records = pa.StructArray.from_arrays(
        [
            pa.array(labels, type=pa.int64()),
            pa.array(names, type=pa.string()),
            pa.array(scores, type=pa.float64()),
            pa.ListArray.from_arrays(
                box_offsets, pa.array(boxes.reshape(-1)), type=record_type.field("box").type
            ),
        ],
        fields=list(record_type),
    )
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, records, type=list_type)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def json_bytes(obj: dict) -> bytes:
    """One object on one line: the metrics files are loaded as newline-delimited JSON (BigQuery, DuckDB)."""
    return (json.dumps(obj, default=_json_default) + "\n").encode()


def _json_default(value):
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_atomic(uri: str, data: bytes) -> None:
    """Replace the shard file at `uri` with `data` in one step; raises OutputError."""
    try:
        storage.write_atomic(uri, data, sweep_stale=True)
    except Exception as exc:
        raise OutputError(f"cannot write {uri}: {type(exc).__name__}: {exc}") from None
