"""Faults around the DAG: a load run twice, a task cleared and re-run, a backfill over dates that already ran,
and the warehouse unavailable for one attempt. Each ends with the exactly-once check.

A whole run re-run under the same run id is tests/e2e/test_dag_end_to_end.py::test_whole_dag_on_the_embedded_default
(its second `dag.test`); it is not repeated here.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from detection_engine import layout
from detection_pipeline.warehouse import open_warehouse
from tests.reliability import runs
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = pytest.mark.slow

CORPUS_SHARDS = 2
DOWNSTREAM_OF_DETECT = ("load_results", "evaluate", "aggregate", "verify", "report")


def _images(folder: Path, count: int, size=(64, 48)) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i, 90, 160)).save(folder / f"image-{i}.png")


def _warehouse_path(conf: dict) -> str:
    return conf["warehouse"].removeprefix("duckdb://")


def _run_records(conf: dict) -> list[tuple]:
    with duckdb.connect(_warehouse_path(conf), read_only=True) as con:
        return con.execute(
            "SELECT run_id, run_type, processed, recorded_at FROM runs ORDER BY run_id"
        ).fetchall()


# -- the load step run twice ---------------------------------------------------------------------------


def test_loading_the_same_shard_files_twice_leaves_the_same_rows(corpus_run):
    warehouse = open_warehouse(corpus_run.conf["warehouse"])
    shards = range(CORPUS_SHARDS)
    files = (
        [layout.shard_results_uri(corpus_run.prefix, i) for i in shards],
        [layout.shard_metrics_uri(corpus_run.prefix, i) for i in shards],
    )
    before = warehouse.run_counts(corpus_run.run_id)

    first = warehouse.load_run(corpus_run.run_id, runs.LOGICAL_DATE.date(), *files)
    second = warehouse.load_run(corpus_run.run_id, runs.LOGICAL_DATE.date(), *files)

    assert first == second
    assert first.results_rows == len(corpus_run.expected) and first.shard_metrics_rows == CORPUS_SHARDS
    assert warehouse.run_counts(corpus_run.run_id) == before
    assert_exactly_once(
        corpus_run.conf["warehouse"],
        corpus_run.run_id,
        unique=len(corpus_run.expected),
        shards=CORPUS_SHARDS,
        prefix=corpus_run.prefix,
    )


# -- a task cleared and re-run ---------------------------------------------------------------------------


def test_a_cleared_detect_shard_reruns_with_its_downstream_and_replaces_its_rows(corpus_run, batch_dag):
    """`airflow tasks clear -t detect --map-index 1 --downstream`, then the run resumes as under a scheduler."""
    shard_file = Path(layout.shard_results_uri(corpus_run.prefix, 1))
    written = shard_file.stat().st_mtime_ns
    [(_, _, _, recorded_before)] = [r for r in _run_records(corpus_run.conf) if r[0] == corpus_run.run_id]

    cleared = runs.clear_tasks(batch_dag, corpus_run.run_id, [("detect", 1), *DOWNSTREAM_OF_DETECT])
    final_state = runs.run_to_completion(batch_dag, corpus_run.run_id)

    assert cleared == 1 + len(DOWNSTREAM_OF_DETECT)
    assert final_state == "success"
    tries = runs.task_instances(batch_dag.dag_id, corpus_run.run_id)
    assert tries[("detect", 1)] == ("success", 2), "the cleared shard ran again"
    assert tries[("detect", 0)] == ("success", 1), "the other shard was left alone"
    assert all(tries[(task, -1)] == ("success", 2) for task in DOWNSTREAM_OF_DETECT), tries
    assert shard_file.stat().st_mtime_ns > written, "shard 1's results were written again"
    [(_, _, processed, recorded_after)] = [
        r for r in _run_records(corpus_run.conf) if r[0] == corpus_run.run_id
    ]
    assert recorded_after > recorded_before and processed == len(corpus_run.expected), (
        "the record was replaced"
    )
    assert_exactly_once(
        corpus_run.conf["warehouse"],
        corpus_run.run_id,
        unique=len(corpus_run.expected),
        shards=CORPUS_SHARDS,
        prefix=corpus_run.prefix,
    )


# -- a backfill over dates that already ran ------------------------------------------------------------------


def test_a_backfill_over_dates_that_already_ran_reuses_their_runs_and_replaces_their_rows(
    batch_dag, tmp_path
):
    """Two daily runs, then `airflow backfill create --reprocess-behavior completed` over both dates.

    The backfill is created by Airflow's own command, which clears each finished run and hands it to the
    scheduler under its old run id; `runs.run_to_completion` plays the scheduler.
    """
    days = [dt.datetime(2026, 2, 10, tzinfo=dt.UTC), dt.datetime(2026, 2, 11, tzinfo=dt.UTC)]
    images = {days[0]: 2, days[1]: 1}
    for day, count in images.items():
        _images(tmp_path / "images" / day.date().isoformat(), count)
    conf = runs.tiny_conf(tmp_path, str(tmp_path / "images" / "{ds}"))
    first = {day: runs.run_dag(batch_dag, conf, day) for day in days}
    assert [runs.state(run) for run in first.values()] == ["success", "success"]

    backfill_runs = _backfill(batch_dag.dag_id, days[0], days[-1])

    assert sorted(backfill_runs) == sorted(run.run_id for run in first.values()), "the same runs, no new ones"
    assert [runs.run_to_completion(batch_dag, run_id) for run_id in sorted(backfill_runs)] == ["success"] * 2
    records = _run_records(conf)
    assert [(run_id, run_type, processed) for run_id, run_type, processed, _ in records] == [
        (first[day].run_id, "backfill", images[day]) for day in days
    ], "one record per logical date, replaced by the backfill"
    for day, run in first.items():
        assert_exactly_once(
            conf["warehouse"],
            run.run_id,
            unique=images[day],
            shards=1,
            prefix=runs.run_prefix(conf, run.run_id),
        )
    with duckdb.connect(_warehouse_path(conf), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == sum(images.values())


def _backfill(dag_id: str, first: dt.datetime, last: dt.datetime) -> list[str]:
    """`airflow backfill create` for the dates, reprocessing completed runs; returns the backfill's run ids."""
    from airflow import settings
    from airflow.cli import cli_parser
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    args = cli_parser.get_parser().parse_args(
        ["backfill", "create", "--dag-id", dag_id, "--from-date", first.isoformat(), "--to-date", last.isoformat(),
         "--reprocess-behavior", "completed", "--max-active-runs", "1"]
    )  # fmt: skip
    args.func(args)
    with settings.Session() as session:
        backfilled = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.backfill_id.is_not(None))
        ).all()
        return [run.run_id for run in backfilled if first <= run.logical_date <= last]


