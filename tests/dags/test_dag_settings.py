"""What the deployment settings change in the parsed DAGs: the batch DAG's schedule (cron or input Asset), the
Assets its loads update, and whether the benchmark DAG exists and what it runs.

Settings are read when a DAG file is parsed, so each case parses dags/ in a fresh interpreter with its own
environment (the test session's Airflow home, no other DETECTION_* variable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset
bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    schedule = dag.schedule
    dags[dag_id] = {
        "timetable": type(dag.timetable).__name__,
        "schedule": {"asset": schedule.uri} if isinstance(schedule, Asset) else schedule,
        "tasks": [t.task_id for t in dag.topological_sort()],
        "outlets": {t.task_id: sorted(o.uri for o in t.outlets) for t in dag.tasks if t.outlets},
        "params": {k: dag.params.get_param(k).value for k in dag.params.keys()},
        "trigger": {t.task_id: t.partial_kwargs.get("trigger_dag_id") for t in dag.tasks
                    if getattr(t, "partial_kwargs", None) and "trigger_dag_id" in t.partial_kwargs},
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}))
"""


def parse_dags(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTION_")} | settings
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT / "dags")],
        env=env | {"PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("plugins", "inference_image"))},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed = json.loads(out.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    return parsed["dags"]


@pytest.fixture(scope="module")
def default_dags() -> dict:
    return parse_dags(DETECTION_SCHEDULE="0 3 * * *")


@pytest.fixture(scope="module")
def configured_dags() -> dict:
    return parse_dags(
        DETECTION_SCHEDULE="0 3 * * *",
        DETECTION_INPUT_ASSET="gs://image-drop/landed",
        DETECTION_WAREHOUSE="bigquery://my-project/detection",
        DETECTION_BENCHMARK_MANIFEST="gs://bench/street-500.parquet",
        DETECTION_BENCHMARK_SCHEDULE="0 5 * * *",
    )


def test_the_batch_dag_runs_on_its_cron_without_an_input_asset(default_dags):
    batch = default_dags["object_detection_batch"]
    assert (batch["timetable"], batch["schedule"]) == ("CronTriggerTimetable", "0 3 * * *")


def test_with_an_input_asset_the_batch_dag_runs_when_it_is_updated(configured_dags):
    batch = configured_dags["object_detection_batch"]
    assert batch["timetable"] == "AssetTriggeredTimetable"
    assert batch["schedule"] == {"asset": "gs://image-drop/landed"}


def test_the_loads_update_the_assets_of_the_tables_they_write(default_dags, configured_dags):
    warehouse = ROOT / "var" / "warehouse.duckdb"
    assert default_dags["object_detection_batch"]["outlets"] == {
        "load_results": [f"x-duckdb://{warehouse}/results", f"x-duckdb://{warehouse}/shard_metrics"],
        "aggregate": [f"x-duckdb://{warehouse}/runs"],
    }
    assert configured_dags["object_detection_batch"]["outlets"] == {
        "load_results": [
            "bigquery://my-project/detection/results",
            "bigquery://my-project/detection/shard_metrics",
        ],
        "aggregate": ["bigquery://my-project/detection/runs"],
    }


def test_there_is_no_benchmark_dag_without_a_benchmark_manifest(default_dags):
    assert "detection_benchmark" not in default_dags


def test_the_benchmark_dag_triggers_one_batch_run_of_the_manifest_on_its_own_schedule(configured_dags):
    bench = configured_dags["detection_benchmark"]
    assert (bench["timetable"], bench["schedule"]) == ("CronTriggerTimetable", "0 5 * * *")
    assert bench["tasks"] == ["plan", "run_benchmark"]
    assert bench["trigger"] == {"run_benchmark": "object_detection_batch"}
    assert bench["params"] == {"input_uri": "gs://bench/street-500.parquet"}
