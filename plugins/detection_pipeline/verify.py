"""The exactly-once invariants of a run, checked against the warehouse after the load.

1. every unique input image has exactly one results row (ok or error): rows == unique, no URI twice;
2. every row is ok or error, and ok + failed == processed, in the results and in the run record alike;
3. exactly one run record; one shard_metrics row per planned shard, whose images add up to the unique inputs.

`verify_run` lists every broken invariant (so one look shows them all); `check_run` fails the task with them.
"""

from __future__ import annotations

from detection_pipeline.warehouse.base import RUN_COUNT_KEYS, Warehouse


class RunInvariantError(AssertionError):
    """A run whose warehouse rows break an exactly-once invariant."""


def verify_run(warehouse: Warehouse, run_id: str, expected_unique: int, expected_shards: int) -> list[str]:
    """The broken invariants of the run, each as one sentence with the numbers; empty when all hold."""
    counts = warehouse.run_counts(run_id)
    missing_keys = [key for key in RUN_COUNT_KEYS if key not in counts]
    if missing_keys:
        raise ValueError(f"{warehouse!r}.run_counts lacks {missing_keys}")
    broken = []

    rows = counts["rows"]
    if rows != expected_unique:
        gap = expected_unique - rows
        what = f"{gap} image(s) have no row" if gap > 0 else f"{-gap} row(s) too many"
        broken.append(f"results has {rows} rows for {expected_unique} unique input images: {what}")
    if counts["duplicate_uri_rows"]:
        broken.append(
            f"{counts['duplicate_uri_rows']} results rows repeat an image URI "
            f"({counts['distinct_uris']} distinct URIs in {rows} rows)"
        )
    if counts["other_status"]:
        broken.append(f"{counts['other_status']} results rows have a status other than ok or error")
    if counts["ok"] + counts["failed"] != rows:
        broken.append(f"results ok {counts['ok']} + failed {counts['failed']} != {rows} rows")

    if counts["run_records"] != 1:
        broken.append(f"{counts['run_records']} run records for the run id, expected exactly 1")
    else:
        broken += _record_problems(warehouse.run_record(run_id), counts)

    if counts["shard_metrics_rows"] != expected_shards:
        broken.append(
            f"{counts['shard_metrics_rows']} shard_metrics rows for {expected_shards} planned shards"
        )
    if counts["shard_metrics_images"] != expected_unique:
        broken.append(
            f"shard metrics count {counts['shard_metrics_images']} images for {expected_unique} unique inputs"
        )
    return broken


def _record_problems(record: dict | None, counts: dict[str, int]) -> list[str]:
    if record is None:
        return ["the run record could not be read back"]
    problems = []
    if record["ok"] + record["failed"] != record["processed"]:
        problems.append(
            f"run record ok {record['ok']} + failed {record['failed']} != processed {record['processed']}"
        )
    for key, counted in (("processed", counts["rows"]), ("ok", counts["ok"]), ("failed", counts["failed"])):
        if record[key] != counted:
            problems.append(f"run record says {key} {record[key]}, the results rows say {counted}")
    return problems


def check_run(warehouse: Warehouse, run_id: str, expected_unique: int, expected_shards: int) -> None:
    """Raise RunInvariantError listing every broken invariant of the run."""
    broken = verify_run(warehouse, run_id, expected_unique, expected_shards)
    if broken:
        lines = "\n".join(f"  - {problem}" for problem in broken)
        raise RunInvariantError(f"run {run_id!r} breaks {len(broken)} exactly-once invariant(s):\n{lines}")
