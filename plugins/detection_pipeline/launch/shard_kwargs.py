"""Each mapped `detect` instance's kwargs, the same for a GPU pod and for a local process.

Built at run time from the run's config and one shard spec: the engine's arguments, and the image, namespace,
GPU type and count, spot or not (node selector and tolerations), because a run may override them and partial
kwargs cannot see run conf. The values are plain JSON (they travel over XCom), and every key is one
`KubernetesPodOperator` accepts, so the same dict drives `LocalShardOperator`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from detection_engine.cpus import cores_of_quantity
from detection_pipeline.config import RunConfig
from detection_pipeline.launch.engine_args import engine_arguments

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
    deployment: Mapping[str, Any],
) -> dict[str, Any]:
    """One mapped `detect` instance's kwargs, from the run's config and one shard spec (JSON in, JSON out).

    `shard_spec` is one of `sharding.plan_shards`'s specs: `{"shard_index", "images", "manifest_uri"}`.

    `deployment` is the run's snapshot of the deployment settings (`Settings.for_tasks`, carried in the run
    dict from validate_config): it gives the pod's CPU and memory requests.
    """
    config = RunConfig.from_dict(config_dict)
    shard_index = int(shard_spec["shard_index"])
    memory = str(deployment["pod_memory_request"])
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
            # The pod's CPUs decode for its GPUs: no CPU limit means the engine cannot see the request itself.
            f"--decode-workers={cores_of_quantity(deployment['pod_cpu_request'])}",
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
            "requests": {"cpu": str(deployment["pod_cpu_request"]), "memory": memory},
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
