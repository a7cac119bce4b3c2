"""Batch object detection with a torchvision detector over a large set of images.

1. Manifest   wait for the input to land (scheduled runs), list the input images, normalise and deduplicate
              them, write the manifest, plan shards.
2. Fan-out    one GPU pod per shard (or, in the embedded default, the same engine as a local process).
3. Load       file-based, idempotent loads of every shard's results into the warehouse.
4. Aggregate  the run record (throughput, latency, failures, cost, SDK and model versions), its invariants
              checked, and the run report.

Scheduled on DETECTION_SCHEDULE, or on the Asset DETECTION_INPUT_ASSET when set. load_results and aggregate
update the Assets of the warehouse tables they write, so downstream DAGs can be scheduled on fresh results.

Wiring only: the logic lives in plugins/detection_pipeline. Trigger with conf to override any Param.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from detection_pipeline import assets, tasks
from detection_pipeline.config import build_params
from detection_pipeline.input_sensor import wait_for_input
from detection_pipeline.launch import detect_task
from detection_pipeline.settings import load_settings

settings = load_settings()


@dag(
    dag_id="object_detection_batch",
    schedule=assets.batch_schedule(settings),
    start_date=settings.start_date,
    catchup=False,
    max_active_runs=settings.max_active_runs,
    params=build_params(settings),
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
    },
    tags=["detection", "gpu", "torchvision"],
    doc_md=__doc__,
)
def object_detection_batch():
    run = tasks.validate_config(settings.for_tasks())

    # 1. Manifest, once the input is there
    manifest = tasks.build_manifest(run)
    wait_for_input(settings)(run) >> manifest
    shards = tasks.plan_shards(run, manifest)

    # 2. Fan-out: one pod per shard
    detections = detect_task(settings).expand_kwargs(tasks.launch_kwargs(run, shards))

    # 3. Load
    loaded = tasks.load_results.override(
        outlets=assets.table_assets(settings.warehouse, assets.LOADED_TABLES)
    )(run, shards)
    detections >> loaded

    # 4. Aggregate (with accuracy when ground truth is given), verify, report
    accuracy = tasks.evaluate(run, shards)
    loaded >> accuracy
    record = tasks.aggregate.override(outlets=assets.table_assets(settings.warehouse, assets.RECORD_TABLES))(
        run, manifest, shards, accuracy
    )
    record >> tasks.verify(run, manifest, shards) >> tasks.report(run, record)


dag = object_detection_batch()
