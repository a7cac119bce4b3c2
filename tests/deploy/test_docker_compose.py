"""docker-compose.yaml cannot be started here (no Docker engine), so check what it promises."""

from __future__ import annotations

from pathlib import Path

import yaml

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


def test_airflow_services_mount_dags_and_plugins_and_use_postgres():
    services = _compose()["services"]
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        service = services[name]
        assert "./dags:/opt/airflow/dags" in service["volumes"]
        assert "./plugins:/opt/airflow/plugins" in service["volumes"]
        assert service["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")


def test_the_image_installs_the_project_requirements():
    compose = _compose()
    build = compose["services"]["airflow-scheduler"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert "COPY requirements.txt" in dockerfile and "-r /tmp/requirements.txt" in dockerfile
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
