"""The `detect` step: one engine run per shard, as a GPU pod or as a local process, chosen by configuration.

`settings.launcher` (env DETECTION_LAUNCHER, read when the DAG file is parsed) picks the operator; both take
the same per-shard kwargs from `shard_kwargs.detect_shard_kwargs`, run the same `python -m detection_engine` with the same
arguments, and return the same summary dict. The DAG writes `detect_task(settings).expand_kwargs(...)`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from detection_pipeline.launch.engine_args import engine_arguments
from detection_pipeline.launch.shard_kwargs import detect_shard_kwargs
from detection_pipeline.settings import LAUNCHERS

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    from detection_pipeline.settings import Settings

__all__ = ["detect_shard_kwargs", "detect_task", "engine_arguments"]

TASK_ID = "detect"
# A retry resumes the shard from the parts its earlier attempts committed and replaces its files (atomic
# writes), so retrying is always safe; it covers preempted (spot) GPU nodes and transient storage errors.
RETRIES = 3
# Shown in the grid instead of a bare map index; both operators keep the per-shard `labels`.
MAP_INDEX_TEMPLATE = "shard {{ task.labels['shard'] }} ({{ task.labels['images'] }} images)"


def detect_task(settings: Settings) -> OperatorPartial:
    """The mapped `detect` operator for the configured launcher, before `expand_kwargs`."""
    task_kwargs = {
        "task_id": TASK_ID,
        "retries": RETRIES,
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
        "map_index_template": MAP_INDEX_TEMPLATE,
        # Per DAG, not per run: the GPU quota is shared by every run, backfills included.
        "max_active_tis_per_dag": settings.max_active_pods,
    }
    if settings.launcher == "kubernetes":
        from detection_pipeline.launch.pod import detect_pod_partial

        return detect_pod_partial(settings, **task_kwargs)
    if settings.launcher == "local":
        from detection_pipeline.launch.local import LocalShardOperator

        return LocalShardOperator.partial(**task_kwargs)
    raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {settings.launcher!r}")
