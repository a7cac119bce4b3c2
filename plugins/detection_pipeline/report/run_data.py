"""What a run's files say, read shard by shard so a run of millions of images holds one shard in memory.

The report draws from the engine's own files (layout.py) rather than the warehouse, so it also works for a run
whose load failed, and shows exactly what the pods wrote.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection_engine import layout, schema, storage

_SHARD = re.compile(r"shard-(\d+)\.(?:parquet|json)$")
_RESULT_COLUMNS = [
    "image_uri",
    "status",
    "error",
    "width",
    "height",
    "num_detections",
    "detections",
    "infer_ms",
]
_UNKNOWN_ERROR = "unknown"


class ReportError(RuntimeError):
    """A run's files could not be read; the message names the file."""


@dataclass(frozen=True)
class ErrorReason:
    """One error code (the part of `error` before ': '), how often it occurred, and a first example."""

    code: str
    count: int
    example_uri: str
    example_error: str


@dataclass(frozen=True)
class Sample:
    """An ok image to draw in the gallery, with its detections in original-image pixels."""

    image_uri: str
    width: int | None
    height: int | None
    detections: list[dict]


@dataclass(frozen=True)
class ShardMetrics:
    """The fields of one shard's metrics JSON the report shows; `raw` keeps the whole object."""

    shard_index: int
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass
class RunData:
    results_files: int = 0
    images: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[ErrorReason] = field(default_factory=list)  # most frequent first
    label_counts: dict[str, int] = field(default_factory=dict)  # most frequent first
    infer_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    shards: list[ShardMetrics] = field(default_factory=list)  # by shard index
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # shards with results but no metrics, and vice versa

    @property
    def detections(self) -> int:
        return sum(self.label_counts.values())


def read_run(run_prefix: str, *, sample_images: int = 8, shards: int | None = None) -> RunData:
    """Read the shards' results and metrics under `run_prefix` (local path or any fsspec URI).

    With `shards` (the run's planned count), only shards 0..shards-1 are read, so files an earlier attempt
    left cannot be counted. A run with no shard files is an empty run, not an error; an unreadable file
    raises ReportError.
    """
    fs, _ = storage.filesystem_for(run_prefix)
    results = _shard_paths(fs, layout.results_glob(run_prefix))
    metrics = _shard_paths(fs, layout.metrics_glob(run_prefix))
    if shards is not None:
        results = {i: path for i, path in results.items() if i < shards}
        metrics = {i: path for i, path in metrics.items() if i < shards}
    data = RunData(results_files=len(results))

    errors: dict[str, list] = {}
    labels: dict[str, int] = {}
    infer: list[np.ndarray] = []
    with_detections: list[list[Sample]] = []
    without_detections: list[list[Sample]] = []
    for index in sorted(results):
        table = _read_results(fs, results[index])
        _count(table, data)
        _add_errors(table, errors)
        _add_labels(table, labels)
        infer.append(_ok_infer_ms(table))
        dets, plain = _samples(table, sample_images)
        with_detections.append(dets)
        without_detections.append(plain)

    data.errors = sorted(
        (ErrorReason(code, count, uri, detail) for code, (count, uri, detail) in errors.items()),
        key=lambda e: (-e.count, e.code),
    )
    data.label_counts = dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))
    data.infer_ms = np.concatenate(infer) if infer else np.empty(0)
    picked = _interleave(with_detections)[:sample_images]
    picked += _interleave(without_detections)[: sample_images - len(picked)]
    data.samples = picked
    data.shards = [_read_metrics(fs, metrics[i], i) for i in sorted(metrics)]
    data.problems = [
        f"{layout.shard_name(i)}: results file without metrics file"
        for i in sorted(set(results) - set(metrics))
    ] + [
        f"{layout.shard_name(i)}: metrics file without results file"
        for i in sorted(set(metrics) - set(results))
    ]
    return data


