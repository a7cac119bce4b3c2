"""The check every fault test ends with: nothing lost, nothing counted twice, nothing half-written left behind."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from detection_engine.storage import TMP_SUFFIX, filesystem_for
from detection_pipeline.verify import verify_run
from detection_pipeline.warehouse import open_warehouse

TEMPORARY_SUFFIX = TMP_SUFFIX  # what every local write (detection_engine.storage) leaves until it renames


def assert_exactly_once(warehouse_uri: str, run_id: str, *, unique: int, shards: int, prefix: str) -> dict:
    """One results row per unique input, one run record, one shard_metrics row per shard, verify_run clean,
    and every file under the run's prefix whole. Returns the warehouse's counts for further checks."""
    warehouse = open_warehouse(warehouse_uri)
    counts = warehouse.run_counts(run_id)
    assert counts["rows"] == counts["distinct_uris"] == unique, counts
    assert counts["duplicate_uri_rows"] == 0, counts
    assert counts["run_records"] == 1, counts
    assert counts["shard_metrics_rows"] == shards, counts
    assert verify_run(warehouse, run_id, expected_unique=unique, expected_shards=shards) == []
    files, problems = run_files(prefix)
    assert problems == []
    assert sum(name.startswith("results/") for name in files) == shards, files
    return counts


def run_files(prefix: str) -> tuple[list[str], list[str]]:
    """The files under a run's prefix (relative names), and those that are temporary or do not read back whole
    (Parquet, JSON), each with the reason."""
    fs, root = filesystem_for(prefix)
    fs.invalidate_cache()
    names, problems = [], []
    for path in sorted(fs.find(root)):
        name = path.removeprefix(root.rstrip("/") + "/")
        names.append(name)
        try:
            if name.rsplit("/", 1)[-1].startswith(".") or name.endswith(TEMPORARY_SUFFIX):
                raise ValueError("temporary file")
            if name.endswith(".parquet"):
                pq.read_table(fs.open(path, "rb"))
            elif name.endswith(".json"):
                json.loads(fs.cat_file(path))
        except Exception as exc:  # any reader error means a partial file
            problems.append(f"{name}: {exc}")
    return names, problems
