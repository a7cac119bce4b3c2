"""Deployment settings: what differs between the embedded default and production, read from the environment.

They are read when the DAG file is parsed, so reading them must stay cheap: environment variables only, no
I/O, no connections. They pick the launcher and set the defaults of the run Params; a run's conf may still
override every Param. The embedded default needs none of them: its defaults point at this repository's
`var/` folder (the demo writes its sample images to `var/demo/images`).

| variable | default | meaning |
|---|---|---|
| DETECTION_LAUNCHER | local | `local` (engine as a subprocess) or `kubernetes` (one GPU pod per shard) |
| DETECTION_INPUT_URI | <repo>/var/demo/images | default input prefix or manifest file; may hold `{ds}` etc. |
| DETECTION_OUTPUT_URI | <repo>/var/output | default output prefix |
| DETECTION_WAREHOUSE | duckdb:///<repo>/var/warehouse.duckdb | or bigquery://<project>/<dataset> |
| DETECTION_IMAGE | detection-engine:latest | the engine's container image |
| DETECTION_NAMESPACE | default | Kubernetes namespace of the pods |
| DETECTION_SERVICE_ACCOUNT | (none) | the pods' Kubernetes service account (Workload Identity) |
| DETECTION_GPU_TYPE | nvidia-l4 | GKE accelerator label value |
| DETECTION_MACHINE_TYPE | g2-standard-8 | machine type, for costing |
| DETECTION_MAX_ACTIVE_PODS | 8 | cap on concurrently running shard pods (or local processes) |
| DETECTION_MAX_ACTIVE_RUNS | 1 | concurrent runs of the DAG (backfills queue behind each other) |
| DETECTION_KUBERNETES_CONN_ID | kubernetes_default | Airflow connection for the cluster |
| DETECTION_GCP_CONN_ID | google_cloud_default | Airflow connection for BigQuery |
| DETECTION_SCHEDULE | @daily | a preset, a cron expression, or `none` for manual runs only |
| DETECTION_START_DATE | 2026-01-01 | first logical date (UTC) |
| DETECTION_POD_CPU | 4 | CPU request of a shard pod (4, 3.5 or 3500m); its whole cores are the engine's decode threads |
| DETECTION_POD_MEMORY | 16Gi | memory request of a shard pod (Kubernetes quantity) |
| DETECTION_POD_STARTUP_TIMEOUT_S | 900 | how long a pod may wait for a GPU node (autoscaling) and start |
| DETECTION_RETRY_DELAY_S | 60 | wait before a failed task's retry (warehouse or storage outages, preempted GPU nodes) |
| DETECTION_INPUT_POKE_INTERVAL_S | 300 | how often a run whose input has not landed yet looks again (the slot is freed in between) |
| DETECTION_INPUT_TIMEOUT_S | 43200 | how long a run waits for its input to land before it fails (no retry) |
| DETECTION_WAREHOUSE_LOCK_TIMEOUT_S | 300 | how long a DuckDB load waits for another run's load before failing (retried) |
| DETECTION_SWEEP_POLL_S | 10 | how often the model sweep checks whether its batch runs have finished |
| DETECTION_MAX_MANIFEST_BYTES | 2147483648 | byte cap on an input manifest file (.txt/.csv/.parquet); larger fails the run |
| DETECTION_MANIFEST_TIMEOUT_S | 900 | deadline for reading an input manifest file (its download included) |
| DETECTION_SPOT | false | default of the `spot` Param: shard pods on GKE spot nodes (node selector + toleration, spot prices) |
| DETECTION_INPUT_ASSET | (none) | an Airflow Asset URI (e.g. gs://images/landed): the batch DAG runs when it is updated, not on a cron |
| DETECTION_BENCHMARK_MANIFEST | (none) | a fixed manifest file: the `detection_benchmark` DAG runs it, one workload over time |
| DETECTION_BENCHMARK_SCHEDULE | @daily | when the benchmark runs (same forms as DETECTION_SCHEDULE) |
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detection_engine.cpus import cores_of_quantity
from detection_pipeline import uris

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("local", "kubernetes")
SCHEDULE_PRESETS = (
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
)

# A 10M-line manifest of ~100-character URIs is ~1 GB; its text is held in memory once while it is split.
MAX_MANIFEST_BYTES = 2 << 30
MANIFEST_TIMEOUT_S = 900

_CRON_FIELD = r"[0-9A-Za-z*?/,#LW-]+"
_CRON = re.compile(rf"^{_CRON_FIELD}(?: +{_CRON_FIELD}){{4,5}}$")
_QUANTITY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


class SettingsError(ValueError):
    """A deployment setting that the DAG cannot be parsed with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    launcher: str
    input_uri: str
    output_uri: str
    warehouse: str
    image: str
    namespace: str
    service_account_name: str | None
    gpu_type: str
    machine_type: str
    max_active_pods: int
    max_active_runs: int
    kubernetes_conn_id: str
    gcp_conn_id: str
    schedule: str | None
    start_date: datetime
    pod_cpu_request: str
    pod_memory_request: str
    pod_startup_timeout_s: int
    retry_delay_s: int = 60
    input_poke_interval_s: int = 300
    input_timeout_s: int = 43200
    warehouse_lock_timeout_s: int = 300
    sweep_poll_s: int = 10
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    manifest_timeout_s: int = MANIFEST_TIMEOUT_S
    spot: bool = False
    input_asset: str | None = None
    benchmark_manifest: str | None = None
    benchmark_schedule: str | None = "@daily"

    def for_tasks(self) -> dict[str, Any]:
        """What tasks need of the deployment, as JSON: the DAG file hands it to validate_config, which carries it
        in the run dict, so every task of a run sees the settings the DAG was parsed with, whatever a
        worker's own environment says."""
        return {name: getattr(self, name) for name in TASK_SETTINGS}


