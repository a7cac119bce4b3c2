"""The `detect` step on Kubernetes: one GPU pod per shard, as a mapped `KubernetesPodOperator`.

What is fixed for the deployment goes into `.partial(...)`, evaluated once when the DAG file is parsed:
connection, service account, security contexts, volumes, timeouts, retries, pod lifecycle. What comes from a
run's conf goes into each mapped instance through `expand_kwargs` (`shard_kwargs.detect_shard_kwargs`).

The provider is imported inside `detect_pod_partial` only, so the embedded default never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    from detection_pipeline.settings import Settings

RUN_AS_USER = 10001  # the image's `detector` user (inference_image/Dockerfile)


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
