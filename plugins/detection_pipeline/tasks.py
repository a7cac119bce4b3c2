"""The DAG's tasks: thin adapters from Airflow's context to the pipeline modules.

Tasks returning a dict say `multiple_outputs=False`: Airflow 3 would otherwise store every key as its own XCom
(about 100 per run where 11 are read), which costs about a second per run.

Every task runs `at_the_boundary` (errors.py): a deterministic failure fails the run at once, others are
retried, and no exception text reaches the log unredacted.

Each task takes and returns small JSON-able dicts (XCom), never images or detections. `run` is the run's
identity and validated config, built once by `validate_config` and handed to every later task, so no task
re-reads Params or recomputes the run prefix.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from functools import partial

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from detection_engine import catalog, layout
from detection_pipeline.config import ConfigError, RunConfig
from detection_pipeline.errors import at_the_boundary

log = logging.getLogger(__name__)


def _config(run: dict) -> RunConfig:
    return RunConfig.from_dict(run["config"])


def _open_warehouse(run: dict):
    from detection_pipeline.warehouse import open_warehouse

    deployment = run["deployment"]
    return open_warehouse(
        _config(run).warehouse,
        gcp_conn_id=deployment["gcp_conn_id"],
        lock_timeout_s=deployment["warehouse_lock_timeout_s"],
    )


# Its return value holds the conf as given, credentials of an http input URI included (the run needs them):
# Airflow's "Returned value was" log line must not print it.
@task(show_return_value_in_logs=False, multiple_outputs=False)
@at_the_boundary
def validate_config(deployment: dict) -> dict:
    """Fail the run before any pod starts when the conf is wrong, or a file it names (state dict, ground
    truth) is missing or not what it must be (preflight.py); otherwise fix the run's identity.

    `deployment` is the DAG file's `Settings.for_tasks()`: carried in the run dict, it is what every later
    task reads of the deployment, so no task reads the worker's environment again."""
    from detection_pipeline import preflight

    started_at = datetime.now(UTC)
    context = get_current_context()
    dag_run = context["dag_run"]
    when = context.get("logical_date") or dag_run.run_after
    try:
        config, ground_truth = preflight.checked(RunConfig.from_params(dict(context["params"]), when))
    except ConfigError as error:
        raise AirflowFailException(f"invalid run config: {error}") from None  # retrying cannot fix it
    if ground_truth is not None:
        log.info("Ground truth: %s", ground_truth)
    run_id = context["run_id"]
    return {
        "config": config.to_dict(),
        "run_id": run_id,
        "run_date": when.date().isoformat(),
        "logical_date": when.isoformat(),
        "run_type": str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        "run_prefix": layout.run_prefix(config.output_uri, run_id),
        "started_at": started_at.isoformat(),
        "ground_truth": ground_truth,  # images, annotations, categories: checked before any shard
        "deployment": deployment,
    }


@task(multiple_outputs=False)
@at_the_boundary
def build_manifest(run: dict) -> dict:
    """List, normalise and deduplicate the inputs; write the run's manifest; check that a ground truth
    names some of its images."""
    from detection_pipeline import manifest, preflight

    config = _config(run)
    if config.shard_size == "auto":  # sized from the speed earlier runs recorded (shard_size.py)
        from detection_pipeline.shard_size import resolve

        history = _open_warehouse(run)
        history.ensure_tables()
        config = resolve(config, history.runs())
    already_processed = None
    if config.incremental:
        warehouse = _open_warehouse(run)
        warehouse.ensure_tables()
        already_processed = partial(
            warehouse.processed_uris,
            config.model,
            catalog.weights_id(config.model, config.weights, config.weights_sha256),
            exclude_run_id=run["run_id"],  # a re-run must not skip what its own earlier attempt did
        )
    stats = manifest.build_manifest(
        config,
        run["run_prefix"],
        already_processed=already_processed,
        bounds=manifest.FileBounds.from_deployment(run["deployment"]),
    )
    preflight.ground_truth_matches(config, stats.manifest_uri)  # before any GPU time, not at evaluate
    return dataclasses.asdict(stats)