# The settings tasks read at run time (Settings.for_tasks); the rest only shape the DAG when it is parsed.
TASK_SETTINGS = (
    "gcp_conn_id",
    "warehouse_lock_timeout_s",
    "max_manifest_bytes",
    "manifest_timeout_s",
    "pod_cpu_request",
    "pod_memory_request",
)


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """The deployment's settings from `env`; SettingsError naming the variable when one is invalid."""
    var = REPO_ROOT / "var"
    read = _Reader(env)
    launcher = read("DETECTION_LAUNCHER", "local", _one_of(LAUNCHERS))
    # The embedded default runs on this machine: cost it at the price table's "local" entry (a 2-vCPU VM's price).
    default_machine = "local" if launcher == "local" else "g2-standard-8"
    settings = Settings(
        launcher=launcher,
        input_uri=read("DETECTION_INPUT_URI", str(var / "demo" / "images"), _input_uri),
        output_uri=read("DETECTION_OUTPUT_URI", str(var / "output"), _output_uri),
        warehouse=read("DETECTION_WAREHOUSE", f"duckdb://{var / 'warehouse.duckdb'}", uris.check_warehouse),
        image=read("DETECTION_IMAGE", "detection-engine:latest", uris.check_image_reference),
        namespace=read("DETECTION_NAMESPACE", "default", uris.check_dns_label),
        service_account_name=read("DETECTION_SERVICE_ACCOUNT", None, _service_account),
        gpu_type=read("DETECTION_GPU_TYPE", "nvidia-l4", uris.check_dns_label),
        machine_type=read("DETECTION_MACHINE_TYPE", default_machine, uris.check_dns_label),
        max_active_pods=read("DETECTION_MAX_ACTIVE_PODS", "8", _integer(1, 1024)),
        max_active_runs=read("DETECTION_MAX_ACTIVE_RUNS", "1", _integer(1, 64)),
        kubernetes_conn_id=read("DETECTION_KUBERNETES_CONN_ID", "kubernetes_default", _conn_id),
        gcp_conn_id=read("DETECTION_GCP_CONN_ID", "google_cloud_default", _conn_id),
        schedule=read("DETECTION_SCHEDULE", "@daily", _schedule),
        start_date=read("DETECTION_START_DATE", "2026-01-01", _date),
        pod_cpu_request=read("DETECTION_POD_CPU", "4", _cpu_quantity),
        pod_memory_request=read("DETECTION_POD_MEMORY", "16Gi", _quantity),
        pod_startup_timeout_s=read("DETECTION_POD_STARTUP_TIMEOUT_S", "900", _integer(30, 24 * 3600)),
        retry_delay_s=read("DETECTION_RETRY_DELAY_S", "60", _integer(1, 3600)),
        input_poke_interval_s=read("DETECTION_INPUT_POKE_INTERVAL_S", "300", _integer(1, 24 * 3600)),
        input_timeout_s=read("DETECTION_INPUT_TIMEOUT_S", "43200", _integer(1, 7 * 24 * 3600)),
        warehouse_lock_timeout_s=read("DETECTION_WAREHOUSE_LOCK_TIMEOUT_S", "300", _integer(0, 24 * 3600)),
        sweep_poll_s=read("DETECTION_SWEEP_POLL_S", "10", _integer(1, 3600)),
        max_manifest_bytes=read(
            "DETECTION_MAX_MANIFEST_BYTES", str(MAX_MANIFEST_BYTES), _integer(1024, 1 << 40)
        ),
        manifest_timeout_s=read(
            "DETECTION_MANIFEST_TIMEOUT_S", str(MANIFEST_TIMEOUT_S), _integer(1, 24 * 3600)
        ),
        spot=read("DETECTION_SPOT", "false", _boolean),
        input_asset=read("DETECTION_INPUT_ASSET", None, _asset_uri),
        benchmark_manifest=read("DETECTION_BENCHMARK_MANIFEST", None, _benchmark_manifest),
        benchmark_schedule=read("DETECTION_BENCHMARK_SCHEDULE", "@daily", _schedule),
    )
    input_prefix = uris.static_prefix(settings.input_uri)
    if input_prefix == settings.input_uri and uris.is_within(settings.output_uri, settings.input_uri):
        raise SettingsError(
            f"DETECTION_OUTPUT_URI: {settings.output_uri!r} lies inside DETECTION_INPUT_URI "
            f"{settings.input_uri!r}; runs would list their own outputs"
        )
    return settings


