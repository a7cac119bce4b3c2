"""One shard, start to finish: read its manifest, load the model once, run the pipeline, write its files.

Files are written in the order results, metrics, summary, so a summary (what Airflow reads back) only exists
once the shard's data does. While it runs, finished images are committed as parts (parts.py), which are
removed after the metrics are written: a kill before that leaves parts the next attempt resumes from.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from detection_engine import fast_paths, layout
from detection_engine.devices import AUTO, resolve_devices
from detection_engine.fetch import read_shard_manifest
from detection_engine.metrics import UtilizationSampler, shard_metrics
from detection_engine.models import ModelOptions
from detection_engine.parts import CommitPolicy, ShardResume
from detection_engine.pipeline import PipelineOptions, Stopped, run_pipeline
from detection_engine.progress import Progress
from detection_engine.replicas import detectors_for, load_replicas
from detection_engine.writer import RowContext, json_bytes, parquet_bytes, results_table, write_atomic

log = logging.getLogger(__name__)

DEFAULT_SUMMARY_PATH = "/airflow/xcom/return.json"  # where KubernetesPodOperator's xcom sidecar reads


@dataclass(frozen=True)
class ShardJob:
    manifest: str
    output_prefix: str
    run_id: str
    run_date: date
    shard_index: int
    model: ModelOptions
    pipeline: PipelineOptions
    summary_path: str = DEFAULT_SUMMARY_PATH
    log_interval_s: float = 30.0
    commit: CommitPolicy = CommitPolicy()  # parts: what a killed or preempted attempt keeps
    devices: tuple[str, ...] = (AUTO,)  # devices.parse_devices' form: one model replica each
    channels_last: bool = False  # fast paths (fast_paths.py), off until measured
    compile: bool = False


def read_manifest(uri: str) -> list[str]:
    """The shard's URIs, each once, in manifest order (the planner dedupes; a repeat here would be a 2nd row)."""
    uris = read_shard_manifest(uri)  # raises ShardManifestError with the one line the user sees
    unique = list(dict.fromkeys(uris))
    if len(unique) < len(uris):
        log.warning(
            "shard manifest %s lists %d URIs more than once; each gets one row", uri, len(uris) - len(unique)
        )
    return unique


def run_shard(job: ShardJob, stop: Callable[[], bool] | None = None) -> dict:
    """Process the shard and return the summary written to `job.summary_path`.

    Finished images are committed as parts as it goes (`job.commit`, parts.py) and an attempt runs only what
    earlier attempts did not commit; when `stop()` turns true (SIGTERM) it takes no more batches, commits what
    is finished and raises parts.Preempted.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    uris = read_manifest(job.manifest)
    log.info("shard %d: %d images from %s", job.shard_index, len(uris), job.manifest)

    replicas = load_replicas(
        job.model, resolve_devices(job.devices), channels_last=job.channels_last, compile=job.compile
    )
    # The run's one model and weights; its load time is the first load plus the copies to other devices.
    loaded = dataclasses.replace(replicas[0], load_s=sum(r.load_s for r in replicas))
    log.info(
        "model %s (weights %s) on %s, %s, loaded in %.1fs",
        loaded.spec.name,
        loaded.weights_id,
        ", ".join(str(r.device) for r in replicas),
        loaded.precision,
        loaded.load_s,
    )
    detectors = detectors_for(replicas, job.model.score_threshold, job.model.max_detections)
    context = RowContext(
        run_id=job.run_id,
        run_date=job.run_date,
        shard_index=job.shard_index,
        model_name=loaded.spec.name,
        weights_id=loaded.weights_id,
        random_weights=loaded.random_weights,
        processed_at=started_at,
        categories=loaded.categories,
    )
    resume = ShardResume.start(
        job.output_prefix, uris, context, job.commit, started=started, started_at=started_at
    )
    progress = Progress(job.shard_index, len(resume.remaining), job.log_interval_s)
    with UtilizationSampler([r.device for r in replicas]) as utilization:
        try:
            outcome = run_pipeline(
                resume.remaining, detectors, job.pipeline, progress.update, resume.add, stop
            )
        except Stopped:
            raise resume.preempted() from None
    progress.finish()
    finished_at = datetime.now(UTC)
    wall_s = time.perf_counter() - started

    results_uri = layout.shard_results_uri(job.output_prefix, job.shard_index)
    metrics_uri = layout.shard_metrics_uri(job.output_prefix, job.shard_index)
    context = replace(context, processed_at=finished_at)
    metrics = shard_metrics(
        run_id=job.run_id,
        run_date=job.run_date,
        shard_index=job.shard_index,
        outcome=outcome,
        loaded=loaded,
        started_at=started_at,
        finished_at=finished_at,
        wall_s=wall_s,
        gpu_utilization=utilization.mean,
        fast_paths=fast_paths.describe(
            [r.model for r in replicas], job.pipeline.decode_on_device, job.pipeline.prefetch_to_device
        ),
        **resume.metrics_fields(),
    )
    write_atomic(results_uri, parquet_bytes(resume.union(results_table(outcome.results, context))))
    write_atomic(metrics_uri, json_bytes(metrics))
    resume.finish()  # the results file holds every part's rows now
    summary = {
        "run_id": job.run_id,
        "shard_index": job.shard_index,
        "images": metrics["images"],
        "ok": metrics["ok"],
        "failed": metrics["failed"],
        "results_uri": results_uri,
        "metrics_uri": metrics_uri,
        "wall_s": wall_s,
        "images_per_s": metrics["images_per_s"],
    }
    write_atomic(job.summary_path, json_bytes(summary))
    log.info(
        "shard %d: wrote %s (%d ok, %d failed)",
        job.shard_index,
        results_uri,
        summary["ok"],
        summary["failed"],
    )
    return summary
