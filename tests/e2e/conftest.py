"""Fixtures for running the real DAG with `dag.test()` on the embedded default."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the session's throwaway SQLite metadata DB (see tests/airflow_env.py) once."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture
def load_dag(airflow_db, monkeypatch):
    """Import the DAG file afresh under the given deployment settings (they are read at parse time)."""

    def _load(**env: str):
        for key, value in {"DETECTION_LAUNCHER": "local", **env}.items():
            monkeypatch.setenv(key, value)
        spec = importlib.util.spec_from_file_location(
            "object_detection_batch", ROOT / "dags/object_detection_batch.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.dag

    return _load
