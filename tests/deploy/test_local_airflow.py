"""scripts/local_airflow.py when it must not start: what it started is stopped, and the error says why."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from dotenv import dotenv_values

from scripts.local_airflow import Deployment, ServiceError

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state():
    path = Path(tempfile.mkdtemp(prefix="detection-local-airflow-"))
    path.chmod(0o755)  # PostgreSQL runs as the postgres user and must reach its folder
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_placeholder_secrets_stop_the_deployment_at_airflow_init(state):
    placeholders = dotenv_values(ROOT / ".env.example")  # AIRFLOW_DEV_MODE=false in it
    deployment = Deployment(state=state, variables=placeholders, var_dir=state / "var")
    with pytest.raises(
        ServiceError, match="placeholder from .env.example in: AIRFLOW_JWT_SECRET AIRFLOW_FERNET_KEY;"
    ):
        with deployment:
            pytest.fail("started with placeholder secrets")
    assert deployment.processes == {}  # no service was started
    assert not (deployment.postgres.data_dir / "postmaster.pid").exists()  # and PostgreSQL was stopped
