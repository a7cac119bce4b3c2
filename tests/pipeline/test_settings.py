"""Deployment settings: defaults for the embedded default, every variable read, every bad value named."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from detection_pipeline.settings import REPO_ROOT, Settings, SettingsError, load_settings


def test_defaults_run_the_embedded_default_from_this_repository():
    settings = load_settings({})

    var = REPO_ROOT / "var"
    assert settings.launcher == "local"
    assert settings.input_uri == str(var / "demo" / "images")
    assert settings.output_uri == str(var / "output")
    assert settings.warehouse == f"duckdb://{var / 'warehouse.duckdb'}"
    assert settings.warehouse.startswith("duckdb:///")
    assert settings.image == "detection-engine:latest"
    assert settings.namespace == "default"
    assert settings.service_account_name is None
    assert settings.max_active_pods == 8
    assert settings.kubernetes_conn_id == "kubernetes_default"
    assert settings.gcp_conn_id == "google_cloud_default"
    assert settings.schedule == "@daily"
    assert settings.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert (settings.pod_cpu_request, settings.pod_memory_request) == ("4", "16Gi")
    assert (settings.input_poke_interval_s, settings.input_timeout_s) == (300, 43200)
    assert (settings.warehouse_lock_timeout_s, settings.sweep_poll_s) == (300, 10)


def test_every_variable_is_read():
    env = {
        "DETECTION_LAUNCHER": "kubernetes",
        "DETECTION_INPUT_URI": "gs://images/incoming/{ds}/",
        "DETECTION_OUTPUT_URI": "gs://detections/runs/",
        "DETECTION_WAREHOUSE": "bigquery://my-project/detection?location=EU",
        "DETECTION_IMAGE": "europe-docker.pkg.dev/my-project/repo/detection-engine:1.2.3",
        "DETECTION_NAMESPACE": "detection",
        "DETECTION_SERVICE_ACCOUNT": "detection-engine",
        "DETECTION_GPU_TYPE": "nvidia-tesla-t4",
        "DETECTION_MACHINE_TYPE": "n1-standard-8",
        "DETECTION_MAX_ACTIVE_PODS": "32",
        "DETECTION_MAX_ACTIVE_RUNS": "3",
        "DETECTION_KUBERNETES_CONN_ID": "gke_prod",
        "DETECTION_GCP_CONN_ID": "gcp.prod",
        "DETECTION_SCHEDULE": "0 3 * * 1-5",
        "DETECTION_START_DATE": "2026-11-01",
        "DETECTION_POD_CPU": "7500m",
        "DETECTION_POD_MEMORY": "30Gi",
        "DETECTION_POD_STARTUP_TIMEOUT_S": "1800",
        "DETECTION_RETRY_DELAY_S": "15",
        "DETECTION_INPUT_POKE_INTERVAL_S": "30",
        "DETECTION_INPUT_TIMEOUT_S": "3600",
        "DETECTION_WAREHOUSE_LOCK_TIMEOUT_S": "0",
        "DETECTION_SWEEP_POLL_S": "2",
    }

    settings = load_settings(env)

    assert settings == Settings(
        launcher="kubernetes",
        input_uri="gs://images/incoming/{ds}",  # prefixes lose their trailing '/'
        output_uri="gs://detections/runs",
        warehouse="bigquery://my-project/detection?location=EU",
        image="europe-docker.pkg.dev/my-project/repo/detection-engine:1.2.3",
        namespace="detection",
        service_account_name="detection-engine",
        gpu_type="nvidia-tesla-t4",
        machine_type="n1-standard-8",
        max_active_pods=32,
        max_active_runs=3,
        kubernetes_conn_id="gke_prod",
        gcp_conn_id="gcp.prod",
        schedule="0 3 * * 1-5",
        start_date=datetime(2026, 11, 1, tzinfo=UTC),
        pod_cpu_request="7500m",
        pod_memory_request="30Gi",
        pod_startup_timeout_s=1800,
        retry_delay_s=15,
        input_poke_interval_s=30,
        input_timeout_s=3600,
        warehouse_lock_timeout_s=0,
        sweep_poll_s=2,
    )


@pytest.mark.parametrize("value", ["none", "None", "NONE"])
def test_schedule_none_means_manual_runs_only(value):
    assert load_settings({"DETECTION_SCHEDULE": value}).schedule is None


def test_blank_values_fall_back_to_defaults_and_values_are_stripped():
    settings = load_settings({"DETECTION_LAUNCHER": "  ", "DETECTION_NAMESPACE": " detection\n"})

    assert settings.launcher == "local"
    assert settings.namespace == "detection"


def test_local_uris_are_canonical():
    settings = load_settings(
        {"DETECTION_INPUT_URI": "file:///data//images/", "DETECTION_OUTPUT_URI": "/data/out/"}
    )

    assert (settings.input_uri, settings.output_uri) == ("/data/images", "/data/out")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DETECTION_LAUNCHER", "docker", "must be one of local, kubernetes"),
        ("DETECTION_INPUT_URI", "s3://bucket/images", "scheme 's3' is not supported"),
        ("DETECTION_INPUT_URI", "images/today", "relative path"),
        ("DETECTION_INPUT_URI", "gs://bucket/{date}/", "unknown placeholder"),
        ("DETECTION_OUTPUT_URI", "https://example.com/out", "http(s) is allowed only for input_uri"),
        ("DETECTION_OUTPUT_URI", "/data/../etc", "'..' segment"),
        ("DETECTION_WAREHOUSE", "duckdb://relative.duckdb", "expected duckdb:///"),
        ("DETECTION_WAREHOUSE", "bigquery://p/d;DROP TABLE x", "expected bigquery://"),
        ("DETECTION_WAREHOUSE", "postgres://host/db", "expected duckdb:///"),
        ("DETECTION_IMAGE", "Detection Engine", "not a container image reference"),
        ("DETECTION_NAMESPACE", "Detection_NS", "RFC 1123"),
        ("DETECTION_SERVICE_ACCOUNT", "Bad Account", "service account name"),
        ("DETECTION_GPU_TYPE", "NVIDIA L4", "RFC 1123"),
        ("DETECTION_MACHINE_TYPE", "g2_standard_8", "RFC 1123"),
        ("DETECTION_MAX_ACTIVE_PODS", "0", "integer from 1 to 1024"),
        ("DETECTION_MAX_ACTIVE_PODS", "eight", "integer from 1 to 1024"),
        ("DETECTION_MAX_ACTIVE_PODS", "2000", "integer from 1 to 1024"),
        ("DETECTION_MAX_ACTIVE_RUNS", "-1", "integer from 1 to 64"),
        ("DETECTION_KUBERNETES_CONN_ID", "my conn", "not an Airflow connection id"),
        ("DETECTION_GCP_CONN_ID", "gcp;rm", "not an Airflow connection id"),
        ("DETECTION_SCHEDULE", "every day", "neither a preset"),
        ("DETECTION_START_DATE", "21/11/2026", "must be a date like"),
        ("DETECTION_POD_CPU", "four", "not a Kubernetes quantity"),
        ("DETECTION_POD_MEMORY", "16 GB", "not a Kubernetes quantity"),
        ("DETECTION_POD_STARTUP_TIMEOUT_S", "5", "integer from 30 to 86400"),
        ("DETECTION_RETRY_DELAY_S", "0", "integer from 1 to 3600"),
        ("DETECTION_INPUT_POKE_INTERVAL_S", "0", "integer from 1 to 86400"),
        ("DETECTION_INPUT_TIMEOUT_S", "1w", "integer from 1 to 604800"),
        ("DETECTION_WAREHOUSE_LOCK_TIMEOUT_S", "-5", "integer from 0 to 86400"),
        ("DETECTION_SWEEP_POLL_S", "0", "integer from 1 to 3600"),
        ("DETECTION_INPUT_ASSET", "landed images", "not an asset URI"),
        ("DETECTION_INPUT_ASSET", "airflow://landed", "reserved"),
        ("DETECTION_BENCHMARK_MANIFEST", "gs://bench/images", "not a manifest file"),
        ("DETECTION_BENCHMARK_MANIFEST", "gs://bench/{ds}.txt", "date placeholders"),
        ("DETECTION_BENCHMARK_MANIFEST", "bench/list.txt", "relative path"),
        ("DETECTION_BENCHMARK_SCHEDULE", "nightly", "neither a preset"),
    ],
)
def test_an_invalid_value_names_its_variable(variable, value, message):
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})

    assert str(caught.value).startswith(f"{variable}: ")
    assert message in str(caught.value)


def test_output_inside_the_input_prefix_is_refused():
    env = {"DETECTION_INPUT_URI": "gs://bucket/images", "DETECTION_OUTPUT_URI": "gs://bucket/images/out"}

    with pytest.raises(SettingsError, match="DETECTION_OUTPUT_URI: .* inside DETECTION_INPUT_URI"):
        load_settings(env)


def test_a_sibling_prefix_with_the_same_start_is_not_inside():
    env = {"DETECTION_INPUT_URI": "gs://bucket/images", "DETECTION_OUTPUT_URI": "gs://bucket/images-out"}

    assert load_settings(env).output_uri == "gs://bucket/images-out"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_settings({}).launcher = "kubernetes"  # type: ignore[misc]


def test_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("DETECTION_MAX_ACTIVE_PODS", "3")

    assert load_settings().max_active_pods == 3


def test_the_benchmark_and_the_input_asset_are_off_unless_set():
    settings = load_settings({})
    assert (settings.benchmark_manifest, settings.input_asset, settings.benchmark_schedule) == (
        None,
        None,
        "@daily",
    )


def test_the_benchmark_manifest_is_kept_in_canonical_form():
    settings = load_settings({"DETECTION_BENCHMARK_MANIFEST": "gs://bench//sets/./street.parquet"})
    assert settings.benchmark_manifest == "gs://bench/sets/street.parquet"
