"""The wait_for_input sensor in the real DAG: a run without its input fails at once unless it is scheduled,
and a scheduled run waits (reschedule mode) for its day's folder, then runs on it."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from PIL import Image

from tests.airflow_env import load_batch_dag
from tests.reliability import runs
from tests.reliability.conftest import SETTINGS_ENV
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = pytest.mark.slow

DAY = dt.datetime(2026, 3, 7, tzinfo=dt.UTC)
SCHEDULED_DAY = dt.datetime(2026, 3, 17, tzinfo=dt.UTC)  # one run per logical date in the shared DB


def test_a_manual_run_whose_input_is_missing_fails_at_the_sensor_once_and_writes_nothing(
    batch_dag, tmp_path, capfd
):
    conf = runs.tiny_conf(tmp_path, str(tmp_path / "incoming" / "{ds}"))
    run = runs.run_dag(batch_dag, conf, DAY)

    assert runs.state(run) == "failed"
    tasks = runs.task_instances(batch_dag.dag_id, run.run_id)
    assert tasks.pop(("validate_config", -1)) == ("success", 1)
    assert tasks.pop(("wait_for_input", -1)) == ("failed", 1), "failed at once, without retries"
    assert {state for state, _ in tasks.values()} <= {"upstream_failed", None}, "nothing else ran"
    assert "2026-03-07 does not exist; only scheduled runs wait" in capfd.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output, no warehouse"


def test_a_scheduled_run_waits_for_its_days_input_and_then_runs_on_it(airflow_db, tmp_path, monkeypatch):
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    for name, value in {**SETTINGS_ENV, "DETECTION_INPUT_POKE_INTERVAL_S": "1"}.items():
        monkeypatch.setenv(name, value)
    dag = load_batch_dag()
    incoming = tmp_path / "incoming"
    conf = runs.tiny_conf(tmp_path, str(incoming / "{ds}"))
    run_id = f"scheduled__{SCHEDULED_DAY.isoformat()}"
    # dag.test() stores the DAG's serialized version, which creating a run needs; this manual run (of the day
    # before, whose input never lands) fails at the sensor in a second.
    assert runs.state(runs.run_dag(dag, conf, SCHEDULED_DAY - dt.timedelta(days=1))) == "failed"
    runs.scheduler_dag(dag).create_dagrun(
        run_id=run_id,
        logical_date=SCHEDULED_DAY,
        data_interval=(SCHEDULED_DAY - dt.timedelta(days=1), SCHEDULED_DAY),
        run_after=SCHEDULED_DAY,
        conf=conf,
        run_type=DagRunType.SCHEDULED,
        state=DagRunState.QUEUED,
        triggered_by=None,
    )

    def land_after_a_few_looks() -> None:
        time.sleep(3)
        day = incoming / "2026-03-17.partial"
        day.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 48), (60 * i, 90, 160)).save(day / f"image-{i}.png")
        day.rename(incoming / "2026-03-17")  # the day's folder appears whole

    lander = threading.Thread(target=land_after_a_few_looks, daemon=True)
    lander.start()
    assert runs.run_to_completion(dag, run_id, timeout_s=240) == "success"
    lander.join(timeout=10)

    assert runs.task_instances(dag.dag_id, run_id)[("wait_for_input", -1)][0] == "success"
    assert _reschedules(dag.dag_id, run_id, "wait_for_input") >= 1, "it waited by rescheduling, not failing"
    assert_exactly_once(conf["warehouse"], run_id, unique=2, shards=1, prefix=runs.run_prefix(conf, run_id))


def _reschedules(dag_id: str, run_id: str, task_id: str) -> int:
    """How often Airflow rescheduled the task instance (a sensor in reschedule mode that looked too early)."""
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskreschedule import TaskReschedule
    from sqlalchemy import func, select

    with settings.Session() as session:
        return session.scalar(
            select(func.count())
            .select_from(TaskReschedule)
            .join(TaskInstance, TaskInstance.id == TaskReschedule.ti_id)
            .where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        )
