"""A shard pod reclaimed mid-shard (spot), then its detect task cleared: the re-run resumes from the parts the
stopped attempt committed, and the run still holds one row per input, with the preemption in its record.

The reclaimed pod is the shard's real engine command (the `launch_kwargs` XCom the DAG hands to `detect`),
sent SIGTERM after two images, as Kubernetes does before it takes a spot node back. Then
`airflow tasks clear -t detect --map-index 1 --downstream` and the run resumes as under a scheduler.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from detection_engine import layout
from tests.reliability import runs
from tests.reliability.exactly_once import assert_exactly_once

pytestmark = pytest.mark.slow

SHARD = 1
DOWNSTREAM_OF_DETECT = ("load_results", "evaluate", "aggregate", "verify", "report")
PREEMPTED = 5  # detection_engine.cli.EXIT_PREEMPTED


def _shard_arguments(dag_id: str, run_id: str) -> list[str]:
    [planned] = [
        value
        for task_id, _, key, value in runs.xcoms(dag_id, run_id)
        if task_id == "launch_kwargs" and key == "return_value"
    ]
    planned = json.loads(planned) if isinstance(planned, str) else planned
    [kwargs] = [kw for kw in planned if int(kw["labels"]["shard"]) == SHARD]
    return kwargs["arguments"]


def _reclaimed_pod(arguments: list[str], summary: Path) -> int:
    """The shard's engine, committing every image, sent SIGTERM once two images are done."""
    command = [
        sys.executable,
        "-m",
        "detection_engine",
        *arguments,
        "--commit-every=1",
        f"--summary-path={summary}",
        "--log-interval-s=0.000001",
    ]
    env = {**os.environ, "PYTHONPATH": str(runs.ROOT / "inference_image")}
    with subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as p:
        for line in p.stderr:
            if re.search(r": 2/\d+ images", line):
                p.send_signal(signal.SIGTERM)
                break
        for _ in p.stderr:
            pass
        return p.wait(timeout=120)


def test_a_preempted_shard_resumes_from_its_parts_when_its_detect_task_is_cleared(
    corpus_run, batch_dag, tmp_path
):
    parts = Path(layout.shard_parts_prefix(corpus_run.prefix, SHARD))
    stopped = _reclaimed_pod(_shard_arguments(batch_dag.dag_id, corpus_run.run_id), tmp_path / "s.json")
    committed = [p for p in parts.iterdir() if layout.PART_NAME.fullmatch(p.name)]
    assert stopped == PREEMPTED and committed, (
        "the reclaimed pod stopped cleanly and kept its finished images"
    )

    runs.clear_tasks(batch_dag, corpus_run.run_id, [("detect", SHARD), *DOWNSTREAM_OF_DETECT])
    assert runs.run_to_completion(batch_dag, corpus_run.run_id) == "success"

    metrics = json.loads(Path(layout.shard_metrics_uri(corpus_run.prefix, SHARD)).read_text())
    assert metrics["resumed_images"] >= 2 and metrics["attempt"] == 2 and metrics["preemptions"] == 1
    assert not [p for p in parts.rglob("*") if p.is_file()], "no part is left once the shard is written"
    with duckdb.connect(corpus_run.conf["warehouse"].removeprefix("duckdb://"), read_only=True) as con:
        [(preemptions, resumed, redone_s)] = con.execute(
            "SELECT preemptions, resumed_images, redone_s FROM runs WHERE run_id = ?", [corpus_run.run_id]
        ).fetchall()
    assert (preemptions, resumed) == (1, metrics["resumed_images"]) and redone_s > 0
    assert_exactly_once(
        corpus_run.conf["warehouse"],
        corpus_run.run_id,
        unique=len(corpus_run.expected),
        shards=2,
        prefix=corpus_run.prefix,
    )
