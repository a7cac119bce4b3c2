"""Compare torchvision detectors on the same images: accuracy, speed and cost side by side.

1. Plan     one batch run per (model, precision), named after this sweep run, so a re-run replaces them;
            every combination is validated with the batch DAG's rules before anything is triggered.
2. Run      each is an ordinary run of `object_detection_batch`, triggered and awaited (deferred: no worker
            slot is held while the GPUs work); the batch DAG's max_active_runs decides how many run at once.
3. Compare  one table from the run records (mAP when a ground truth is given, images/s, cost per 1,000
            images, latency, versions), written as Markdown, CSV and HTML under {output_uri}/sweeps/{run}/.

Wiring only: the logic lives in plugins/detection_pipeline/sweep.py.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag

from detection_pipeline import sweep
from detection_pipeline.config import build_params, param_defaults
from detection_pipeline.settings import load_settings

settings = load_settings()
batch_params = build_params(settings)


@dag(
    dag_id=sweep.SWEEP_DAG_ID,
    schedule=None,
    catchup=False,
    params=sweep.sweep_params(batch_params),
    default_args={
        "owner": "ml-platform",
        "retries": 1,  # transient faults only: a bad combination or an incomplete sweep fails at once
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
    },
    tags=["detection", "benchmark", "torchvision"],
    doc_md=__doc__,
)
def detection_model_sweep():
    # 1. Plan
    runs = sweep.plan(param_defaults(batch_params))

    # 2. Run: one batch run per combination
    batch_runs = TriggerDagRunOperator.partial(
        task_id="run_model",
        trigger_dag_id=sweep.BATCH_DAG_ID,
        wait_for_completion=True,
        deferrable=True,
        poke_interval=settings.sweep_poll_s,  # DETECTION_SWEEP_POLL_S
        reset_dag_run=True,  # clearing this task re-runs its batch run under the same run id
        retries=0,  # the batch run retries its own tasks; a retry here would clear and redo all its shards
    ).expand_kwargs(runs)

    # 3. Compare
    batch_runs >> sweep.compare(runs, settings.for_tasks())


dag = detection_model_sweep()
