"""`shard_size: auto`: shards sized for a target pod duration from the speed earlier runs measured.

A pod has a fixed cost (~6 s of start and model load, BENCHMARKS.md) and, on spot nodes, loses at most one
part when it is reclaimed, so GPU shards should be large but not endless. `auto` takes the median
`images_per_s_per_gpu` of the latest runs of the same model, weights, precision, fast paths and hardware
(machine type, GPU type and count) in the warehouse, and sizes a shard to run `target_s` seconds on one pod:
images = rate per GPU x GPUs per pod x target_s. That rate is processed images / pod GPU-seconds, model load
included, so the pod's fixed cost is in it. Without such a run (a new model or machine, CPU runs, which record
no per-GPU rate), `auto` is the default shard size. `max_shards` still caps the shard count: shards grow then.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Iterable

from detection_engine.catalog import weights_id
from detection_pipeline.config import FAST_PATH_FIELDS, RunConfig

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_SHARD_SIZE = 1000  # the shard size when `auto` has no history (and RunConfig's default)
TARGET_POD_S = 600.0  # ten minutes of work per pod: ~1% fixed cost, a bounded loss on a node failure
HISTORY = 10  # the latest runs whose speed counts
MAX_SHARD_SIZE = 10_000_000  # RunConfig's bound on shard_size


def same_workload(record: dict, config: RunConfig) -> bool:
    """A run whose speed predicts this one's: same model, weights, precision, fast paths and hardware."""
    return (
        record.get("model_name") == config.model
        and record.get("weights_id") == weights_id(config.model, config.weights, config.weights_sha256)
        and record.get("precision") in (None, config.precision)
        and record.get("machine_type") == config.machine_type
        and record.get("gpu_type") == config.gpu_type
        and record.get("gpu_count") == config.gpu_count
        and requested_fast_paths(record) == tuple(getattr(config, name) for name in FAST_PATH_FIELDS)
    )


def requested_fast_paths(record: dict) -> tuple[bool, ...] | None:
    """The FAST_PATH_FIELDS switches a run asked for, from its `fast_paths` column (a fallback to eager was
    still asked for); none recorded: none (the runs before fast paths), a switch not recorded: off (the runs
    before it); a mixed run: None, like nothing."""
    recorded = record.get("fast_paths")
    if recorded is None:
        return (False,) * len(FAST_PATH_FIELDS)
    try:
        ran = json.loads(recorded)
        asked = {name: bool(ran.get(name, False)) for name in FAST_PATH_FIELDS}
        asked["compile"] = ran.get("compile", "off") != "off"  # on | off | eager fallback: ...
    except (
        ValueError,
        TypeError,
        AttributeError,
    ):  # not JSON (a mixed run's ' | '-joined values), not an object
        return None
    return tuple(asked[name] for name in FAST_PATH_FIELDS)


def measured_rate(records: Iterable[dict], config: RunConfig) -> float | None:
    """The median images/s per GPU of the latest HISTORY comparable runs (records oldest first), or None."""
    rates = [
        float(r["images_per_s_per_gpu"])
        for r in records
        if same_workload(r, config) and (r.get("images_per_s_per_gpu") or 0) > 0
    ]
    return statistics.median(rates[-HISTORY:]) if rates else None


def auto_shard_size(rate_per_gpu: float | None, gpu_count: int, target_s: float = TARGET_POD_S) -> int:
    if rate_per_gpu is None:
        return DEFAULT_SHARD_SIZE
    return max(1, min(MAX_SHARD_SIZE, round(rate_per_gpu * gpu_count * target_s)))


def resolve(config: RunConfig, records: Iterable[dict], target_s: float = TARGET_POD_S) -> RunConfig:
    """`config` with shard_size a number: itself when it is one, else sized from `records`' measured speed."""
    if config.shard_size != AUTO:
        return config
    rate = measured_rate(records, config)
    size = auto_shard_size(rate, config.gpu_count, target_s)
    if rate is None:
        log.info(
            "shard_size auto: no earlier run of %s on this hardware; %d images per shard", config.model, size
        )
    else:
        log.info(
            "shard_size auto: %.2f images/s per GPU measured, %d GPU(s) per pod, %.0f s per pod: %d images",
            rate,
            config.gpu_count,
            target_s,
            size,
        )
    return dataclasses.replace(config, shard_size=size)
