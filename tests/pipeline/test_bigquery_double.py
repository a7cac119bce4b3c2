"""The BigQuery double's checks bite: what BigQuery or its client would refuse, the double refuses too."""

from __future__ import annotations

import json

import pytest
from google.api_core.exceptions import BadRequest
from sqlglot.errors import ParseError

from detection_engine import layout, schema
from detection_pipeline.warehouse.bigquery_warehouse import BigQueryWarehouse, query_configuration
from tests.pipeline.bigquery_double import (
    DuckDBBigQueryHook,
    NotBigQueryError,
    check_job_configuration,
    parse_bigquery,
)
from tests.pipeline.shard_files import shard_metrics, write_metrics, write_run

PROJECT, DATASET = "test-project", "detections"
RUN = "manual__2026-11-21T10:00:00+00:00"


@pytest.fixture
def hook(monkeypatch) -> DuckDBBigQueryHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": PROJECT}}),
    )
    return DuckDBBigQueryHook(PROJECT)


@pytest.fixture
def warehouse(hook) -> BigQueryWarehouse:
    warehouse = BigQueryWarehouse(PROJECT, DATASET, hook=hook)
    warehouse.ensure_tables()
    return warehouse


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("DELETE FROM t WHERE run_id = $run_id", "parameters are @name"),
        ("SELECT a::INT64 FROM t", "'::' casts"),
        ("SELECT a FROM t WHERE b = ?", "'?' parameters"),
        ("SELECT COUNT(*) FILTER (WHERE ok) FROM t", "no FILTER clause"),
        ("SELECT IF(a, b) FROM t", "IF takes three arguments"),
        ("MERGE t USING s ON FALSE WHEN NOT MATCHED THEN INSERT BY POSITION", "not a BigQuery MERGE insert"),
        ("DELETE FROM t WHERE TRUE; DELETE FROM s WHERE TRUE", "exactly one statement"),
    ],
)
def test_sql_bigquery_lacks_is_refused(sql, error):
    with pytest.raises(NotBigQueryError, match=error):
        parse_bigquery(sql)


@pytest.mark.parametrize("sql", ["SELECT * FROM t WHERE", "MERGE x", "SELECT a FROM t LIMIT @n OFFSET"])
def test_sql_that_does_not_parse_is_refused(sql):
    with pytest.raises(ParseError):
        parse_bigquery(sql)


def test_job_configurations_the_client_does_not_know_are_refused(warehouse):
    load = warehouse.load_configuration("results", "staging_results_x", ["gs://b/r.parquet"])
    check_job_configuration(load)  # the warehouse's own: accepted
    for key, value in [("writeDispostion", "WRITE_TRUNCATE"), ("maxBadRecord", 0)]:
        with pytest.raises(AssertionError, match="does not round-trip"):
            check_job_configuration({"load": {**load["load"], key: value}})
    with pytest.raises(AssertionError, match="does not round-trip"):
        check_job_configuration({"query": {**query_configuration("SELECT 1", [])["query"], "dryrun": True}})
    bad_field = {"name": "x", "type": "STRING", "mode": "REQUIRED", "descripton": "typo"}
    with pytest.raises(AssertionError):
        check_job_configuration({"load": {**load["load"], "schema": {"fields": [bad_field]}}})


def test_an_undeclared_parameter_fails_the_query(warehouse, hook):
    config = query_configuration(
        f"SELECT COUNT(*) AS n FROM {warehouse.table_sql('runs')} WHERE run_id = @x", []
    )
    with pytest.raises(BadRequest, match="Query parameter 'x' not found"):
        hook.insert_job(configuration=config, job_id="q1", project_id=PROJECT, location="US")


def test_loads_follow_bigquerys_rules_and_a_failed_load_changes_nothing(warehouse, hook, gcs_bucket):
    prefix = layout.run_prefix(f"{gcs_bucket}/out", RUN)
    results, metrics = write_run(prefix, RUN, [3])
    config = warehouse.load_configuration("shard_metrics", "staging_m", metrics)
    hook.insert_job(configuration=config, job_id="l1", project_id=PROJECT, location="US")
    assert len(hook.rows("staging_m")) == 1

    write_metrics(metrics[0], {**shard_metrics(RUN, 0, images=3), "gpu_temperature": 71})
    with pytest.raises(BadRequest, match=r"no such field\(s\) \['gpu_temperature'\]"):
        hook.insert_job(configuration=config, job_id="l2", project_id=PROJECT, location="US")
    incomplete = shard_metrics(RUN, 0, images=3)
    del incomplete["images"]
    write_metrics(metrics[0], incomplete)
    with pytest.raises(BadRequest, match="images"):  # REQUIRED
        hook.insert_job(configuration=config, job_id="l3", project_id=PROJECT, location="US")
    assert len(hook.rows("staging_m")) == 1  # WRITE_TRUNCATE of a failed job kept the table's rows

    parquet = warehouse.load_configuration("results", "staging_r", results)
    del parquet["load"]["parquetOptions"]
    with pytest.raises(BadRequest, match="enableListInference"):
        hook.insert_job(configuration=parquet, job_id="l4", project_id=PROJECT, location="US")
    assert "test-project.detections.staging_r" not in hook.tables


def test_schema_updates_may_only_append_nullable_columns(warehouse, hook):
    fields = schema.bigquery_schema(schema.RUNS)
    for bad in (
        [fields[1], fields[0], *fields[2:]],
        [*fields, {"name": "extra", "type": "STRING", "mode": "REQUIRED"}],
    ):
        with pytest.raises(BadRequest, match="fields may only be appended"):
            hook.update_table(
                table_resource={"schema": {"fields": bad}},
                fields=["schema"],
                dataset_id=DATASET,
                table_id="runs",
                project_id=PROJECT,
            )
