"""A pytest plugin (loaded by `-p tests.airflow_env` in pyproject) that gives the test session its own Airflow.

It runs before any test module imports Airflow, which reads AIRFLOW_HOME and its config at import: every test
session gets a throwaway home with a SQLite metadata DB, no example DAGs, and this repository's dags/ and
plugins/ folders. Nothing the user has configured for Airflow is read or touched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_HOME = tempfile.mkdtemp(prefix="detection-tests-airflow-")
os.environ.update(
    {
        "AIRFLOW_HOME": _HOME,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
)
_TEST_SWITCHES = {"DETECTION_SKIP_BROWSER"}  # switches for the test run itself, not deployment settings
for key in [k for k in os.environ if k.startswith("DETECTION_") and k not in _TEST_SWITCHES]:
    del os.environ[key]  # deployment settings must come from each test, not from the developer's shell
