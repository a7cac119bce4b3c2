from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detection_engine import layout
from detection_pipeline.report.__main__ import main
from detection_pipeline.warehouse import open_warehouse
from tests.report.conftest import RUN_ID
from tests.report.test_trends import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def warehouse_uri(tmp_path: Path) -> str:
    return f"duckdb://{tmp_path / 'warehouse.duckdb'}"


def _record(warehouse_uri: str, *records: dict) -> None:
    warehouse = open_warehouse(warehouse_uri)
    warehouse.ensure_tables()
    for record in records:
        warehouse.write_run_record(record)


def test_run_command_reads_the_record_and_writes_beside_the_run(mixed_run, warehouse_uri, capsys):
    prefix, record = mixed_run
    _record(warehouse_uri, record)
    assert main(["run", "--warehouse", warehouse_uri, "--run-id", RUN_ID]) == 0  # prefix from output_uri
    out = capsys.readouterr().out.strip()
    assert out == layout.report_uri(prefix)
    assert "<th>listed</th><td>7</td>" in Path(out).read_text(encoding="utf-8")


def test_run_command_with_an_explicit_prefix(mixed_run, warehouse_uri, capsys):
    prefix, record = mixed_run
    _record(warehouse_uri, {**record, "output_uri": "/somewhere/else"})
    assert main(["run", "--warehouse", warehouse_uri, "--run-id", RUN_ID, "--run-prefix", prefix]) == 0
    assert Path(layout.report_uri(prefix)).exists()


def test_unknown_run_id_is_one_line(warehouse_uri, capsys):
    _record(warehouse_uri)
    assert main(["run", "--warehouse", warehouse_uri, "--run-id", "nope"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: no run record for run id 'nope' in {warehouse_uri}\n"


def test_a_malformed_warehouse_uri_is_one_line(capsys):
    assert main(["dashboard", "--warehouse", "postgres://x", "--out", "x.html"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unsupported warehouse URI 'postgres://x': expected duckdb://")
    assert err.count("\n") == 1


def test_a_missing_warehouse_is_one_line(tmp_path, capsys):
    uri = f"duckdb://{tmp_path / 'none.duckdb'}"
    assert main(["dashboard", "--warehouse", uri, "--out", str(tmp_path / "x.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read run records from {uri}: ") and err.count("\n") == 1


def test_dashboard_command_as_a_module(warehouse_uri, tmp_path):
    """The real entry point in a subprocess: python -m detection_pipeline.report dashboard ..."""
    _record(warehouse_uri, run(1, ips=10.0), run(2, ips=10.0), run(3, ips=5.0))
    out = tmp_path / "dashboard.html"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("plugins", "inference_image"))}
    done = subprocess.run(
        [sys.executable, "-m", "detection_pipeline.report", "dashboard", "--warehouse", warehouse_uri,
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    html = out.read_text(encoding="utf-8")
    assert "REGRESSION" in html and "images/s -50.0%" in html and "median of its last 2 runs" in html
