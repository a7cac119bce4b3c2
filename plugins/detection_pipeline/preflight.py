"""What validate_config checks by reading the files a conf names, before any shard starts.

`RunConfig` checks values only: every task rebuilds it from XCom, so it must not read files. These checks read,
once per run:

- a state dict given as weights: it must be a regular file, readable within the engine's own bounds
  (catalog.STATE_DICT_MAX_BYTES / STATE_DICT_TIMEOUT_S); its SHA-256 is computed while streaming and pinned
  into the run's config (or must equal the weights_sha256 given). The engine then loads it with
  --weights-sha256, so every shard loads the file that was checked, and the pipeline's weights id
  (catalog.weights_id: `uri@sha256:HEX`, the incremental skip's key) is the one the engine records;
- a ground truth file: read and validated by evaluation.load_ground_truth (the evaluate step's own loader)
  and summarised, so a file that is not COCO detection ground truth fails the run before any GPU time;
  once the manifest is built, its file names must match some of the run's images (`ground_truth_matches`),
  or the evaluate step could score nothing.

A refusal of the file itself (missing, not a regular file, too large, a timeout, a checksum mismatch, not COCO)
is a permanent ConfigError naming the field; a store that fails to serve it (HTTP 5xx, a reset connection) is
PreflightUnavailable, which keeps Airflow's retries.
"""

from __future__ import annotations

import dataclasses
import hashlib

from detection_engine import bounded_read, storage
from detection_engine.catalog import STATE_DICT_MAX_BYTES, STATE_DICT_TIMEOUT_S, is_weights_file
from detection_pipeline import uris
from detection_pipeline.config import RunConfig
from detection_pipeline.errors import ConfigError
from detection_pipeline.evaluation import EvaluationError, GroundTruthError, load_ground_truth, matched_images


class PreflightUnavailable(RuntimeError):
    """The store did not serve a file the conf names (5xx, connection reset): worth a retry."""


def checked(config: RunConfig) -> tuple[RunConfig, dict | None]:
    """The config with a state dict's SHA-256 pinned, and the ground truth's summary (None without one)."""
    return pin_weights(config), ground_truth_summary(config)


def pin_weights(config: RunConfig) -> RunConfig:
    """`config` with weights_sha256 set to the state dict file's; unchanged for enum or random weights."""
    if not is_weights_file(config.weights):
        return config
    digest = file_sha256(
        config.weights,
        field="weights",
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
    )
    if config.weights_sha256 is not None and config.weights_sha256 != digest:
        raise ConfigError(
            f"weights_sha256: the state dict {uris.redact(config.weights)} has sha256 {digest}, "
            f"not {config.weights_sha256}"
        )
    return dataclasses.replace(config, weights_sha256=digest)


def file_sha256(
    uri: str,
    *,
    field: str,
    max_bytes: int = STATE_DICT_MAX_BYTES,
    timeout_s: float = STATE_DICT_TIMEOUT_S,
    connect_timeout_s: float = bounded_read.DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = bounded_read.DEFAULT_READ_TIMEOUT_S,
) -> str:
    """SHA-256 of the regular file at `uri`, streamed through the bounded reader (never held in memory)."""
    digest, size = hashlib.sha256(), 0
    try:
        limits = storage.ReadLimits(max_bytes, connect_timeout_s, read_timeout_s, timeout_s)
        for chunk in storage.iter_bytes(uri, limits):
            digest.update(chunk)
            size += len(chunk)
    except storage.ReadRefused as refused:
        shown = uris.redact(uri)
        if refused.code == "fetch_error":
            raise PreflightUnavailable(f"{field}: cannot read {shown}: {refused.reason}") from None
        if refused.code == "not_found":
            raise ConfigError(f"{field}: {shown} does not exist") from None
        raise ConfigError(f"{field}: cannot read {shown}: {refused.reason}") from None
    if not size:
        raise ConfigError(f"{field}: {uris.redact(uri)} is empty (0 bytes)")
    return digest.hexdigest()


def ground_truth_summary(config: RunConfig) -> dict | None:
    """Counts of the ground truth's images, annotations and categories; ConfigError when it is not COCO."""
    if config.ground_truth_uri is None:
        return None
    try:
        gt = load_ground_truth(config.ground_truth_uri)
    except GroundTruthError as error:
        raise ConfigError(f"ground_truth_uri: {error}") from None
    return {
        "uri": config.ground_truth_uri,
        "images": len(gt["images"]),
        "annotations": len(gt["annotations"]),
        "categories": len(gt["categories"]),
    }


def ground_truth_matches(config: RunConfig, manifest_uri: str) -> None:
    """ConfigError when the ground truth's file names match none of the manifest's images (an empty
    manifest has nothing to score and passes)."""
    if config.ground_truth_uri is None:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.filesystem_for(manifest_uri)  # the run's own file, as plan_shards reads it
    image_uris = (
        pq.read_table(pa.BufferReader(fs.cat_file(path)), columns=["image_uri"]).column(0).to_pylist()
    )
    if not image_uris:
        return
    try:
        matched_images(load_ground_truth(config.ground_truth_uri), image_uris)
    except (GroundTruthError, EvaluationError) as error:
        raise ConfigError(f"ground_truth_uri: {error}") from None
