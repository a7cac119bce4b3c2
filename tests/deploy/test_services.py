"""The DAGs as deployed: PostgreSQL, api-server, scheduler, dag-processor and triggerer as separate processes,
each with its own AIRFLOW_HOME and exactly the environment docker-compose.yaml gives it (scripts/local_airflow.py),
driven through the REST API with a token, as a user would.

One deployment for the module: unpausing (one scheduled run starts at once), a batch run with conf, a bad conf,
a backfill of two dates, a sweep of two models (one of them fixed-size), all queued together, so the backfill
overlaps the manual runs and their loads share one DuckDB file; then a clear of one detect task. Every wait is
bounded; the deployment's teardown ends every process group it started.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from detection_engine import layout
from detection_pipeline import sweep
from detection_pipeline.warehouse import open_warehouse
from scripts import sample_images
from scripts.local_airflow import Deployment
from tests.deploy.airflow_api import AirflowApi
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1500)]

BATCH = "object_detection_batch"
SWEEP = sweep.SWEEP_DAG_ID
# Tiny work: 3 small generated scenes + a byte-identical copy + a truncated JPEG = 5 unique URIs, one shard.
UNIQUE_INPUTS = 5
CONF = {"model": "ssdlite320_mobilenet_v3_large", "weights": "none", "batch_size": 4, "score_threshold": 0.05}
SWEEP_MODELS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"]
BACKFILL_DATES = ("2026-03-01", "2026-03-02")
WORKLOAD_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """Compose's services on fresh secrets (as `.env.example` says to make them), ./var in a temp folder."""
    state = Path(tempfile.mkdtemp(prefix="detection-deploy-"))
    state.chmod(0o755)  # PostgreSQL runs as the postgres user and must reach its folder
    var = state / "var"
    sample_images.generate(var / "demo" / "images", count=3)  # compose's DETECTION_INPUT_URI default
    variables = {
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
    }
    try:
        with Deployment(state=state, variables=variables, var_dir=var) as running:
            yield running
    finally:
        if not os.environ.get("DETECTION_KEEP_DEPLOY_STATE"):
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> AirflowApi:
    client = AirflowApi(
        deployment.api_url, on_poll=deployment.check_running, diagnostics=deployment.log_tails
    )
    client.wait_for("both DAGs parsed", lambda: {BATCH, SWEEP} <= {d["dag_id"] for d in _dags(client)}, 120)
    assert client.ok("GET", "/importErrors")["total_entries"] == 0
    return client


def _dags(client: AirflowApi) -> list[dict]:
    return client.ok("GET", "/dags", params={"limit": 100})["dags"]


@pytest.fixture(scope="module")
def workload(api: AirflowApi, deployment: Deployment) -> dict:
    """Everything queued at once, then waited for; the run ids by role."""
    api.unpause(BATCH)
    scheduled = api.wait_for(
        "the scheduled run unpausing starts",
        lambda: [run for run in api.runs(BATCH) if run["run_type"] == "scheduled"],
        60,
    )
    # It runs the default Params (the deployment's pretrained default model, which CI cannot download).
    api.ok("PATCH", f"/dags/{BATCH}/dagRuns/{scheduled[0]['dag_run_id']}", json={"state": "failed"})

    batch = api.trigger(BATCH, CONF)
    assert batch.status_code == 200, batch.text
    out_of_range = api.trigger(BATCH, {**CONF, "batch_size": 0})
    unknown_key = api.trigger(BATCH, {**CONF, "modle": "ssd300_vgg16"})
    assert unknown_key.status_code in (200, 400), unknown_key.text
    backfill = api.ok(
        "POST",
        "/backfills",
        json={
            "dag_id": BATCH,
            "from_date": f"{BACKFILL_DATES[0]}T00:00:00Z",
            "to_date": f"{BACKFILL_DATES[1]}T00:00:00Z",
            "max_active_runs": 1,
            "dag_run_conf": CONF,
            "reprocess_behavior": "none",
        },
    )
    api.unpause(SWEEP)
    sweep_run = api.trigger(
        SWEEP,
        {
            "models": SWEEP_MODELS,
            "precisions": ["fp32"],
            "weights": "none",
            "batch_size": 4,
            "min_size": 64,
            "max_size": 96,
        },
    )
    assert sweep_run.status_code == 200, sweep_run.text
    sweep_id = sweep_run.json()["dag_run_id"]

    api.wait_finished(SWEEP, [sweep_id], WORKLOAD_TIMEOUT_S)
    backfill_runs = api.wait_for(
        "the backfill's two runs",
        lambda: (
            (runs := [r for r in api.runs(BATCH) if r["run_type"] == "backfill"]) and len(runs) == 2 and runs
        ),
        60,
    )
    manual = [batch.json()["dag_run_id"]]
    if unknown_key.status_code == 200:
        manual.append(unknown_key.json()["dag_run_id"])
    sweep_batch_runs = [sweep.trigger_run_id(sweep_id, model, "fp32") for model in SWEEP_MODELS]
    runs = api.wait_finished(
        BATCH,
        [scheduled[0]["dag_run_id"], *manual, *(r["dag_run_id"] for r in backfill_runs), *sweep_batch_runs],
        WORKLOAD_TIMEOUT_S,
    )
    return {
        "scheduled": scheduled,
        "batch": manual[0],
        "out_of_range": out_of_range,
        "unknown_key": unknown_key,
        "backfill": backfill,
        "backfill_runs": sorted(
            (runs[r["dag_run_id"]] for r in backfill_runs), key=lambda run: run["logical_date"]
        ),
        "sweep": sweep_id,
        "sweep_batch_runs": sweep_batch_runs,
        "runs": runs,
        "warehouse": f"duckdb:///{deployment.var_dir / 'warehouse.duckdb'}",
        "output": str(deployment.var_dir / "output"),
    }


