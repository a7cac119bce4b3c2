"""The run record: one row per run (schema.RUNS) built from the manifest counts and the shards' metrics.

How the numbers are made:

- counts: listed/duplicates/skipped from the manifest; processed/ok/failed summed over the shards' metrics;
- wall_s: the time at least one shard was running, i.e. the length of the union of the shards' [started_at,
  finished_at] intervals (each from the attempt that wrote the metrics file: the final one). Spans when no
  shard ran do not count, so a shard cleared and re-run an hour later adds its own duration, not the hour;
  with no gaps it is first shard start to last shard end. shard_wall_s and inference_s are sums over shards;
  model_load_s is the mean per shard;
- images_per_s = processed / wall_s; images_per_s_per_gpu = processed / GPU-seconds (sum of shard wall times
  x GPUs per pod), i.e. what one GPU delivered, model load included; null when the shards did not run on CUDA;
- batch latency p50/p95: the shards' percentiles averaged with their batch counts as weights. Shards only keep
  percentiles, not every batch's latency; the average is exact when shards share one latency distribution (the
  same GPU type, batch size and image mix: the case here) and otherwise an approximation. The per-shard values
  stay in shard_metrics;
- cost, machine and GPU hours: pricing.estimate_cost over the shards' own wall times (see pricing.py for what
  that leaves out), so they, too, change by a re-run shard's duration only, plus redone_s: the pod time of
  attempts that did not finish (preempted or killed), as their commits recorded it; spot runs at spot prices;
- preemptions and resumed_images: summed over the shards (a preempted attempt is a retry, not a failure);
- started_at is when the run's first task (validate_config) began and finished_at the last shard's end: points
  in time for ordering runs, not a duration (finished_at - started_at includes any wait before a re-run);
- versions: Airflow side from versions.py; torch/torchvision/CUDA/Python/container image from the shards (the
  software that ran the model). Shards that disagree are recorded as "a | b", never silently as one.

The record is returned JSON-ready (ISO dates), as it travels over XCom before the warehouse writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from detection_engine import layout, schema, storage
from detection_engine.catalog import RANDOM_WEIGHTS, weights_id
from detection_pipeline import uris
from detection_pipeline.config import RunConfig
from detection_pipeline.pricing import estimate_cost
from detection_pipeline.versions import pipeline_versions
from detection_pipeline.warehouse.base import jsonable, normalise_record, to_timestamp
from detection_pipeline.workload import run_workload_id

MANIFEST_KEYS = ("listed", "duplicates", "skipped_not_image", "skipped_incremental")


class ShardMetricsError(RuntimeError):
    """Shard metrics that are missing or malformed: the run record would be wrong, so none is written."""


def read_shard_metrics(run_prefix: str, shard_indices: Iterable[int]) -> list[dict]:
    """Every planned shard's metrics object, by shard index; fails naming each shard whose file is missing
    or malformed, so a shard can never drop out of the record silently."""
    indices = sorted(set(shard_indices))
    if not indices:
        return []
    uris = {index: layout.shard_metrics_uri(run_prefix, index) for index in indices}
    fs, _ = storage.filesystem_for(run_prefix)
    paths = {index: storage.path_of(uri) for index, uri in uris.items()}
    blobs = fs.cat(list(paths.values()), on_error="return")
    if not isinstance(blobs, dict):  # fsspec returns the bytes themselves for a single path
        blobs = {next(iter(paths.values())): blobs}

    expected = schema.column_names(schema.SHARD_METRICS)
    missing, problems, metrics = [], [], []
    for index in indices:
        blob = blobs.get(paths[index])
        if blob is None or isinstance(blob, FileNotFoundError):
            missing.append(index)
            continue
        if isinstance(blob, Exception):
            problems.append(f"shard {index}: cannot read {uris[index]}: {blob}")
            continue
        try:
            data = json.loads(blob)
        except ValueError as exc:
            problems.append(f"shard {index}: {uris[index]} is not JSON: {exc}")
            continue
        if not isinstance(data, dict):
            problems.append(f"shard {index}: {uris[index]} holds {type(data).__name__}, not an object")
            continue
        if data.keys() != set(expected):
            absent, unexpected = sorted(set(expected) - data.keys()), sorted(data.keys() - set(expected))
            problems.append(
                f"shard {index}: {uris[index]} lacks keys {absent}, has unexpected keys {unexpected}"
            )
            continue
        if data["shard_index"] != index:
            problems.append(f"shard {index}: {uris[index]} says shard_index {data['shard_index']}")
            continue
        metrics.append(data)
    if missing:
        problems.insert(
            0,
            f"metrics missing for {len(missing)} of {len(indices)} shards: {missing} "
            f"(e.g. {uris[missing[0]]}); did those detect tasks finish?",
        )
    if problems:
        raise ShardMetricsError("; ".join(problems))
    return metrics


def build_run_record(
    config: RunConfig,
    *,
    run_id: str,
    run_date: str,
    logical_date: str | datetime | None,
    run_type: str,
    manifest_stats: dict,
    shard_specs: Sequence[dict],
    metrics: Sequence[dict],
    started_at: str | datetime | None,
    accuracy: dict | None = None,
    recorded_at: datetime | None = None,
) -> dict:
    """The run's record with exactly the keys of schema.RUNS; `accuracy` fills the columns an evaluation step
    computes (ground truth, COCO mAP), which stay null otherwise."""
    absent = [key for key in MANIFEST_KEYS if key not in manifest_stats]
    if absent:
        raise ValueError(f"manifest stats lack {absent}")
    planned = sorted(spec["shard_index"] for spec in shard_specs)
    reported = sorted(m["shard_index"] for m in metrics)
    if planned != reported:
        raise ShardMetricsError(f"metrics of shards {reported} do not match the planned shards {planned}")

    processed = sum(m["images"] for m in metrics)
    intervals = [(to_timestamp(m["started_at"]), to_timestamp(m["finished_at"])) for m in metrics]
    ends = [end for _, end in intervals]
    wall_s = busy_seconds(intervals) if metrics else None
    shard_seconds = [float(m["wall_s"]) for m in metrics]
    on_gpu = bool(metrics) and all(m["device"] == "cuda" for m in metrics) and config.gpu_count > 0
    # Record (and cost) the GPUs that ran, not the ones asked for: shards that all ran on the CPU used none.
    on_cpu = bool(metrics) and all(m["device"] == "cpu" for m in metrics)
    gpu_type, gpu_count = (None, 0) if on_cpu else (config.gpu_type, config.gpu_count)
    # Pod time of attempts that did not finish (preempted or killed), up to each one's last commit: paid for.
    redone_s = sum(float(m.get("earlier_attempts_s") or 0.0) for m in metrics)
    gpu_seconds = (sum(shard_seconds) + redone_s) * config.gpu_count if on_gpu else 0.0
    cost = estimate_cost(
        config.machine_type, gpu_type, gpu_count, [*shard_seconds, redone_s], spot=config.spot
    )

    record = {
        "run_id": run_id,
        "run_date": run_date,
        "logical_date": logical_date,
        "run_type": run_type,
        "started_at": started_at,
        "finished_at": max(ends) if ends else None,
        # Records outlive runs and reach every analyst: credentials and signed-URL tokens stay out of them.
        "config_json": config.to_json(),
        "input_uri": uris.redact(config.input_uri),
        "output_uri": config.output_uri,
        **{key: manifest_stats[key] for key in MANIFEST_KEYS},
        "processed": processed,
        "ok": sum(m["ok"] for m in metrics),
        "failed": sum(m["failed"] for m in metrics),
        "shards": len(planned),
        "wall_s": wall_s,
        "shard_wall_s": sum(shard_seconds),
        "inference_s": sum(float(m["infer_s"]) for m in metrics),
        "model_load_s": _mean(float(m["model_load_s"]) for m in metrics),
        "images_per_s": processed / wall_s if wall_s else None,
        "images_per_s_per_gpu": processed / gpu_seconds if gpu_seconds else None,
        "batch_latency_p50_ms": _batch_weighted(metrics, "batch_latency_p50_ms"),
        "batch_latency_p95_ms": _batch_weighted(metrics, "batch_latency_p95_ms"),
        "machine_type": config.machine_type,
        "gpu_type": gpu_type,
        "gpu_count": gpu_count,
        "machine_hours": cost.machine_hours,
        "gpu_hours": cost.gpu_hours,
        "estimated_cost_usd": cost.cost_usd,
        "cost_per_1000_images_usd": cost.cost_usd / processed * 1000
        if cost.cost_usd is not None and processed
        else None,
        **pipeline_versions(),
        "python_version": _across_shards(metrics, "python_version") or pipeline_versions()["python_version"],
        "torch_version": _across_shards(metrics, "torch_version"),
        "torchvision_version": _across_shards(metrics, "torchvision_version"),
        "cuda_version": _across_shards(metrics, "cuda_version"),
        "container_image": _across_shards(
            metrics, "container_image"
        ),  # none for the embedded default's local process
        "device_name": _across_shards(metrics, "device_name"),
        "model_name": _across_shards(metrics, "model_name") or config.model,
        "weights_id": _across_shards(metrics, "weights_id")
        or weights_id(config.model, config.weights, config.weights_sha256),
        "weights_sha256": _across_shards(metrics, "weights_sha256") or config.weights_sha256,
        "random_weights": any(m["random_weights"] for m in metrics)
        if metrics
        else config.weights == RANDOM_WEIGHTS,
        "precision": _across_shards(metrics, "precision") or config.precision,
        "batch_size": _batch_size(config.batch_size, metrics),
        "recorded_at": recorded_at or datetime.now(UTC),
    }
    manifest_uri = manifest_stats.get("manifest_uri")  # the DAG's stats always name it
    record["workload_id"] = run_workload_id(config, manifest_uri, record) if manifest_uri else None
    record["rejected"] = manifest_stats.get("rejected", 0)  # names and entries that cannot be used
    examples = manifest_stats.get("rejected_examples") or []
    record["rejected_examples"] = json.dumps(list(examples)) if examples else None
    record["spot"] = config.spot
    record["preemptions"] = sum(int(m.get("preemptions") or 0) for m in metrics)
    record["resumed_images"] = sum(int(m.get("resumed_images") or 0) for m in metrics)
    record["redone_s"] = redone_s
    record["fast_paths"] = _across_shards(metrics, "fast_paths")
    elsewhere = [f.name for f in schema.RUNS if f.name not in record]
    unknown = sorted(set(accuracy or {}) - set(elsewhere))
    if unknown:
        raise ValueError(f"accuracy may only fill {elsewhere}, not {unknown}")
    record |= {name: (accuracy or {}).get(name) for name in elsewhere}
    ordered = {f.name: record[f.name] for f in schema.RUNS}
    return jsonable(normalise_record(schema.RUNS, ordered))


def busy_seconds(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """Seconds covered by at least one of the [start, end] intervals (their union's length): overlapping
    shards count once, gaps when nothing ran not at all. An interval that ends before it starts counts 0."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def _batch_size(requested: int | str, metrics: Sequence[dict]) -> int | None:
    """The size the shards ran at: the config's, or for 'auto' the shards' common size (None if they differ)."""
    if isinstance(requested, int):
        return requested
    sizes = {int(m["batch_size"]) for m in metrics}
    return sizes.pop() if len(sizes) == 1 else None


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _batch_weighted(metrics: Sequence[dict], key: str) -> float | None:
    pairs = [(m[key], m["batches"]) for m in metrics if m[key] is not None and m["batches"]]
    batches = sum(b for _, b in pairs)
    return sum(value * b for value, b in pairs) / batches if batches else None


def _across_shards(metrics: Sequence[dict], key: str) -> str | None:
    """The value the shards share, or, in a mixed run, their distinct values joined with " | " so the run
    record shows it was mixed (two torch versions, two GPU models) instead of picking one."""
    values = sorted({str(m[key]) for m in metrics if m.get(key) is not None})
    return " | ".join(values) if values else None