# -- the warehouse unavailable for one attempt --------------------------------------------------------------

# Holds a DuckDB file's write lock, as another process loading into the same file would, until stdin closes.
_HOLD_LOCK = (
    "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
)


def test_the_load_task_retries_through_a_warehouse_locked_by_another_process(
    batch_dag, tmp_path, monkeypatch
):
    """The warehouse is locked during load_results' first attempt: that attempt fails after the warehouse's own
    lock wait (DETECTION_WAREHOUSE_LOCK_TIMEOUT_S, 2 s here), Airflow retries after DETECTION_RETRY_DELAY_S,
    and the retry loads."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    day = dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    _images(tmp_path / "images", 2)
    conf = runs.tiny_conf(tmp_path, str(tmp_path / "images"))
    run_id = DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=day, run_after=day)
    monkeypatch.setenv("DETECTION_WAREHOUSE_LOCK_TIMEOUT_S", "2")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, _warehouse_path(conf)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    released = threading.Event()

    def release_once_the_load_waits_for_its_retry() -> None:
        while not released.wait(0.2):
            load = runs.task_instances(batch_dag.dag_id, run_id).get(("load_results", -1))
            if load and load[0] == "up_for_retry":
                holder.stdin.close()
                holder.wait(timeout=30)
                released.set()

    watcher = threading.Thread(target=release_once_the_load_waits_for_its_retry, daemon=True)
    watcher.start()
    try:
        run = runs.run_dag(batch_dag, conf, day)
    finally:
        released.set()
        watcher.join(timeout=10)
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    assert runs.state(run) == "success"
    assert runs.task_instances(batch_dag.dag_id, run_id)[("load_results", -1)] == ("success", 2)
    assert holder.returncode == 0, "the lock was held until the first attempt had failed"
    assert_exactly_once(conf["warehouse"], run_id, unique=2, shards=1, prefix=runs.run_prefix(conf, run_id))
