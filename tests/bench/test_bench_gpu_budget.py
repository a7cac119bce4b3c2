"""bench_gpu on a spent time budget (as a short GPU lease ends): the fp32 reference row still runs, every
other row is skipped and listed, the JSON report is whole, and its tables print from the file alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_spent_budget_keeps_the_reference_row_and_lists_what_it_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--allow-cpu", "--no-compile"]
    ran = subprocess.run(
        [*command, "--budget-s", "0", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert [(r["precision"], r["batch"]) for r in report["grid"]] == [("fp32", "auto")]
    assert report["shards"] == [] and report["fast_paths"] == [] and report["decode"] is None
    skipped = report["skipped"]
    assert "decode comparison" in skipped and "shard on cpu" in skipped
    assert any(s.startswith("grid bf16") for s in skipped) and any(s.startswith("fast path") for s in skipped)
    assert report["verdict"]["images_per_s"] is None  # no shard ran: the grid's figure is not end to end

    tables = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--tables-from", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert tables == ran.stdout
    assert "Skipped for the time budget: grid fp32 batch " in tables
    assert "not measured (no shard ran)" in tables