def _assert_run_succeeded(api: AirflowApi, run_id: str) -> None:
    """Every task of the DAG (as the api-server serves it) ran, and succeeded, in this run."""
    tasks = {task["task_id"] for task in api.ok("GET", f"/dags/{BATCH}/tasks")["tasks"]}
    states = api.states(BATCH, run_id)
    assert {task for task, _ in states} == tasks, states
    assert set(states.values()) == {"success"}, states


def _assert_one_row_per_input(workload: dict, run_id: str) -> dict:
    return assert_exactly_once(
        workload["warehouse"],
        run_id,
        unique=UNIQUE_INPUTS,
        shards=1,
        prefix=layout.run_prefix(workload["output"], run_id),
    )


def test_unpausing_starts_one_scheduled_run_at_once(workload):
    """With catchup=False, unpausing starts one run at once: Airflow 3's @daily (a cron trigger timetable)
    gives it the latest midnight that has passed as its logical date, so its {ds} is today's date."""
    assert len(workload["scheduled"]) == 1
    logical = dt.datetime.fromisoformat(workload["scheduled"][0]["logical_date"])
    assert logical == dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def test_batch_run_with_conf_succeeds_with_one_row_per_input(api, workload):
    run_id = workload["batch"]
    assert workload["runs"][run_id]["state"] == "success"
    _assert_run_succeeded(api, run_id)
    counts = _assert_one_row_per_input(workload, run_id)
    assert counts["failed"] == 1  # the truncated JPEG: an error row, not a failed task
    record = open_warehouse(workload["warehouse"]).run_record(run_id)
    assert record["model_name"] == CONF["model"]


def test_a_bad_conf_is_rejected_before_any_shard(api, workload):
    out_of_range = workload["out_of_range"]
    assert out_of_range.status_code == 400 and "batch_size" in out_of_range.text, out_of_range.text
    unknown_key = workload["unknown_key"]
    if unknown_key.status_code == 400:
        assert "modle" in unknown_key.text
        return
    run_id = unknown_key.json()["dag_run_id"]
    assert workload["runs"][run_id]["state"] == "failed"
    states = api.states(BATCH, run_id)
    assert states[("validate_config", -1)] == "failed"
    assert [ti for ti in api.task_instances(BATCH, run_id) if ti["task_id"] == "validate_config"][0][
        "try_number"
    ] == 1  # a config error is permanent: no retry
    assert all(state != "success" for (task, _), state in states.items() if task != "validate_config"), states
    assert open_warehouse(workload["warehouse"]).run_counts(run_id)["rows"] == 0


def test_backfill_runs_two_dates_one_at_a_time(api, workload):
    first, second = workload["backfill_runs"]
    assert [run["logical_date"][:10] for run in (first, second)] == list(BACKFILL_DATES)
    assert workload["backfill"]["max_active_runs"] == 1
    for run in (first, second):
        assert run["state"] == "success", run
        _assert_run_succeeded(api, run["dag_run_id"])
        _assert_one_row_per_input(workload, run["dag_run_id"])
    assert dt.datetime.fromisoformat(second["start_date"]) >= dt.datetime.fromisoformat(first["end_date"])


def test_sweep_runs_each_model_once_and_compares_them(api, workload):
    sweep_id = workload["sweep"]
    assert api.run(SWEEP, sweep_id)["state"] == "success"
    assert set(api.states(SWEEP, sweep_id).values()) == {"success"}
    warehouse = open_warehouse(workload["warehouse"])
    for model, run_id in zip(SWEEP_MODELS, workload["sweep_batch_runs"], strict=True):
        _assert_run_succeeded(api, run_id)
        _assert_one_row_per_input(workload, run_id)
        assert warehouse.run_record(run_id)["model_name"] == model
    comparison = Path(sweep.sweep_prefix(workload["output"], sweep_id)) / "comparison.md"
    assert all(model in comparison.read_text() for model in SWEEP_MODELS)


def test_nothing_doubled_across_runs(workload):
    """One run record per successful run and none for the failed ones; every results row belongs to one."""
    warehouse = open_warehouse(workload["warehouse"])
    succeeded = {run_id for run_id, run in workload["runs"].items() if run["state"] == "success"}
    recorded = [record["run_id"] for record in warehouse.runs()]
    assert sorted(recorded) == sorted(succeeded)
    assert len(succeeded) == 5  # the batch run, two backfill dates, two sweep runs
    totals = [warehouse.run_counts(run_id)["rows"] for run_id in workload["runs"]]
    assert sum(totals) == UNIQUE_INPUTS * len(succeeded)


def test_clearing_a_detect_task_reruns_it_and_replaces_its_rows(api, workload):
    run_id = workload["batch"]
    cleared = api.ok(
        "POST",
        f"/dags/{BATCH}/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [["detect", 0]],
            "include_downstream": True,
            "only_failed": False,
        },
    )
    assert {ti["task_id"] for ti in cleared["task_instances"]} >= {"detect", "load_results", "aggregate"}
    api.wait_for("the cleared run to start again", lambda: api.run(BATCH, run_id)["state"] != "success", 60)
    run = api.wait_finished(BATCH, [run_id], 300)[run_id]
    assert run["state"] == "success"
    _assert_run_succeeded(api, run_id)
    detect = [ti for ti in api.task_instances(BATCH, run_id) if ti["task_id"] == "detect"]
    assert [ti["try_number"] for ti in detect] == [2]
    validate = [ti for ti in api.task_instances(BATCH, run_id) if ti["task_id"] == "validate_config"]
    assert [ti["try_number"] for ti in validate] == [1]  # only detect and what follows it ran again
    _assert_one_row_per_input(workload, run_id)
