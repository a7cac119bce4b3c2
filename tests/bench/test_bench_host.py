"""bench_host runs the engine's whole shard with an instant model: every image a row, the table printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_bench_host_reports_the_host_cost_of_a_shard(tmp_path):
    out = tmp_path / "host.json"
    args = ["--images", "8", "--runs", "1", "--batch-size", "4", "--decode-workers", "1", "--out", str(out)]
    ran = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_host.py"), *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["images"] == 8 and row["decode_ms_per_image"] > 0 and row["cpu_ms_per_image"] > 0
    assert "| decode threads | images | images/s |" in ran.stdout
