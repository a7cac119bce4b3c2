"""Run figures from what ran: a detect task cleared and re-run well after its run finished changes the run
record's wall time, images/s, GPU hours and cost by the re-run shard's own duration only, never by the wait.

Airflow 3.3's `dag.test()` clears the whole run before it starts, so the clear and re-run are Airflow's own
`clear` plus `runs.run_to_completion` (what the scheduler would do), as in test_dag_faults.py.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from detection_engine import layout
from tests.reliability import runs
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DAY = dt.datetime(2026, 3, 9, tzinfo=dt.UTC)
DOWNSTREAM_OF_DETECT = ("load_results", "evaluate", "aggregate", "verify", "report")
GAP_S = 3.0  # time between the run's end and the re-run in which nothing runs
FIGURES = ("wall_s", "images_per_s", "shard_wall_s", "machine_hours", "gpu_hours", "estimated_cost_usd")


def _record(conf: dict, run_id: str) -> dict:
    with duckdb.connect(conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        cursor = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        columns = [c[0] for c in cursor.description]
        [row] = cursor.fetchall()
    return dict(zip(columns, row, strict=True))


def _shard_times(prefix: str, index: int) -> tuple[dt.datetime, dt.datetime, float]:
    metrics = json.loads(Path(layout.shard_metrics_uri(prefix, index)).read_text())
    return (
        dt.datetime.fromisoformat(metrics["started_at"]),
        dt.datetime.fromisoformat(metrics["finished_at"]),
        metrics["wall_s"],
    )


def test_a_cleared_detect_task_changes_the_run_figures_by_its_own_duration_only(own_dag, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (60 * i, 90, 160)).save(images / f"image-{i}.png")
    conf = runs.tiny_conf(tmp_path, str(images), shard_size=2)  # two shards: 2 images and 1
    run = runs.run_dag(own_dag, conf, DAY)
    assert runs.state(run) == "success"
    prefix = runs.run_prefix(conf, run.run_id)
    before = _record(conf, run.run_id)
    first_start, first_end, first_shard_s = _shard_times(prefix, 0)

    time.sleep(GAP_S)
    runs.clear_tasks(own_dag, run.run_id, [("detect", 0), *DOWNSTREAM_OF_DETECT])
    assert runs.run_to_completion(own_dag, run.run_id) == "success"

    assert runs.task_instances(own_dag.dag_id, run.run_id)[("detect", 0)] == ("success", 2)
    rerun_start, rerun_end, rerun_shard_s = _shard_times(prefix, 0)
    other_start, other_end, _ = _shard_times(prefix, 1)
    after = _record(conf, run.run_id)
    assert rerun_start - max(first_end, other_end) >= dt.timedelta(seconds=GAP_S), (
        "a gap with nothing running"
    )

    own_s = (rerun_end - rerun_start).total_seconds()
    assert after["wall_s"] <= before["wall_s"] + own_s + 0.01
    span_s = (max(rerun_end, other_end) - min(rerun_start, other_start)).total_seconds()
    assert after["wall_s"] <= span_s - GAP_S, "the wait before the re-run is not wall time"
    assert after["images_per_s"] == pytest.approx(after["processed"] / after["wall_s"])
    assert after["shard_wall_s"] == pytest.approx(before["shard_wall_s"] - first_shard_s + rerun_shard_s)
    assert after["machine_hours"] == pytest.approx(after["shard_wall_s"] / 3600)
    assert after["estimated_cost_usd"] == pytest.approx(
        before["estimated_cost_usd"] * after["shard_wall_s"] / before["shard_wall_s"]
    )
    assert (
        (after["processed"], after["ok"], after["shards"])
        == (before["processed"], before["ok"], 2)
        == (
            3,
            3,
            2,
        )
    )
    assert first_start < rerun_start and after["started_at"] == before["started_at"]
    assert after["finished_at"] == max(rerun_end, other_end)
    assert_exactly_once(conf["warehouse"], run.run_id, unique=3, shards=2, prefix=prefix)  # nothing doubled
