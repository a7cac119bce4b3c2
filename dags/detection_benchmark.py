"""The benchmark workload: the fixed manifest DETECTION_BENCHMARK_MANIFEST, run on DETECTION_BENCHMARK_SCHEDULE.

1. Plan  the batch run's conf (the manifest as input_uri, every other option at the batch DAG's defaults),
         checked with the batch DAG's rules, and its run id.
2. Run   one ordinary run of `object_detection_batch`, triggered and awaited (deferred).

Its runs are one workload, so the dashboard shows it version by version. Defined only when
DETECTION_BENCHMARK_MANIFEST is set. Wiring only: the logic lives in plugins/detection_pipeline/benchmark.py.
"""

from __future__ import annotations

from datetime import timedelta

from detection_pipeline.settings import load_settings

settings = load_settings()

if settings.benchmark_manifest is not None:  # unset: nothing to import, nothing to parse
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import dag

    from detection_pipeline import benchmark
    from detection_pipeline.config import build_params, param_defaults

    batch_params = build_params(settings)

    @dag(
        dag_id=benchmark.BENCHMARK_DAG_ID,
        schedule=settings.benchmark_schedule,
        start_date=settings.start_date,
        catchup=False,
        max_active_runs=1,  # one measurement at a time
        params=benchmark.benchmark_params(batch_params, settings.benchmark_manifest),
        default_args={
            "owner": "ml-platform",
            "retries": 1,  # transient faults only: an input the batch DAG refuses fails at once
            "retry_delay": timedelta(seconds=settings.retry_delay_s),
        },
        tags=["detection", "benchmark", "torchvision"],
        doc_md=__doc__,
    )
    def detection_benchmark():
        # 1. Plan
        runs = benchmark.plan(param_defaults(batch_params))

        # 2. Run: one awaited batch run
        TriggerDagRunOperator.partial(
            task_id="run_benchmark",
            trigger_dag_id=benchmark.BATCH_DAG_ID,
            wait_for_completion=True,
            deferrable=True,
            poke_interval=settings.sweep_poll_s,  # DETECTION_SWEEP_POLL_S
            reset_dag_run=True,  # a re-run of this date re-runs its batch run under the same run id
            retries=0,  # the batch run retries its own tasks; a retry here would clear and redo all its shards
        ).expand_kwargs(runs)

    dag = detection_benchmark()
