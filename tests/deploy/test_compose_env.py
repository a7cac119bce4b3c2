"""scripts/compose_env.py: compose's interpolation, and the one mapping from containers to this machine."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from scripts import compose_env
from scripts.compose_env import ComposeError, HostMapping, interpolate, service_environment

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = {"AIRFLOW_JWT_SECRET": "jwt-secret-for-tests", "AIRFLOW_FERNET_KEY": "fernet-key-for-tests"}


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A}", {}, ""),
        ("x$${HOSTNAME}y", {"HOSTNAME": "no"}, "x${HOSTNAME}y"),
        ("duckdb:///${P:-/opt/airflow/var}/w.duckdb", {}, "duckdb:////opt/airflow/var/w.duckdb"),
    ],
)
def test_interpolate_as_docker_compose_does(text, variables, expected):
    assert interpolate(text, variables) == expected


@pytest.mark.parametrize("text", ["${A:?set A}", "${A?set A}"])
def test_a_required_variable_that_is_missing_is_an_error(text):
    with pytest.raises(ComposeError, match="A is missing: set A"):
        interpolate(text, {})


def _mapping(tmp_path: Path) -> HostMapping:
    return HostMapping(
        state=tmp_path / "state",
        addresses={"postgres": ("127.0.0.1", 15432), "airflow-apiserver": ("127.0.0.1", 18080)},
        ports={"AIRFLOW__API__PORT": 18080},
        bind_overrides={"./var": tmp_path / "var"},
    )


def _environment(compose: dict, service: str, tmp_path: Path) -> dict[str, str]:
    return service_environment(compose, service, _mapping(tmp_path), ROOT, {"PATH": "/usr/bin"})


def _compose(**variables) -> dict:
    return compose_env.load(ROOT / "docker-compose.yaml", {**VARIABLES, **variables})


def test_the_scheduler_gets_composes_environment_with_hosts_paths_and_home_mapped(tmp_path):
    environment = _environment(_compose(), "airflow-scheduler", tmp_path)
    assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        "postgresql+psycopg2://airflow:airflow@127.0.0.1:15432/airflow"
    )
    assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    # the plugins folder is Airflow's default, AIRFLOW_HOME/plugins, as in the image: nothing is mounted there
    assert "AIRFLOW__CORE__PLUGINS_FOLDER" not in environment
    assert environment["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] == str(tmp_path / "state/volumes/airflow-logs")
    assert environment["DETECTION_WAREHOUSE"] == f"duckdb:///{tmp_path / 'var/warehouse.duckdb'}"
    assert environment["DETECTION_INPUT_URI"] == str(tmp_path / "var/demo/images")
    assert environment["AIRFLOW__API_AUTH__JWT_SECRET"] == VARIABLES["AIRFLOW_JWT_SECRET"]
    assert environment["AIRFLOW_HOME"] == str(tmp_path / "state/homes/airflow-scheduler")
    assert environment["PATH"] == "/usr/bin"
    assert environment["AIRFLOW__API__HOST"] == "127.0.0.1" and environment["AIRFLOW__API__PORT"] == "18080"


def test_each_service_has_its_own_home_and_the_same_secrets(tmp_path):
    compose = _compose()
    environments = [
        _environment(compose, name, tmp_path) for name in ("airflow-apiserver", "airflow-triggerer")
    ]
    assert environments[0]["AIRFLOW_HOME"] != environments[1]["AIRFLOW_HOME"]
    for setting in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        assert environments[0][setting] == environments[1][setting]


def test_a_setting_compose_lacks_is_not_made_up_here(tmp_path):
    compose = _compose()
    del compose["services"]["airflow-scheduler"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert "AIRFLOW__API_AUTH__JWT_SECRET" not in _environment(compose, "airflow-scheduler", tmp_path)


def _with_setting(value: str) -> dict:
    compose = copy.deepcopy(_compose())
    compose["services"]["airflow-scheduler"]["environment"]["EXTRA"] = value
    return compose


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://airflow-apiserver:9090/execution/", "uses port 9090, but airflow-apiserver listens on 8080"),
        ("http://airflow-triggerer:8794/", "'airflow-triggerer', which is not run here"),
        ("/opt/airflow/secrets/key.json", "a container path no volume of it mounts"),
    ],
)
def test_what_the_mapping_does_not_know_is_an_error(tmp_path, value, message):
    with pytest.raises(ComposeError, match=message):
        _environment(_with_setting(value), "airflow-scheduler", tmp_path)


def test_urls_to_other_hosts_and_plain_values_pass_through(tmp_path):
    for value in ("https://storage.googleapis.com/x", "gs://bucket/prefix", "true", ""):
        assert _environment(_with_setting(value), "airflow-scheduler", tmp_path)["EXTRA"] == value


def test_the_environment_must_be_a_mapping(tmp_path):
    compose = yaml.safe_load("services: {s: {environment: [A=1]}}")
    with pytest.raises(ComposeError, match="must be a mapping"):
        _environment(compose, "s", tmp_path)
