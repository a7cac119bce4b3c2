"""Running the batch DAG in-process for the reliability tests, and re-running parts of a run as Airflow would.

`run_dag` is `dag.test()`. Clearing a task or creating a backfill is done with Airflow's own code
(`SerializedDAG.clear`, `airflow backfill create`'s `_create_backfill`); what would then pick the cleared task
instances up is the scheduler, which these tests do not start. `run_to_completion` stands in for it: it is the
loop `dag.test()` runs (update the run's state, run each schedulable task instance in-process), without the
clearing of the whole run that `dag.test()` begins with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from detection_engine import layout

ROOT = Path(__file__).resolve().parents[2]
LOGICAL_DATE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the cheapest detector on CPU; reliability is model-agnostic


def tiny_conf(root: Path, input_uri: str, **overrides) -> dict:
    """A run conf that writes under `root` and runs a small random-weights detector on tiny images."""
    return {
        "input_uri": input_uri,
        "output_uri": str(root / "output"),
        "warehouse": f"duckdb:///{root / 'warehouse.duckdb'}",
        "model": MODEL,
        "weights": "none",
        "min_size": 64,
        "max_size": 96,
        "batch_size": 4,
        "score_threshold": 0.05,
        **overrides,
    }


def run_prefix(conf: dict, run_id: str) -> str:
    return layout.run_prefix(conf["output_uri"], run_id)


def run_dag(dag, conf: dict, logical_date: dt.datetime):
    """One whole run; the same logical date gives the same run id, and replaces the earlier run."""
    return dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf)


def state(run_or_ti) -> str:
    value = run_or_ti.state
    return str(getattr(value, "value", value))


# -- task instances and XCom -------------------------------------------------------------------------


def task_instances(dag_id: str, run_id: str) -> dict[tuple[str, int], tuple[str | None, int]]:
    """(task_id, map_index) -> (state, try_number) of every task instance of the run."""
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    with settings.Session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        return {
            (ti.task_id, ti.map_index): (None if ti.state is None else state(ti), ti.try_number) for ti in tis
        }


def xcoms(dag_id: str, run_id: str) -> list[tuple[str, int, str, object]]:
    """(task_id, map_index, key, value) of every XCom of the run."""
    from airflow import settings
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    with settings.Session() as session:
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
        ).all()
        return [(row.task_id, row.map_index, row.key, row.value) for row in rows]


# -- re-running parts of a run ----------------------------------------------------------------------------


def scheduler_dag(dag):
    """The serialized form of the DAG, which the scheduler (and Airflow's clear and backfill code) works on."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))


def clear_tasks(dag, run_id: str, task_ids: Iterable[str | tuple[str, int]]) -> int:
    """What `airflow tasks clear` does to the given task instances (a (task_id, map_index) pair clears one
    mapped instance): their state is reset and the run is queued again. Returns how many were cleared."""
    return scheduler_dag(dag).clear(task_ids=list(task_ids), run_id=run_id)


def run_to_completion(dag, run_id: str, timeout_s: float = 300.0) -> str:
    """Run every task instance of a queued or running run that is left to run, as the scheduler would, and
    return the run's final state. Retries wait for their retry delay, as they do under the scheduler."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task  # dag.test()'s own way of running one task instance
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    deadline = time.monotonic() + timeout_s
    with settings.Session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
        run.dag = scheduler_dag(dag)
        if run.state == DagRunState.QUEUED:  # what the scheduler does to a queued run it starts
            run.state = DagRunState.RUNNING
            session.commit()
        while run.state == DagRunState.RUNNING:
            assert time.monotonic() < deadline, f"run {run_id} still running after {timeout_s} s"
            session.expire_all()
            schedulable, _ = run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            scheduled = [
                ti
                for ti in run.get_task_instances(session=session)
                if ti.state == TaskInstanceState.SCHEDULED
            ]
            if not scheduled:
                time.sleep(0.5)  # e.g. a task waiting for its retry delay
            for ti in scheduled:
                with contextlib.suppress(Exception):  # a failed task is recorded in its state, as in dag.test
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        return state(run)


# -- output capture -------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[None]:
    """Everything the run prints, to `path`: this process's file descriptors 1 and 2 (the engine subprocesses
    and Airflow's task loggers, made per task on the current stdout) and the standard-library log records
    (the pipeline's loggers, whose handler Airflow bound to whatever stdout was when it was imported).

    Suspend pytest's own capture around it (`capturemanager.global_and_fixture_disabled()`).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as sink, path.open("a", encoding="utf-8") as records:
        handler = logging.StreamHandler(records)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            logging.getLogger().removeHandler(handler)
