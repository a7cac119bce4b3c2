"""A run's workload identity: what work it did, so runs are compared like with like.

workload_id = sha256 over (the run's unique input URIs [+ their content hashes with dedup_mode=content],
the settings that change the work, the hardware). Versions are deliberately left out: two runs of one workload
under different torch, torchvision, container or model-code versions are exactly what a trend compares.

The inputs are hashed columnar from the manifest parquet (already sorted and unique by URI): each batch's
string column contributes its value bytes and its value lengths to two separate digests, so the result does
not depend on how the file is split into batches or row groups, and no Python object is made per row.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection_engine import storage
from detection_pipeline.config import FAST_PATH_FIELDS

_BATCH_ROWS = 1 << 16


class _ColumnDigest:
    """sha256 of a string column's values, independent of batching: value bytes and lengths kept apart."""

    def __init__(self) -> None:
        self.values = hashlib.sha256()
        self.lengths = hashlib.sha256()
        self.rows = 0

    def update(self, column: pa.Array) -> None:
        column = pc.cast(column, pa.large_string()) if column.type != pa.large_string() else column
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if len(column) == 0:
            return
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[
            column.offset : column.offset + len(column) + 1
        ]
        data = column.buffers()[2]
        if data is not None:
            self.values.update(memoryview(data)[offsets[0] : offsets[-1]])
        self.lengths.update(np.diff(offsets).astype("<i8").tobytes())
        self.rows += len(column)

    def hexdigest(self) -> str:
        return f"{self.rows}:{self.values.hexdigest()}:{self.lengths.hexdigest()}"


def inputs_digest(manifest_uri: str, *, with_content: bool) -> str:
    """Digest of the manifest's sorted unique image URIs (and content_sha1, nulls as empty, when asked)."""
    columns = ["image_uri", "content_sha1"] if with_content else ["image_uri"]
    uri_digest, content_digest = _ColumnDigest(), _ColumnDigest()
    fs, path = storage.filesystem_for(manifest_uri)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        absent = [c for c in columns if c not in parquet.schema_arrow.names]
        if absent:
            raise ValueError(
                f"manifest {manifest_uri} lacks column(s) {absent}: cannot fingerprint its inputs"
            )
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            uris = batch.column("image_uri")
            if uris.null_count:
                raise ValueError(f"manifest {manifest_uri} has null image_uri values")
            uri_digest.update(uris)
            if with_content:
                content_digest.update(pc.fill_null(batch.column("content_sha1"), ""))
    parts = [uri_digest.hexdigest()]
    if with_content:
        parts.append(content_digest.hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def workload_id(inputs: str, work: dict, hardware: dict) -> str:
    """The fingerprint of (inputs digest, the settings that change the work, the hardware), as sha256 hex."""
    payload = json.dumps({"inputs": inputs, "work": work, "hardware": hardware}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def work_settings(config, record: dict) -> dict:
    """The settings that change the work, as the run recorded them (model and weights as they ran)."""
    work = {
        "model": record["model_name"],
        "weights_id": record["weights_id"],
        "weights_sha256": record.get("weights_sha256"),
        "min_size": config.min_size,
        "max_size": config.max_size,
        "batch_size": config.batch_size,
        "precision": record.get("precision") or config.precision,
        "score_threshold": config.score_threshold,
        "max_detections": config.max_detections,
        "dedup_mode": config.dedup_mode,
    }
    # Fast paths change the speed, which is what runs of one workload are compared by. Listed only when on,
    # so the workload of a run without them is the one it had before they existed.
    work |= {name: True for name in FAST_PATH_FIELDS if getattr(config, name)}
    if config.ground_truth_uri:  # detections are then kept down to the evaluation threshold
        work["eval_score_threshold"] = config.eval_score_threshold
    return work


def run_workload_id(config, manifest_uri: str, record: dict) -> str:
    """The run's workload_id from its manifest, config and the record's model and hardware columns."""
    inputs = inputs_digest(manifest_uri, with_content=config.dedup_mode == "content")
    hardware = {k: record.get(k) for k in ("machine_type", "gpu_type", "gpu_count")}
    return workload_id(inputs, work_settings(config, record), hardware)
