"""The `detect` step on Kubernetes: one GPU pod per shard, as a mapped `KubernetesPodOperator`.

What is fixed for the deployment goes into `.partial(...)`, evaluated once when the DAG file is parsed:
connection, service account, security contexts, volumes, timeouts, retries, pod lifecycle.
What comes from a run's conf goes into each mapped instance through `expand_kwargs`, built at run time by
`detect_shard_kwargs`: the engine's arguments, and the image, namespace, GPU type and count, spot or not (node
selector and tolerations), because a run may override them and partial kwargs cannot see run conf. Those
per-shard values are plain JSON (they travel over XCom), and every key is one `KubernetesPodOperator`
accepts, so the same dict drives `LocalShardOperator`.

The provider is imported inside `detect_pod_partial` only, so the embedded default never imports it.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from detection_pipeline.config import RunConfig
from detection_pipeline.launch.engine_args import engine_arguments

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    from detection_pipeline.settings import Settings

GPU_RESOURCE = "nvidia.com/gpu"
# The pod is given (and billed for) gpu_count GPUs: one model replica on each (detection_engine/devices.py).
POD_DEVICES = "--devices=auto"
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
# GKE labels spot nodes with this (value "true"); node pools created for spot are tainted with the same key.
SPOT_LABEL = "cloud.google.com/gke-spot"
# GKE taints GPU nodes so that only pods asking for a GPU land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
SPOT_TOLERATION = {"key": SPOT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
APP_LABEL = "object-detection"
# The engine records which image produced a shard from this variable (detection_engine.metrics, which imports
# torch, so the name is repeated here; tests/pipeline/test_local_launcher.py checks they agree).
IMAGE_ENV = "DETECTION_CONTAINER_IMAGE"
RUN_AS_USER = 10001  # the image's `detector` user (inference_image/Dockerfile)

# The operator appends "-" and 8 random characters to the name so that a retry never collides with the
# failed pod kept for debugging; it truncates the head to fit 63, so we stay within 54 to keep our tail.
POD_NAME_MAX = 63 - 9
_NOT_DNS = re.compile(r"[^a-z0-9]+")


def run_hash(run_id: str) -> str:
    """A short, label-safe id for a run: Airflow run ids carry ':' and '+', which labels and names cannot."""
    return hashlib.sha1(run_id.encode(), usedforsecurity=False).hexdigest()[:12]


def pod_name(run_id: str, shard_index: int) -> str:
    """A DNS-1123 label that says which run and shard a pod is: `detect-<run slug>-<hash>-s00003`."""
    tail = f"-{run_hash(run_id)[:8]}-s{shard_index:05d}"
    room = POD_NAME_MAX - len("detect-") - len(tail)
    slug = _NOT_DNS.sub("-", run_id.lower()).strip("-")[: max(room, 0)].strip("-")
    return f"detect-{slug}{tail}" if slug else f"detect{tail}"


def detect_shard_kwargs(
    config_dict: dict,
    shard_spec: dict,
    *,
    run_id: str,
    run_date: str,
    run_prefix: str,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One mapped `detect` instance's kwargs, from the run's config and one shard spec (JSON in, JSON out).

    `shard_spec` is one of `sharding.plan_shards`'s specs: `{"shard_index", "images", "manifest_uri"}`.

    `settings` gives the pod's CPU and memory requests; it defaults to the deployment's settings because this
    runs inside a task (plan_shards), where they are read from the same environment as at parse time.
    """
    if settings is None:
        from detection_pipeline.settings import load_settings

        settings = load_settings()
    config = RunConfig.from_dict(config_dict)
    shard_index = int(shard_spec["shard_index"])
    memory = str(settings.pod_memory_request)
    return {
        "arguments": [
            *engine_arguments(
                config,
                run_prefix=run_prefix,
                run_id=run_id,
                run_date=run_date,
                shard_index=shard_index,
                manifest_uri=shard_spec["manifest_uri"],
            ),
            POD_DEVICES,
        ],
        "image": config.image,
        "namespace": config.namespace,
        "name": pod_name(run_id, shard_index),
        "labels": {
            "app": APP_LABEL,
            "run-hash": run_hash(run_id),
            "shard": f"{shard_index:05d}",
            "images": str(int(shard_spec["images"])),
        },
        "env_vars": {IMAGE_ENV: config.image},
        # Memory limit = request: a pod that outgrows it is killed alone instead of starving its GPU node.
        # No CPU limit: throttling would starve the decode threads that keep the GPU busy.
        "container_resources": {
            "requests": {"cpu": str(settings.pod_cpu_request), "memory": memory},
            "limits": {"memory": memory, GPU_RESOURCE: str(config.gpu_count)},
        },
        # spot: only spot nodes (a fraction of the price; reclaimed with ~30 s notice, which the engine's
        # SIGTERM handling and committed parts turn into a resumed shard instead of a lost one).
        "node_selector": {
            ACCELERATOR_LABEL: config.gpu_type,
            **({SPOT_LABEL: "true"} if config.spot else {}),
        },
        "tolerations": [GPU_TOLERATION, *([SPOT_TOLERATION] if config.spot else [])],
    }


def detect_pod_partial(settings: Settings, **task_kwargs: Any) -> OperatorPartial:
    """`KubernetesPodOperator.partial(...)` with everything that is the deployment's, not the run's.

    `task_kwargs` are the task-level kwargs both launchers share (task_id, retries, concurrency cap, map index
    template); see `detection_pipeline.launch.detect_task`.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    # Non-root, no privilege escalation, read-only root filesystem: the engine writes only to /tmp
    # and the XCom dir (an emptyDir the operator mounts at /airflow/xcom).
    container_security = k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )
    return KubernetesPodOperator.partial(
        kubernetes_conn_id=settings.kubernetes_conn_id,
        # Workload Identity: the Kubernetes service account maps to a Google one, so gs:// needs no key files;
        # the engine gets its token from the GKE metadata server, so the API token is not mounted.
        service_account_name=settings.service_account_name,
        automount_service_account_token=False,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=RUN_AS_USER,
            run_as_group=RUN_AS_USER,
            fs_group=RUN_AS_USER,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        container_security_context=container_security,
        xcom_sidecar_container_security_context=container_security,
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],  # noqa: S108 (the pod's own emptyDir)
        # The engine writes its summary to /airflow/xcom/return.json; the operator's sidecar hands it back.
        do_xcom_push=True,
        # Waiting for a GPU node can take many minutes: defer to the triggerer instead of holding a worker slot.
        deferrable=True,
        # A pod that never gets a GPU (quota, stock-out) or whose image never pulls fails instead of hanging.
        schedule_timeout_seconds=settings.pod_startup_timeout_s,
        startup_timeout_seconds=settings.pod_startup_timeout_s,
        # Keep failed pods for `kubectl logs/describe`; the random name suffix lets a retry start beside one.
        on_finish_action="delete_succeeded_pod",
        random_name_suffix=True,
        get_logs=True,
        log_events_on_failure=True,
        **task_kwargs,
    )
