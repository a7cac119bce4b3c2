"""The GPU pod of one shard, rendered offline by the real KubernetesPodOperator and validated as a manifest."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from datetime import timedelta
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, task
from kubernetes.client import ApiClient

from detection_pipeline.config import RunConfig
from detection_pipeline.launch import MAP_INDEX_TEMPLATE, RETRIES, detect_task
from detection_pipeline.launch.engine_args import engine_arguments
from detection_pipeline.launch.pod import RUN_AS_USER
from detection_pipeline.launch.shard_kwargs import POD_NAME_MAX, detect_shard_kwargs, pod_name, run_hash
from detection_pipeline.settings import load_settings

K8S_VERSION = (
    "1.33"  # a Kubernetes version kubernetes-validate ships schemas for, as GKE's regular channel runs
)
CONN_ID = "detection_k8s_test"
SIDECAR_IMAGE = "registry.example/alpine:3.20"
RUN_ID = "scheduled__2026-11-21T00:00:00+00:00"
RUN_DATE = "2026-11-21"
RUN_PREFIX = "gs://bucket/out/scheduled__2026-11-21T00_00_00+00_00"
DOCKERFILE = Path(__file__).resolve().parents[2] / "inference_image" / "Dockerfile"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _settings(**overrides):
    values = dict(
        launcher="kubernetes",
        kubernetes_conn_id=CONN_ID,
        service_account_name="detection-engine",
        pod_cpu_request="6",
        pod_memory_request="24Gi",
        pod_startup_timeout_s=1200,
        max_active_pods=7,
    )
    values.update(overrides)
    return dataclasses.replace(load_settings(), **values)


def _config() -> dict:
    return RunConfig(
        input_uri="gs://bucket/in/",
        output_uri="gs://bucket/out",
        warehouse="bigquery://project/dataset",
        image="europe-docker.pkg.dev/project/repo/detection-engine:1.2.3",
        gpu_type="nvidia-tesla-t4",
        gpu_count=2,
        namespace="detection",
        weights="gs://bucket/models/detector with space.pth",
        min_size=640,
        max_size=1024,
    ).to_dict()


SHARD = {"shard_index": 3, "images": 1000, "manifest_uri": f"{RUN_PREFIX}/shards/shard-00003.parquet"}


@pytest.fixture
def connection(monkeypatch):
    """The Kubernetes connection named by the settings; the operator reads its sidecar image from it."""
    extra = {"xcom_sidecar_container_image": SIDECAR_IMAGE}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )


def _mapped_and_unmapped(settings, kwargs):
    with DAG("detect_pod_test", schedule=None) as dag:
        mapped = detect_task(settings).expand_kwargs([kwargs])
    return dag, mapped, mapped.unmap(kwargs)


def _rendered_pod(settings, kwargs) -> dict:
    _, _, operator = _mapped_and_unmapped(settings, kwargs)
    assert isinstance(operator, KubernetesPodOperator)
    # dry_run: no Kubernetes API client is created, so this needs neither a cluster nor credentials.
    pod = operator.build_pod_request_obj(context=None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def _shard_kwargs(config: dict, deployment: dict) -> dict:
    return detect_shard_kwargs(
        config, SHARD, run_id=RUN_ID, run_date=RUN_DATE, run_prefix=RUN_PREFIX, deployment=deployment
    )


def test_shard_kwargs_are_plain_json_for_xcom():
    kwargs = _shard_kwargs(_config(), _settings().for_tasks())
    assert json.loads(json.dumps(kwargs)) == kwargs


def test_rendered_pod_is_a_valid_gpu_pod_running_the_engine_arguments(connection):
    settings = _settings()
    config = _config()
    kwargs = _shard_kwargs(config, settings.for_tasks())

    manifest = _rendered_pod(settings, kwargs)

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    engine, sidecar = spec["containers"]
    assert engine["image"] == config["image"]
    assert engine["command"] == []  # the image's ENTRYPOINT: python -m detection_engine
    assert engine["args"] == [
        *engine_arguments(
            RunConfig.from_dict(config),
            run_prefix=RUN_PREFIX,
            run_id=RUN_ID,
            run_date=RUN_DATE,
            shard_index=3,
            manifest_uri=SHARD["manifest_uri"],
        ),
        "--devices=auto",  # every GPU the pod is given runs a model replica
        "--decode-workers=6",  # the pod's CPU request: its decode threads
    ]
    assert "--weights=gs://bucket/models/detector with space.pth" in engine["args"]
    assert engine["resources"] == {
        "requests": {"cpu": "6", "memory": "24Gi"},
        "limits": {"memory": "24Gi", "nvidia.com/gpu": "2"},
    }
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"name": "DETECTION_CONTAINER_IMAGE", "value": config["image"]} in engine["env"]
    assert spec["serviceAccountName"] == "detection-engine"
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert manifest["metadata"]["namespace"] == "detection"


def test_pod_runs_as_non_root_with_a_read_only_root_and_writable_scratch(connection):
    settings = _settings()
    kwargs = _shard_kwargs(_config(), settings.for_tasks())

    spec = _rendered_pod(settings, kwargs)["spec"]

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == RUN_AS_USER
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    engine, sidecar = spec["containers"]
    assert sidecar["image"] == SIDECAR_IMAGE  # read from the connection the settings name
    for container in (engine, sidecar):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == RUN_AS_USER, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in engine["volumeMounts"]}
    # Every path the engine writes is an emptyDir: scratch and the XCom summary.
    for path in ("/tmp", "/airflow/xcom"):
        assert "emptyDir" in volumes[mounts[path]], path


def test_pod_runs_as_the_user_the_image_creates():
    """A read-only root leaves the image's own files readable only as intended when the uids agree."""
    created = re.search(r"useradd\b[^\n]*--uid (\d+)", DOCKERFILE.read_text())
    assert created, f"{DOCKERFILE} creates no user with a fixed uid"
    assert int(created.group(1)) == RUN_AS_USER


