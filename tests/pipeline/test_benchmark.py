"""The benchmark workload: one batch run of the fixed manifest per date, checked with the batch DAG's rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detection_pipeline import benchmark
from detection_pipeline.config import build_params
from detection_pipeline.errors import PermanentError
from detection_pipeline.settings import load_settings

DAY = datetime(2026, 11, 21, tzinfo=UTC)
MANIFEST = "gs://bench/street-500.parquet"

PARAMS = build_params(load_settings())  # what the DAG files build


def test_the_run_reads_the_manifest_with_every_other_option_at_the_batch_defaults():
    run = benchmark.plan_run(MANIFEST, DAY)
    assert run["conf"] == {"input_uri": MANIFEST}
    assert run["trigger_run_id"].startswith("benchmark__2026-11-21T000000__")


def test_an_old_dates_input_is_filled_from_the_benchmark_runs_date():
    run = benchmark.plan_run("gs://images/{ds}/", DAY)
    assert run["conf"] == {"input_uri": "gs://images/2026-11-21"}
    assert run["trigger_run_id"] != benchmark.plan_run(MANIFEST, DAY)["trigger_run_id"]


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from([MANIFEST, "gs://bench/other.txt", "/data/bench.csv"]),
)
def test_run_ids_repeat_for_a_date_and_input_and_are_valid_airflow_run_ids(when, manifest):
    run_id = benchmark.trigger_run_id(when, manifest)
    assert run_id == benchmark.trigger_run_id(when, manifest)
    assert run_id != benchmark.trigger_run_id(
        when + timedelta(days=1), manifest
    )  # (a year on fails on Feb 29)
    assert len(run_id) <= 250 and all(c.isalnum() or c in "_.~:+-" for c in run_id)


@pytest.mark.parametrize(
    ("input_uri", "message"),
    [
        ("gs://images/{when}/", "unknown placeholder"),
        ("relative/list.txt", "relative path"),
        ("https://host/images/", "must be a manifest file"),
    ],
)
def test_an_input_the_batch_dag_would_refuse_triggers_nothing_and_is_not_retried(input_uri, message):
    with pytest.raises(benchmark.BenchmarkError, match=message) as caught:
        benchmark.plan_run(input_uri, DAY)
    assert isinstance(caught.value, PermanentError)


def test_the_param_is_the_batch_dags_input_uri_with_the_manifest_as_default():
    ((name, param),) = benchmark.benchmark_params(PARAMS, MANIFEST).items()
    assert (name, param.value) == ("input_uri", MANIFEST)
    assert param.schema == PARAMS["input_uri"].schema
