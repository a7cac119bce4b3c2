"""Fixtures shared by every test directory. Keep this file to fixtures many suites need."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.airflow_env import load_batch_dag
from tests.gcs_emulator import GcsEmulator


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the session's throwaway SQLite metadata DB (see tests/airflow_env.py) once."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture
def load_dag(airflow_db, monkeypatch):
    """The batch DAG parsed afresh under the given deployment settings (the local launcher unless given)."""

    def _load(**env: str):
        for key, value in {"DETECTION_LAUNCHER": "local", **env}.items():
            monkeypatch.setenv(key, value)
        return load_batch_dag()

    return _load


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """One gcp-storage-emulator for the session, with this process's environment pointing gcsfs at it.

    Engine subprocesses inherit the environment, so they reach it too. Tests isolate themselves with
    `gcs_bucket` (a fresh bucket each), not by wiping the emulator under other tests' feet.
    """
    with GcsEmulator.start() as emulator, pytest.MonkeyPatch.context() as patch:
        for name, value in emulator.env().items():
            patch.setenv(name, value)
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator) -> str:
    """A new empty bucket on the emulator, as "gs://name"."""
    return gcs_emulator.create_bucket()
