"""A pytest plugin (loaded by `-p tests.airflow_env` in pyproject) that gives the test session its own Airflow.

It runs before any test module imports Airflow, which reads AIRFLOW_HOME and its config at import: every test
session gets a throwaway home with a SQLite metadata DB, no example DAGs, and this repository's dags/ folder
(detection_pipeline comes from pytest's pythonpath, this checkout's plugins/, ahead of any installed copy).
Nothing the user has configured for Airflow is read or touched. `load_batch_dag` parses the batch DAG in that
Airflow, for the suites that run it with `dag.test()` (fixtures in tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
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
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
)
_TEST_SWITCHES = {"DETECTION_SKIP_BROWSER"}  # switches for the test run itself, not deployment settings
for key in [k for k in os.environ if k.startswith("DETECTION_") and k not in _TEST_SWITCHES]:
    del os.environ[key]  # deployment settings must come from each test, not from the developer's shell


def load_batch_dag():
    """Import dags/object_detection_batch.py afresh: deployment settings are read when it is parsed."""
    spec = importlib.util.spec_from_file_location(
        "object_detection_batch", ROOT / "dags/object_detection_batch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag
