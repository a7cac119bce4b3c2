"""Every DAG imports cleanly, cheaply, and with the owners, retries and params the team relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "object_detection_batch" in dagbag.dags


def test_dag_reads_like_the_pipeline(dagbag):
    dag = dagbag.dags["object_detection_batch"]
    order = [t.task_id for t in dag.topological_sort()]
    steps = [
        "validate_config",
        "wait_for_input",
        "build_manifest",
        "plan_shards",
        "detect",
        "load_results",
        "aggregate",
        "verify",
        "report",
    ]
    assert [s for s in order if s in steps] == steps
    assert dag.tags and dag.owner == "ml-platform"
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id


def test_every_run_option_is_a_param_with_a_schema(dagbag):
    from detection_pipeline.config import RunConfig

    dag = dagbag.dags["object_detection_batch"]
    fields = set(RunConfig.__dataclass_fields__)
    assert set(dag.params.keys()) == fields
    for name in fields:
        assert dag.params.get_param(name).schema.get("type"), name


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_parse_is_fast_and_touches_no_network_nor_heavy_modules(path):
    """Parse in a fresh interpreter with sockets disabled, and check torch/pyarrow-heavy work stays out."""
    probe = f"""
import socket, sys, time
def _no_network(*a, **k):
    raise RuntimeError("network access at DAG parse time")
socket.socket.connect = _no_network
socket.create_connection = _no_network
sys.path[:0] = [{str(ROOT / "plugins")!r}, {str(ROOT / "inference_image")!r}]
import airflow.sdk  # Airflow itself is not what we are timing
start = time.perf_counter()
import runpy
runpy.run_path({str(path)!r})
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("torch", "torchvision", "duckdb", "google.cloud.bigquery", "kubernetes", "plotly") if m in sys.modules)
print(f"{{elapsed:.3f}} {{','.join(heavy)}}")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    elapsed, _, heavy = out.strip().splitlines()[-1].partition(" ")
    assert heavy == "", f"heavy modules imported at parse time: {heavy}"
    assert float(elapsed) < 1.0, f"{path.name} took {elapsed}s to parse"