def test_pod_is_named_and_labelled_by_run_and_shard(connection):
    settings = _settings()
    kwargs = _shard_kwargs(_config(), settings.for_tasks())

    metadata = _rendered_pod(settings, kwargs)["metadata"]

    # The operator appends a random suffix (a retry must not collide with the kept failed pod).
    assert re.fullmatch(re.escape(pod_name(RUN_ID, 3)) + r"-[a-z0-9]{8}", metadata["name"])
    assert len(metadata["name"]) <= 63 and DNS_LABEL.match(metadata["name"])
    assert metadata["labels"]["app"] == "object-detection"
    assert metadata["labels"]["run-hash"] == run_hash(RUN_ID)
    assert metadata["labels"]["shard"] == "00003"


@pytest.mark.parametrize(
    "run_id",
    [
        RUN_ID,
        "manual__2026-11-21T10:11:12.123456+00:00",
        "backfill__" + "x" * 200,
        "UPPER.case_and.dots",
        "::++::",
        "-leading-dash",
    ],
)
def test_pod_names_are_dns_labels_with_room_for_the_operator_suffix(run_id):
    for shard_index in (0, 3, 1023):
        name = pod_name(run_id, shard_index)
        assert DNS_LABEL.match(name), name
        assert len(name) <= POD_NAME_MAX, name
        assert name.endswith(f"-s{shard_index:05d}")


def test_runs_that_share_a_long_prefix_get_different_pod_names():
    long = "backfill__" + "2026-11-21" * 10
    assert pod_name(long + "a", 3) != pod_name(long + "b", 3)
    assert pod_name(RUN_ID, 3) != pod_name(RUN_ID, 4)


def test_mapped_task_caps_gpu_pods_retries_and_defers(connection):
    settings = _settings(max_active_pods=7, pod_startup_timeout_s=1200)
    kwargs = _shard_kwargs(_config(), settings.for_tasks())

    dag, mapped, operator = _mapped_and_unmapped(settings, kwargs)

    assert mapped.task_id == "detect"
    assert mapped.operator_class is KubernetesPodOperator
    assert mapped.max_active_tis_per_dag == 7
    assert mapped.retries == RETRIES and mapped.retry_delay == timedelta(seconds=settings.retry_delay_s)
    assert operator.max_active_tis_per_dag == 7
    assert operator.retries == RETRIES
    assert operator.deferrable is True
    assert operator.do_xcom_push is True
    assert operator.on_finish_action.value == "delete_succeeded_pod"
    assert operator.startup_timeout_seconds == 1200
    assert operator.schedule_timeout_seconds == 1200
    assert operator.kubernetes_conn_id == CONN_ID
    rendered = dag.get_template_env().from_string(MAP_INDEX_TEMPLATE).render(task=operator)
    assert rendered == "shard 00003 (1000 images)"


def test_the_kubernetes_detect_step_builds_with_no_connection_and_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the DAG touched the network at parse time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    settings = _settings(kubernetes_conn_id="a_connection_that_does_not_exist")

    with DAG("detect_parse_test", schedule=None) as dag:

        @task
        def shard_kwargs() -> list[dict]:
            return []

        detect_task(settings).expand_kwargs(shard_kwargs())

    assert dag.task_dict["detect"].operator_class is KubernetesPodOperator


def test_an_unknown_launcher_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="launcher must be one of local, kubernetes"):
        detect_task(_settings(launcher="docker"))


@pytest.mark.parametrize("spot", [True, False])
def test_spot_runs_are_scheduled_on_gke_spot_nodes_only(connection, spot):
    config = {**_config(), "spot": spot}
    kwargs = _shard_kwargs(config, _settings().for_tasks())
    manifest = _rendered_pod(_settings(), kwargs)

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    spot_toleration = {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    }
    assert (spot_toleration in spec["tolerations"]) is spot
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    expected = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert spec["nodeSelector"] == ({**expected, "cloud.google.com/gke-spot": "true"} if spot else expected)
