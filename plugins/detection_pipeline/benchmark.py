"""The named benchmark workload: one fixed manifest run on a schedule, so its runs form a version-by-version series.

DETECTION_BENCHMARK_MANIFEST names the manifest. Each run of the `detection_benchmark` DAG triggers and awaits
one ordinary run of the batch DAG with that manifest as `input_uri` and every other option at the batch DAG's
defaults: the same images, config and hardware every time, hence one `workload_id`, and the dashboard's trend
of that workload changes only when a version does (torch, torchvision, the container image).

Why a DAG of its own that triggers the batch DAG, rather than the batch DAG's own schedule reading the manifest:
production keeps its daily runs and the benchmark runs beside them in the same deployment, and every benchmark
run is a batch run under a run id of its own (`benchmark__<date>__<input hash>`). Two DAGs each running their
own tasks would both name their daily runs `scheduled__<date>`, and the warehouse keys runs by run id.

Re-running an old date's workload with the current image: a backfill of this DAG over that date with the
day's input as conf (`{"input_uri": "gs://images/{ds}/"}`; placeholders are filled from the benchmark run's
logical date) runs that day's images again under a run id of its own, so the original run keeps its record
and both fall in one workload on the dashboard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow.sdk import Param, get_current_context, task

from detection_pipeline import uris
from detection_pipeline.config import RunConfig, param_defaults
from detection_pipeline.errors import PermanentError, at_the_boundary
from detection_pipeline.sweep import BATCH_DAG_ID

BENCHMARK_DAG_ID = "detection_benchmark"
__all__ = ["BATCH_DAG_ID", "BENCHMARK_DAG_ID", "BenchmarkError", "benchmark_params", "plan", "plan_run"]


class BenchmarkError(PermanentError, ValueError):
    """A benchmark input that the batch DAG would refuse: nothing is triggered, and no retry can help."""


def benchmark_params(batch_params: Mapping[str, Param], manifest: str) -> dict[str, Param]:
    """The benchmark DAG's one Param, `input_uri`: the batch DAG's own schema, the benchmark manifest as default."""
    base = batch_params["input_uri"]
    description = f"The benchmark's input; default DETECTION_BENCHMARK_MANIFEST. {base.description}"
    return {"input_uri": Param(manifest, description=description, **base.schema)}


def plan_run(
    input_uri: str, logical_date: datetime, *, batch_defaults: Mapping[str, Any] | None = None
) -> dict:
    """The `{"trigger_run_id", "conf"}` of the batch run, its conf checked as the batch run will check it."""
    try:
        resolved = uris.resolve_placeholders(input_uri, logical_date)
    except uris.URIError as err:
        raise BenchmarkError(f"input_uri: {err}") from None
    defaults = param_defaults() if batch_defaults is None else dict(batch_defaults)
    try:
        config = RunConfig.from_params({**defaults, "input_uri": resolved}, logical_date)
    except ValueError as err:  # ConfigError, and the URI checks it wraps
        raise BenchmarkError(f"the benchmark cannot run: {err}") from None
    conf = {"input_uri": config.input_uri}  # canonical: one spelling, one run id
    return {"trigger_run_id": trigger_run_id(logical_date, config.input_uri), "conf": conf}


def trigger_run_id(logical_date: datetime, input_uri: str) -> str:
    """The same on every re-run of one benchmark date and input; different for another date or input."""
    digest = hashlib.sha256(input_uri.encode()).hexdigest()[:8]
    return f"benchmark__{logical_date:%Y-%m-%dT%H%M%S}__{digest}"


@task
@at_the_boundary
def plan(batch_defaults: dict) -> list[dict]:
    """Check the benchmark's input with the batch DAG's rules (over the batch DAG's Param defaults, built by
    the DAG file) and name its batch run."""
    context = get_current_context()
    when = context.get("logical_date") or context["dag_run"].run_after
    return [plan_run(context["params"]["input_uri"], when, batch_defaults=batch_defaults)]
