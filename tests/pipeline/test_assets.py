"""Warehouse tables as Airflow Assets, and the batch DAG's schedule: a cron, or the input Asset when set."""

from __future__ import annotations

import pytest
from airflow.sdk import Asset

from detection_engine import schema
from detection_pipeline import assets
from detection_pipeline.settings import SettingsError, load_settings


def test_every_warehouse_table_is_an_asset_of_exactly_one_task():
    assert sorted(assets.LOADED_TABLES + assets.RECORD_TABLES) == sorted(schema.TABLES)


@pytest.mark.parametrize(
    ("warehouse", "expected"),
    [
        ("bigquery://my-project/detection", "bigquery://my-project/detection/results"),
        ("bigquery://my-project/detection?location=EU", "bigquery://my-project/detection/results"),
        ("duckdb:///data/wh.duckdb", "x-duckdb:///data/wh.duckdb/results"),
    ],
)
def test_a_tables_asset_uri_is_the_one_airflow_keeps(warehouse, expected):
    (asset,) = assets.table_assets(warehouse, ("results",))
    assert assets.table_uri(warehouse, "results") == expected
    assert asset.uri == expected, "Airflow normalised the URI: downstream DAGs would name another one"


def test_bad_warehouses_and_unknown_tables_are_refused():
    with pytest.raises(ValueError, match="postgres:"):
        assets.table_uri("postgres://host/db", "results")
    with pytest.raises(ValueError, match="unknown warehouse table 'detections'"):
        assets.table_uri("duckdb:///data/wh.duckdb", "detections")


def test_the_schedule_is_the_cron_unless_an_input_asset_is_set():
    assert assets.batch_schedule(load_settings({"DETECTION_SCHEDULE": "0 3 * * *"})) == "0 3 * * *"
    on_asset = load_settings({"DETECTION_SCHEDULE": "0 3 * * *", "DETECTION_INPUT_ASSET": "gs://drop/landed"})
    assert assets.batch_schedule(on_asset) == Asset("gs://drop/landed")


def test_an_input_asset_airflow_refuses_names_the_setting():
    settings = load_settings({"DETECTION_INPUT_ASSET": "bigquery://my-project/no_table"})
    with pytest.raises(SettingsError, match="^DETECTION_INPUT_ASSET: .*dataset and table"):
        assets.batch_schedule(settings)
