"""Where a run's files live under its output prefix; the engine and the DAG both name files through here.

{output}/{run_id}/manifest.parquet            every unique input image, with its shard index
{output}/{run_id}/shards/shard-00003.parquet  the URIs one shard processes
{output}/{run_id}/results/shard-00003.parquet one row per input image (schema.RESULTS)
{output}/{run_id}/metrics/shard-00003.json    one object (schema.SHARD_METRICS)
{output}/{run_id}/parts/shard-00003/          while shard 3 runs: what its attempts committed so far
    part-a002-00005.parquet                   rows of finished images (schema.RESULTS), attempt 2's 6th part
    attempt-002.json                          attempt 2: when it started, its wall time so far, how it stopped
{output}/{run_id}/report.html                 the run report
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_run_id(run_id: str) -> str:
    """Airflow run ids carry ':' and '+' (e.g. scheduled__2026-11-21T00:00:00+00:00); keep them path-safe."""
    return _UNSAFE.sub("_", run_id)


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


def run_prefix(output_uri: str, run_id: str) -> str:
    return join(output_uri, safe_run_id(run_id))


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:05d}"


def manifest_uri(run_prefix_: str) -> str:
    return join(run_prefix_, "manifest.parquet")


def shard_manifest_uri(run_prefix_: str, shard_index: int) -> str:
    return join(run_prefix_, "shards", f"{shard_name(shard_index)}.parquet")


def shard_results_uri(run_prefix_: str, shard_index: int) -> str:
    return join(run_prefix_, "results", f"{shard_name(shard_index)}.parquet")


def shard_metrics_uri(run_prefix_: str, shard_index: int) -> str:
    return join(run_prefix_, "metrics", f"{shard_name(shard_index)}.json")


def shard_parts_prefix(run_prefix_: str, shard_index: int) -> str:
    """The folder of a running shard's committed parts; removed once its results file is written."""
    return join(run_prefix_, "parts", shard_name(shard_index))


def shard_part_uri(run_prefix_: str, shard_index: int, attempt: int, part: int) -> str:
    return join(shard_parts_prefix(run_prefix_, shard_index), f"part-a{attempt:03d}-{part:05d}.parquet")


def shard_attempt_uri(run_prefix_: str, shard_index: int, attempt: int) -> str:
    return join(shard_parts_prefix(run_prefix_, shard_index), f"attempt-{attempt:03d}.json")


PART_NAME = re.compile(r"part-a(?P<attempt>\d{3,})-(?P<part>\d{5,})\.parquet")
ATTEMPT_NAME = re.compile(r"attempt-(?P<attempt>\d{3,})\.json")


def results_glob(run_prefix_: str) -> str:
    return join(run_prefix_, "results", "shard-*.parquet")


def metrics_glob(run_prefix_: str) -> str:
    return join(run_prefix_, "metrics", "shard-*.json")


def report_uri(run_prefix_: str) -> str:
    return join(run_prefix_, "report.html")