class _Reader:
    """Reads one variable, applies its check, and names the variable in any error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __call__(self, name: str, default: str | None, check: Callable[[str], Any]) -> Any:
        raw = self._env.get(name)
        value = default if raw is None or raw.strip() == "" else raw.strip()
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as err:  # URIError and the checks below
            raise SettingsError(f"{name}: {err}") from None


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"must be true or false, got {value!r}")
    return value.lower() == "true"


def _integer(low: int, high: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}")
        return int(value)

    return check


def _input_uri(value: str) -> str:
    uris.placeholders(value)
    return uris.as_prefix(uris.check_storage_uri(value, http=True, placeholders=True))


def _benchmark_manifest(value: str) -> str:
    """A fixed input: one manifest file, no date placeholders, so every run reads the same list of images."""
    if uris.placeholders(value):
        raise ValueError(f"{value!r} has date placeholders; a benchmark reads the same manifest every run")
    canonical = uris.check_storage_uri(value, http=True)
    if uris.extension(canonical) not in uris.MANIFEST_EXTENSIONS:
        raise ValueError(
            f"{value!r} is not a manifest file (.{', .'.join(uris.MANIFEST_EXTENSIONS)}); a benchmark names a "
            "fixed list of images, not a prefix whose contents may change"
        )
    return canonical


def _asset_uri(value: str) -> str:
    """The shape of an Airflow Asset URI (scheme://...); Airflow's own checks run when the DAG builds it."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", value) or uris.CONTROL_CHARACTERS.search(value):
        raise ValueError(f"{value!r} is not an asset URI like gs://bucket/landed or x-images://daily-drop")
    if value.split(":", 1)[0].lower() == "airflow":
        raise ValueError(f"{value!r}: the airflow:// scheme is reserved by Airflow")
    return value


def _output_uri(value: str) -> str:
    return uris.as_prefix(uris.check_storage_uri(value))


def _service_account(value: str) -> str:
    if len(value) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value):
        raise ValueError(f"{value!r} is not a Kubernetes service account name (RFC 1123 subdomain)")
    return value


def _conn_id(value: str) -> str:
    if not _CONN_ID.match(value):
        raise ValueError(f"{value!r} is not an Airflow connection id (letters, digits, '_', '.', '-')")
    return value


def _schedule(value: str) -> str | None:
    if value.lower() == "none":
        return None
    if value in SCHEDULE_PRESETS or _CRON.match(value):
        return value
    raise ValueError(
        f"{value!r} is neither a preset ({', '.join(SCHEDULE_PRESETS)}), a cron expression, nor 'none'"
    )


def _date(value: str) -> datetime:
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"must be a date like 2026-01-01, got {value!r}") from None
    return day.replace(tzinfo=UTC)


def _cpu_quantity(value: str) -> str:
    cores_of_quantity(value)  # the launcher sizes the pod's decode threads from it
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity like 4, 500m, 16Gi")
    return value