def _shard_paths(fs: fsspec.AbstractFileSystem, uri_glob: str) -> dict[int, str]:
    path_glob = storage.path_of(uri_glob)
    found = {}
    for path in fs.glob(path_glob):
        match = _SHARD.search(posixpath.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


def _read_results(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=_RESULT_COLUMNS)
    except Exception as exc:  # pyarrow raises several types for a bad file; name the file either way
        raise ReportError(f"cannot read results file {path}: {exc}") from exc


def _read_metrics(fs: fsspec.AbstractFileSystem, path: str, index: int) -> ShardMetrics:
    try:
        with fs.open(path, "r", encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError("expected one JSON object")
        return ShardMetrics(index, _timestamp(raw.get("started_at")), _timestamp(raw.get("finished_at")), raw)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read metrics file {path}: {exc}") from exc


def _timestamp(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _count(table: pa.Table, data: RunData) -> None:
    ok = pc.sum(pc.equal(table["status"], schema.STATUS_OK)).as_py() or 0
    data.images += table.num_rows
    data.ok += ok
    data.failed += table.num_rows - ok


def _add_errors(table: pa.Table, errors: dict[str, list]) -> None:
    failed = table.filter(pc.not_equal(table["status"], schema.STATUS_OK))
    if failed.num_rows == 0:
        return
    codes = pc.fill_null(
        pc.list_element(pc.split_pattern(failed["error"], ": ", max_splits=1), 0), _UNKNOWN_ERROR
    )
    for entry in pc.value_counts(codes).to_pylist():
        code, count = entry["values"], entry["counts"]
        if code in errors:
            errors[code][0] += count
        else:
            first = pc.index(codes, code).as_py()
            errors[code] = [count, failed["image_uri"][first].as_py(), failed["error"][first].as_py() or ""]


def _add_labels(table: pa.Table, labels: dict[str, int]) -> None:
    flat = pc.list_flatten(table["detections"])
    if len(flat) == 0:
        return
    ids = pc.cast(pc.struct_field(flat, "label_id"), pa.string())
    names = pc.coalesce(pc.struct_field(flat, "label"), pc.binary_join_element_wise("id ", ids, ""))
    for entry in pc.value_counts(names).to_pylist():
        labels[entry["values"]] = labels.get(entry["values"], 0) + entry["counts"]


def _ok_infer_ms(table: pa.Table) -> np.ndarray:
    values = table.filter(pc.equal(table["status"], schema.STATUS_OK))["infer_ms"].drop_null()
    return values.to_numpy().astype(float)


def _samples(table: pa.Table, k: int) -> tuple[list[Sample], list[Sample]]:
    """Up to k ok images with detections and k without, spread evenly over the shard."""
    if k <= 0:
        return [], []
    ok = pc.equal(table["status"], schema.STATUS_OK)
    has = pc.greater(pc.list_value_length(table["detections"]), 0)
    return (
        _take_spread(table, pc.and_(ok, has), k),
        _take_spread(table, pc.and_(ok, pc.invert(has)), k),
    )


def _take_spread(table: pa.Table, mask: pa.ChunkedArray, k: int) -> list[Sample]:
    indices = pc.indices_nonzero(mask).to_numpy()
    if len(indices) == 0:
        return []
    chosen = indices[np.unique(np.linspace(0, len(indices) - 1, min(k, len(indices))).round().astype(int))]
    rows = table.select(["image_uri", "width", "height", "detections"]).take(pa.array(chosen)).to_pylist()
    return [Sample(r["image_uri"], r["width"], r["height"], r["detections"]) for r in rows]


def _interleave(groups: list[list[Sample]]) -> list[Sample]:
    """Round-robin over shards so the gallery shows several shards, not the first one's images."""
    out: list[Sample] = []
    for depth in range(max((len(g) for g in groups), default=0)):
        out.extend(g[depth] for g in groups if depth < len(g))
    return out