@task
@at_the_boundary
def plan_shards(run: dict, manifest_stats: dict) -> list[dict]:
    """Split the manifest into shards (one detect pod each) and write each shard's list of URIs."""
    from detection_pipeline import sharding

    return sharding.plan_shards(_config(run), run["run_prefix"], manifest_stats["manifest_uri"])


@task
@at_the_boundary
def launch_kwargs(run: dict, specs: list[dict]) -> list[dict]:
    """The detect task's arguments for each shard: the same for a GPU pod and for a local process."""
    from detection_pipeline.launch import detect_shard_kwargs

    return [
        detect_shard_kwargs(
            run["config"],
            spec,
            run_id=run["run_id"],
            run_date=run["run_date"],
            run_prefix=run["run_prefix"],
            deployment=run["deployment"],
        )
        for spec in specs
    ]


@task(trigger_rule="none_failed", multiple_outputs=False)
@at_the_boundary
def load_results(run: dict, specs: list[dict]) -> dict:
    """Load every planned shard's files into the warehouse, replacing the run's rows (idempotent)."""
    warehouse = _open_warehouse(run)
    warehouse.ensure_tables()
    prefix = run["run_prefix"]
    indices = [spec["shard_index"] for spec in specs]
    stats = warehouse.load_run(
        run["run_id"],
        run["run_date"],
        [layout.shard_results_uri(prefix, i) for i in indices],
        [layout.shard_metrics_uri(prefix, i) for i in indices],
    )
    return dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats)


@task(multiple_outputs=False)
@at_the_boundary
def evaluate(run: dict, specs: list[dict]) -> dict:
    """COCO box mAP of the run against its ground truth (the run record's accuracy columns); null without one."""
    from detection_pipeline import evaluation

    config = _config(run)
    if config.ground_truth_uri is None:
        return evaluation.no_accuracy()
    result = evaluation.evaluate_run_files(
        config.ground_truth_uri,
        run["run_prefix"],
        [spec["shard_index"] for spec in specs],
        config.eval_score_threshold,
    )
    diagnostics = {k: v for k, v in result.items() if k not in evaluation.ACCURACY_COLUMNS}
    log.info("COCO evaluation: %s", diagnostics)  # unmatched images and categories, for whoever reads the log
    return {k: result[k] for k in evaluation.ACCURACY_COLUMNS}


@task(multiple_outputs=False)
@at_the_boundary
def aggregate(run: dict, manifest_stats: dict, specs: list[dict], accuracy: dict) -> dict:
    """Build the run record (counts, throughput, latency, cost, versions) and write it, replacing any earlier one."""
    from detection_pipeline.aggregate import build_run_record, read_shard_metrics

    metrics = read_shard_metrics(run["run_prefix"], [spec["shard_index"] for spec in specs])
    record = build_run_record(
        _config(run),
        run_id=run["run_id"],
        run_date=run["run_date"],
        logical_date=run["logical_date"],
        run_type=run["run_type"],
        manifest_stats=manifest_stats,
        shard_specs=specs,
        metrics=metrics,
        started_at=run["started_at"],
        accuracy=accuracy,
    )
    _open_warehouse(run).write_run_record(record)
    return record


@task
@at_the_boundary
def verify(run: dict, manifest_stats: dict, specs: list[dict]) -> None:
    """Check the exactly-once invariants against the warehouse; fail the run loudly if one breaks."""
    from detection_pipeline.verify import check_run

    check_run(
        _open_warehouse(run),
        run["run_id"],
        expected_unique=manifest_stats["unique"],
        expected_shards=len(specs),
    )


@task(multiple_outputs=False)
@at_the_boundary
def report(run: dict, record: dict) -> dict:
    """Write the run's HTML report, and refresh the cross-run dashboard beside the runs."""
    from detection_pipeline.report import build_dashboard, build_run_report

    config = _config(run)
    report_uri = build_run_report(run["run_prefix"], record)
    dashboard_uri = build_dashboard(
        _open_warehouse(run).runs_frame(), layout.join(config.output_uri, "dashboard.html")
    )
    return {"report_uri": report_uri, "dashboard_uri": dashboard_uri}
