"""The exactly-once invariants, checked against a real DuckDB warehouse holding real shard files' rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from detection_engine import layout
from detection_pipeline.aggregate import build_run_record, read_shard_metrics
from detection_pipeline.config import RunConfig
from detection_pipeline.verify import RunInvariantError, check_run, verify_run
from detection_pipeline.warehouse import open_warehouse
from tests.pipeline.shard_files import results_rows, shard_metrics, write_metrics, write_results, write_run

RUN = "manual__2026-11-21T10:00:00+00:00"
SHARDS = [5, 4, 3]
UNIQUE = sum(SHARDS)


@pytest.fixture
def config(tmp_path) -> RunConfig:
    return RunConfig(
        input_uri="gs://images/in",
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
    )


@pytest.fixture
def warehouse(config):
    warehouse = open_warehouse(config.warehouse)
    warehouse.ensure_tables()
    return warehouse


@pytest.fixture
def prefix(config) -> str:
    return layout.run_prefix(config.output_uri, RUN)


def _run(config, warehouse, prefix, sizes=SHARDS, *, record_overrides=None):
    """Load a run's files and write its record, as load_results and aggregate do."""
    results, metrics = write_run(prefix, RUN, sizes, failed_per_shard=1)
    warehouse.load_run(RUN, "2026-11-21", results, metrics)
    record = build_run_record(
        config,
        run_id=RUN,
        run_date="2026-11-21",
        logical_date=None,
        run_type="manual",
        manifest_stats={"listed": UNIQUE, "duplicates": 0, "skipped_not_image": 0, "skipped_incremental": 0},
        shard_specs=[{"shard_index": i} for i in range(len(sizes))],
        metrics=read_shard_metrics(prefix, range(len(sizes))),
        started_at=datetime(2026, 11, 21, 10, tzinfo=UTC),
    )
    warehouse.write_run_record(record | (record_overrides or {}))
    return results, metrics


def test_a_clean_run_keeps_every_invariant(config, warehouse, prefix):
    _run(config, warehouse, prefix)
    assert verify_run(warehouse, RUN, UNIQUE, len(SHARDS)) == []
    check_run(warehouse, RUN, UNIQUE, len(SHARDS))


def test_a_rerun_of_the_same_run_still_keeps_them(config, warehouse, prefix):
    _run(config, warehouse, prefix)
    _run(config, warehouse, prefix)
    assert verify_run(warehouse, RUN, UNIQUE, len(SHARDS)) == []


def test_an_empty_run_keeps_them(config, warehouse, prefix):
    _run(config, warehouse, prefix, sizes=[])
    assert verify_run(warehouse, RUN, 0, 0) == []


def test_images_without_a_row_are_reported(config, warehouse, prefix):
    _run(config, warehouse, prefix)
    broken = verify_run(warehouse, RUN, UNIQUE + 2, len(SHARDS))
    assert f"results has {UNIQUE} rows for {UNIQUE + 2} unique input images: 2 image(s) have no row" in broken
    assert f"shard metrics count {UNIQUE} images for {UNIQUE + 2} unique inputs" in broken


def test_duplicate_rows_are_reported(config, warehouse, prefix):
    results, metrics = _run(config, warehouse, prefix)
    # A shard file that repeats URIs of shard 0: the same image twice in one run.
    write_results(results[2], results_rows(RUN, 2, [f"gs://images/img-00000-{i:06d}.jpg" for i in range(3)]))
    warehouse.load_run(RUN, "2026-11-21", results, metrics)
    broken = verify_run(warehouse, RUN, UNIQUE, len(SHARDS))
    assert "3 results rows repeat an image URI (9 distinct URIs in 12 rows)" in broken


def test_a_run_record_that_disagrees_with_the_rows_is_reported(config, warehouse, prefix):
    _run(config, warehouse, prefix, record_overrides={"ok": 1, "processed": 11})
    broken = verify_run(warehouse, RUN, UNIQUE, len(SHARDS))
    assert "run record ok 1 + failed 3 != processed 11" in broken
    assert "run record says processed 11, the results rows say 12" in broken
    assert "run record says ok 1, the results rows say 9" in broken


def test_a_missing_run_record_and_missing_shard_metrics_are_reported(warehouse, prefix):
    results, metrics = write_run(prefix, RUN, SHARDS)
    warehouse.load_run(RUN, "2026-11-21", results, metrics[:2])
    broken = verify_run(warehouse, RUN, UNIQUE, len(SHARDS))
    assert "0 run records for the run id, expected exactly 1" in broken
    assert "2 shard_metrics rows for 3 planned shards" in broken


def test_a_status_other_than_ok_or_error_is_reported(config, warehouse, prefix):
    results, metrics = _run(config, warehouse, prefix)
    rows = results_rows(RUN, 0, [f"gs://images/img-00000-{i:06d}.jpg" for i in range(5)], failed=1)
    rows[0]["status"] = "skipped"
    write_results(results[0], rows)
    write_metrics(metrics[0], shard_metrics(RUN, 0, images=5, failed=1))
    warehouse.load_run(RUN, "2026-11-21", results, metrics)
    broken = verify_run(warehouse, RUN, UNIQUE, len(SHARDS))
    assert "1 results rows have a status other than ok or error" in broken
    assert "results ok 8 + failed 3 != 12 rows" in broken


def test_check_run_fails_with_every_broken_invariant(warehouse, prefix):
    results, metrics = write_run(prefix, RUN, SHARDS)
    warehouse.load_run(RUN, "2026-11-21", results[:2], metrics[:2])
    with pytest.raises(RunInvariantError) as info:
        check_run(warehouse, RUN, UNIQUE, len(SHARDS))
    message = str(info.value)
    assert message.startswith(f"run {RUN!r} breaks 4 exactly-once invariant(s):\n  - results has 9 rows")
    assert message.count("\n  - ") == 4
