"""docker-compose.yaml cannot be started here (no Docker engine), so check what it promises."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from dotenv import dotenv_values

from scripts import compose_env
from scripts.compose_env import ComposeError

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_has_airflow3_services_and_postgres():
    services = _compose()["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres", "airflow-init"} <= set(services)
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["postgres"]["image"].startswith("postgres:")


def test_airflow_services_mount_dags_and_use_postgres_and_the_installed_package():
    services = _compose()["services"]
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        service = services[name]
        assert "./dags:/opt/airflow/dags" in service["volumes"]
        # detection_pipeline is installed in the image: no second copy of it on the path from a mount
        assert not any(volume.startswith("./plugins:") for volume in service["volumes"])
        assert service["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")


def test_the_image_installs_the_project_requirements():
    compose = _compose()
    build = compose["services"]["airflow-scheduler"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert "COPY requirements.txt" in dockerfile and "-r /tmp/requirements.txt" in dockerfile
    assert (
        "COPY plugins /tmp/plugins" in dockerfile
        and "--no-deps /tmp/inference_image /tmp/plugins" in dockerfile
    )
    airflow_pin = next(
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    )
    assert f"apache/airflow:{airflow_pin.split('==')[1]}-python3.11" in dockerfile


def test_the_embedded_default_in_compose_has_the_engine_installed():
    compose = _compose()
    environment = compose["x-airflow-common"]["environment"]
    assert environment["DETECTION_LAUNCHER"].endswith(":-local}")
    build = compose["services"]["airflow-scheduler"]["build"]
    assert build["args"]["WITH_ENGINE"].endswith(":-true}")
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert "-r /tmp/inference_image/requirements.txt" in dockerfile


def test_requirements_are_exact_pins():
    for name in ("requirements.txt", "requirements-dev.txt", "inference_image/requirements.txt"):
        lines = [
            line.strip()
            for line in (ROOT / name).read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))
        ]
        assert lines, name
        assert all("==" in line for line in lines), (name, [line for line in lines if "==" not in line])
    engine = (ROOT / "inference_image/requirements.txt").read_text()
    assert "torch==2.14.1" in engine and "torchvision==0.29.1" in engine


# -- secrets: one JWT secret and one Fernet key for every Airflow service, from .env --------------------------

SECRETS = {
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
}


def _env_example() -> dict[str, str]:
    return {k: v for k, v in dotenv_values(ROOT / ".env.example").items() if v is not None}


def test_every_airflow_service_takes_the_same_secrets_from_env():
    services = _compose()["services"]
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        environment = services[name]["environment"]
        for setting, variable in SECRETS.items():
            assert environment[setting].startswith(f"${{{variable}:?"), (name, setting)


def test_compose_refuses_to_start_without_the_secrets():
    with pytest.raises(ComposeError, match="AIRFLOW_JWT_SECRET"):
        compose_env.load(ROOT / "docker-compose.yaml", {"AIRFLOW_FERNET_KEY": Fernet.generate_key().decode()})


def test_env_example_documents_each_secret_and_its_placeholder_works():
    example = _env_example()
    text = (ROOT / ".env.example").read_text()
    assert set(SECRETS.values()) <= set(example)
    assert "secrets.token_urlsafe" in text and "Fernet.generate_key()" in text
    Fernet(example["AIRFLOW_FERNET_KEY"].encode())  # a valid key, so AIRFLOW_DEV_MODE=true can use it
    assert example["AIRFLOW_DEV_MODE"] == "false"


def _init_check(variables: dict[str, str]) -> subprocess.CompletedProcess:
    """airflow-init's own script, up to where it would touch the database: its placeholder check."""
    compose = compose_env.load(ROOT / "docker-compose.yaml", variables)
    init = compose["services"]["airflow-init"]
    script = init["command"][1]
    check = script.split("\nmkdir", 1)[0]
    assert check != script and "airflow db migrate" not in check
    environment = {k: str(v) for k, v in init["environment"].items()}
    return subprocess.run(
        ["bash", "-c", check], env=environment, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("placeholder", sorted(SECRETS.values()))
def test_airflow_init_refuses_a_placeholder_unless_in_dev_mode(placeholder):
    generated = {
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
    }
    with_placeholder = {**generated, placeholder: _env_example()[placeholder]}
    refused = _init_check(with_placeholder)
    assert refused.returncode == 1 and placeholder in refused.stderr, refused
    assert _init_check({**with_placeholder, "AIRFLOW_DEV_MODE": "true"}).returncode == 0
    assert _init_check(generated).returncode == 0
